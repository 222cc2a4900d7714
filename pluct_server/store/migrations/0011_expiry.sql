-- Grants that expire: what remains of a grant at its expire_time leaves the balance, written as
-- one `expiration` entry (store/sql/expiry.sql); refunds give spends back (`refund` entries).
ALTER TABLE ledger DROP CONSTRAINT ledger_type_known;
ALTER TABLE ledger ADD CONSTRAINT ledger_type_known CHECK (
    type IN ('user_creation', 'add_webhook', 'admin_add', 'spend', 'expiration', 'refund'));
-- An expiration names the grant it wrote off.
ALTER TABLE ledger ADD CONSTRAINT ledger_expiration_names_its_grant
    CHECK (type <> 'expiration' OR grant_id IS NOT NULL);

-- The soonest expire_time among the user's grants with credits left, or NULL: never later than
-- the truth (a grant drawn empty may leave it early, which only costs a look). A write that
-- finds it passed writes the expirations first; the sweeper finds users nobody touched by it.
ALTER TABLE users ADD COLUMN next_expire_time timestamptz;
CREATE INDEX users_by_next_expire_time ON users (next_expire_time)
    WHERE next_expire_time IS NOT NULL;

-- Credits are written by pluct_credit now (store/sql/credits.sql), which writes a user's
-- expirations before anything else.
