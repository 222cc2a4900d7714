"""Observability: log set-up, access lines, Prometheus metrics and traces."""
