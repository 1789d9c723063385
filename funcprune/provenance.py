"""Provenance: which funcprune, commit, libraries and machine produced a result.

Every manifest and results file carries :func:`environment_info`, and the book
prints it, so a reader can tell exactly what built the numbers they read.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["__version__", "environment_info", "git_commit"]

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
