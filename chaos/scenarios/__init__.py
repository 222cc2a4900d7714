"""The scenarios `make chaos` runs, in order: each builds its own servers and proves the books."""
