"""The run layer: a run directory, its stages and their reuse.

Imports the science core (:mod:`funcprune`) and is never imported by it (ARCHITECTURE.md).
"""
