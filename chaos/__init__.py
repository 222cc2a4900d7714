"""`make chaos`: the service under killed workers, database restarts, PgBouncer and failover."""
