"""Tests of the Pluct Business Engine against a real PostgreSQL and real servers."""

import pluct_server  # noqa: F401 - first, so its process settings precede gRPC's import
