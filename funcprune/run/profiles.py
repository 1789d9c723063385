"""Run profiles: ``params/<name>.yaml`` files naming a model, data and every stage's settings.

:func:`load_profile` is the one reader; :mod:`funcprune.book.workflow` runs the notebooks with a
profile, :mod:`funcprune.run.preflight` checks one against the model's config. :func:`unknown_keys`
names a key no notebook declares (a typo) with the closest declared name, for the preflight to
report before stage 1.
"""

from __future__ import annotations

import ast
import difflib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from ..provenance import REPO_ROOT

__all__ = ["declared_parameters", "load_profile", "unknown_keys"]

#: Keys a profile may hold that are no notebook parameter (set by :func:`load_profile`).
BOOKKEEPING_KEYS = ("profile",)


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


def declared_parameters(notebooks: Iterable[str | Path] | None = None) -> set[str]:
    """Names assigned in the ``parameters`` cells of the stage notebooks, read with :mod:`ast` (milliseconds).

    The same names papermill injects (:func:`funcprune.book.workflow.notebook_parameters` asks
    papermill, which needs its import and a kernel spec); empty when no notebook is found
    (an installed package without the repository).

    Parameters
    ----------
    notebooks : iterable of paths, optional
        Default ``notebooks/[0-9]*.ipynb`` of the repository.
    """
    paths = [Path(p) for p in notebooks] if notebooks is not None else \
        sorted((REPO_ROOT / "notebooks").glob("[0-9]*.ipynb"))
    names: set[str] = set()
    for path in paths:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
        for cell in cells:
            if "parameters" not in cell.get("metadata", {}).get("tags", []):
                continue
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            for node in ast.parse(source).body:
                targets = node.targets if isinstance(node, ast.Assign) else \
                    [node.target] if isinstance(node, ast.AnnAssign) else []
                names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def unknown_keys(profile: Mapping[str, Any], declared: set[str] | None = None) -> list[str]:
    """One problem per profile key that no notebook declares, with the closest declared name.

    A misspelt key would otherwise be passed to no notebook and its setting silently not
    used (:func:`funcprune.book.workflow.run_notebooks` refuses it too, but only after the
    preflight said "ok").

    Returns
    -------
    list of str
        E.g. ``"profile key 'n_textss' is no parameter of any notebook (did you mean 'n_texts'?); ..."``;
        empty when every key is declared or no notebook is found.

    Examples
    --------
    >>> unknown_keys({"n_textss": 4}, {"n_texts", "max_tokens"})[0].split(";")[0]
    "profile key 'n_textss' is no parameter of any notebook (did you mean 'n_texts'?)"
    """
    declared = declared_parameters() if declared is None else declared
    if not declared:
        return []
    where = f"params/{profile['profile']}.yaml" if profile.get("profile") else "the profile"
    problems = []
    for key in sorted(set(profile) - declared - set(BOOKKEEPING_KEYS)):
        close = difflib.get_close_matches(str(key), sorted(declared), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"profile key {key!r} is no parameter of any notebook{hint}; rename or remove it in {where} "
                        "(`.venv/bin/papermill --help-notebook notebooks/<chapter>.ipynb` lists each chapter's)")
    return problems
