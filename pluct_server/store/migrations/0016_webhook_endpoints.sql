-- Where events go: URLs that receive each event as a signed POST (Standard Webhooks). A few rows,
-- read by every replica; sharded, a reference table.
CREATE TABLE webhook_endpoints (
    endpoint_id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url                text        NOT NULL,
    -- Empty: every type.
    event_types        text[]      NOT NULL DEFAULT '{}',
    balance_thresholds bigint[]    NOT NULL DEFAULT '{}',
    -- whsec_ and the base64 of 32 random bytes. Kept as it is given, because every delivery is
    -- signed with it; after a rotation each secret it replaced signs beside it until its time
    -- is up, however many rotations come in between.
    secret                      text          NOT NULL,
    previous_secrets            text[]        NOT NULL DEFAULT '{}',
    previous_secret_expire_times timestamptz[] NOT NULL DEFAULT '{}',
    disabled           boolean     NOT NULL DEFAULT false,
    create_time        timestamptz NOT NULL DEFAULT now(),
    CHECK (cardinality(previous_secrets) = cardinality(previous_secret_expire_times))
);
