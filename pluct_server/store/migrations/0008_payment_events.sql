-- Payment event ids are one namespace for the deployment, which has one payment provider: an
-- event is credited once, whatever channel it comes through (x-webhook-secret, a signature, an
-- API key with credits:grant) and whatever user it names. Request keys were scoped by caller and
-- user, so one event through two channels, or naming two users, was paid twice.
--
-- Keyed by the event id alone, so this is the one table a hot statement writes that is not keyed
-- by user: sharded, it is distributed by event_id, and a payment is a two-shard transaction.

CREATE TABLE payment_events (
    event_id       text        PRIMARY KEY,
    user_id        text        NOT NULL,
    amount         bigint      NOT NULL,
    -- The ledger entry the event credited, and its balance after: what a repeat is answered
    -- with. The entry never changes (the ledger is append-only), so the copy never goes stale,
    -- and a repeat reads this row alone.
    ledger_id      bigint      NOT NULL,
    balance_after  bigint      NOT NULL,
    create_time    timestamptz NOT NULL DEFAULT now()
);

-- Every payment id credited so far, kept for ever as before. Where two channels already paid the
-- same id, the first payment (the lowest ledger id) is the event from now on; both entries stay
-- in the ledger, which is never rewritten.
INSERT INTO payment_events (event_id, user_id, amount, ledger_id, balance_after, create_time)
SELECT DISTINCT ON (k.request_id)
       k.request_id, k.user_id, l.amount, l.id, l.balance_after, k.create_time
  FROM request_keys k
  JOIN ledger l ON l.user_id = k.user_id AND l.id = k.ledger_id
 WHERE k.operation = 'payment'
 ORDER BY k.request_id, l.id;

-- Payments no longer claim request keys; nor do webhook signatures, now that a signed payment's
-- event id is inside what it signs.
DELETE FROM request_keys WHERE operation IN ('payment', 'webhook_signature');
