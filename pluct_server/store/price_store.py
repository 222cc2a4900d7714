"""SQL for prices: what a token for each feature costs."""

from __future__ import annotations

import asyncpg

from pluct_server.store.database import Database
from pluct_server.values.records import Price

_COLUMNS = "feature, credits, version, update_time"

# Made when new, changed when the credits differ (a change counts a version); either way the
# price in force comes back, in one statement: `kept` reads the row as it stood before, which
# is the answer exactly when `changed` wrote nothing.
_SET = f"""
WITH changed AS (
    INSERT INTO prices AS p (feature, credits) VALUES ($1, $2)
    ON CONFLICT (feature) DO UPDATE
       SET credits = EXCLUDED.credits, version = p.version + 1, update_time = now()
     WHERE p.credits <> EXCLUDED.credits
    RETURNING {_COLUMNS}
)
SELECT {_COLUMNS} FROM changed
UNION ALL
SELECT {_COLUMNS} FROM prices WHERE feature = $1 AND NOT EXISTS (SELECT 1 FROM changed)
"""  # noqa: S608 - only the fixed column list is spliced in

_LIST = f"SELECT {_COLUMNS} FROM prices ORDER BY feature"  # noqa: S608


def _price(row: asyncpg.Record) -> Price:
    return Price(
        feature=row["feature"],
        credits=int(row["credits"]),
        version=int(row["version"]),
        update_time=row["update_time"],
    )


class PriceStore:
    """Sets and lists prices."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def set(self, feature: str, credits: int) -> Price:
        """Make or change `feature`'s price; return the price in force."""
        row = await self._db.fetchrow(_SET, feature, credits, writes=True)
        assert row is not None
        return _price(row)

    async def all(self) -> list[Price]:
        """Return every price, by feature name."""
        return [_price(row) for row in await self._db.fetch(_LIST)]
