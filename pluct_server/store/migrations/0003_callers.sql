-- Callers: API keys (hashes only), token revocations, shared rate-limit counters, the acting
-- caller on ledger entries, and request ids scoped to (user, caller, operation) with an expiry.

CREATE TABLE api_keys (
    key_id       text        PRIMARY KEY,
    name         text        NOT NULL,
    scopes       text[]      NOT NULL,
    -- SHA-256 of the whole secret: enough for 256 random bits, and nothing to steal from a dump.
    secret_hash  bytea       NOT NULL,
    created_by   text        NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    revoke_time  timestamptz,
    CONSTRAINT api_keys_has_scopes CHECK (cardinality(scopes) > 0)
);

CREATE TABLE token_revocations (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- One token by its jti (text: tokens of the earlier engine may carry any jti), or every
    -- token of one user issued up to revoke_time.
    token_id     text,
    user_id      text,
    revoked_by   text        NOT NULL,
    revoke_time  timestamptz NOT NULL DEFAULT now(),
    -- Every token the revocation covers has expired by then; it is forgotten after.
    expire_time  timestamptz NOT NULL,
    CONSTRAINT token_revocations_one_target CHECK ((token_id IS NULL) <> (user_id IS NULL))
);

CREATE INDEX token_revocations_by_expiry ON token_revocations (expire_time);

-- Generic cell rate algorithm: `tat` is when the subject's allowance is whole again. A row whose
-- tat has passed is the same as no row, so old rows can be deleted at any time. UNLOGGED: a
-- counter is not worth a WAL flush on every request; a crash (or a failover) only resets limits.
CREATE UNLOGGED TABLE rate_limits (
    subject     text        NOT NULL,
    bucket      text        NOT NULL,
    tat         timestamptz NOT NULL,
    tolerance   interval    NOT NULL,
    PRIMARY KEY (subject, bucket)
);

CREATE INDEX rate_limits_by_tat ON rate_limits (tat);

-- Who moved the balance: an API key id, "admin-secret" or "webhook" (NULL on older entries).
ALTER TABLE ledger ADD COLUMN actor text;

-- A request id means the same request only from the same caller, for the same operation and
-- user: another caller's id can be neither replayed nor squatted.
CREATE TABLE request_keys (
    user_id      text        NOT NULL,
    caller       text        NOT NULL,
    operation    text        NOT NULL,
    request_id   text        NOT NULL,
    fingerprint  text        NOT NULL,
    -- The entry that answers a replay (none for a user created without credits).
    ledger_id    bigint,
    create_time  timestamptz NOT NULL DEFAULT now(),
    -- NULL: kept for ever (payments). Past it, the id is forgotten and may be used afresh.
    expire_time  timestamptz,
    PRIMARY KEY (user_id, caller, operation, request_id)
);

CREATE INDEX request_keys_by_expiry ON request_keys (expire_time) WHERE expire_time IS NOT NULL;

-- Ids used before scoping came from the callers that had no key then: the public routes, the
-- webhook secret and the admin secret.
INSERT INTO request_keys (user_id, caller, operation, request_id, fingerprint, ledger_id,
                          create_time, expire_time)
SELECT l.user_id,
       CASE l.type WHEN 'add_webhook' THEN 'webhook' WHEN 'admin_add' THEN 'admin-secret'
                   ELSE 'public' END,
       CASE l.type WHEN 'add_webhook' THEN 'payment' WHEN 'admin_add' THEN 'admin_grant'
                   ELSE 'vend' END,
       l.request_id, l.request_fingerprint, l.id, l.created_at,
       CASE WHEN l.type = 'add_webhook' THEN NULL ELSE l.created_at + interval '24 hours' END
  FROM ledger l
 WHERE l.request_id IS NOT NULL AND l.type <> 'user_creation'
UNION ALL
SELECT u.user_id, 'public', 'create_user', u.request_id, u.request_fingerprint,
       (SELECT id FROM ledger WHERE user_id = u.user_id AND type = 'user_creation' LIMIT 1),
       u.created_at, u.created_at + interval '24 hours'
  FROM users u
 WHERE u.request_id IS NOT NULL;

DROP TABLE request_ids;
ALTER TABLE ledger DROP CONSTRAINT ledger_request_id_key;
ALTER TABLE users DROP CONSTRAINT users_request_id_key;
