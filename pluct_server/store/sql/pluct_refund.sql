-- Refunds, in one statement. Under the spend's user's row lock, as every write to a balance:
-- the request id is claimed first (a retry finds it and is answered as before), then the spend
-- is checked, the user's expired grants are written off, and the credits go back to the grants
-- the spend drew from, last drawn first (a spend from before grants drew from the opening grant).
-- Credits that go back to a grant that has expired meanwhile expire again at once, so an
-- expired credit never returns to the balance. What refunds of one spend give back never
-- exceeds it, however many race: each reads what the others gave back under the same lock. A
-- spend refunded in full revokes its token.
CREATE OR REPLACE FUNCTION pluct_refund(
    p_spend       bigint,
    p_amount      bigint,   -- 0: all that is left to refund
    p_reason      text,
    p_actor       text,
    p_request_id  text,     -- NULL for none
    p_caller      text,     -- the request key's scope, fingerprint and retention
    p_fingerprint text,
    p_retention   interval,
    OUT outcome       text,  -- refunded, not_found, not_a_spend, exceeds or taken
    OUT user_id       text,
    OUT entry_id      bigint,
    OUT balance_after bigint,
    OUT refunded      bigint,
    OUT expired       bigint,
    OUT revoked_token text   -- the spend's token, when this refund completes the spend's
)
LANGUAGE plpgsql AS $$
DECLARE
    spent record;
    already bigint;
    owed bigint;
    skip bigint;
    k int;
    took bigint;
    back_ids bigint[] := '{}';
    back_amounts bigint[] := '{}';
    draw_ids bigint[];
    draw_amounts bigint[];
BEGIN
    expired := 0;
    SELECT l.user_id INTO user_id FROM ledger l WHERE l.id = p_spend;
    IF NOT FOUND THEN
        outcome := 'not_found';
        RETURN;
    END IF;
    PERFORM 1 FROM users u WHERE u.user_id = pluct_refund.user_id FOR UPDATE;
    IF p_request_id IS NOT NULL THEN
        INSERT INTO request_keys (user_id, caller, operation, request_id, fingerprint, expire_time)
        VALUES (pluct_refund.user_id, p_caller, 'refund', p_request_id, p_fingerprint,
                now() + p_retention)
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            outcome := 'taken';
            RETURN;
        END IF;
    END IF;

    SELECT l.type, l.amount, l.token_id, l.token_expires_at, l.draw_grant_ids, l.draw_amounts
      INTO spent
      FROM ledger l WHERE l.user_id = pluct_refund.user_id AND l.id = p_spend;
    SELECT coalesce(sum(l.amount), 0) INTO already
      FROM ledger l WHERE l.user_id = pluct_refund.user_id AND l.refunds_id = p_spend;
    IF spent.type <> 'spend' THEN
        outcome := 'not_a_spend';
    ELSE
        refunded := CASE WHEN p_amount = 0 THEN spent.amount - already ELSE p_amount END;
        IF refunded <= 0 OR already + refunded > spent.amount THEN
            outcome := 'exceeds';
        END IF;
    END IF;
    IF outcome IS NOT NULL THEN
        DELETE FROM request_keys k
         WHERE k.user_id = pluct_refund.user_id AND k.caller = p_caller
           AND k.operation = 'refund' AND k.request_id = p_request_id;
        refunded := NULL;
        RETURN;
    END IF;

    IF (SELECT u.next_expire_time <= now() FROM users u WHERE u.user_id = pluct_refund.user_id)
    THEN
        expired := pluct_expire_grants(pluct_refund.user_id);
    END IF;

    -- Last drawn first: walk the draws from the end, past what earlier refunds gave back.
    draw_ids := spent.draw_grant_ids;
    draw_amounts := spent.draw_amounts;
    IF draw_ids IS NULL THEN
        SELECT ARRAY[g.grant_id], ARRAY[spent.amount] INTO draw_ids, draw_amounts
          FROM grants g
         WHERE g.user_id = pluct_refund.user_id AND g.source = 'opening_balance';
    END IF;
    skip := already;
    owed := refunded;
    k := cardinality(draw_ids);
    WHILE owed > 0 LOOP
        took := least(owed, greatest(draw_amounts[k] - skip, 0));
        skip := greatest(skip - draw_amounts[k], 0);
        IF took > 0 THEN
            UPDATE grants g SET remaining = g.remaining + took
             WHERE g.user_id = pluct_refund.user_id AND g.grant_id = draw_ids[k];
            back_ids := back_ids || draw_ids[k];
            back_amounts := back_amounts || took;
            owed := owed - took;
        END IF;
        k := k - 1;
    END LOOP;

    UPDATE users u
       SET balance = u.balance + refunded,
           total_spent = u.total_spent - refunded,
           transaction_count = u.transaction_count + 1,
           last_activity_at = now(),
           next_expire_time = (SELECT min(g.expire_time) FROM grants g
                                WHERE g.user_id = u.user_id AND g.drawable)
     WHERE u.user_id = pluct_refund.user_id
    RETURNING u.balance INTO balance_after;
    INSERT INTO ledger (user_id, type, amount, balance_after, reason, request_id, actor,
                        refunds_id, draw_grant_ids, draw_amounts)
    VALUES (pluct_refund.user_id, 'refund', refunded, balance_after, p_reason, p_request_id,
            p_actor, p_spend, back_ids, back_amounts)
    RETURNING id INTO entry_id;
    IF p_request_id IS NOT NULL THEN
        UPDATE request_keys k SET ledger_id = entry_id
         WHERE k.user_id = pluct_refund.user_id AND k.caller = p_caller
           AND k.operation = 'refund' AND k.request_id = p_request_id;
    END IF;

    -- Credits back in a grant that has expired are out of the balance again at once.
    expired := expired + pluct_expire_grants(pluct_refund.user_id);
    IF already + refunded = spent.amount THEN
        revoked_token := spent.token_id::text;
        INSERT INTO token_revocations (token_id, revoked_by, expire_time)
        VALUES (revoked_token, p_actor, spent.token_expires_at + interval '1 minute');
    END IF;
    outcome := 'refunded';
END
$$;
