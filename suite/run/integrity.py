"""Hashes of what evaluation writes, so that damage is found before a file is used and only the damaged part
is computed again.

- Each grid point's folder ``evaluation/<key>/`` ends with ``hashes.json`` (written last): the sha256 of its
  ``row.parquet``, ``scores.parquet`` and ``features-*.npy``. A point whose files differ from it, or that has
  none, is not finished: evaluation computes it again.
- The run's tables (``metrics``, ``scores``, ``costs``, ``comparisons``) are recorded in
  ``evaluation/tables.json`` when they are written, with the keys of the grid points they were read from.
  A recorded table or point that is missing or differs is damaged: ``suite check`` lists it, the evaluation
  is not "done", and ``suite sweep`` and ``suite report`` compute it again. Point folders of earlier
  evaluation settings (other keys) are left alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from suite.core.files import atomic_write_text

HASHES = "hashes.json"
TABLES = "tables.json"


def file_sha256(path: Path) -> str | None:
    """The file's sha256 (read in 1 MiB blocks), or None if it cannot be read."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _read(path: Path) -> dict[str, str] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and all(isinstance(value, str) for value in data.values()) else None


def seal_point(folder: Path, names: Iterable[str]) -> None:
    """Record the hashes of a finished grid point's files; written last, so it marks the point as finished."""
    atomic_write_text(folder / HASHES, json.dumps({name: file_sha256(folder / name) for name in sorted(names)}))


def point_problem(folder: Path) -> str | None:
    """Why a grid point's folder cannot be used as it is (None: it is whole)."""
    recorded = _read(folder / HASHES)
    if recorded is None:
        return "unfinished (no readable hashes.json)"
    for name, expected in recorded.items():
        actual = file_sha256(folder / name)
        if actual is None:
            return f"{name} is missing"
        if actual != expected:
            return f"{name} is damaged (its sha256 differs from hashes.json)"
    return None


def _record(run: Path) -> dict:
    try:
        data = json.loads((run / "evaluation" / TABLES).read_text())
    except (OSError, ValueError):
        return {"tables": {}, "points": []}
    if not isinstance(data, dict):
        return {"tables": {}, "points": []}
    return {"tables": dict(data.get("tables") or {}), "points": list(data.get("points") or [])}


def record_tables(run: Path, names: Iterable[str], points: Iterable[str] | None = None) -> None:
    """Add the run tables ``names`` (paths relative to the run folder) as they are now to ``evaluation/tables.json``;
    ``points``: the grid point folders (keys) the run's current evaluation reads."""
    recorded = _record(run)
    recorded["tables"] |= {name: file_sha256(run / name) for name in names if (run / name).is_file()}
    if points is not None:
        recorded["points"] = sorted(points)
    recorded["tables"] = dict(sorted(recorded["tables"].items()))
    atomic_write_text(run / "evaluation" / TABLES, json.dumps(recorded, indent=1))


def damaged_tables(run: Path) -> list[str]:
    """Recorded run tables that are missing or differ from their recorded hash (and, for runs evaluated before
    tables were recorded, a table whose .csv is there without its .parquet)."""
    recorded = _record(run)["tables"]
    damaged = [name for name, expected in recorded.items() if file_sha256(run / name) != expected]
    damaged += [
        f"{stem}.parquet"
        for stem in ("metrics", "comparisons", "costs")
        if (run / f"{stem}.csv").is_file() and not (run / f"{stem}.parquet").is_file()
    ]
    return sorted(set(damaged))


def damaged_points(run: Path) -> dict[str, str]:
    """Each grid point folder the run's current evaluation reads (as recorded in ``evaluation/tables.json``) that
    cannot be used as it is, with the reason. Folders of earlier evaluation settings are not judged."""
    problems = {}
    for key in _record(run)["points"]:
        problem = point_problem(run / "evaluation" / key)
        if problem is not None:
            problems[key] = problem
    return problems
