"""How the service runs as processes: the worker supervisor, and the embedded PostgreSQL of dev."""
