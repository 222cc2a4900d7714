"""Scripts the outside load generators run: wrk's Lua requests and pgbench's spend statement."""

from __future__ import annotations

import re
from pathlib import Path

from pluct_server.store.ledger_store import _SPEND_ONE

# wrk plays many mobile clients behind one trusted proxy: a random user and client address for
# every request, so no counter or row is hotter than it would be in production.
_CLIENT = """
local function client()
  local r = math.random
  return "10." .. r(0, 255) .. "." .. r(0, 255) .. "." .. r(1, 254)
end
"""
_WRK = {
    "vend": _CLIENT
    + """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  wrk.headers["X-Forwarded-For"] = client()
  local body = '{{"userId": "u' .. math.random(1, {users}) .. '"}}'
  return wrk.format(nil, "/vend-token", nil, body)
end
""",
    "read": _CLIENT
    + """
request = function()
  wrk.headers["X-Forwarded-For"] = client()
  return wrk.format("GET", "/user/u" .. math.random(1, {users}) .. "/balance")
end
""",
}


def wrk_script(path: Path, name: str, users: int) -> Path:
    """Write the Lua script of one HTTP workload; return its path."""
    path.write_text(_WRK[name].format(users=users))
    return path


def pgbench_script(path: Path, spread: str, users: int) -> Path:
    """Write the service's own spend statement as a pgbench script (uniform users, or one)."""
    user = "'u' || :uid" if spread == "uniform" else "'hot'"
    arguments = {
        1: user,
        2: "'bench'",
        3: "NULL",
        4: "NULL",
        5: "gen_random_uuid()",
        6: "now()",
        7: "now() + interval '60 seconds'",
        # The per-user vend counter, charged as the service charges it.
        8: f"ARRAY[{user}]",
        9: "ARRAY['vend']",
        10: "ARRAY[0.000001]::float8[]",
        11: "ARRAY[0.999999]::float8[]",
        12: "NULL",
    }
    statement = re.sub(r"\$(\d+)", lambda m: arguments[int(m[1])], _SPEND_ONE.strip())
    lines = [f"\\set uid random(1, {users})"] if spread == "uniform" else []
    lines.append(" ".join(statement.split()) + ";")
    path.write_text("\n".join(lines) + "\n")
    return path
