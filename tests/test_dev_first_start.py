"""`serve` started fresh in dev mode prints its generated secrets before any log line."""

from __future__ import annotations

import signal

from tests.test_process import ServiceProcess, service_env


async def test_the_first_line_a_fresh_dev_server_prints_is_its_secrets_note(tmp_path):
    data_dir = tmp_path / "data"
    # No DATABASE_URL: the embedded PostgreSQL starts, and logs that it runs.
    service = ServiceProcess(service_env(PLUCT_DATA_DIR=str(data_dir), PLUCT_WORKERS="1"), tmp_path)
    try:
        await service.wait_serving()
        service.process.send_signal(signal.SIGTERM)
        assert await service.exit_code() == 0
    finally:
        service.kill()
    first, *_ = service.output.splitlines()
    assert (
        first
        == f"Generated development secrets in {data_dir / 'dev-secrets.env'} (shown this once):"
    )
    assert "embedded PostgreSQL running" in service.output
