-- The transactional outbox: every ledger entry writes its event in the statement that writes it,
-- so no entry is without its event and no event without its entry, whatever crashes. Whoever
-- writes the ledger (every function here, and any written later) cannot forget it.
--
-- The event holds what it needs to be found and ordered; its payload is the entry's own
-- columns, which never change (the ledger is append-only).
CREATE OR REPLACE FUNCTION ledger_writes_event() RETURNS trigger LANGUAGE plpgsql AS $$
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
