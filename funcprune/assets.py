"""Verify and prepare every offline asset: ``python -m funcprune.assets``.

Checks the checksums of the files shipped by the asset packages and converts the
default model into a cached checkpoint (once). ``make assets`` runs this.
"""

from __future__ import annotations

import json

from .models import DEFAULT_MODEL, ensure_model

__all__ = ["prepare_assets"]


def prepare_assets(progress: bool = True) -> dict[str, object]:
    """Verify every registered asset and build the default model's cached checkpoint.

    Returns
    -------
    dict
        ``{"model": <checkpoint dir>, ...}`` with one entry per asset group.
    """
    summary: dict[str, object] = {"model": str(ensure_model(DEFAULT_MODEL, progress=progress))}
    return summary


if __name__ == "__main__":
    print(json.dumps(prepare_assets(), indent=2))
