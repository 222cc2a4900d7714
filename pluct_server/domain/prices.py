"""Prices: what a token for each feature costs, set by admins."""

from __future__ import annotations

from pluct_server.domain.errors import InvalidArgument
from pluct_server.store.price_store import PriceStore
from pluct_server.values.records import DEFAULT_FEATURE, Price


class Prices:
    """Sets and lists feature prices; `default` is one credit for ever."""

    def __init__(self, store: PriceStore) -> None:
        self._store = store

    async def set(self, feature: str, credits: int) -> Price:
        """Make or change a feature's price; tokens already sold keep what they cost."""
        if feature == DEFAULT_FEATURE:
            # What a vend without a feature, and every legacy caller, pays: it never moves.
            raise InvalidArgument(
                "feature", f"the feature {DEFAULT_FEATURE!r} costs one credit for ever"
            )
        return await self._store.set(feature, credits)

    async def all(self) -> list[Price]:
        """Return every feature's price, by name."""
        return await self._store.all()
