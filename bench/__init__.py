"""Benchmarks of the running service; `make bench` runs them and writes bench/REPORT.md."""
