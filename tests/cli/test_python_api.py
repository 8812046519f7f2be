"""The Python API a notebook uses: the README's "From Python" example runs as written, and the calls return what
the commands write."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pandas as pd
import pytest

import suite
from suite.core.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## From Python") :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_readme_example_runs_and_returns_the_run_tables(tmp_path, monkeypatch):
    example = readme_example()
    assert len([line for line in example.splitlines() if line.strip()]) <= 5  # a five-line notebook cell
    run = tmp_path / "toy-quick"
    monkeypatch.chdir(ROOT)  # the example's relative sweep path, as in a checkout
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(example.replace("results/toy-quick", str(run)), {})
    assert (run / "report" / "index.html").is_file() and str(run / "report" / "index.html") in printed.getvalue()
    tables = suite.read_run(run)
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(tables.metrics["preset"]) == list(metrics["preset"])
    assert tables.metrics["fid"].tolist() == pytest.approx(metrics["fid"].tolist())
    assert len(tables.comparisons) == len(pd.read_csv(run / "comparisons.csv"))
    assert len(tables.images) == len(pd.read_csv(run / "samples.csv"))
    # the other calls on a finished run give back the same numbers
    assert suite.evaluate_run(run, device="cpu")["fid"].tolist() == tables.metrics["fid"].tolist()
    assert len(suite.compare_run(run, device="cpu")) == len(tables.comparisons)


def test_bad_input_raises_the_commands_one_line(tmp_path):
    with pytest.raises(UserError, match="not a run folder"):
        suite.read_run(tmp_path)
    with pytest.raises(UserError, match="not a run folder"):
        suite.build_report(tmp_path)
