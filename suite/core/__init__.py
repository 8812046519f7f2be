"""The base layer: the one user-facing error, registries, statistics, atomic file writes and text tables.

Owns what every other sub-package uses. Imports nothing from ``suite``.
"""
