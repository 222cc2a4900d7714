"""A small typed client for the Pluct Business Engine, over the generated stubs."""

from pluct_client.client import PluctClient, RetryableError

__all__ = ["PluctClient", "RetryableError"]
