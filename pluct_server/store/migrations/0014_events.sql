-- What happened, for the services that sell through this one: an event per ledger entry, written
-- in the same transaction by a trigger (store/sql/ledger_writes_event.sql). Entries written
-- before this migration have none: events begin here. Keyed by user like every table a hot
-- statement touches.
CREATE TABLE events (
    user_id        text        NOT NULL,
    event_id       bigint      GENERATED ALWAYS AS IDENTITY,
    type           text        NOT NULL CHECK (type IN (
        'credits.granted', 'credits.spent', 'credits.expired', 'credits.refunded')),
    -- The ledger entry the event tells of. Its id also orders a user's events: it increases
    -- with every entry of the user, as each is written under the user's row lock.
    transaction_id bigint      NOT NULL,
    create_time    timestamptz NOT NULL,
    PRIMARY KEY (user_id, event_id)
);
-- Events in the order they were written, for whoever reads them out: ids only grow, so a BRIN
-- index finds them at a fraction of a B-tree's cost on every write.
CREATE INDEX events_by_id ON events USING brin (event_id);

CREATE TRIGGER ledger_writes_event
    AFTER INSERT ON ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_writes_event();
