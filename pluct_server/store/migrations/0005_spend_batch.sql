-- Spends in batches: the function that spends them, pluct_spend_batch, is defined once, in
-- store/sql/pluct_spend_batch.sql, and re-applied whenever its text changes.
SELECT 1;
