"""Running a sweep: the sweep file, its grid, preflight checks, the runner, resuming, leases, the launcher's
topology, the run folder and the evaluation runner.

May import ``suite.metrics``, ``suite.prompts``, ``suite.toy``, ``suite.model`` and ``suite.core``.
"""
