-- The rate-limit rule, written once: the generic cell rate algorithm per (subject, bucket). An
-- event is admitted while the allowance, spent ahead of now, stays within the tolerance;
-- admitting it moves `tat` one step on. A counter whose tat has passed is the same as no counter.
-- The statements that charge counters (store/limit_store.py for a call, pluct_spend_batch for
-- the vends of a batch) ask these functions and never do the arithmetic themselves.

-- The counter's next tat once one more event is admitted, or NULL when the event is refused.
-- One SQL expression, so the planner inlines it into the statements that call it: it costs
-- nothing a call (a plpgsql function here would cost a fifth of a charge's throughput).
CREATE OR REPLACE FUNCTION pluct_gcra_tat(p_tat timestamptz, p_step interval, p_tolerance interval)
RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN greatest(p_tat, now()) - now() <= p_tolerance
                THEN greatest(p_tat, now()) + p_step END
$$;

-- Abort the statement that calls it: a call's charge, refused by one counter, undoes the counters
-- it moved, and the store answers "limited" (SQLSTATE PL429).
CREATE OR REPLACE FUNCTION pluct_rate_limited() RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'rate limit exceeded' USING ERRCODE = 'PL429';
END
$$;
