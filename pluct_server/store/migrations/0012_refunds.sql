-- Refunds: a `refund` entry gives back credits of one spend (refunds_id), to the grants the spend
-- drew from; the total given back for a spend never exceeds it (store/sql/pluct_refund.sql).
ALTER TABLE ledger ADD COLUMN refunds_id bigint;
ALTER TABLE ledger ADD CONSTRAINT ledger_refund_names_its_spend
    CHECK ((type = 'refund') = (refunds_id IS NOT NULL)) NOT VALID;
-- What was refunded of a spend so far, read under the user's row lock by every refund of it.
CREATE INDEX ledger_refunds ON ledger (user_id, refunds_id) WHERE refunds_id IS NOT NULL;
