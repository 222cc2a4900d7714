-- Credits in: a payment or an admin grant, in one statement. The user is made if missing and
-- its row locked, as every write to a balance does; its expired grants are written off first,
-- so every entry's balance_after is exact; then the grant the credits make, the balance, the
-- ledger entry that names the grant, and the claim of the request id or payment event id.
-- A claimed id fails on its unique key and undoes the whole call (the store answers "taken").
CREATE OR REPLACE FUNCTION pluct_credit(
    p_user        text,
    p_amount      bigint,
    p_type        text,   -- the entry's type: add_webhook or admin_add
    p_reason      text,
    p_actor       text,
    p_category    text,
    p_priority    int,
    p_source      text,
    p_expire_time timestamptz,  -- NULL: the grant never expires
    p_id          text,   -- the request id, or the payment event id; NULL for none
    p_is_event    boolean,  -- p_id is a payment event id, claimed for ever in payment_events
    p_caller      text,   -- the request key's scope, operation, fingerprint and retention
    p_operation   text,
    p_fingerprint text,
    p_retention   interval,
    OUT balance_after bigint,
    OUT grant_id bigint,
    OUT expired bigint
)
LANGUAGE plpgsql AS $$
DECLARE
    due boolean;
    entry_id bigint;
BEGIN
    INSERT INTO users (user_id) VALUES (p_user) ON CONFLICT (user_id) DO NOTHING;
    SELECT next_expire_time <= now() INTO due FROM users WHERE user_id = p_user FOR UPDATE;
    expired := 0;
    IF due THEN
        expired := pluct_expire_grants(p_user);
    END IF;

    INSERT INTO grants AS g (user_id, category, priority, amount, remaining, expire_time, source)
    VALUES (p_user, p_category, p_priority, p_amount, p_amount, p_expire_time, p_source)
    RETURNING g.grant_id INTO grant_id;
    UPDATE users
       SET balance = balance + p_amount,
           transaction_count = transaction_count + 1,
           last_activity_at = now(),
           next_expire_time = CASE WHEN p_expire_time IS NULL THEN next_expire_time
                                   ELSE least(next_expire_time, p_expire_time) END
     WHERE user_id = p_user
    RETURNING balance INTO balance_after;
    INSERT INTO ledger (user_id, type, amount, balance_after, reason, request_id, actor, grant_id)
    VALUES (p_user, p_type, p_amount, balance_after, p_reason, p_id, p_actor, grant_id)
    RETURNING id INTO entry_id;

    IF p_id IS NULL THEN
        RETURN;
    END IF;
    IF p_is_event THEN
        INSERT INTO payment_events (event_id, user_id, amount, ledger_id, balance_after, grant_id)
        VALUES (p_id, p_user, p_amount, entry_id, balance_after, grant_id);
    ELSE
        INSERT INTO request_keys (user_id, caller, operation, request_id, fingerprint, ledger_id,
                                  expire_time)
        VALUES (p_user, p_caller, p_operation, p_id, p_fingerprint, entry_id,
                now() + p_retention);
    END IF;
END
$$;
