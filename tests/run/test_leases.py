"""Leases: the files through which processes that share only a filesystem agree who makes a work item."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

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


def test_a_lease_whose_pid_lives_on_is_stale_once_its_heartbeat_stops(tmp_path):
    """pid 1 always lives: a two-day-old lease naming it was held by an earlier process with that pid."""
    path = tmp_path / "x.lease"
    path.write_text(json.dumps({"host": os.uname().nodename, "pid": 1, "token": "old"}))
    assert leases.acquire(path, leases.owner_record()) is not None  # fresh: it may be working
    two_days_ago = time.time() - 2 * 86400
    os.utime(path, (two_days_ago, two_days_ago))
    mine = leases.owner_record()
    assert leases.acquire(path, mine) is None
    assert leases.read_owner(path) == mine


def test_a_reused_pid_is_told_apart_by_its_start_time(tmp_path):
    path = tmp_path / "x.lease"
    me = leases.owner_record()
    if "started" not in me:
        pytest.skip("no /proc: only the heartbeat's age tells (the test above)")
    path.write_text(json.dumps({**me, "started": me["started"] - 1, "token": "earlier"}))
    assert leases.acquire(path, leases.owner_record()) is None
