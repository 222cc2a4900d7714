-- The transactional outbox: every ledger entry writes its event in the statement that writes it,
-- so no entry is without its event and no event without its entry, whatever crashes. Whoever
-- writes the ledger (every function here, and any written later) cannot forget it.
--
-- The event holds what it needs to be found and ordered; its payload is the entry's own
-- columns, which never change (the ledger is append-only).
--
-- It runs as the schema's owner (SECURITY DEFINER), on the schema's own path with pg_temp last
-- (migrate.py sets it when applying these files): the serving role may only read events, so no
-- bug or injection in a server can forge, delete or divert one, not even by a temporary table
-- of the same name.
CREATE OR REPLACE FUNCTION ledger_writes_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO events (user_id, type, transaction_id, create_time)
    VALUES (NEW.user_id,
            CASE NEW.type
                WHEN 'spend' THEN 'credits.spent'
                WHEN 'expiration' THEN 'credits.expired'
                WHEN 'refund' THEN 'credits.refunded'
                ELSE 'credits.granted'
            END,
            NEW.id, NEW.created_at);
    RETURN NULL;
END
$$;

-- Events past their retention go, oldest first, by their time (the entry's own created_at);
-- the one way the serving role deletes them.
CREATE OR REPLACE FUNCTION pluct_purge_events(p_retention interval) RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    WITH gone AS (DELETE FROM events WHERE create_time < now() - p_retention RETURNING 1)
    SELECT count(*) FROM gone
$$;
