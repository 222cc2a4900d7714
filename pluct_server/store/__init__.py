"""Persistence: the asyncpg pool, SQL and migrations."""
