-- Every credit that comes in is a grant, and spends draw from grants in one fixed order. A
-- user's balance is the sum of what remains of its grants: users.balance keeps that sum, and
-- every statement that moves one moves the other, under the user's row lock.
--
-- Keyed by user like every table a hot statement touches (sharded, distributed by user_id).
CREATE TABLE grants (
    user_id     text        NOT NULL REFERENCES users (user_id),
    grant_id    bigint      GENERATED ALWAYS AS IDENTITY,
    category    text        NOT NULL CHECK (category IN ('paid', 'promotional')),
    priority    smallint    NOT NULL CHECK (priority BETWEEN 0 AND 100),
    amount      bigint      NOT NULL CHECK (amount > 0),
    remaining   bigint      NOT NULL,
    -- NULL: never expires.
    expire_time timestamptz,
    source      text        NOT NULL
        CHECK (source IN ('signup', 'payment', 'admin', 'opening_balance')),
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, grant_id),
    CONSTRAINT grants_remaining_within_amount CHECK (remaining BETWEEN 0 AND amount)
);

-- The draw order (store/sql/pluct_spend_batch.sql): priority, then the soonest expiry (never
-- last), then promotional before paid, then oldest first; only grants with credits left.
CREATE INDEX grants_draw_order ON grants
    (user_id, priority, expire_time, (category = 'paid'), grant_id) WHERE remaining > 0;

-- What a user had when grants began: every credit in so far, of which what was spent is drawn
-- already, so that refunds of spends made before grants have a grant to go back to.
INSERT INTO grants (user_id, category, priority, amount, remaining, source, create_time)
SELECT user_id, 'paid', 50, balance + total_spent, balance, 'opening_balance', now()
  FROM users
 WHERE balance + total_spent > 0
 ORDER BY user_id;

-- A credit entry names the grant it made; a spend entry names what it drew from each grant,
-- in the order drawn. NULL on entries written before grants.
ALTER TABLE ledger ADD COLUMN grant_id bigint;
ALTER TABLE ledger ADD COLUMN draw_grant_ids bigint[];
ALTER TABLE ledger ADD COLUMN draw_amounts bigint[];
-- New entries must say so: a server of an earlier release still running (it knows no grants)
-- is refused, rather than moving a balance past its grants. NOT VALID: old entries stay as
-- they are; only new ones are checked.
ALTER TABLE ledger ADD CONSTRAINT ledger_credit_names_its_grant
    CHECK (type NOT IN ('user_creation', 'add_webhook', 'admin_add') OR grant_id IS NOT NULL)
    NOT VALID;
ALTER TABLE ledger ADD CONSTRAINT ledger_spend_names_its_draws
    CHECK (type <> 'spend' OR (draw_grant_ids IS NOT NULL
                               AND cardinality(draw_grant_ids) = cardinality(draw_amounts)))
    NOT VALID;

-- A repeated payment is answered from this row alone, its grant too.
ALTER TABLE payment_events ADD COLUMN grant_id bigint;

-- Spends without draws would leave the grants behind the balance: the spend function of the
-- previous release goes (servers of that release get an error instead).
DROP FUNCTION IF EXISTS pluct_spend_batch(
    text[], text[], text[], text[], uuid[], timestamptz[], timestamptz[], interval[],
    int[], text[], text[], float8[], float8[]);
