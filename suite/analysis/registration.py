"""Judging rules registered before their data: the committed registry ``experiments/registry.yaml``.

A claim file and the ablation file carry their judging rules (``rules:``: the judge's ``method``, its
thresholds, margins, alpha and Holm families). ``suite claims --register`` / ``suite ablation --register``
append each file's rules, their hash, the hash of its design (settings and sweeps: prompts, seeds, grid
points, reference) and the date to the registry; nothing is ever removed from it.

- Measuring refuses a file whose rules or design differ from their latest registration.
- Re-registering changed rules needs a reason, which the report prints beside the verdict.
- Every measurement records when it began and the hash of the rules it was made under, beside its data and,
  when it begins, in the registry (``measurements:``), so a later change of rules counts as "after data" even
  when the data folder was deleted to measure again. A resumed measurement keeps its first start (a marker in
  its run folder). A report judges
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
MISSING = object()
MARKER = "measurement-began.json"  # in a run folder: when the measurement it serves began, under which rules
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
    hash: str  # of the rules
    registered: str  # ISO 8601 UTC
    rules: dict[str, Any]
    reason: str = ""  # why the rules or the design changed; empty for a first registration
    after_data: bool = False  # registered while data measured under earlier rules existed
    source: str = ""  # where an entry reconstructed from history comes from (a commit), else empty
    design_hash: str = ""  # of the design (settings, sweeps); empty in entries reconstructed from history


@dataclass(frozen=True)
class Measured:
    """When data were measured, and under which rules (written beside the data)."""

    at: str
    rules_hash: str


@dataclass(frozen=True)
class Measurement:
    """A measurement's start, recorded in the registry: a file's data existed (or began to) from then on."""

    key: str
    at: str
    rules_hash: str
    source: str = ""  # where an entry reconstructed from history comes from, else empty


def registry_path(experiments: Path) -> Path:
    return experiments / REGISTRY_NAME


def _read(path: Path, section: str, kind: type) -> list:
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return [kind(**entry) for entry in data.get(section, [])]
    except (yaml.YAMLError, TypeError, AttributeError) as error:
        raise UserError(f"{path}: not a rules registry ({type(error).__name__})") from None


def read_registry(path: Path) -> list[Registration]:
    return _read(path, "entries", Registration)


def read_measurements(path: Path) -> list[Measurement]:
    return _read(path, "measurements", Measurement)


def write_registry(path: Path, entries: list[Registration], measurements: list[Measurement] | None = None) -> None:
    """Write the registry; ``measurements`` None keeps those the file holds."""
    measurements = read_measurements(path) if measurements is None else measurements
    data = {"entries": [asdict(entry) for entry in entries]}
    if measurements:
        data["measurements"] = [asdict(measurement) for measurement in measurements]
    atomic_write_text(path, HEADER + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def record_measurement(path: Path, key: str, registration: Registration, at: str) -> None:
    """Append a measurement's start to the registry (before any data are written)."""
    measurements = [*read_measurements(path), Measurement(key, at, registration.hash)]
    write_registry(path, read_registry(path), measurements)


def begin_measurement(registry: Path, marker: Path, registration: Registration) -> str:
    """The measurement's start, after its checks and before any data. ``marker`` (a file in the run folder) keeps
    it, so a resumed measurement keeps the time its first part began under the same rules; a new start (no
    marker, or one made under other rules) is recorded in the registry."""
    if marker.is_file():
        kept = json.loads(marker.read_text(encoding="utf-8"))
        if kept.get("rules_hash") == registration.hash:
            return kept["at"]
    at = utc_now()
    record_measurement(registry, registration.key, registration, at)
    atomic_write_text(marker, json.dumps({"at": at, "rules_hash": registration.hash}, indent=2) + "\n")
    return at


def history(entries: list[Registration], key: str) -> list[Registration]:
    """A file's registrations, oldest first."""
    return sorted((entry for entry in entries if entry.key == key), key=lambda entry: _instant(entry.registered))


@dataclass(frozen=True)
class Candidate:
    """A file's rules and design as they read now, to register or to measure under."""

    key: str
    rules: dict[str, Any]
    design: dict[str, Any]
    data_exist: bool = False  # data measured under earlier registrations exist


def _matches(entry: Registration, candidate: Candidate) -> bool:
    return entry.hash == rules_hash(candidate.rules) and entry.design_hash == rules_hash(candidate.design)


def register_all(
    path: Path, candidates: list[Candidate], reason: str = "", now: str | None = None
) -> list[Registration]:
    """Append every candidate whose rules or design differ from its latest registration; returns the new entries.

    A change needs a ``reason``. Every candidate is checked before anything is written, so a refusal leaves the
    registry as it was. An entry is ``after_data`` when the file was measured before (a measurement in the
    registry) or ``data_exist`` says its data are there.
    """
    entries = read_registry(path)
    measured = {measurement.key for measurement in read_measurements(path)}
    added = []
    for candidate in candidates:
        earlier = history(entries, candidate.key)
        if earlier and _matches(earlier[-1], candidate):
            continue
        if earlier and not reason.strip():
            what = "rules" if earlier[-1].hash != rules_hash(candidate.rules) else "design (settings, sweeps)"
            raise UserError(
                f"{candidate.key}: its {what} differ from their registration of {earlier[-1].registered}; "
                "re-register with the reason: --register --reason '...'"
            )
        added.append(
            Registration(
                key=candidate.key,
                hash=rules_hash(candidate.rules),
                registered=now or utc_now(),
                rules=json.loads(json.dumps(candidate.rules, default=str)),
                reason=reason.strip(),
                after_data=bool(earlier) and (candidate.data_exist or candidate.key in measured),
                design_hash=rules_hash(candidate.design),
            )
        )
    if added:
        write_registry(path, [*entries, *added])
    return added


def register(
    path: Path,
    key: str,
    rules: dict[str, Any],
    reason: str = "",
    data_exist: bool = False,
    now: str | None = None,
    design: dict[str, Any] | None = None,
) -> Registration | None:
    """Register one file (``register_all`` of one); None when its rules and design are registered already."""
    added = register_all(path, [Candidate(key, rules, design or {}, data_exist)], reason, now)
    return added[0] if added else None


def require_registered(path: Path, candidate: Candidate) -> Registration:
    """The registration a measurement is made under; one-line UserError if unregistered or changed since."""
    earlier = history(read_registry(path), candidate.key)
    if not earlier:
        raise UserError(f"{candidate.key}: its rules are not registered; register them before measuring: --register")
    if not _matches(earlier[-1], candidate):
        raise UserError(
            f"{candidate.key}: its rules or design differ from their registration of {earlier[-1].registered} "
            f"({path}); measure under the registered ones, or re-register with the reason: --register --reason '...'"
        )
    return earlier[-1]


@dataclass(frozen=True)
class Judging:
    """The rules that judge one measurement: the confirmatory one, and those registered after the data."""

    confirmatory: Registration | None  # None: no rule was registered before the data
    exploratory: tuple[Registration, ...]


def rules_for(entries: list[Registration], key: str, measured: Measured) -> Judging:
    """The latest registration strictly before the measurement began, with the rules it was made under, is
    confirmatory; every registration after it with other rules is exploratory (one that changed only the design
    judges alike and is not repeated).

    Data measured before any registration have no confirmatory rule: every rule is then exploratory.
    """
    earlier = history(entries, key)
    before = [entry for entry in earlier if _instant(entry.registered) < _instant(measured.at)]
    if measured.rules_hash:
        before = [entry for entry in before if entry.hash == measured.rules_hash]
    confirmatory = before[-1] if before else None
    after, seen = [], {confirmatory.hash} if confirmatory else set()
    for entry in earlier:
        if _instant(entry.registered) >= _instant(measured.at) and entry.hash not in seen:
            after.append(entry)
            seen.add(entry.hash)
    return Judging(confirmatory, tuple(after))


def _instant(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def read_measured(folder: Path) -> Measured | None:
    path = folder / "measured.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return Measured(data["at"], data["rules_hash"])


def write_measured(folder: Path, registration: Registration, at: str) -> None:
    """Record beside the data when their measurement began (``at``, taken when the rules were checked) and under
    which registered rules."""
    text = json.dumps({"at": at, "rules_hash": registration.hash}, indent=2) + "\n"
    atomic_write_text(folder / "measured.json", text)


def rule_origin(entries: list[Registration], key: str, registration: Registration) -> Registration:
    """The first registration of ``registration``'s rules (method, thresholds, margins, alpha): where they were
    written. The same hash counts; so does an entry from before designs were hashed apart (no ``design_hash``)
    whose rules held the same values beside design keys that have since moved to the design. A threshold
    changed, added or dropped under the same method name is a new origin."""
    rules, earlier = registration.rules, history(entries, key)
    design_moved = [
        entry
        for entry in earlier
        if not entry.design_hash and all(entry.rules.get(name, MISSING) == value for name, value in rules.items())
    ]  # registered before the design had its own hash: its rules may hold design keys beside the rule's
    same = [entry for entry in earlier if entry.hash == registration.hash]
    return min([*design_moved, *same], key=lambda entry: _instant(entry.registered))


def changed_after_data_label(entries: list[Registration], key: str, registration: Registration) -> str:
    """How a confirmatory rule that was itself written after earlier data had been seen stays marked ("" when
    it was not): a rule changed after data is marked as such even when it judges data measured after it."""
    origin = rule_origin(entries, key, registration)
    if not origin.after_data:
        return ""
    return f"rule changed after earlier data ({origin.registered[:10]}): {origin.reason or 'no reason given'}"


def exploratory_label(entry: Registration) -> str:
    """How the report marks a verdict under a rule registered after its data."""
    return f"exploratory: rule changed after data ({entry.registered[:10]}): {entry.reason or 'no reason given'}"


def measurement_lines(data: Path, prefix: str) -> list[str]:
    """Under which registered rules the data in ``data`` were measured, read from the registry copied beside them
    (keys starting with ``prefix``): the rule in force is confirmatory, marked when it was itself written after
    earlier data; rules registered later are named. Empty when the data carry no measurement record."""
    measured = read_measured(data)
    if measured is None:
        return []
    if not (data / REGISTRY_NAME).is_file():
        return [f"Measured {measured.at[:10]} under rules {measured.rules_hash}; no registry lies beside the data."]
    entries = read_registry(data / REGISTRY_NAME)
    keys = sorted(
        {entry.key for entry in entries if entry.hash == measured.rules_hash and entry.key.startswith(prefix)}
    )
    if not keys:
        return [
            f"Measured {measured.at[:10]} under rules {measured.rules_hash}, which the registry beside the data does "
            "not hold: no rule is confirmatory."
        ]
    judging = rules_for(entries, keys[0], measured)
    if judging.confirmatory is None:
        return [f"Measured {measured.at[:10]} before its rules were registered: every reading is exploratory."]
    rule = judging.confirmatory
    label = changed_after_data_label(entries, keys[0], rule)
    lines = [
        f"Measured {measured.at[:10]} under the rules and design registered before it ({rule.rules.get('method')}, "
        f"{rule.hash}, registered {rule.registered[:10]}; the registry copied beside the data): its rules (judge, "
        "thresholds, Holm families) and design were fixed before these data." + (f" Marked: {label}." if label else "")
    ]
    if judging.exploratory:
        later = "; ".join(
            f"{entry.rules.get('method')} ({entry.registered[:10]}): {entry.reason or 'no reason given'}"
            for entry in judging.exploratory
        )
        lines.append(f"Rules registered after these data, not applied to them: {later}.")
    return lines
