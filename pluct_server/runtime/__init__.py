"""How the service runs as processes: supervisor, workers, their addresses, dev PostgreSQL."""
