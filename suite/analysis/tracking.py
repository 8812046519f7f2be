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
import time
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


def check_trackers(names: Iterable[str], run: Path | None = None) -> tuple[str, ...]:
    """The trackers named now and those ``run`` already logs to, deduplicated, each known and importable; else one
    clear line (before any image)."""
    recorded = recorded_trackers(run) if run is not None else ()
    names = tuple(dict.fromkeys((*recorded, *names)))
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"unknown tracker {name!r}; known: {', '.join(TRACKERS)}")
        missing = [module for module in MODULES[name] if importlib.util.find_spec(module) is None]
        if missing:
            extra = "pip install 'diffusion-suite[wandb]'" if name == "wandb" else INSTALL
            if name in recorded:
                raise UserError(
                    f"{run} logs to {name} ({run / TRACKING_DIR / LEDGER}) but {', '.join(missing)} is not "
                    f"installed: {extra}, or delete that ledger to stop logging there"
                )
            raise UserError(f"--report-to {name} needs {', '.join(missing)}, not installed: {extra}")
    return names


def recorded_trackers(run: Path) -> tuple[str, ...]:
    """The trackers a run already logs to (so ``suite evaluate`` / ``compare`` / ``report`` of it log there too)."""
    return tuple(_read_ledger(run).get("trackers", ()))


def remember_trackers(run: Path, trackers: Iterable[str]) -> None:
    """Record in the run's ledger that it logs to ``trackers``, before anything is sent: a run resumed without
    ``--report-to`` still logs there."""
    if not run.is_dir():
        return
    ledger = _read_ledger(run)
    known = ledger.get("trackers", [])
    wanted = list(dict.fromkeys((*known, *trackers)))
    if wanted != known:
        ledger["trackers"] = wanted
        _write_ledger(run, ledger)


def point_name(row: pd.Series | dict) -> str:
    """A grid point as its image folder names it: ``preset/sampler/steps<N>_guidance<G>``."""
    return f"{row['preset']}/{row['sampler']}/steps{int(row['num_inference_steps'])}_guidance{row['guidance_scale']:g}"


def point_values(row: pd.Series) -> tuple[dict[str, Any], dict[str, str], dict[str, float]]:
    """A metrics row as tracker parameters (the grid point's settings, which never change for a point), tags
    (how each number was measured, which a re-evaluation may change) and metrics (numbers; flags as 0/1)."""
    params, tags, metrics = {}, {}, {}
    for column, value in row.items():
        if _missing(value):
            continue
        stage = re.fullmatch(r"stage\d+_(.+)", column)
        if column in GRID_COLUMNS or column in SETTINGS_COLUMNS or (stage and stage.group(1) in STAGE_SETTINGS):
            params[column] = value.item() if isinstance(value, np.generic) else value
        elif isinstance(value, (bool, np.bool_)):
            metrics[column] = float(bool(value))
        elif isinstance(value, str):
            tags[column] = value
        elif isinstance(value, (int, float, np.integer, np.floating)):
            metrics[column] = float(value)
    return params, tags, metrics


def log_run(run: Path, trackers: Iterable[str], log=print) -> dict[str, int]:
    """Send what a run has (evaluated grid points, comparisons, report) to the trackers; return what each got.

    Only what differs from the ledger is sent, so calling it again after nothing changed sends nothing.
    """
    trackers = check_trackers(trackers, run)
    if not trackers:
        return {}
    folder = read_run(run)
    ledger = _read_ledger(run)
    ledger["trackers"] = list(trackers)
    counts = {}
    for name in trackers:
        state = ledger.setdefault(name, {})
        try:
            tracker = TRACKER_CLASSES[name](folder, state)
            try:
                counts[name] = _send(folder, tracker, state)
            finally:
                tracker.close()
        except Exception as error:  # a tracker's own failure (server, store, network): the run itself is complete
            raise UserError(
                f"logging to {name} failed ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                f"the run's results are complete and what was sent is recorded: `suite evaluate {run}` sends the rest"
            ) from error
        finally:
            _write_ledger(run, ledger)  # what was sent stays recorded even if this or a later tracker fails
        log(f"{run}: {counts[name]} items logged to {name} ({tracker.where})")
    return counts


def _forget_sent(state: dict) -> None:
    """The tracker's store is not the one the ledger describes (another URI, a deleted store): send it all again."""
    for key in ("points", "runs", "comparisons", "comparisons_step", "report"):
        state.pop(key, None)


def _send(folder: RunFolder, tracker, state: dict) -> int:
    sent = 0
    points = state.setdefault("points", {})
    if folder.metrics is not None:
        samples = folder.images()
        for _, row in folder.metrics.iterrows():
            name = point_name(row)
            params, tags, metrics = point_values(row)
            rows = samples[np.logical_and.reduce([samples[c] == row[c] for c in GRID_COLUMNS])]
            images = sorted(rows["sha256"].astype(str)) if "sha256" in rows else []
            digest = content_hash({"params": params, "tags": tags, "metrics": metrics, "images": images})
            record = points.get(name, {})
            if record.get("hash") == digest:
                continue
            step = record.get("step", -1) + 1
            grid = point_grid(folder.path, rows) if len(rows) else None
            tracker.log_point(name, params, tags, metrics, grid, step)
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
    """One event-file folder per grid point under ``tracking/tensorboard/``: scalars, hparams, how each number was
    measured (text) and its image grid."""

    def __init__(self, folder: RunFolder, state: dict):
        from torch.utils.tensorboard import SummaryWriter  # optional: TensorBoard (the tracking extra)

        self._writer_class = SummaryWriter
        self.root = folder.path / TRACKING_DIR / "tensorboard"
        self.where = str(self.root)
        if state.get("where") != self.where or not self.root.is_dir():
            _forget_sent(state)
        state["where"] = self.where
        self.writers: dict[str, Any] = {}

    def _writer(self, name: str):
        if name not in self.writers:
            self.writers[name] = self._writer_class(str(self.root / name))
        return self.writers[name]

    def log_point(self, name: str, params: dict, tags: dict, metrics: dict, grid, step: int) -> None:
        writer = self._writer(name)
        for key, value in metrics.items():
            writer.add_scalar(key, value, global_step=step)
        if step == 0:  # the hparams plugin keeps one record per folder: the settings, which do not change
            headline = {key: value for key, value in metrics.items() if "_ci95_" not in key}
            writer.add_hparams(params, {f"hparam/{key}": value for key, value in headline.items()}, run_name=".")
        if tags:
            writer.add_text("measured_by", markdown_table(pd.DataFrame(tags.items(), columns=["column", "how"])), step)
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


MLFLOW_BATCH = 100  # MLflow's limit on params (and tags) per log_batch call


class MlflowTracker:
    """An MLflow experiment named after the sweep: a parent run for the run folder, a child run per grid point."""

    def __init__(self, folder: RunFolder, state: dict):
        from mlflow.entities import Metric, Param, RunTag  # optional: MLflow (the tracking extra)
        from mlflow.exceptions import MlflowException  # optional: MLflow
        from mlflow.tracking import MlflowClient  # optional: MLflow

        self._metric, self._param, self._tag, self._error = Metric, Param, RunTag, MlflowException
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its database-migration notes on every start

        root = folder.path.resolve() / TRACKING_DIR
        root.mkdir(parents=True, exist_ok=True)
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
        self.where = self.uri
        if state.get("where") != self.where:  # another store than the one the ledger describes
            _forget_sent(state)
            state.pop("parent", None)
        state["where"] = self.where
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        name = str(folder.config.get("name", folder.path.name))
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            artifacts = (root / "mlflow-artifacts").as_uri() if "MLFLOW_TRACKING_URI" not in os.environ else None
            self.experiment = self.client.create_experiment(name, artifact_location=artifacts)
        else:
            self.experiment = experiment.experiment_id
        parent = self._run(state.get("parent"), folder.path.name, {"suite.run": str(folder.path.resolve())})
        if parent != state.get("parent"):  # the store lost the run (deleted database): send everything again
            _forget_sent(state)
        self.parent = state["parent"] = parent
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

    def log_point(self, name: str, params: dict, tags: dict, metrics: dict, grid, step: int) -> None:
        run_id = self._run(self.children.get(name), name, {"mlflow.parentRunId": self.parent, "suite.grid_point": name})
        self.children[name] = run_id
        known = self.client.get_run(run_id).data.params
        now = int(time.time() * 1000)
        entries = {
            "params": [self._param(key, str(value)) for key, value in params.items() if key not in known],
            "tags": [self._tag(f"measured_by.{key}", value) for key, value in tags.items()],
            "metrics": [self._metric(key, value, now, step) for key, value in metrics.items()],
        }
        for start in range(0, max(len(batch) for batch in entries.values()) or 1, MLFLOW_BATCH):
            self.client.log_batch(
                run_id, **{kind: batch[start : start + MLFLOW_BATCH] for kind, batch in entries.items()}
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
    """W&B in offline mode (unless ``WANDB_MODE`` says otherwise), under the run's one id. A grid point's numbers
    go under ``<point>/<metric>``, with a table of every point's row, comparisons as a table and the report as an
    artifact. W&B's offline mode does not resume: each call writes its own ``offline-run-*`` folder with the id,
    with steps counted from 0."""

    def __init__(self, folder: RunFolder, state: dict):
        import wandb  # optional: Weights & Biases (the wandb extra)

        self.wandb = wandb
        self.folder = folder
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
        self.sent = False

    def log_point(self, name: str, params: dict, tags: dict, metrics: dict, grid, step: int) -> None:
        values = {f"{name}/{key}": value for key, value in metrics.items()}
        if grid is not None:
            values[f"{name}/images"] = self.wandb.Image(grid)
        self.run.log(values)
        self.sent = True

    def log_comparisons(self, table: pd.DataFrame, step: int) -> None:
        self.run.log({"comparisons": self.wandb.Table(dataframe=table.astype(object).where(table.notna(), None))})

    def log_report(self, report: Path) -> None:
        artifact = self.wandb.Artifact(f"report-{self.run.id}", type="report")
        artifact.add_dir(str(report))
        self.run.log_artifact(artifact)

    def close(self) -> None:
        metrics = self.folder.metrics
        if self.sent and metrics is not None:  # every point's row, not only those sent in this call
            table = metrics.astype(object).where(metrics.notna(), None)
            self.run.log(
                {"grid_points": self.wandb.Table(dataframe=table.assign(grid_point=metrics.apply(point_name, axis=1)))}
            )
        self.run.finish()


TRACKER_CLASSES = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker, "wandb": WandbTracker}
assert tuple(TRACKER_CLASSES) == TRACKERS
