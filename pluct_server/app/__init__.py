"""Wiring: the server assembled from every layer, health, TLS, background upkeep."""
