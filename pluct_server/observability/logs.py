"""Log set-up: text for people, or one JSON object per line for collectors."""

from __future__ import annotations

import asyncio
import json
import logging
import select
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from typing import TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Lines written in one go by a worker stay whole on a pipe its siblings write to (POSIX).
_BATCH_LIMIT = getattr(select, "PIPE_BUF", 512)
# How long a batched line may wait before it is written: a reader tailing the log sees no lag.
_BATCH_SECONDS = 0.02
# Kinds of sampled lines remembered at most, so many addresses cannot grow memory forever.
_SAMPLED_KINDS = 10_000
# The milliseconds of a timestamp, formatted once rather than on every line.
_MILLIS = tuple(f"{n:03d}" for n in range(1000))


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


def json_value(value: object) -> str:
    """Return `value` as json.dumps writes it (text through json's own C escaper, directly)."""
    if type(value) is str:
        return encode_basestring_ascii(value)
    return json.dumps(value, default=str)


class StdoutHandler(logging.StreamHandler[TextIO]):
    """Writes log lines to stdout; INFO lines may also come preformatted, and batched."""

    # A write per line was most of a line's cost on a pipe (PYTHONUNBUFFERED in the image).
    # Lines written in an event loop wait up to _BATCH_SECONDS, and never behind a later line:
    # any record written here first writes them. Nor are they lost when a worker stops: its
    # SIGTERM ends the loop and then the process (sys.exit), whose atexit logging.shutdown
    # flushes every handler; setup_logging closes the handler it replaces, and close writes
    # them too. Only a SIGKILL can lose them: the last _BATCH_SECONDS or so.

    def __init__(self, stream: TextIO, log_format: str, worker: int | None) -> None:
        super().__init__(stream)
        self.json = log_format == "json"
        self._worker = worker
        if self.json:
            self.own_formatter: logging.Formatter = JsonFormatter(worker)
        else:
            prefix = f"[worker {worker}] " if worker is not None else ""
            self.own_formatter = logging.Formatter(
                TEXT_FORMAT.replace("%(name)s", prefix + "%(name)s")
            )
        self.setFormatter(self.own_formatter)
        assert self.lock is not None  # made by Handler.__init__
        self._guard = self.lock
        # What a logger's lines have around their message; the current second and its stamp.
        self._heads: dict[str, tuple[str, str]] = {}
        self._clock: tuple[float, str] = (-2.0, "")
        # Whole lines not yet written, and their length (ASCII only: characters are bytes).
        self._pending: list[str] = []
        self._pending_size = 0
        # When the flush scheduled for them is overdue (time.time()); 0.0 when none is.
        self._flush_by = 0.0

    def write_info(self, logger: str, message: str, json_fields: str = "") -> None:
        """Write an INFO line of `logger` as its record would be; JSON adds `json_fields`."""
        now = time.time()
        second, stamp = self._clock  # one read: another thread may be starting a new second
        if not 0.0 <= now - second < 1.0:
            second, stamp = self._clock = self._new_second(now)
        millis = _MILLIS[int((now - second) * 1000)]  # truncated, as LogRecord.msecs is
        head, tail = self._heads.get(logger) or self._head(logger)
        if self.json:
            # json_fields: members that follow the others, each led by ", ".
            line = f"{stamp}{millis}{head}{json_value(message)}{tail}{json_fields}}}\n"
        else:
            line = f"{stamp},{millis}{head}{message}\n"
        self._add(line, now)

    def _new_second(self, now: float) -> tuple[float, str]:
        """Return the second `now` is in, and its timestamp as the line's formatter writes it."""
        # strftime is most of the cost of a timestamp, and a second has many lines.
        second = int(now)
        if self.json:
            return second, '{"time": "' + time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        return second, time.strftime("%Y-%m-%d %H:%M:%S", self.own_formatter.converter(second))

    def _head(self, logger: str) -> tuple[str, str]:
        """Return what a line of `logger` has between its timestamp and message, and after it."""
        level = logging.getLevelName(logging.INFO)
        if self.json:
            head = f'+00:00", "level": "{level}", "logger": {json_value(logger)}, "message": '
            tail = "" if self._worker is None else f', "worker": {self._worker}'
            self._heads[logger] = (head, tail)
        else:
            prefix = "" if self._worker is None else f"[worker {self._worker}] "
            self._heads[logger] = (f" {level} {prefix}{logger}: ", "")
        return self._heads[logger]

    def _add(self, line: str, now: float) -> None:
        """Have a line written within _BATCH_SECONDS, after those before it."""
        self._guard.acquire()  # not `with`: this is hot, and acquire/release costs less
        try:
            if now < self._flush_by and line.isascii():
                # A flush is on its way. Writes of whole lines up to PIPE_BUF bytes stay whole.
                if self._pending_size + len(line) > _BATCH_LIMIT:
                    self._write("")
                self._pending.append(line)
                self._pending_size += len(line)
                return
        finally:
            self._guard.release()
        self._add_first(line, now)

    def _add_first(self, line: str, now: float) -> None:
        """Start a batch with `line` and schedule its flush; outside an event loop, write it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._guard:
            if loop is None or not line.isascii():
                # No loop, no timer. Beyond ASCII, a line might not encode: it fails alone.
                self._write("")
                self._write(line)
                return
            self._pending.append(line)
            self._pending_size += len(line)
            loop.call_later(_BATCH_SECONDS, self._flush_batch)
            # Overdue, the flush is lost (its loop closed): the next line schedules another.
            self._flush_by = now + 2 * _BATCH_SECONDS

    def _flush_batch(self) -> None:
        with self._guard:
            self._flush_by = 0.0
            self._write("")

    def _write(self, line: str) -> None:
        """Write the pending lines, then `line`, at once; the caller holds the lock."""
        text = "".join(self._pending) + line if self._pending else line
        self._pending.clear()
        self._pending_size = 0
        if not text:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": text.rstrip("\n")}))

    def emit(self, record: logging.LogRecord) -> None:
        """Write a record, after the batched lines that came before it."""
        with self._guard:
            self._write("")
            super().emit(record)

    def flush(self) -> None:
        """Write the batched lines and flush the stream (logging.shutdown calls this at exit)."""
        with self._guard:
            self._write("")
            super().flush()

    def close(self) -> None:
        """Write the batched lines, then close (setup_logging closes the handler it replaces)."""
        with self._guard:
            self._write("")
            super().close()


# The handler setup_logging installed last (it may have been replaced since).
_installed: StdoutHandler | None = None


def direct_handler(logger: logging.Logger) -> StdoutHandler | None:
    """Return setup_logging's handler when it alone would take `logger`'s INFO lines, as is."""
    handler = _installed
    if (
        handler is None
        or logger.filters
        or handler.filters
        or handler.level > logging.INFO
        or handler.formatter is not handler.own_formatter
    ):
        return None
    node = logger
    while node.parent is not None:
        if node.handlers or not node.propagate:
            return None
        node = node.parent
    handlers = node.handlers  # the root's
    return handler if len(handlers) == 1 and handlers[0] is handler else None


def setup_logging(
    level: str, log_format: str = "text", worker: int | None = None, *, access_log: bool = True
) -> None:
    """Send every log line to stdout in the chosen format (replacing earlier set-up)."""
    global _installed
    handler = StdoutHandler(sys.stdout, log_format, worker)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    _installed = handler
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


class Sampled:
    """Logs up to `burst` lines of each kind in an interval, then counts the rest.

    Below the burst every line is written, as before; a flood of refusals from one address is
    worth a line now and then with how many were left out, not one per refusal: the lines would
    cost more than the refusals, and bury everything else in the log.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int,
        interval_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._clock = clock
        self._burst = burst
        self._interval = interval_seconds
        # Per kind of line: when its interval began, lines written in it, lines left out.
        self._kinds: dict[object, tuple[float, int, int]] = {}

    def log(self, level: int, kind: object, message: str, *args: object) -> None:
        """Log `message`, unless `burst` lines of the same `kind` were written this interval."""
        now = self._clock()
        began, written, left_out = self._kinds.get(kind, (now - self._interval, 0, 0))
        if now - began >= self._interval:
            if len(self._kinds) >= _SAMPLED_KINDS:
                self._kinds = {k: v for k, v in self._kinds.items() if now - v[0] < self._interval}
            self._kinds[kind] = (now, 1, 0)
            if left_out:
                message += " (and %d more like it left out since)"
                args = (*args, left_out)
        elif written < self._burst:
            self._kinds[kind] = (began, written + 1, left_out)
        else:
            self._kinds[kind] = (began, written, left_out + 1)
            return
        self._logger.log(level, message, *args)
