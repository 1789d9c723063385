"""Provenance: which funcprune, commit, libraries and machine produced a result.

Every manifest and results file carries :func:`environment_info`, and the book
prints it, so a reader can tell exactly what built the numbers they read.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["REPO_ROOT", "__version__", "display_path", "environment_info", "git_commit"]

#: Repository root (the directory holding ``notebooks/`` and ``params/``).
REPO_ROOT = Path(__file__).resolve().parent.parent

try:
    __version__ = metadata.version("funcprune")
except metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0+unknown"

#: Libraries whose versions are recorded with every result.
TRACKED_PACKAGES = ("torch", "transformers", "scikit-learn", "nilearn", "numpy", "lm_eval",
                    "papermill", "jupyter-book", "accelerate", "gguf")


def git_commit(path: str | Path | None = None) -> str | None:
    """Commit of the git checkout containing ``path`` (default: this package), ``+dirty`` if modified."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def environment_info() -> dict[str, Any]:
    """funcprune version, git commit, Python, platform and tracked library versions."""
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "funcprune": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as a reader of the book should see it: never the builder's file system.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    str
        Relative paths unchanged; inside the repository, relative to it (``runs/default/activations``,
        ``.`` for the root); inside funcprune's cache, ``$FUNCPRUNE_CACHE/...``; inside the home folder,
        ``~/...``; anything else, by its name alone.

    Examples
    --------
    >>> from funcprune.provenance import REPO_ROOT
    >>> display_path(REPO_ROOT / "runs" / "default" / "activations")
    'runs/default/activations'
    >>> display_path("runs/tiny")
    'runs/tiny'
    >>> display_path("/srv/data/activations")
    'activations'
    """
    from .assets import cache_dir

    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    forms = dict.fromkeys([p, Path(os.path.normpath(p)), p.resolve()])
    for root, shown in ((REPO_ROOT, None), (cache_dir(), "$FUNCPRUNE_CACHE"), (Path.home(), "~")):
        for base in dict.fromkeys([root.absolute(), root.resolve()]):
            for form in forms:
                if form.is_relative_to(base):
                    rel = form.relative_to(base).as_posix()
                    return rel if shown is None else f"{shown}/{rel}" if rel != "." else shown
    return p.name or p.as_posix()
