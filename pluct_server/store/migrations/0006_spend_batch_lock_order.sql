-- Spend batches keep every lock in the one global order: pluct_spend_batch, as it now stands, is
-- in store/sql/pluct_spend_batch.sql.
SELECT 1;
