"""Every notebook runs top to bottom on a fresh kernel with the tiny profile (papermill)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from funcprune.book.workflow import REPO_ROOT, find_errors, load_profile, notebook_parameters, run_notebooks
from funcprune.book.workshop import EXERCISE_TAG, run_student_notebook

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


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, list[dict]]:
    """Every chapter run once on the tiny profile in a run directory of its own (shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("tiny")
    profile = load_profile("tiny")
    profile["run_dir"] = str(tmp / "run")
    return profile, tmp, run_notebooks(profile, tmp / "executed")


@pytest.mark.slow
def test_every_notebook_runs_on_tiny_profile(tiny_run: tuple[dict, Path, list[dict]]) -> None:
    profile, tmp, report = tiny_run
    assert [r["notebook"] for r in report] == [p.name for p in NOTEBOOKS]
    assert find_errors([tmp / "executed"]) == []
    assert (tmp / "run" / "activations" / "manifest.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_notebook_runs_every_exercise_on_the_run(tiny_run: tuple[dict, Path, list[dict]], path: Path) -> None:
    """What a participant does: the chapter's student notebook, top to bottom, on the run the chapters made."""
    profile, tmp, _ = tiny_run
    nb = run_student_notebook(path, profile, tmp / "students")
    exercises = [c for c in nb.cells if EXERCISE_TAG in c.metadata.get("tags", [])]
    assert len(exercises) == nb.metadata["funcprune"]["exercises"] >= 2
    for cell in exercises:
        assert not any(o.output_type == "error" for o in cell.outputs)
        assert any(o.output_type in ("stream", "execute_result", "display_data") for o in cell.outputs), cell.source
