-- Where events go: URLs that receive each event as a signed POST (Standard Webhooks). A few rows,
-- read by every replica; sharded, a reference table.
CREATE TABLE webhook_endpoints (
    endpoint_id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url                text        NOT NULL,
    -- Empty: every type.
    event_types        text[]      NOT NULL DEFAULT '{}',
    balance_thresholds bigint[]    NOT NULL DEFAULT '{}',
    -- whsec_ and the base64 of 32 random bytes. Kept as it is given, because every delivery is
    -- signed with it; after a rotation the previous one signs beside it until it expires.
    secret                      text        NOT NULL,
    previous_secret             text,
    previous_secret_expire_time timestamptz,
    disabled           boolean     NOT NULL DEFAULT false,
    create_time        timestamptz NOT NULL DEFAULT now(),
    CHECK ((previous_secret IS NULL) = (previous_secret_expire_time IS NULL))
);
