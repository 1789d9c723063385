"""Run profiles: ``params/<name>.yaml`` files naming a model, data and every stage's settings.

:func:`load_profile` is the one reader; :mod:`funcprune.workflow` runs the notebooks with a
profile, :mod:`funcprune.preflight` checks one against the model's config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .provenance import REPO_ROOT

__all__ = ["load_profile"]


def load_profile(name_or_path: str | Path) -> dict[str, Any]:
    """Load a run profile by name (``params/<name>.yaml``) or path.

    The profile's ``run_dir`` is made absolute (relative to the repository root) and
    its ``profile`` key is set to its name.

    Raises
    ------
    FileNotFoundError
        Naming the available profiles.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = REPO_ROOT / "params" / f"{name_or_path}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in (REPO_ROOT / "params").glob("*.yaml"))
        raise FileNotFoundError(f"profile {str(name_or_path)!r} not found; available profiles: {available}")
    profile = yaml.safe_load(path.read_text()) or {}
    if not isinstance(profile, dict):
        raise ValueError(f"{path} must hold a mapping of parameter names to values")
    profile.setdefault("profile", path.stem)
    run_dir = Path(profile.get("run_dir", f"runs/{path.stem}"))
    profile["run_dir"] = str(run_dir if run_dir.is_absolute() else REPO_ROOT / run_dir)
    return profile
