-- Expiry, written once. What remains of a grant at its expire_time is no longer the user's: it
-- is out of the balance from that moment (balance reads subtract it, spends never draw it), and
-- it is written off as exactly one `expiration` entry by the first write that touches the user,
-- or by the sweeper within seconds. Every writer holds the user's row lock while it writes, and
-- a written-off grant has nothing left, so an expiration is never written twice, whichever
-- replica gets there first. Time is PostgreSQL's: one clock for every replica.

-- Write off every expired grant of p_user with credits left, soonest first, each entry with its
-- exact balance after; return the credits written off. The caller holds the user's row lock.
CREATE OR REPLACE FUNCTION pluct_expire_grants(p_user text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    lot record;
    balance_now bigint;
    entries int := 0;
    expired bigint := 0;
BEGIN
    SELECT balance INTO balance_now FROM users WHERE user_id = p_user;
    FOR lot IN SELECT grant_id, remaining FROM grants
                WHERE user_id = p_user AND drawable AND expire_time <= now()
                ORDER BY expire_time, grant_id
    LOOP
        balance_now := balance_now - lot.remaining;
        INSERT INTO ledger (user_id, type, amount, balance_after, reason, grant_id)
        VALUES (p_user, 'expiration', lot.remaining, balance_now, 'Credits expired',
                lot.grant_id);
        UPDATE grants SET remaining = 0 WHERE user_id = p_user AND grant_id = lot.grant_id;
        entries := entries + 1;
        expired := expired + lot.remaining;
    END LOOP;
    UPDATE users
       SET balance = balance_now,
           transaction_count = transaction_count + entries,
           last_activity_at = CASE WHEN entries > 0 THEN now() ELSE last_activity_at END,
           next_expire_time = (SELECT min(g.expire_time) FROM grants g
                                WHERE g.user_id = p_user AND g.drawable
                                  AND g.expire_time > now())
     WHERE user_id = p_user;
    RETURN expired;
END
$$;

-- The sweeper: write off the expired grants of up to p_users users nobody has touched since
-- they expired, skipping any a call holds (that call writes them itself); return how many
-- users and how many credits.
CREATE OR REPLACE FUNCTION pluct_sweep_expired_grants(p_users int,
                                                      OUT users_swept int,
                                                      OUT credits_expired bigint)
LANGUAGE plpgsql AS $$
DECLARE
    due text;
BEGIN
    users_swept := 0;
    credits_expired := 0;
    FOR due IN SELECT user_id FROM users WHERE next_expire_time <= now()
                ORDER BY next_expire_time LIMIT p_users
                  FOR UPDATE SKIP LOCKED
    LOOP
        credits_expired := credits_expired + pluct_expire_grants(due);
        users_swept := users_swept + 1;
    END LOOP;
END
$$;
