"""A comparative research suite for text-to-image diffusion: latent vs cascaded.

From Python (a notebook), the calls behind the commands, each returning tidy pandas tables (``suite.api``)::

    import suite
    tables = suite.run_sweep("experiments/toy-quick.yaml", out="results/toy-quick")
    tables.metrics          # one row per grid point, every number with its 95% interval
    tables.comparisons      # paired comparisons, Holm-adjusted
    suite.build_report("results/toy-quick")
"""

from suite.api import RunTables, build_report, compare_run, evaluate_run, read_run, run_sweep

__version__ = "0.1.0"
__all__ = ["RunTables", "build_report", "compare_run", "evaluate_run", "read_run", "run_sweep"]
