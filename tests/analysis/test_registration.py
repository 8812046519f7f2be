"""Rules registered before data: the registry refuses what changed without a reason, and judges by measurement date."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml

import suite.analysis.claims as claims_package
from suite.analysis.claims import ClaimsOptions
from suite.analysis.claims import measure as claims_measure
from suite.analysis.claims.claim_file import candidate, load_claims
from suite.analysis.claims.experiments import EXPERIMENTS
from suite.analysis.registration import (
    MARKER,
    Candidate,
    Measured,
    begin_measurement,
    changed_after_data_label,
    read_measured,
    read_measurements,
    read_registry,
    register,
    register_all,
    require_registered,
    rules_for,
    rules_hash,
    write_measured,
    write_registry,
)
from suite.cli import main
from suite.core.errors import UserError

REPOSITORY = Path(__file__).resolve().parents[2]


def test_the_hash_is_of_the_rules_not_of_their_spelling():
    assert rules_hash({"a": 1, "b": [1, 2]}) == rules_hash({"b": [1, 2], "a": 1})
    assert rules_hash({"a": 1}) != rules_hash({"a": 2})


def test_a_change_needs_a_reason_and_is_marked_after_data(tmp_path):
    path = tmp_path / "registry.yaml"
    first = register(path, "claims/x", {"method": "m/v1", "alpha": 0.05}, now="2026-01-01T00:00:00Z")
    assert first is not None and not first.after_data
    assert register(path, "claims/x", {"alpha": 0.05, "method": "m/v1"}) is None  # unchanged: nothing appended
    with pytest.raises(UserError, match="re-register with the reason"):
        register(path, "claims/x", {"method": "m/v2", "alpha": 0.05})
    second = register(path, "claims/x", {"method": "m/v2", "alpha": 0.05}, reason="why", data_exist=True)
    assert second.after_data and second.reason == "why"
    entries = read_registry(path)
    assert [entry.rules["method"] for entry in entries] == ["m/v1", "m/v2"]
    assert require_registered(path, Candidate("claims/x", {"method": "m/v2", "alpha": 0.05}, {})) == second
    with pytest.raises(UserError, match="differ from their registration"):
        require_registered(path, Candidate("claims/x", {"method": "m/v1", "alpha": 0.05}, {}))
    with pytest.raises(UserError, match="differ from their registration"):  # the design is registered too
        require_registered(path, Candidate("claims/x", {"method": "m/v2", "alpha": 0.05}, {"prompts": 540}))
    with pytest.raises(UserError, match="not registered"):
        require_registered(path, Candidate("claims/y", {"method": "m/v1"}, {}))


def test_a_refused_registration_writes_nothing(tmp_path):
    path = tmp_path / "registry.yaml"
    register_all(path, [Candidate("a", {"method": "v1"}, {}), Candidate("b", {"method": "v1"}, {})])
    before = path.read_bytes()
    with pytest.raises(UserError, match="b: its rules differ"):  # "a" is new, "b" changed without a reason
        register_all(path, [Candidate("c", {"method": "v1"}, {}), Candidate("b", {"method": "v2"}, {})])
    assert path.read_bytes() == before


def test_data_are_judged_by_the_rule_in_force_when_measured(tmp_path):
    path = tmp_path / "registry.yaml"
    register(path, "k", {"method": "v1"}, now="2026-01-01T00:00:00Z")
    register(path, "k", {"method": "v2"}, reason="r", now="2026-01-03T00:00:00Z")
    register(path, "k", {"method": "v2"}, reason="design only", now="2026-01-05T00:00:00Z", design={"n": 2})
    entries = read_registry(path)
    # registered during a measurement under v1: v1 stays confirmatory, and v2 is shown once (the design-only
    # entry judges alike)
    during = rules_for(entries, "k", Measured("2026-01-02T00:00:00Z", rules_hash({"method": "v1"})))
    assert during.confirmatory.rules["method"] == "v1"
    assert [entry.rules["method"] for entry in during.exploratory] == ["v2"]
    between = rules_for(entries, "k", Measured("2026-01-02T00:00:00Z", ""))
    assert between.confirmatory.rules["method"] == "v1"
    assert [entry.rules["method"] for entry in between.exploratory] == ["v2"]
    at_second = rules_for(entries, "k", Measured("2026-01-03T00:00:00Z", ""))  # the same instant is not "before"
    assert at_second.confirmatory.rules["method"] == "v1"
    later = rules_for(entries, "k", Measured("2026-01-04T00:00:00Z", ""))
    assert later.confirmatory.rules["method"] == "v2" and later.exploratory == ()
    before_any = rules_for(entries, "k", Measured("2025-12-31T00:00:00Z", ""))
    assert before_any.confirmatory is None and len(before_any.exploratory) == 2
    stamps = [entry.registered for entry in read_registry(path)]
    register(path, "k", {"method": "v3"}, reason="r", now="2026-01-05T00:00:00.5Z")  # sorted by time, not text
    assert (
        rules_for(read_registry(path), "k", Measured("2026-01-06T00:00:00Z", "")).confirmatory.rules["method"] == "v3"
    )
    assert stamps == sorted(stamps)


def test_every_shipped_claim_is_registered_as_it_reads_today():
    configs = load_claims(REPOSITORY / "experiments" / "claims")
    registry = REPOSITORY / "experiments" / "registry.yaml"
    for config in configs:
        require_registered(registry, candidate(config))


def test_measuring_under_changed_rules_refuses_before_anything_runs(tmp_path):
    claims = tmp_path / "experiments" / "claims"
    claims.mkdir(parents=True)
    shutil.copy(REPOSITORY / "experiments" / "claims" / "05-same-seed-same-image.yaml", claims)
    out = tmp_path / "out"
    assert main(["claims", "--claims-dir", str(claims), "--out", str(out)]) == 2  # not registered
    assert not out.exists()
    assert main(["claims", "--claims-dir", str(claims), "--register"]) == 0
    path = claims / "05-same-seed-same-image.yaml"
    data = yaml.safe_load(path.read_text())
    data["rules"]["batch_size_max_pixel_difference"] = 3
    path.write_text(yaml.safe_dump(data))
    assert main(["claims", "--claims-dir", str(claims), "--out", str(out)]) == 2  # changed since registration
    assert not out.exists()
    assert main(["claims", "--claims-dir", str(claims), "--register"]) == 2  # a change needs its reason
    assert main(["claims", "--claims-dir", str(claims), "--register", "--reason", "looser"]) == 0
    entries = read_registry(tmp_path / "experiments" / "registry.yaml")
    assert [entry.reason for entry in entries] == ["", "looser"]


def test_the_measurement_record_names_the_rules(tmp_path):
    path = tmp_path / "registry.yaml"
    entry = register(path, "k", {"method": "v1"})
    write_measured(tmp_path, entry, at="2026-02-01T00:00:00Z")
    assert yaml.safe_load((tmp_path / "measured.json").read_text()) == {
        "at": "2026-02-01T00:00:00Z",
        "rules_hash": entry.hash,
    }


def test_a_rule_written_after_earlier_data_stays_marked_when_it_judges_later_data(tmp_path):
    path = tmp_path / "registry.yaml"
    register(path, "k", {"method": "v1"}, now="2026-01-01T00:00:00Z")
    register(path, "k", {"method": "v2"}, reason="can fail", data_exist=True, now="2026-01-03T00:00:00Z")
    register(path, "k", {"method": "v2"}, "design", True, "2026-01-04T00:00:00Z", design={"prompts": 540})
    entries = read_registry(path)
    later = rules_for(entries, "k", Measured("2026-01-05T00:00:00Z", ""))
    assert later.confirmatory.rules["method"] == "v2"  # registered before these data: confirmatory ...
    label = changed_after_data_label(entries, "k", later.confirmatory)
    assert label == "rule changed after earlier data (2026-01-03): can fail"  # ... and still marked, with its reason
    first = rules_for(entries, "k", Measured("2026-01-02T00:00:00Z", ""))
    assert changed_after_data_label(entries, "k", first.confirmatory) == ""  # v1 was written before any data


def test_a_threshold_changed_under_the_same_method_name_is_marked_from_its_own_registration(tmp_path):
    path = tmp_path / "registry.yaml"
    register(path, "k", {"method": "v2", "margin": 0.1}, now="2026-01-01T00:00:00Z")
    register(path, "k", {"method": "v2", "margin": 0.2}, reason="looser", data_exist=True, now="2026-01-03T00:00:00Z")
    entries = read_registry(path)
    later = rules_for(entries, "k", Measured("2026-01-05T00:00:00Z", entries[-1].hash))
    label = changed_after_data_label(entries, "k", later.confirmatory)
    assert label == "rule changed after earlier data (2026-01-03): looser"


def test_moving_design_keys_out_of_the_rules_keeps_the_rules_origin(tmp_path):
    path = tmp_path / "registry.yaml"
    register(path, "k", {"method": "v1", "grid": [3]}, now="2025-12-01T00:00:00Z")
    register(path, "k", {"method": "v2", "grid": [3]}, reason="first", data_exist=True, now="2026-01-01T00:00:00Z")
    # entries from before designs were hashed apart carry no design hash
    write_registry(path, [replace(entry, design_hash="") for entry in read_registry(path)])
    register(path, "k", {"method": "v2"}, "design apart", True, "2026-01-02T00:00:00Z", design={"grid": [3]})
    entries = read_registry(path)
    later = rules_for(entries, "k", Measured("2026-01-05T00:00:00Z", entries[-1].hash))
    assert (
        changed_after_data_label(entries, "k", later.confirmatory)
        == "rule changed after earlier data (2026-01-01): first"
    )


def test_a_measurement_is_recorded_in_the_registry_so_deleting_its_data_keeps_a_later_rule_after_data(
    tmp_path, monkeypatch
):
    claims = tmp_path / "experiments" / "claims"
    claims.mkdir(parents=True)
    shutil.copy(REPOSITORY / "experiments" / "claims" / "03-steps.yaml", claims)
    registry, out = tmp_path / "experiments" / "registry.yaml", tmp_path / "out"
    register_cli = ["claims", "--claims-dir", str(claims), "--out", str(out), "--register"]
    assert main(register_cli) == 0
    # the sweeps and tables stubbed: what is tested is the record made when a measurement begins
    monkeypatch.setattr(claims_package, "run_claim_sweeps", lambda config, options: {})
    steps = EXPERIMENTS.get("steps")
    monkeypatch.setitem(
        EXPERIMENTS._entries, "steps", replace(steps, measure=lambda *args: {"t": pd.DataFrame({"a": [1]})})
    )
    options = ClaimsOptions(claims, out, "cpu", ("03-steps",), False)
    folder = claims_measure(load_claims(claims)[0], options, log=lambda line: None)
    [measurement] = read_measurements(registry)
    assert measurement.key == "claims/03-steps" and measurement.at == read_measured(folder).at
    shutil.rmtree(folder)  # deleted to measure again: the registry still knows data existed
    path = claims / "03-steps.yaml"
    path.write_text(path.read_text().replace("clip: 5.0", "clip: 4.0"))
    assert main([*register_cli, "--reason", "tighter"]) == 0
    assert read_registry(registry)[-1].after_data
    assert read_measurements(registry) == [measurement]  # registering keeps the measurements
    # the control: with no measurement recorded and no data, the same change is not after data
    registry.write_text(registry.read_text().split("measurements:")[0])
    path.write_text(path.read_text().replace("clip: 4.0", "clip: 3.0"))
    assert main([*register_cli, "--reason", "tighter still"]) == 0
    assert not read_registry(registry)[-1].after_data


def test_a_resumed_measurement_keeps_its_first_start_under_the_same_rules(tmp_path):
    registry, marker = tmp_path / "registry.yaml", tmp_path / "runs" / "claim" / MARKER
    first = register(registry, "k", {"method": "v1"})
    began = begin_measurement(registry, marker, first)
    assert begin_measurement(registry, marker, first) == began  # resumed: the same start, recorded once
    assert [m.at for m in read_measurements(registry)] == [began]
    second = register(registry, "k", {"method": "v2"}, reason="new")
    again = begin_measurement(registry, marker, second)  # under other rules: a new measurement
    assert again > began and [m.at for m in read_measurements(registry)] == [began, again]


def test_a_rule_key_dropped_under_the_same_method_name_is_a_new_origin(tmp_path):
    path = tmp_path / "registry.yaml"
    register(path, "k", {"method": "v2", "margin": 0.1, "floor": 0.01}, now="2026-01-01T00:00:00Z")
    register(path, "k", {"method": "v2", "margin": 0.1}, reason="no floor", data_exist=True, now="2026-01-03T00:00:00Z")
    entries = read_registry(path)
    later = rules_for(entries, "k", Measured("2026-01-05T00:00:00Z", entries[-1].hash))
    assert (
        changed_after_data_label(entries, "k", later.confirmatory)
        == "rule changed after earlier data (2026-01-03): no floor"
    )
