"""Log set-up: text for people, or one JSON object per line for collectors."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, and its fields."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON line."""
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._worker is not None:
            entry["worker"] = self._worker
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(
    level: str, log_format: str = "text", worker: int | None = None, *, access_log: bool = True
) -> None:
    """Send every log line to stdout in the chosen format (replacing earlier set-up)."""
    handler = logging.StreamHandler(sys.stdout)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        prefix = f"[worker {worker}] " if worker is not None else ""
        handler.setFormatter(
            logging.Formatter(TEXT_FORMAT.replace("%(name)s", prefix + "%(name)s"))
        )
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # A line per call makes logging hot: skip what no format here shows (the logging HOWTO's
    # "Optimization"): the caller's file and line, thread, process and task names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # type: ignore[attr-defined]  # Python 3.12 and later
    # Access lines are INFO and follow the level like any line; switched off, only the access
    # logger's warnings would remain.
    logging.getLogger("pluct_server.access").setLevel(
        logging.NOTSET if access_log else logging.WARNING
    )
