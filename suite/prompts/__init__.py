"""Prompt sources: built-in sets (the toy world's captions, PartiPrompts, GenEval), files, and COCO captions.

May import ``suite.toy`` (the toy world's captions) and ``suite.core``.
"""
