"""Models and how they sample: samplers, the one denoising loop, stages, pipelines, text encoders, loading,
presets, backends (one per architecture family), devices, clocks and FLOP counting.

May import ``suite.core`` only.
"""
