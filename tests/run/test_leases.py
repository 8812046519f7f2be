"""Leases: the files through which processes that share only a filesystem agree who makes a work item."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from suite.run import leases
from suite.run.resume import has_started


def test_a_lease_is_exclusive_and_released_only_by_its_owner(tmp_path):
    path = tmp_path / "x.lease"
    first, second = leases.owner_record(rank=0), leases.owner_record(rank=1)
    assert leases.acquire(path, first) is None
    assert leases.acquire(path, second) == first  # a live process on this host holds it
    leases.release(path, second)
    assert path.exists()
    leases.release(path, first)
    assert not path.exists()


def test_a_dead_processs_lease_is_taken_over(tmp_path):
    path = tmp_path / "x.lease"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "token": "old"}))
    mine = leases.owner_record()
    assert leases.acquire(path, mine) is None
    assert leases.read_owner(path) == mine


def test_a_lease_from_another_host_is_stale_once_its_heartbeat_stops(tmp_path, monkeypatch):
    path = tmp_path / "x.lease"
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "far"}))
    assert leases.acquire(path, leases.owner_record()) is not None  # fresh: its owner may be working
    monkeypatch.setenv("SUITE_LEASE_STALE_S", "60")
    old = time.time() - 120
    os.utime(path, (old, old))
    assert leases.acquire(path, leases.owner_record()) is None


def test_a_lease_of_an_earlier_version_still_marks_a_folder_as_started(tmp_path):
    """Run folders written before leases were called leases hold items/<id>.claim while an item is made."""
    from_before = tmp_path / "run"
    (from_before / "items").mkdir(parents=True)
    assert not has_started(from_before)
    (from_before / "items" / "0123456789abcdef.claim").write_text("{}")
    assert has_started(from_before)
