"""Scripts the outside load generators run: wrk's Lua requests and pgbench's spend statement."""

from __future__ import annotations

from pathlib import Path

# A feature of three credits, bought by users whose grants hold one credit each.
THREE_GRANT_FEATURE = "bench.three"

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


def pgbench_before_script(path: Path, users: int) -> Path:
    """Write the spend as it was before grants (bench/sql/spend_before_grants.sql), one a call."""
    user = "'u' || :uid"
    path.write_text(
        f"\\set uid random(1, {users})\n"
        "SELECT * FROM pluct_spend_batch("
        f"ARRAY[{user}], ARRAY['bench'], ARRAY[NULL]::text[], ARRAY[NULL]::text[], "
        "ARRAY[gen_random_uuid()], ARRAY[now()], ARRAY[now() + interval '60 seconds'], "
        "ARRAY[NULL]::interval[], "
        f"ARRAY[0], ARRAY[{user}], ARRAY['vend'], ARRAY[0.000001], ARRAY[0.999999]);\n"
    )
    return path


def pgbench_script(path: Path, spread: str, users: int) -> Path:
    """Write the service's spend statement, one vend per call, as a pgbench script.

    The service runs the same statement (pluct_spend_batch) with every vend that arrived
    together; here each carries one, as an unbatched spend would: the database's own ceiling.
    `uniform` and `hot` buy the default feature (one credit, from one grant); `three` buys a
    3-credit feature from users whose grants hold one credit each, so every vend spans three.
    """
    user, feature = {
        "uniform": ("'u' || :uid", "default"),
        "hot": ("'hot'", "default"),
        "three": ("'t' || :uid", THREE_GRANT_FEATURE),
    }[spread]
    lines = [] if spread == "hot" else [f"\\set uid random(1, {users})"]
    lines.append(
        "SELECT * FROM pluct_spend_batch("
        f"ARRAY[{user}], ARRAY['bench'], ARRAY[NULL]::text[], ARRAY[NULL]::text[], "
        "ARRAY[gen_random_uuid()], ARRAY[now()], ARRAY[now() + interval '60 seconds'], "
        f"ARRAY[NULL]::interval[], ARRAY['{feature}'], "
        # The per-user vend counter, charged as the service charges it.
        f"ARRAY[0], ARRAY[{user}], ARRAY['vend'], ARRAY[0.000001], ARRAY[0.999999]);"
    )
    path.write_text("\n".join(lines) + "\n")
    return path
