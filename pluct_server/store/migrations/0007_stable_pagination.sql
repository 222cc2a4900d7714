-- Listings that page stably while writes go on.

-- Which transaction wrote each ledger entry. Ids come from a sequence, so id order is not
-- commit order: a transaction can take id 10 and commit after the one that took id 11, and a
-- consumer following the ledger by id would already be past 10 when it appears. A transaction
-- id below pg_snapshot_xmin(pg_current_snapshot()) belongs to a transaction that has finished,
-- and every transaction still to write one has a larger id, so no entry can ever appear below
-- that line: the oldest-first listing reads only below it, in (xid, id) order (by id alone, an
-- old transaction could still add a high id behind a younger one's lower id).
--
-- Entries written before this migration are all committed (ALTER TABLE waits for every
-- transaction that wrote the ledger), so they share xid 0, below every real one. A constant
-- default is stored once in the catalog instead of rewriting this large, hot table; new rows
-- then get the writing transaction's id, with no change to any INSERT (pluct_spend_batch's
-- included), and the append-only trigger never sees an UPDATE.
ALTER TABLE ledger ADD COLUMN xid xid8 NOT NULL DEFAULT '0';
ALTER TABLE ledger ALTER COLUMN xid SET DEFAULT pg_current_xact_id();

-- The oldest-first listing, for everyone: one index range scan from the consumer's position.
CREATE INDEX ledger_by_xid ON ledger (xid, id);

-- ListUsers pages by create time, which never changes (last activity moves under a scan).
CREATE INDEX users_by_create_time ON users (created_at, user_id);
