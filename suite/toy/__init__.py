"""The toy world and its models: both architecture families, trained on this project's own data.

``world`` draws captioned scenes; ``models`` defines the architectures; ``recipes``, ``jobs`` and ``train``
hold the recipes, jobs and loop behind ``suite train toy``; ``score`` is the exact compositional score; ``clip``
is the tiny CLIP used for CLIP score and as the FID/KID feature network. Trained weights live
in ``weights/`` (``suite.model.presets.TOY_WEIGHTS``) and load through the same preset code path as hub
checkpoints.

May import ``suite.model`` and ``suite.core``.
"""
