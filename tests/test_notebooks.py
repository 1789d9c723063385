"""Every notebook runs top to bottom on a fresh kernel with the tiny profile (papermill)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from funcprune.workflow import REPO_ROOT, find_errors, load_profile, notebook_parameters, run_notebooks

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9]*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_source_notebook_hygiene(path: Path) -> None:
    """Committed without outputs; one literal, documented parameters cell; the cookbook anatomy."""
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code")
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name, spec in notebook_parameters(path).items():
        assert spec["help"], f"parameter {name} has no trailing comment"
    headings = [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()
                if line.startswith("#")]
    assert sum(h.startswith("# ") for h in headings) == 1
    for section in ("## Overview", "## Prerequisites", "## Summary", "## What's next"):
        assert section in headings, f"{path.name} lacks {section}"


def test_profiles_only_set_declared_parameters() -> None:
    declared = set().union(*(notebook_parameters(p) for p in NOTEBOOKS))
    for profile in sorted((REPO_ROOT / "params").glob("*.yaml")):
        assert set(load_profile(profile)) - {"profile"} <= declared, profile.name


def test_unknown_profile_names_available_ones() -> None:
    with pytest.raises(FileNotFoundError, match="tiny"):
        load_profile("no-such-profile")


@pytest.mark.slow
def test_every_notebook_runs_on_tiny_profile(tmp_path: Path) -> None:
    profile = load_profile("tiny")
    profile["run_dir"] = str(tmp_path / "run")
    report = run_notebooks(profile, tmp_path / "executed")
    assert [r["notebook"] for r in report] == [p.name for p in NOTEBOOKS]
    assert find_errors([tmp_path / "executed"]) == []
    assert (tmp_path / "run" / "activations" / "manifest.json").exists()
