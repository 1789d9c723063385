"""The book layer: running the notebooks, the build cache, the page checks, the workshop kit, chapter 7.

Imports the core and the run layer; nothing imports it (ARCHITECTURE.md).
"""
