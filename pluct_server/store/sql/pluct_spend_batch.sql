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
    -- The feature each vend buys, at its price now ('default': one credit).
    p_features       text[],
    -- The rate-limit charges of every item: charge k belongs to item p_charge_items[k].
    p_charge_items      int[],
    p_charge_subjects   text[],
    p_charge_buckets    text[],
    p_charge_steps      float8[],
    p_charge_tolerances float8[]
) RETURNS TABLE (item int, outcome text, balance_after bigint, charged int, expired bigint)
-- Every statement here finds its rows by key, so one plan fits every call. Left to choose, the
-- planner kept planning some of them afresh on every call (their estimated custom cost beats
-- the generic one), which cost more than all of the grants' draw.
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    n int := coalesce(array_length(p_users, 1), 0);
    i int;
    claimed boolean;
    present boolean;
    locked text[];
    -- Users of `locked` whose grants have expired unwritten: written off before they spend.
    due text[];
    new_balance bigint;
    entry_id bigint;
    priced text[];
    prices int[];
    price int;
    draw_ids bigint[];
    draw_amounts bigint[];
BEGIN
    -- The prices of the features asked for, read once for the batch: a price changed while
    -- the batch runs applies to the next one, and a token's cost is what it was charged.
    -- `default` costs one credit for ever (prices' CHECK holds it), so a batch of default
    -- vends alone, every legacy one, reads nothing.
    IF p_features <@ ARRAY['default'] THEN
        priced := ARRAY['default'];
        prices := ARRAY[1];
    ELSE
        SELECT coalesce(array_agg(feature), '{}'), coalesce(array_agg(credits), '{}')
          INTO priced, prices
          FROM prices WHERE feature = ANY (p_features);
    END IF;

    -- Every lock up front, in one order for everyone (counters by key, then users by id), so
    -- two batches can wait for each other but never in a circle. The upsert makes a missing
    -- counter with its allowance whole (tat = now, the same as no counter) and locks an
    -- existing one in one step, so a purge deleting it in between cannot leave it unlocked.
    INSERT INTO rate_limits AS r (subject, bucket, tat, tolerance)
    SELECT DISTINCT ON (c.s, c.b) c.s, c.b, now(), make_interval(secs => c.t)
      FROM unnest(p_charge_subjects, p_charge_buckets, p_charge_tolerances) AS c(s, b, t)
     ORDER BY c.s, c.b
    ON CONFLICT (subject, bucket) DO UPDATE SET tolerance = EXCLUDED.tolerance;
    SELECT coalesce(array_agg(s.user_id), '{}'),
           coalesce(array_agg(s.user_id) FILTER (WHERE s.next_expire_time <= now()), '{}')
      INTO locked, due
      FROM (SELECT user_id, next_expire_time FROM users WHERE user_id = ANY (p_users)
             ORDER BY user_id FOR UPDATE) AS s;

    FOR i IN 1 .. n LOOP
        item := i - 1;
        balance_after := NULL;
        charged := NULL;
        expired := 0;
        claimed := false;
        -- An unknown feature is refused before anything is claimed or charged.
        price := prices[array_position(priced, p_features[i])];
        IF price IS NULL THEN
            outcome := 'no_feature';
            RETURN NEXT;
            CONTINUE;
        END IF;
        -- A user created after the lock step is, for this batch, a user that does not exist
        -- yet: touching its row (or its keys) now would take a lock out of the global order.
        present := p_users[i] = ANY (locked);
        -- Expired grants are written off before anything else this user does (once a batch).
        IF present AND p_users[i] = ANY (due) THEN
            expired := pluct_expire_grants(p_users[i]);
            due := array_remove(due, p_users[i]);
        END IF;
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

        -- The overdraft rule: a balance below the price simply does not match.
        UPDATE users
           SET balance = balance - price,
               total_spent = total_spent + price,
               transaction_count = transaction_count + 1,
               last_activity_at = now()
         WHERE present AND user_id = p_users[i] AND balance >= price
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

        -- The credits come out of the user's grants in the one draw order: priority, the
        -- soonest expiry (never last), promotional before paid, oldest first. The balance is
        -- the sum of what remains of them, so they always cover a spend the balance allows.
        -- Most spends fit in the first grant: one statement takes them from it, found through
        -- the draw-order index and updated where it lies (its ctid: no second index lookup;
        -- nothing else moves this user's grants while its row is locked). The user's id stays
        -- in the statement, so that, sharded by user, it still runs on that user's shard only.
        UPDATE grants g
           SET remaining = g.remaining - price
         WHERE g.user_id = p_users[i] AND g.ctid = (
               SELECT f.ctid FROM grants f
                WHERE f.user_id = p_users[i] AND f.drawable
                  AND (f.expire_time IS NULL OR f.expire_time > now())
                ORDER BY f.priority, f.expire_time, f.category = 'paid', f.grant_id
                LIMIT 1)
           AND g.remaining >= price
        RETURNING ARRAY[g.grant_id], ARRAY[price::bigint] INTO draw_ids, draw_amounts;
        IF NOT FOUND THEN
        -- Otherwise each grant in the draw order gives what it has until the price is met.
        -- Each holds at least one credit, so the first `price` of them are all it can take.
        WITH first AS (
            SELECT g.grant_id, g.remaining, g.priority, g.expire_time, g.category
              FROM grants g
             WHERE g.user_id = p_users[i] AND g.drawable
               AND (g.expire_time IS NULL OR g.expire_time > now())
             ORDER BY g.priority, g.expire_time, g.category = 'paid', g.grant_id
             LIMIT price
        ), ordered AS (
            SELECT f.grant_id, f.remaining,
                   sum(f.remaining) OVER (ORDER BY f.priority, f.expire_time,
                                          f.category = 'paid', f.grant_id) AS through
              FROM first f
        ), drawn AS (
            UPDATE grants g
               SET remaining = g.remaining - least(o.remaining, price - (o.through - o.remaining))
              FROM ordered o
             WHERE g.user_id = p_users[i] AND g.grant_id = o.grant_id
               AND o.through - o.remaining < price
            RETURNING g.grant_id, o.through,
                      least(o.remaining, price - (o.through - o.remaining)) AS took
        )
        SELECT array_agg(d.grant_id ORDER BY d.through), array_agg(d.took ORDER BY d.through)
          INTO draw_ids, draw_amounts
          FROM drawn d;
        IF coalesce((SELECT sum(a) FROM unnest(draw_amounts) AS a), 0) <> price THEN
            -- Never reached while every statement keeps the balance and the grants together;
            -- if one did not, no spend goes through on a balance its grants do not hold.
            RAISE EXCEPTION 'the grants of user % do not cover a spend of %', p_users[i], price;
        END IF;
        END IF;

        INSERT INTO ledger (user_id, type, amount, balance_after, request_id,
                            token_id, token_issued_at, token_expires_at, feature,
                            draw_grant_ids, draw_amounts)
        VALUES (p_users[i], 'spend', price, new_balance, p_request_ids[i],
                p_token_ids[i], p_issued[i], p_expires[i], p_features[i],
                draw_ids, draw_amounts)
        RETURNING id INTO entry_id;
        IF claimed THEN
            UPDATE request_keys SET ledger_id = entry_id
             WHERE user_id = p_users[i] AND caller = p_callers[i] AND operation = 'vend'
               AND request_id = p_request_ids[i];
        END IF;
        outcome := 'spent';
        balance_after := new_balance;
        charged := price;
        RETURN NEXT;
    END LOOP;
END
$$;
