"""Experiment trackers: a toy sweep with --report-to tensorboard --report-to mlflow logs every grid point, and the
values read back through each library's own reader equal the run's tables; a resumed or re-evaluated run logs to
the same tracker runs; a missing library is one line before the first image."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from suite.analysis import tracking
from suite.analysis.tracking import log_run, point_name
from suite.cli import main

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("fid", "fid_ci95_low", "fid_ci95_high", "clip_score_mean", "seconds_per_image_median", "gflops_per_image")


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("tracked") / "toy-quick"
    argv = ["sweep", str(ROOT / "experiments" / "toy-quick.yaml"), "--out", str(run), "--quiet"]
    assert main([*argv, "--report-to", "tensorboard", "--report-to", "mlflow"]) == 0
    return run, argv


def store(run: Path) -> str:
    return f"sqlite:///{run.resolve() / 'tracking' / 'mlflow.db'}"


def mlflow_runs(run: Path) -> pd.DataFrame:
    """The run's MLflow runs through mlflow.search_runs; the global tracking URI (and the MLFLOW_TRACKING_URI it
    sets) is put back after, so it does not leak into the suite's own logging in later tests."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(store(run))
    try:
        experiment = mlflow.get_experiment_by_name("toy-quick")
        return mlflow.search_runs(experiment_ids=[experiment.experiment_id])
    finally:
        mlflow.set_tracking_uri(before)  # None unsets the variable again


def tensorboard_point(run: Path, name: str) -> EventAccumulator:
    events = EventAccumulator(str(run / "tracking" / "tensorboard" / name), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_every_grid_point_reads_back_from_mlflow_and_tensorboard(tracked_run):
    run, _ = tracked_run
    metrics = pd.read_parquet(run / "metrics.parquet")
    runs = mlflow_runs(run)
    children = runs[runs["tags.mlflow.parentRunId"].notna()].set_index("tags.suite.grid_point")
    assert sorted(children.index) == sorted(point_name(row) for _, row in metrics.iterrows())
    for _, row in metrics.iterrows():
        name = point_name(row)
        logged = children.loc[name]
        events = tensorboard_point(run, name)
        for column in CHECKED:
            assert logged[f"metrics.{column}"] == pytest.approx(row[column], rel=1e-12), (name, column)
            (scalar,) = events.Scalars(column)
            assert (scalar.step, scalar.value) == (0, pytest.approx(row[column], rel=1e-6)), (name, column)
        for column in ("preset", "sampler", "num_inference_steps", "guidance_scale"):
            assert logged[f"params.{column}"] == str(row[column]), (name, column)
        assert logged["tags.measured_by.fid_interval"] == row["fid_interval"]  # a tag: a re-evaluation may change it
        assert logged["metrics.fid_rank_deficient"] == float(row["fid_rank_deficient"])
        assert logged["status"] == "FINISHED"
        assert events.Tags()["images"] == ["images"]
        client = mlflow.MlflowClient(tracking_uri=store(run))
        assert [item.path for item in client.list_artifacts(logged["run_id"], "images")] == ["images/step0.png"]
    (parent,) = runs[runs["tags.mlflow.parentRunId"].isna()]["run_id"]
    client = mlflow.MlflowClient(tracking_uri=store(run))
    artifacts = {item.path for item in client.list_artifacts(parent, "report")}
    assert {"report/index.html", "report/report.md"} <= artifacts
    (table,) = [item.path for item in client.list_artifacts(parent, "comparisons") if item.path.endswith(".csv")]
    downloaded = mlflow.artifacts.download_artifacts(run_id=parent, artifact_path=table, tracking_uri=store(run))
    logged_comparisons = pd.read_csv(downloaded)
    assert len(logged_comparisons) == len(pd.read_parquet(run / "comparisons.parquet"))
    text = tensorboard_point(run, "comparisons").Tensors("comparisons/text_summary")
    assert len(text) == 1


def test_a_resumed_or_reevaluated_run_logs_to_the_same_tracker_runs(tracked_run, capsys):
    run, argv = tracked_run
    before = mlflow_runs(run)
    ledger = json.loads((run / "tracking" / "ledger.json").read_text())
    assert main(argv) == 0  # the finished run again, trackers from the ledger: nothing new to send
    assert "0 items logged to mlflow" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--recompute", "--quiet"]) == 0  # the same numbers: nothing sent
    assert "0 items logged to tensorboard" in capsys.readouterr().out
    # a grid point whose numbers changed since they were logged goes to its own runs at the next step
    name = sorted(ledger["mlflow"]["runs"])[0]
    for tracker in ("mlflow", "tensorboard"):
        ledger[tracker]["points"][name]["hash"] = "changed"
    (run / "tracking" / "ledger.json").write_text(json.dumps(ledger))
    assert log_run(run, ()) == {"tensorboard": 1, "mlflow": 1}
    after = mlflow_runs(run)
    assert sorted(after["run_id"]) == sorted(before["run_id"])
    history = mlflow.MlflowClient(tracking_uri=store(run)).get_metric_history(ledger["mlflow"]["runs"][name], "fid")
    assert [metric.step for metric in history] == [0, 1] and history[0].value == history[1].value
    assert [scalar.step for scalar in tensorboard_point(run, name).Scalars("fid")] == [0, 1]


def test_a_missing_tracker_library_is_one_line_before_the_first_image(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        tracking.importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    out = tmp_path / "run"
    code = main(["sweep", str(ROOT / "experiments" / "toy-quick.yaml"), "--out", str(out), "--report-to", "mlflow"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert "mlflow" in error and "pip install 'diffusion-suite[tracking]'" in error
    assert not out.exists()


def test_the_sweep_file_names_trackers_without_changing_the_run(tmp_path, tracked_run, capsys):
    run, _ = tracked_run
    sweep = yaml.safe_load((ROOT / "experiments" / "toy-quick.yaml").read_text())
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("tracking"))
    path = tmp_path / "toy-quick.yaml"
    path.write_text(yaml.safe_dump({**sweep, "tracking": ["tensorboard"]}))
    assert main(["sweep", str(path), "--out", str(copy), "--quiet"]) == 0  # the same config hash: resumes
    printed = capsys.readouterr().out
    assert "0 images generated" in printed and "items logged to tensorboard" in printed
    assert json.loads((copy / "tracking" / "ledger.json").read_text())["trackers"] == ["tensorboard"]
    path.write_text(yaml.safe_dump({**sweep, "tracking": ["neptune"]}))
    assert main(["sweep", str(path), "--out", str(tmp_path / "other")]) == 2
    assert "unknown trackers ['neptune']" in capsys.readouterr().err


def test_wandb_logs_offline_to_one_run_id_across_calls(tracked_run, monkeypatch):
    pytest.importorskip("wandb")  # not in the test extra (a 20 MB wheel); pip install 'diffusion-suite[wandb]'
    run, _ = tracked_run
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert log_run(run, ("wandb",))["wandb"] == 4  # two points, comparisons, report
    run_id = json.loads((run / "tracking" / "ledger.json").read_text())["wandb"]["id"]
    assert log_run(run, ("wandb",))["wandb"] == 0
    offline = sorted((run / "tracking" / "wandb").glob("offline-run-*"))
    assert offline and all(folder.name.endswith(run_id) for folder in offline)
    assert (offline[0] / f"run-{run_id}.wandb").stat().st_size > 0


def test_a_failing_tracker_is_one_line_and_leaves_the_run_complete(tracked_run, tmp_path, monkeypatch, capsys):
    """A tracker's own failure (a server, a locked store) after a finished evaluation: one line and exit 2, the run
    marked done (a rerun does not evaluate again), and the next call sends what was not sent."""
    run, _ = tracked_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("tracking", "evaluation.done"))

    def refuse(*args, **kwargs):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(tracking.MlflowTracker, "log_point", refuse)
    argv = [
        "sweep",
        str(ROOT / "experiments" / "toy-quick.yaml"),
        "--out",
        str(copy),
        "--quiet",
        "--report-to",
        "mlflow",
    ]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "logging to mlflow failed (RuntimeError: database is locked)" in error
    assert (copy / "evaluation.done").is_file()
    monkeypatch.undo()
    assert log_run(copy, ()) == {"mlflow": 4}  # remembered from the failed call: nothing was recorded as sent


def test_a_store_that_lost_the_runs_gets_everything_again(tracked_run, tmp_path):
    """The ledger is tied to the store it describes: a deleted MLflow database or TensorBoard folder is sent
    everything again, not an empty new run beside a ledger that says "sent"."""
    run, _ = tracked_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "tracking" / "mlflow.db").unlink()
    shutil.rmtree(copy / "tracking" / "tensorboard")
    sent = log_run(copy, ())
    assert sent["tensorboard"] == 4 and sent["mlflow"] == 4
    assert len(mlflow_runs(copy)) == 3  # a parent and the two grid points
