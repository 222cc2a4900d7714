-- The spend as it was before grants (pluct_server/store/sql/pluct_spend_batch.sql at the release
-- before prices), kept frozen as `make bench`'s baseline: the database cost of a spend from
-- grants is measured against it in the same run, on a database migrated only that far.

-- Spends in batches: one statement (one round trip, one commit) for every vend that arrived
-- together, each with an answer of its own and every guarantee of a single spend.
--
-- Every lock is taken in the one global order. A user row that appears after the lock step is
-- left alone (the batch answers as if the user did not exist yet), and request keys are claimed
-- only under their user's row lock, so two batches never deadlock. Counters are charged by the
-- rule of rate_limits.sql (pluct_gcra_tat), in the statements themselves: a nested plpgsql call
-- per vend would cost a tenth of the batch's throughput.

CREATE OR REPLACE FUNCTION pluct_spend_batch(
    p_users          text[],
    p_callers        text[],
    p_request_ids    text[],
    p_fingerprints   text[],
    p_token_ids      uuid[],
    p_issued         timestamptz[],
    p_expires        timestamptz[],
    p_retentions     interval[],
    -- The rate-limit charges of every item: charge k belongs to item p_charge_items[k].
    p_charge_items      int[],
    p_charge_subjects   text[],
    p_charge_buckets    text[],
    p_charge_steps      float8[],
    p_charge_tolerances float8[]
) RETURNS TABLE (item int, outcome text, balance_after bigint)
LANGUAGE plpgsql AS $$
DECLARE
    n int := coalesce(array_length(p_users, 1), 0);
    i int;
    claimed boolean;
    present boolean;
    locked text[];
    new_balance bigint;
    entry_id bigint;
BEGIN
    -- Every lock up front, in one order for everyone (counters by key, then users by id), so
    -- two batches can wait for each other but never in a circle. The upsert makes a missing
    -- counter with its allowance whole (tat = now, the same as no counter) and locks an
    -- existing one in one step, so a purge deleting it in between cannot leave it unlocked.
    INSERT INTO rate_limits AS r (subject, bucket, tat, tolerance)
    SELECT DISTINCT ON (c.s, c.b) c.s, c.b, now(), make_interval(secs => c.t)
      FROM unnest(p_charge_subjects, p_charge_buckets, p_charge_tolerances) AS c(s, b, t)
     ORDER BY c.s, c.b
    ON CONFLICT (subject, bucket) DO UPDATE SET tolerance = EXCLUDED.tolerance;
    SELECT coalesce(array_agg(s.user_id), '{}') INTO locked
      FROM (SELECT user_id FROM users WHERE user_id = ANY (p_users)
             ORDER BY user_id FOR UPDATE) AS s;

    FOR i IN 1 .. n LOOP
        item := i - 1;
        balance_after := NULL;
        claimed := false;
        -- A user created after the lock step is, for this batch, a user that does not exist
        -- yet: touching its row (or its keys) now would take a lock out of the global order.
        present := p_users[i] = ANY (locked);
        -- The request key first: a spend must never happen for a request already made. Only
        -- under the user's row lock, so no two batches ever wait on each other's keys.
        IF p_request_ids[i] IS NOT NULL AND present THEN
            INSERT INTO request_keys (user_id, caller, operation, request_id, fingerprint,
                                      expire_time)
            VALUES (p_users[i], p_callers[i], 'vend', p_request_ids[i], p_fingerprints[i],
                    now() + p_retentions[i])
            ON CONFLICT DO NOTHING;
            IF NOT FOUND THEN
                outcome := 'taken';
                RETURN NEXT;
                CONTINUE;
            END IF;
            claimed := true;
        END IF;

        -- Every counter of the item admits it, or none moves.
        IF EXISTS (
            SELECT 1
              FROM unnest(p_charge_items, p_charge_subjects, p_charge_buckets, p_charge_steps,
                          p_charge_tolerances) AS c(it, s, b, st, t)
              JOIN rate_limits r ON r.subject = c.s AND r.bucket = c.b
             WHERE c.it = item
               AND pluct_gcra_tat(r.tat, make_interval(secs => c.st),
                                  make_interval(secs => c.t)) IS NULL
        ) THEN
            IF claimed THEN
                DELETE FROM request_keys
                 WHERE user_id = p_users[i] AND caller = p_callers[i] AND operation = 'vend'
                   AND request_id = p_request_ids[i];
            END IF;
            outcome := 'limited';
            RETURN NEXT;
            CONTINUE;
        END IF;
        UPDATE rate_limits r
           SET tat = pluct_gcra_tat(r.tat, make_interval(secs => c.st),
                                    make_interval(secs => c.t)),
               tolerance = make_interval(secs => c.t)
          FROM unnest(p_charge_items, p_charge_subjects, p_charge_buckets, p_charge_steps,
                      p_charge_tolerances) AS c(it, s, b, st, t)
         WHERE c.it = item AND r.subject = c.s AND r.bucket = c.b;

        -- The overdraft rule, as for a single spend: a balance of 0 simply does not match.
        UPDATE users
           SET balance = balance - 1,
               total_spent = total_spent + 1,
               transaction_count = transaction_count + 1,
               last_activity_at = now()
         WHERE present AND user_id = p_users[i] AND balance >= 1
        RETURNING balance INTO new_balance;
        IF NOT FOUND THEN
            IF claimed THEN
                DELETE FROM request_keys
                 WHERE user_id = p_users[i] AND caller = p_callers[i] AND operation = 'vend'
                   AND request_id = p_request_ids[i];
            END IF;
            outcome := 'insufficient';
            RETURN NEXT;
            CONTINUE;
        END IF;

        INSERT INTO ledger (user_id, type, amount, balance_after, request_id,
                            token_id, token_issued_at, token_expires_at)
        VALUES (p_users[i], 'spend', 1, new_balance, p_request_ids[i],
                p_token_ids[i], p_issued[i], p_expires[i])
        RETURNING id INTO entry_id;
        IF claimed THEN
            UPDATE request_keys SET ledger_id = entry_id
             WHERE user_id = p_users[i] AND caller = p_callers[i] AND operation = 'vend'
               AND request_id = p_request_ids[i];
        END IF;
        outcome := 'spent';
        balance_after := new_balance;
        RETURN NEXT;
    END LOOP;
END
$$;
