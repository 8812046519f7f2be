"""What is read off finished runs and architectures: paired comparisons, the diff of two runs, cost profiles,
benchmarks, the run report, the article's claims and the 2x2 ablation.

May import every sub-package below it: ``suite.run``, ``suite.metrics``, ``suite.prompts``, ``suite.toy``,
``suite.model`` and ``suite.core``.
"""
