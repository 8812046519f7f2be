"""Judging rules registered before their data: the committed registry ``experiments/registry.yaml``.

A claim file and the ablation file carry their judging rules (``rules:``: the judge's ``method``, its
thresholds, margins, alpha and Holm families). ``suite claims --register`` / ``suite ablation --register``
append each file's rules, their hash and the date to the registry; nothing is ever removed from it.

- Measuring refuses a file whose rules differ from their latest registration.
- Re-registering changed rules needs a reason, which the report prints beside the verdict.
- Every measurement records when it was made and the hash of the rules it was made under. A report judges
  the data under the rules in force when they were measured (the latest registration strictly before the
  measurement): that verdict is confirmatory. Every rule registered after the data is judged too and shown
  as exploratory, "rule changed after data: <reason>".

The rules are judged by code: ``method`` names one judge implementation (``guidance/v3``), and a judge keeps
every method a registration still names, so an old rule can still judge its data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from suite.core.errors import UserError
from suite.core.files import atomic_write_text

REGISTRY_NAME = "registry.yaml"
HEADER = """\
# Judging rules registered before their data (suite claims --register, suite ablation --register).
# Append-only: a changed rule is a new entry with its reason. Each entry keeps the rules it registered, so
# data can be judged under the rules in force when they were measured; later rules are shown as exploratory.
"""


def utc_now() -> str:
    """ISO 8601 UTC to the microsecond: a registration and the measurement right after it stay ordered."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def rules_hash(rules: dict[str, Any]) -> str:
    """sha256 of the rules as canonical JSON (sorted keys, no spaces): the same rules give the same hash."""
    canonical = json.dumps(rules, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Registration:
    """One registered version of a file's rules."""

    key: str  # "claims/04-guidance", "ablation/ablation"
    hash: str
    registered: str  # ISO 8601 UTC
    rules: dict[str, Any]
    reason: str = ""  # why the rules changed; empty for a first registration
    after_data: bool = False  # registered while data measured under earlier rules existed
    source: str = ""  # where an entry reconstructed from history comes from (a commit), else empty


@dataclass(frozen=True)
class Measured:
    """When data were measured, and under which rules (written beside the data)."""

    at: str
    rules_hash: str


def registry_path(experiments: Path) -> Path:
    return experiments / REGISTRY_NAME


def read_registry(path: Path) -> list[Registration]:
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return [Registration(**entry) for entry in data.get("entries", [])]
    except (yaml.YAMLError, TypeError, AttributeError) as error:
        raise UserError(f"{path}: not a rules registry ({type(error).__name__})") from None


def write_registry(path: Path, entries: list[Registration]) -> None:
    body = yaml.safe_dump({"entries": [asdict(entry) for entry in entries]}, sort_keys=False, allow_unicode=True)
    atomic_write_text(path, HEADER + body)


def history(entries: list[Registration], key: str) -> list[Registration]:
    """A file's registrations, oldest first."""
    return sorted((entry for entry in entries if entry.key == key), key=lambda entry: entry.registered)


def register(
    path: Path, key: str, rules: dict[str, Any], reason: str = "", data_exist: bool = False, now: str | None = None
) -> Registration | None:
    """Append ``rules`` for ``key`` unless they are its latest registration; returns the new entry (None: unchanged).

    A change needs a ``reason``; ``data_exist`` (data measured under earlier rules exist) marks it ``after_data``.
    """
    entries = read_registry(path)
    earlier = history(entries, key)
    digest = rules_hash(rules)
    if earlier and earlier[-1].hash == digest:
        return None
    if earlier and not reason.strip():
        raise UserError(
            f"{key}: its rules differ from their registration of {earlier[-1].registered}; "
            "re-register with the reason: --register --reason '...'"
        )
    entry = Registration(
        key=key,
        hash=digest,
        registered=now or utc_now(),
        rules=json.loads(json.dumps(rules, default=str)),
        reason=reason.strip(),
        after_data=bool(earlier) and data_exist,
    )
    write_registry(path, [*entries, entry])
    return entry


def require_registered(path: Path, key: str, rules: dict[str, Any]) -> Registration:
    """The registration ``rules`` are measured under; one-line UserError if unregistered or changed since."""
    earlier = history(read_registry(path), key)
    if not earlier:
        raise UserError(f"{key}: its rules are not registered; register them before measuring: --register")
    if earlier[-1].hash != rules_hash(rules):
        raise UserError(
            f"{key}: its rules differ from their registration of {earlier[-1].registered} ({path}); "
            "measure under the registered rules, or re-register with the reason: --register --reason '...'"
        )
    return earlier[-1]


@dataclass(frozen=True)
class Judging:
    """The rules that judge one measurement: the confirmatory one, and those registered after the data."""

    confirmatory: Registration | None  # None: no rule was registered before the data
    exploratory: tuple[Registration, ...]


def rules_for(entries: list[Registration], key: str, measured: Measured) -> Judging:
    """The latest registration strictly before the measurement is confirmatory; every later one is exploratory.

    Data measured before any registration have no confirmatory rule: every rule is then exploratory.
    """
    earlier = history(entries, key)
    before = [entry for entry in earlier if _instant(entry.registered) < _instant(measured.at)]
    after = tuple(entry for entry in earlier if _instant(entry.registered) >= _instant(measured.at))
    return Judging(before[-1] if before else None, after)


def _instant(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def read_measured(folder: Path) -> Measured | None:
    path = folder / "measured.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return Measured(data["at"], data["rules_hash"])


def write_measured(folder: Path, registration: Registration, at: str | None = None) -> None:
    """Record beside the data when they were measured and under which registered rules."""
    text = json.dumps({"at": at or utc_now(), "rules_hash": registration.hash}, indent=2) + "\n"
    atomic_write_text(folder / "measured.json", text)


def exploratory_label(entry: Registration) -> str:
    """How the report marks a verdict under a rule registered after its data."""
    return f"exploratory: rule changed after data ({entry.registered[:10]}): {entry.reason or 'no reason given'}"
