"""Lease files: how processes that share only a filesystem agree who does a piece of work.

A lease is a small JSON file naming its owner (host, pid, rank). It is created atomically with
its content (written to a private file, then hard-linked into place, which fails if the name
exists), so no reader ever sees an empty lease. A lease is stale, and may be taken over, when
its file has not been touched for ``stale_after()`` seconds (every process refreshes the leases
it holds from a heartbeat thread, so a live owner's lease stays fresh, on any host), or when its
owner is a process on this host that no longer exists, or whose pid now belongs to a process
started at another time (pids are reused: the owner records its process start time).

Used for work items (``items/<id>.lease``: no image is generated twice, even by two sweeps
started on one folder) and for the one evaluation of a finished run (``evaluation.lease``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HEARTBEAT_SECONDS = 30.0
DEFAULT_STALE_SECONDS = 600.0  # a lease untouched this long is abandoned, whoever its pid names now


def stale_after() -> float:
    """Seconds without a heartbeat after which a lease counts as abandoned ($SUITE_LEASE_STALE_S)."""
    try:
        seconds = float(os.environ.get("SUITE_LEASE_STALE_S", DEFAULT_STALE_SECONDS))
    except ValueError:
        return DEFAULT_STALE_SECONDS
    return max(seconds, 3 * HEARTBEAT_SECONDS)  # never so short that a live owner's heartbeat could miss it


def process_start(pid: Any) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``); None where unknown."""
    try:
        fields = Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])  # field 22 of proc(5); fields[0] is field 3
    except (OSError, ValueError, IndexError, TypeError, OverflowError):
        return None


def owner_record(**extra: Any) -> dict[str, Any]:
    """Who this process is, as a lease records it."""
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
    started = process_start(os.getpid())
    if started is not None:
        owner["started"] = started
    return {**owner, **extra}


def describe(owner: dict[str, Any]) -> str:
    rank = f" (rank {owner['rank']})" if owner.get("rank") is not None else ""
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}{rank}"


def read_owner(path: Path) -> dict[str, Any] | None:
    """The lease's owner, ``{}`` for an unreadable lease, None if there is no lease."""
    try:
        return json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}


def _process_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError, TypeError):
        return True
    return True


def is_stale(path: Path, owner: dict[str, Any]) -> bool:
    """Whether the lease at ``path`` (with ``owner`` as read) has been abandoned."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if age > stale_after():  # no heartbeat: whoever the pid is now, it is not holding this lease
        return True
    if owner.get("host") == socket.gethostname() and "pid" in owner:
        if not _process_alive(owner["pid"]):
            return True
        started = owner.get("started")
        return started is not None and process_start(owner["pid"]) not in (None, started)
    return False


class _Heartbeat:
    """Touches every lease this process holds, so other hosts see them as alive."""

    def __init__(self) -> None:
        self.held: set[Path] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, path: Path) -> None:
        with self.lock:
            self.held.add(path)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)
                self.thread.start()

    def remove(self, path: Path) -> None:
        with self.lock:
            self.held.discard(path)

    def _run(self) -> None:
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            with self.lock:
                held = list(self.held)
            for path in held:
                with contextlib.suppress(OSError):
                    os.utime(path)


_HEARTBEAT = _Heartbeat()


def _create(path: Path, owner: dict[str, Any]) -> bool:
    """Create ``path`` holding ``owner``, atomically; False if it exists."""
    private = path.with_name(f".{path.name}.{owner['token']}")
    private.write_text(json.dumps(owner))
    try:
        os.link(private, path)
    except FileExistsError:
        return False
    finally:
        private.unlink(missing_ok=True)
    return True


def _take_over(path: Path, judged: dict[str, Any]) -> None:
    """Remove the stale lease ``judged``; if a fresh lease replaced it meanwhile, put that one back."""
    grave = path.with_name(f".{path.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return
    if read_owner(grave) != judged:  # someone else took it over first: restore their lease
        with contextlib.suppress(FileExistsError):
            os.link(grave, path)
    grave.unlink(missing_ok=True)


def acquire(path: Path, owner: dict[str, Any]) -> dict[str, Any] | None:
    """Take the lease at ``path`` for ``owner``; return None if taken, else the live holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        if _create(path, owner):
            _HEARTBEAT.add(path)
            return None
        holder = read_owner(path)
        if holder is None:
            continue  # released between our attempt and the read
        if not is_stale(path, holder):
            return holder
        _take_over(path, holder)
    return read_owner(path) or {}


def release(path: Path, owner: dict[str, Any]) -> None:
    """Drop the lease if it is still ``owner``'s (a lease taken over from us is left alone)."""
    _HEARTBEAT.remove(path)
    if read_owner(path) == owner:
        path.unlink(missing_ok=True)
