"""The service's listen addresses, claimed as it starts: one held by another process stops it."""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from pluct_server.values.settings import Settings

# Sockets the kernel lists per port, and the state of one that accepts connections.
_PROC_TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_TCP_LISTEN = "0A"
# What marks a worker of multiprocessing's spawn start method: its parent is the one to name.
_SPAWNED_WORKER = "--multiprocessing-fork"
_LONGEST_COMMAND = 120

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressUnavailable(Exception):
    """An address the service must listen on cannot be had; the message is one line."""


class ClaimedAddresses:
    """Holds the gRPC and HTTP ports from the check until the service stops; a context manager."""

    def __init__(self, settings: Settings, guards: list[socket.socket]) -> None:
        self.settings = settings
        self._guards = guards

    def __enter__(self) -> ClaimedAddresses:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        """Let the ports go."""
        for guard in self._guards:
            guard.close()
        self._guards.clear()


@dataclass(frozen=True)
class _Address:
    setting: str
    listen: str
    family: int
    sockaddr: tuple[Any, ...]  # (host, port) or IPv6's (host, port, flowinfo, scope_id)


def claim_addresses(settings: Settings) -> ClaimedAddresses:
    """Refuse the start if another process listens on an address; hold gRPC's and HTTP's.

    The settings it returns have a free port in place of port 0, so a replaced worker binds
    where its siblings listen.
    """
    guards: list[socket.socket] = []
    try:
        grpc_listen = _claim("PLUCT_GRPC_LISTEN", settings.grpc_listen, guards)
        http_listen = _claim("PLUCT_HTTP_LISTEN", settings.http_listen, guards)
        if settings.metrics_listen:
            # The supervisor listens there itself, for its whole life, moments from now.
            for address in _resolve("PLUCT_METRICS_LISTEN", settings.metrics_listen):
                if address.sockaddr[1] != 0:
                    _check_free(address)
    except BaseException:
        for guard in guards:
            guard.close()
        raise
    return ClaimedAddresses(
        replace(settings, grpc_listen=grpc_listen, http_listen=http_listen), guards
    )


def refusal(setting: str, listen: str, error: OSError) -> AddressUnavailable:
    """Say in one line why `listen` (from `setting`) cannot be listened on, naming its holder."""
    if error.errno != errno.EADDRINUSE:
        return AddressUnavailable(f"cannot listen on {listen} ({setting}): {error.strerror}")
    try:
        address = _resolve(setting, listen)[0]
        holders = _holders(_ip(str(address.sockaddr[0])), int(address.sockaddr[1]))
    except AddressUnavailable:
        holders = []
    by = f"in use by {', '.join(holders)}" if holders else "already in use"
    return AddressUnavailable(
        f"cannot listen on {listen} ({setting}): {by}; stop it, or set {setting} to another address"
    )


def _claim(setting: str, listen: str, guards: list[socket.socket]) -> str:
    """Check `listen` is free and hold it; return it with the port it got when it asked for 0."""
    host, _, port = listen.rpartition(":")
    if port == "0":
        port = str(_free_port(_resolve(setting, listen)[0]))
        listen = f"{host}:{port}"
    for address in _resolve(setting, listen):
        _check_free(address)
        # Held for the server's whole life, so the check stays true: a worker that dies and is
        # replaced, and the seconds before the first workers bind, leave moments when nothing
        # listens, and a second server starting then would pass the check and then share the
        # port with this one's workers. SO_REUSEPORT lets our workers bind beside it; it never
        # listens, so it receives no connections; without SO_REUSEADDR, a probe fails on it.
        guard = socket.socket(address.family, socket.SOCK_STREAM)
        guard.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            guard.bind(address.sockaddr)
        except OSError:
            # Only connections left in TIME_WAIT by a server that did not share its port can
            # refuse a guard where the probe found nothing: the workers bind past them anyway.
            guard.close()
            continue
        guards.append(guard)
    return listen


def _check_free(address: _Address) -> None:
    """Bind a probe where the service will listen; any process holding the port makes it fail."""
    with socket.socket(address.family, socket.SOCK_STREAM) as probe:
        # Without SO_REUSEPORT, a port shared by another server's workers is refused too; with
        # SO_REUSEADDR, its connections left in TIME_WAIT after it stopped are not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address.sockaddr)
        except OSError as error:
            raise refusal(address.setting, address.listen, error) from None


def _free_port(address: _Address) -> int:
    with socket.socket(address.family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(address.sockaddr)
        except OSError as error:
            raise refusal(address.setting, address.listen, error) from None
        return int(probe.getsockname()[1])


def _resolve(setting: str, listen: str) -> list[_Address]:
    """Return every address `listen` names (a host name may name IPv4 and IPv6 ones)."""
    host, _, port = listen.rpartition(":")
    try:
        found = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        raise AddressUnavailable(
            f"cannot listen on {listen} ({setting}): {error.strerror}"
        ) from None
    unique = dict.fromkeys(
        (family, sockaddr)
        for family, _, _, _, sockaddr in found
        if family in (socket.AF_INET, socket.AF_INET6)
    )
    return [_Address(setting, listen, family, sockaddr) for family, sockaddr in unique]


def _ip(text: str) -> IpAddress:
    ip = ipaddress.ip_address(text.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _holders(ip: IpAddress, port: int) -> list[str]:
    """Describe the processes listening where `ip`:`port` would (empty when none can be seen)."""
    inodes = {
        inode
        for listener, listener_port, inode in _listeners()
        if listener_port == port
        and (listener == ip or listener.is_unspecified or ip.is_unspecified)
    }
    if not inodes:
        return []
    return list(dict.fromkeys(_describe(pid) for pid in sorted(_pids_holding(inodes))))


def _listeners() -> list[tuple[IpAddress, int, str]]:
    """Every listening TCP socket of this network namespace: address, port, inode."""
    found = []
    for table in _PROC_TCP_TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                continue
            address, _, port = fields[1].partition(":")
            found.append((_kernel_address(address), int(port, 16), fields[9]))
    return found


def _kernel_address(text: str) -> IpAddress:
    """Read an address as /proc/net/tcp{,6} prints it: hex, each 32-bit word in host order."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _pids_holding(inodes: set[str]) -> set[int]:
    """Return the processes with one of these sockets open (those this user may look into)."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    pids = set()
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        try:
            if any(str(fd.readlink()) in wanted for fd in (process / "fd").iterdir()):
                pids.add(int(process.name))
        except OSError:  # gone meanwhile, or another user's
            continue
    return pids


def _describe(pid: int) -> str:
    """`pid N (command)`; a spawned worker is named by the process that started it."""
    try:
        command = _command(pid)
        if _SPAWNED_WORKER in command:
            stat = Path(f"/proc/{pid}/stat").read_text()
            parent = int(stat.rpartition(")")[2].split()[1])
            return _describe(parent)
    except (OSError, ValueError, IndexError):
        return f"pid {pid}"
    if len(command) > _LONGEST_COMMAND:
        command = command[: _LONGEST_COMMAND - 3] + "..."
    return f"pid {pid} ({command})"


def _command(pid: int) -> str:
    words = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    text = " ".join(word.decode(errors="replace") for word in words)
    return "".join(char if char.isprintable() else " " for char in text)
