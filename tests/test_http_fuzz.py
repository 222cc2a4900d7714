"""Schemathesis against the live shim, driven by its own /openapi.json: no 5xx, no schema breach."""

# This module is also the hooks module (SCHEMATHESIS_HOOKS) of the schemathesis run it starts.

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import schemathesis

from tests.http_support import ADMIN_HEADERS, WEBHOOK_HEADERS

REPO = Path(__file__).resolve().parent.parent
# Examples per operation and the seed: fixed for CI, raised by `make fuzz`.
EXAMPLES = int(os.environ.get("PLUCT_FUZZ_EXAMPLES", "40"))
SEED = int(os.environ.get("PLUCT_FUZZ_SEED", "20261124"))
RUN_GUARD_SECONDS = 600  # a hang guard for the whole run, not a timing claim

# The service refuses, by design (AIP-155), a request id reused for a different request and an
# Idempotency-Key that contradicts the body's requestId. Generated data reuses ids all the time,
# and no schema can say "unique per request", so a schema-valid request refused for exactly
# those reasons is not a finding.
BY_DESIGN_REFUSALS = frozenset({"REQUEST_ID_REUSED", "REQUEST_ID_MISMATCH"})
# Nor can a pattern say "in Unicode NFKC form", which user ids must be (ledger.check_user_id),
# nor a format say "after now", which a grant's expire_time must be.
NOT_IN_A_SCHEMA = "NFKC"
AFTER_NOW = "must lie in the future"
# Nor which ports exist and which hosts are public, which a webhook endpoint's url must name.
URL_CHECKS = "url"


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure except refusals of schema-valid requests no schema could foresee."""
    if failure.code != "ST202" or response.status_code != 400:
        return True
    try:
        body = response.json()
    except ValueError:
        return True
    return (
        body.get("reason") not in BY_DESIGN_REFUSALS
        and NOT_IN_A_SCHEMA not in str(body.get("detail", ""))
        and AFTER_NOW not in str(body.get("error", ""))
        and body.get("field") != URL_CHECKS
    )


async def test_fuzzing_finds_no_server_error_and_no_schema_violation(server, tmp_path):
    headers = {**ADMIN_HEADERS, **WEBHOOK_HEADERS}
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"http://127.0.0.1:{server.http_port}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        "--no-color",
        *(part for name, value in headers.items() for part in ("-H", f"{name}: {value}")),
    ]
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": __name__, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), RUN_GUARD_SECONDS)
    text = output.decode(errors="replace")

    figures = re.search(r"\d+ generated.*", text)
    print(f"schemathesis (seed {SEED}, {EXAMPLES} examples per operation):", figures and figures[0])
    assert process.returncode == 0, text[-6000:]
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", text)
    assert selected, text[-3000:]
    assert selected[1] == selected[2] == selected[3]  # every documented operation was fuzzed
