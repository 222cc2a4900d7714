-- Features and what a token for each costs. The feature `default` is what a vend without a
-- feature buys, the legacy POST /vend-token among them: one credit, for ever (the CHECK holds it
-- there, whatever a statement tries). Sharded, this small table is a reference table, copied to
-- every shard, so a spend still reads it on its user's shard.
CREATE TABLE prices (
    feature     text        PRIMARY KEY CHECK (feature ~ '^[a-z][a-z0-9_.-]{0,62}$'),
    credits     integer     NOT NULL CHECK (credits BETWEEN 1 AND 10000),
    -- Counts changes of credits: a token's cost is what the price was when it was sold.
    version     integer     NOT NULL DEFAULT 1 CHECK (version >= 1),
    update_time timestamptz NOT NULL DEFAULT now(),
    CHECK (feature <> 'default' OR (credits = 1 AND version = 1))
);

INSERT INTO prices (feature, credits) VALUES ('default', 1);

-- The feature a spend bought; its amount is what it cost. NULL on spends made before features,
-- each of which bought `default` for one credit.
ALTER TABLE ledger ADD COLUMN feature text;

-- pluct_spend_batch now takes each vend's feature (store/sql/pluct_spend_batch.sql). Its former
-- signature stays for servers of the previous release still running during a rolling deploy
-- (they can only buy `default`, at the one credit it always costs), until migration 0010.
