"""µs per access line: the code before against each path of today's, text and JSON.

`.venv/bin/python -m bench.access_line` writes lines to a pipe that `cat` drains to /dev/null,
the stream unbuffered as in the image (PYTHONUNBUFFERED=1), and to a stream that keeps nothing
(the formatting alone). Figures are this process's CPU time (the write system calls included,
time waiting on the pipe or for a core not), the best of several short runs taken in turn.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from pluct_server.observability.access import CallRecord, log_access
from pluct_server.observability.logs import TEXT_FORMAT, JsonFormatter, setup_logging
from pluct_server.runtime.event_loop import run_on
from pluct_server.values.settings import Settings

ACCESS = logging.getLogger("pluct_server.observability.access")
# A ValidateToken call as the access line sees it.
RECORD = CallRecord(
    "grpc",
    "/pluct.token.v1.TokenService/ValidateToken",
    "ipv4:127.0.0.1:53718",
    "6f1d2c9a0b7e4d35",
    user_id="user-4f3a9b2c-61d8-4e0a-9c57-0d2b8e6f1a43",
    caller_id="key_7Qm2xN4p",
)
SECONDS = 0.000734


def before_log_access(record: CallRecord, seconds: float) -> None:
    """log_access as it was: a fields dict, a joined message, a LogRecord and its formatter."""
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    fields = {
        "protocol": record.protocol,
        "method": record.method,
        "code": record.code,
        "duration_ms": round(seconds * 1000, 2),
        "peer": record.peer,
        "request_id": record.request_id,
        "user_id": record.user_id,
        "key_id": record.caller_id,
    }
    ACCESS.info(
        " ".join(f"{name}={_before_safe(value)}" for name, value in fields.items()),
        extra={"fields": fields},
    )


def _before_safe(value: object) -> str:
    text = str(value)[:128]
    if text.isprintable() and " " not in text and '"' not in text:
        return text
    return json.dumps(text)


def before_setup(stream: TextIO, log_format: str) -> None:
    """setup_logging as it was: a StreamHandler and a stock formatter."""
    handler = logging.StreamHandler(stream)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(0))
    else:
        handler.setFormatter(
            logging.Formatter(TEXT_FORMAT.replace("%(name)s", "[worker 0] %(name)s"))
        )
    logging.basicConfig(level="INFO", handlers=[handler], force=True)


def today_setup(stream: TextIO, log_format: str) -> None:
    """Today's setup_logging, writing to `stream` rather than stdout."""
    stdout, sys.stdout = sys.stdout, stream
    try:
        setup_logging("INFO", log_format, 0)
    finally:
        sys.stdout = stdout


def logging_path_setup(stream: TextIO, log_format: str) -> None:
    """Today's code when another handler has been installed (pytest's caplog, say)."""
    before_setup(stream, log_format)


@contextmanager
def pipe() -> Iterator[TextIO]:
    """Yield stdout as the image has it (unbuffered), on a pipe `cat` drains."""
    reader = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert reader.stdin is not None
    raw = io.FileIO(os.dup(reader.stdin.fileno()), "w")
    stream = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
    try:
        yield stream
    finally:
        stream.close()
        reader.stdin.close()
        reader.wait()


class Discard(io.StringIO):
    """A stream that keeps nothing: what is left is the CPU cost of the line."""

    def write(self, text: str) -> int:
        return len(text)


def per_line(log: Callable[[CallRecord, float], None], lines: int, in_loop: bool) -> float:
    """Return the µs one line takes, writing `lines` of them (in an event loop if asked)."""

    def run() -> float:
        start = time.process_time()
        for _ in range(lines):
            log(RECORD, SECONDS)
        return (time.process_time() - start) / lines * 1e6

    async def run_in_loop() -> float:
        return run()

    # On the loop the workers run on by default: the batched handler flushes through it.
    took = run_on(Settings.event_loop, run_in_loop) if in_loop else run()
    for handler in logging.getLogger().handlers:
        handler.flush()
    return took


VARIANTS: dict[str, tuple[Callable[[TextIO, str], None], Callable[..., None], bool]] = {
    "before": (before_setup, before_log_access, False),
    "today, another handler set (records)": (logging_path_setup, log_access, False),
    "today, direct, no event loop": (today_setup, log_access, False),
    "today, direct, batched (as served)": (today_setup, log_access, True),
}


def main() -> None:
    """Print µs per access line for every variant, sink and format."""
    parser = argparse.ArgumentParser(prog="python -m bench.access_line", description=__doc__)
    parser.add_argument("--lines", type=int, default=3_000, help="lines per run")
    parser.add_argument("--runs", type=int, default=15, help="runs per figure (the best is shown)")
    args = parser.parse_args()
    print(f"µs per access line, best of {args.runs} runs of {args.lines} lines")
    with pipe() as piped:
        sinks = {"pipe, unbuffered": piped, "discarded": Discard()}
        for log_format in ("text", "json"):
            for sink_name, sink in sinks.items():
                best = dict.fromkeys(VARIANTS, float("inf"))
                for _ in range(args.runs):
                    for name, (setup, log, in_loop) in VARIANTS.items():
                        setup(sink, log_format)
                        best[name] = min(best[name], per_line(log, args.lines, in_loop))
                logging.basicConfig(handlers=[logging.NullHandler()], force=True)
                print(f"\n{log_format}, {sink_name}:")
                for name, figure in best.items():
                    share = figure / best["before"]
                    print(f"  {name:38s} {figure:6.2f} µs  ({share:.0%} of before)")


if __name__ == "__main__":
    main()
