"""Log a run to experiment trackers (TensorBoard, MLflow, Weights & Biases) through each tracker's own API.

What is logged, per grid point: its settings as parameters, every number of its metrics row (with the interval
bounds, timing and FLOPs) as metrics, and a grid of its images; per run: the comparisons as a table and the report.

Local and offline by default, under the run folder: TensorBoard event files in ``tracking/tensorboard/<point>/``,
an MLflow SQLite store in ``tracking/mlflow.db`` with artifacts in ``tracking/mlflow-artifacts/`` (or the server in
``MLFLOW_TRACKING_URI``), W&B in offline mode in ``tracking/wandb/`` (``WANDB_MODE`` overrides; ``wandb sync``
uploads). ``tracking/ledger.json`` records which trackers the run logs to, their run ids and a hash of what each
has been sent, so logging again (a resumed sweep, ``suite evaluate`` or ``compare`` later) sends only what changed,
to the same tracker runs: a changed grid point is logged at the next step.

Each tracker's library is an optional extra, imported in its class's constructor: a command that logs nowhere does
not pay for importing it, and a missing one is reported by ``check_trackers`` before the first image.

Example:
    >>> check_trackers(("tensorboard", "mlflow"))  # one-line UserError if a library is not installed
    >>> log_run(Path("results/toy"), ("tensorboard", "mlflow"))
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from suite.analysis.compare import COMPARISONS
from suite.analysis.report import REPORT_DIR
from suite.analysis.report.grids import point_grid
from suite.core.errors import UserError
from suite.core.files import atomic_write_text
from suite.core.formatting import markdown_table
from suite.run.config import TRACKERS, content_hash
from suite.run.folder import GRID_COLUMNS, STAGE_SETTINGS, RunFolder, read_run

TRACKING_DIR = "tracking"
LEDGER = "ledger.json"
MODULES = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow", "sqlalchemy", "alembic"), "wandb": ("wandb",)}
INSTALL = "pip install 'diffusion-suite[tracking]'"  # tensorboard and mlflow; wandb: its own extra
SETTINGS_COLUMNS = ("backend", "batch_size", "device", "dtype")


def check_trackers(names: Iterable[str]) -> tuple[str, ...]:
    """The trackers named, deduplicated, each known and importable; else one clear line (before any image)."""
    names = tuple(dict.fromkeys(names))
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"unknown tracker {name!r}; known: {', '.join(TRACKERS)}")
        missing = [module for module in MODULES[name] if importlib.util.find_spec(module) is None]
        if missing:
            extra = "pip install 'diffusion-suite[wandb]'" if name == "wandb" else INSTALL
            raise UserError(f"--report-to {name} needs {', '.join(missing)}, not installed: {extra}")
    return names


def recorded_trackers(run: Path) -> tuple[str, ...]:
    """The trackers a run already logs to (so ``suite evaluate`` / ``compare`` of it logs there too)."""
    return tuple(_read_ledger(run).get("trackers", ()))


def point_name(row: pd.Series | dict) -> str:
    """A grid point as its image folder names it: ``preset/sampler/steps<N>_guidance<G>``."""
    return f"{row['preset']}/{row['sampler']}/steps{int(row['num_inference_steps'])}_guidance{row['guidance_scale']:g}"


def point_values(row: pd.Series) -> tuple[dict[str, Any], dict[str, float]]:
    """A metrics row as tracker parameters (settings and how each number was measured) and metrics (numbers)."""
    params, metrics = {}, {}
    for column, value in row.items():
        if _missing(value):
            continue
        stage = re.fullmatch(r"stage\d+_(.+)", column)
        setting = column in GRID_COLUMNS or column in SETTINGS_COLUMNS or (stage and stage.group(1) in STAGE_SETTINGS)
        if isinstance(value, (bool, np.bool_, str)) or setting:
            params[column] = value.item() if isinstance(value, np.generic) else value
        elif isinstance(value, (int, float, np.integer, np.floating)):
            metrics[column] = float(value)
    return params, metrics


def log_run(run: Path, trackers: Iterable[str], log=print) -> dict[str, int]:
    """Send what a run has (evaluated grid points, comparisons, report) to the trackers; return what each got.

    Only what differs from the ledger is sent, so calling it again after nothing changed sends nothing.
    """
    trackers = check_trackers((*recorded_trackers(run), *trackers))
    if not trackers:
        return {}
    folder = read_run(run)
    ledger = _read_ledger(run)
    ledger["trackers"] = list(trackers)
    counts = {}
    for name in trackers:
        state = ledger.setdefault(name, {})
        tracker = TRACKER_CLASSES[name](folder, state)
        try:
            counts[name] = _send(folder, tracker, state)
        finally:
            tracker.close()
            _write_ledger(run, ledger)  # what was sent stays recorded even if a later tracker fails
        log(f"{run}: {counts[name]} items logged to {name} ({tracker.where})")
    return counts


def _send(folder: RunFolder, tracker, state: dict) -> int:
    sent = 0
    points = state.setdefault("points", {})
    if folder.metrics is not None:
        samples = folder.images()
        for _, row in folder.metrics.iterrows():
            name = point_name(row)
            params, metrics = point_values(row)
            rows = samples[np.logical_and.reduce([samples[c] == row[c] for c in GRID_COLUMNS])]
            images = sorted(rows["sha256"].astype(str)) if "sha256" in rows else []
            digest = content_hash({"params": params, "metrics": metrics, "images": images})
            record = points.get(name, {})
            if record.get("hash") == digest:
                continue
            step = record.get("step", -1) + 1
            grid = point_grid(folder.path, rows) if len(rows) else None
            tracker.log_point(name, params, metrics, grid, step)
            points[name] = {"hash": digest, "step": step}
            sent += 1
    comparisons = folder.path / f"{COMPARISONS}.parquet"
    if comparisons.is_file() and comparisons.name not in folder.damaged:
        table = pd.read_parquet(comparisons)
        digest = content_hash(table.to_csv(index=False))
        if state.get("comparisons") != digest:
            tracker.log_comparisons(table, state.get("comparisons_step", -1) + 1)
            state["comparisons"], state["comparisons_step"] = digest, state.get("comparisons_step", -1) + 1
            sent += 1
    report = folder.path / REPORT_DIR
    pages = [report / "index.html", report / "report.md"]
    if all(page.is_file() for page in pages):
        digest = content_hash([page.read_text(encoding="utf-8") for page in pages])
        if state.get("report") != digest:
            tracker.log_report(report)
            state["report"] = digest
            sent += 1
    return sent


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _read_ledger(run: Path) -> dict:
    path = run / TRACKING_DIR / LEDGER
    if not path.is_file():
        return {}
    try:
        ledger = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is damaged; delete it to log the whole run again (to new tracker runs)") from None
    return ledger if isinstance(ledger, dict) else {}


def _write_ledger(run: Path, ledger: dict) -> None:
    (run / TRACKING_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / TRACKING_DIR / LEDGER, json.dumps(ledger, indent=2, sort_keys=True) + "\n")


class TensorBoardTracker:
    """One event-file folder per grid point under ``tracking/tensorboard/``: scalars, hparams and its image grid."""

    def __init__(self, folder: RunFolder, state: dict):
        from torch.utils.tensorboard import SummaryWriter  # optional: TensorBoard (the tracking extra)

        self._writer_class = SummaryWriter
        self.root = folder.path / TRACKING_DIR / "tensorboard"
        self.where = str(self.root)
        self.writers: dict[str, Any] = {}

    def _writer(self, name: str):
        if name not in self.writers:
            self.writers[name] = self._writer_class(str(self.root / name))
        return self.writers[name]

    def log_point(self, name: str, params: dict, metrics: dict, grid, step: int) -> None:
        writer = self._writer(name)
        for key, value in metrics.items():
            writer.add_scalar(key, value, global_step=step)
        if step == 0:  # the hparams plugin keeps one record per run folder
            headline = {key: value for key, value in metrics.items() if "_ci95_" not in key}
            writer.add_hparams(params, {f"hparam/{key}": value for key, value in headline.items()}, run_name=".")
        if grid is not None:
            writer.add_image("images", np.asarray(grid), global_step=step, dataformats="HWC")
        writer.flush()

    def log_comparisons(self, table: pd.DataFrame, step: int) -> None:
        writer = self._writer("comparisons")
        writer.add_text("comparisons", markdown_table(table), global_step=step)
        writer.flush()

    def log_report(self, report: Path) -> None:
        writer = self._writer("report")
        text = (report / "report.md").read_text(encoding="utf-8")
        writer.add_text("report", f"{report / 'index.html'}\n\n{text}")
        writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


class MlflowTracker:
    """An MLflow experiment named after the sweep: a parent run for the run folder, a child run per grid point."""

    def __init__(self, folder: RunFolder, state: dict):
        from mlflow.entities import Metric, Param  # optional: MLflow (the tracking extra)
        from mlflow.exceptions import MlflowException  # optional: MLflow
        from mlflow.tracking import MlflowClient  # optional: MLflow

        self._metric, self._param, self._error = Metric, Param, MlflowException
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its database-migration notes on every start

        root = folder.path.resolve() / TRACKING_DIR
        root.mkdir(parents=True, exist_ok=True)
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
        self.where = self.uri
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.state = state
        name = str(folder.config.get("name", folder.path.name))
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            artifacts = (root / "mlflow-artifacts").as_uri() if "MLFLOW_TRACKING_URI" not in os.environ else None
            self.experiment = self.client.create_experiment(name, artifact_location=artifacts)
        else:
            self.experiment = experiment.experiment_id
        self.parent = self._run(state.get("parent"), folder.path.name, {"suite.run": str(folder.path.resolve())})
        state["parent"] = self.parent
        self.children = state.setdefault("runs", {})

    def _run(self, run_id: str | None, name: str, tags: dict) -> str:
        """The stored run if the store still has it (a resumed run logs to the same MLflow run), else a new one."""
        if run_id:
            try:
                self.client.update_run(self.client.get_run(run_id).info.run_id, status="RUNNING")
                return run_id
            except self._error:
                pass
        return self.client.create_run(self.experiment, run_name=name, tags=tags).info.run_id

    def log_point(self, name: str, params: dict, metrics: dict, grid, step: int) -> None:
        run_id = self._run(self.children.get(name), name, {"mlflow.parentRunId": self.parent, "suite.grid_point": name})
        self.children[name] = run_id
        known = self.client.get_run(run_id).data.params
        self.client.log_batch(
            run_id,
            metrics=[self._metric(key, value, 0, step) for key, value in metrics.items()],
            params=[self._param(key, str(value)) for key, value in params.items() if key not in known],
        )
        if grid is not None:
            self.client.log_image(run_id, grid, f"images/step{step}.png")
        self.client.set_terminated(run_id)

    def log_comparisons(self, table: pd.DataFrame, step: int) -> None:
        self.client.log_table(self.parent, data=table, artifact_file=f"comparisons/step{step}.json")
        self.client.log_text(self.parent, table.to_csv(index=False), f"comparisons/step{step}.csv")

    def log_report(self, report: Path) -> None:
        self.client.log_artifacts(self.parent, str(report), "report")

    def close(self) -> None:
        self.client.set_terminated(self.parent)


class WandbTracker:
    """One W&B run per run folder (offline unless ``WANDB_MODE`` says otherwise); a grid point's numbers go under
    ``<point>/<metric>``, a table of every point's row, comparisons as a table, the report as an artifact."""

    def __init__(self, folder: RunFolder, state: dict):
        import wandb  # optional: Weights & Biases (the wandb extra)

        self.wandb = wandb
        root = folder.path.resolve() / TRACKING_DIR
        root.mkdir(parents=True, exist_ok=True)
        state.setdefault("id", uuid.uuid4().hex[:12])
        self.where = str(root / "wandb")
        self.run = wandb.init(
            project=str(folder.config.get("name", folder.path.name)),
            name=folder.path.name,
            id=state["id"],
            resume="allow",
            dir=str(root),
            mode=os.environ.get("WANDB_MODE", "offline"),
            config={key: value for key, value in folder.config.items() if key != "prompts"},
            settings=wandb.Settings(silent=True),
        )
        self.rows: list[dict] = []

    def log_point(self, name: str, params: dict, metrics: dict, grid, step: int) -> None:
        values = {f"{name}/{key}": value for key, value in metrics.items()}
        if grid is not None:
            values[f"{name}/images"] = self.wandb.Image(grid)
        self.run.log(values)
        self.rows.append({"grid_point": name, **{k: str(v) for k, v in params.items()}, **metrics})

    def log_comparisons(self, table: pd.DataFrame, step: int) -> None:
        self.run.log({"comparisons": self.wandb.Table(dataframe=table.astype(object).where(table.notna(), None))})

    def log_report(self, report: Path) -> None:
        artifact = self.wandb.Artifact(f"report-{self.run.id}", type="report")
        artifact.add_dir(str(report))
        self.run.log_artifact(artifact)

    def close(self) -> None:
        if self.rows:
            self.run.log({"grid_points": self.wandb.Table(dataframe=pd.DataFrame(self.rows))})
        self.run.finish()


TRACKER_CLASSES = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker, "wandb": WandbTracker}
assert tuple(TRACKER_CLASSES) == TRACKERS
