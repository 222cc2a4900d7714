-- Ready to shard by user (Citus distributes a table by a column; every unique constraint must
-- include it): each table a hot statement touches carries user_id in its primary key and in
-- every unique constraint, so a vend, a credit or a read only ever touches one user's rows.
-- users (user_id) and request_keys (user_id, ...) already do; the ledger is keyed by user now.

ALTER TABLE ledger DROP CONSTRAINT ledger_pkey;
ALTER TABLE ledger ADD CONSTRAINT ledger_pkey PRIMARY KEY (user_id, id);
-- The primary key now serves a user's history, newest first.
DROP INDEX ledger_by_user;
-- Everyone's ledger, newest first (the admin listing), still reads by id alone.
CREATE INDEX ledger_by_id ON ledger (id);

-- A token id is a random UUID, unique in practice everywhere; the constraint says per user.
ALTER TABLE ledger DROP CONSTRAINT ledger_token_id_key;
ALTER TABLE ledger ADD CONSTRAINT ledger_token_id_key UNIQUE (user_id, token_id);
