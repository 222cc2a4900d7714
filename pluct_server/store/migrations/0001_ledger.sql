-- Users with their running balance, and the append-only ledger that explains every balance.

CREATE TABLE users (
    user_id             text        PRIMARY KEY,
    balance             bigint      NOT NULL DEFAULT 0,
    initial_credits     bigint      NOT NULL DEFAULT 0,
    transaction_count   bigint      NOT NULL DEFAULT 0,
    total_spent         bigint      NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    last_activity_at    timestamptz NOT NULL DEFAULT now(),
    -- The request_id of the CreateUser call that made this user, so that a retry is recognised.
    request_id          text        UNIQUE,
    request_fingerprint text,
    -- The last line of defence: whatever the code does, PostgreSQL refuses an overdraft.
    CONSTRAINT users_balance_not_negative CHECK (balance >= 0),
    CONSTRAINT users_user_id_length CHECK (char_length(user_id) BETWEEN 1 AND 100)
);

CREATE INDEX users_by_last_activity ON users (last_activity_at DESC, user_id DESC);

CREATE TABLE ledger (
    id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id             text        NOT NULL REFERENCES users (user_id),
    type                text        NOT NULL,
    amount              bigint      NOT NULL,
    balance_after       bigint      NOT NULL,
    reason              text,
    created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- A retried mutation carries the same request_id and is answered from this row.
    request_id          text        UNIQUE,
    request_fingerprint text,
    -- The vended token's claims, so that a retried vend returns the very same token.
    token_id            uuid        UNIQUE,
    token_issued_at     timestamptz,
    token_expires_at    timestamptz,
    CONSTRAINT ledger_type_known
        CHECK (type IN ('user_creation', 'add_webhook', 'admin_add', 'spend')),
    CONSTRAINT ledger_amount_positive CHECK (amount > 0),
    CONSTRAINT ledger_balance_after_not_negative CHECK (balance_after >= 0),
    CONSTRAINT ledger_spend_has_token CHECK ((type = 'spend') = (token_id IS NOT NULL))
);

CREATE INDEX ledger_by_user ON ledger (user_id, id DESC);

-- Append-only: history is corrected by new entries, never by editing old ones. The trigger's
-- function is in store/sql/ledger_refuse_change.sql.
CREATE TRIGGER ledger_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
