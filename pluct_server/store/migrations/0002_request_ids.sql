-- One namespace for request ids: the first mutation to use an id owns it, whatever its kind,
-- so an id used by CreateUser cannot be spent again by AddCredits or VendToken.

CREATE TABLE request_ids (
    request_id  text        PRIMARY KEY,
    fingerprint text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO request_ids (request_id, fingerprint)
SELECT request_id, request_fingerprint FROM users WHERE request_id IS NOT NULL
UNION ALL
SELECT request_id, request_fingerprint FROM ledger WHERE request_id IS NOT NULL
ON CONFLICT (request_id) DO NOTHING;
