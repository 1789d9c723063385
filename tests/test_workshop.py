"""Student and instructor notebooks made from the chapters (funcprune/book/workshop.py, book/_ext/workshop_notebooks.py).

The transformation is checked on every chapter; every chapter's student notebook is run top to bottom on the tiny
run, with every exercise cell executed, in tests/test_notebooks.py (beside the run the chapters make).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from funcprune.book.workflow import REPO_ROOT
from funcprune.book.workshop import (EXERCISE_TAG, SOLUTION_TAG, WorkshopError, main, plain_markdown, run_student_notebook,
                                split_exercises, workshop_notebook, write_workshop)

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9]*.ipynb"))
BOOK = REPO_ROOT / "book"


def _exercises_markdown(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## Exercises"))


def _tags(cell: nbformat.NotebookNode) -> list[str]:
    return cell.metadata.get("tags", [])


def test_split_keeps_order_and_drops_admonition_lines() -> None:
    text = ("## Exercises\n\n**1.** Predict.\n\n```python\nx = 1\nprint(x)\n```\n\n"
            ":::{admonition} Solution\n:class: dropdown\nIt prints 1.\n\n```python\nprint(2)\n```\n:::\n\n"
            "**2.** Read.\n\n```bash\nmake book\n```\n\n:::{note}\nA note.\n:::\n\n"
            ":::{admonition} Solution\n:class: dropdown\nNothing to run.\n:::\n")
    blocks = split_exercises(text)
    assert [b.kind for b in blocks] == ["text", "code", "solution", "text", "solution"]
    assert blocks[1].source == "x = 1\nprint(x)"
    assert blocks[2].source == "It prints 1.\n\n```python\nprint(2)\n```"  # code inside a solution stays in it
    assert "```bash\nmake book\n```" in blocks[3].source and ":::{note}" in blocks[3].source


def test_split_names_an_unclosed_block() -> None:
    with pytest.raises(WorkshopError, match=r"ch\.ipynb: the block opened on line 3 .*never closed"):
        split_exercises("text\n\n```python\nprint(1)\n", where="ch.ipynb")
    with pytest.raises(WorkshopError, match="never closed"):
        split_exercises(":::{admonition} Solution\n:class: dropdown\nno end\n")


def test_plain_markdown_rewrites_myst_outside_code() -> None:
    text = ("See {term}`voxels <voxel>`, {term}`z-map`, {glue:text}`store_mb` MiB, {doc}`../teaching`, "
            "{cite:t}`liu2025pruning` and {term}`functional networks\n<functional network>`.\n\n"
            ":::{warning}\n:class: margin\nCareful.\n:::\n\n```python\nprint('{term}`x`')\n```\n")
    out = plain_markdown(text)
    assert out.startswith("See voxels, z-map, `store_mb` MiB, the book's *teaching* page, [liu2025pruning] and "
                          "functional networks.")
    assert "> **Warning.**\n> Careful." in out and ":::" not in out and ":class:" not in out
    assert "print('{term}`x`')" in out  # code is left as it is


def test_a_chapter_without_exercises_is_refused(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# T\n\n## Summary\nNone.")])
    with pytest.raises(WorkshopError, match="no markdown cell opens with '## Exercises'"):
        workshop_notebook(nb, "student")
    nb.cells.append(nbformat.v4.new_markdown_cell("## Exercises\n\n**1.** Think.\n"))
    with pytest.raises(WorkshopError, match="no ```python fence"):
        workshop_notebook(nb, "student")
    with pytest.raises(WorkshopError, match="audience"):
        workshop_notebook(nb, "teacher")  # type: ignore[arg-type]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_and_instructor_notebooks_of_every_chapter(path: Path) -> None:
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    source = nbformat.read(path, as_version=4)
    blocks = split_exercises(_exercises_markdown(path))
    code = [b.source for b in blocks if b.kind == "code"]
    solutions = [b.source for b in blocks if b.kind == "solution"]
    assert code and solutions, path.name
    student, instructor = workshop_notebook(path, "student"), workshop_notebook(path, "instructor")
    for nb in (student, instructor):
        nbformat.validate(nb)
        cells = nb.cells
        assert all(c.outputs == [] and c.execution_count is None for c in cells if c.cell_type == "code")
        exercises = [c.source for c in cells if EXERCISE_TAG in _tags(c)]
        assert exercises == code and all(cells[i].cell_type == "code" for i, c in enumerate(cells)
                                         if EXERCISE_TAG in _tags(c))
        # The chapter's code cells come first, in order, so the exercises find run_dir, lm, tokenizer, ...
        chapter = [c.source for c in source.cells if c.cell_type == "code"]
        kept = [c.source for c in cells if c.cell_type == "code" and EXERCISE_TAG not in _tags(c)]
        assert kept == chapter
        first_exercise = next(i for i, c in enumerate(cells) if EXERCISE_TAG in _tags(c))
        before_exercises = [c.source for c in cells[:first_exercise] if c.cell_type == "code"]
        assert before_exercises == [c.source for c in source.cells[:_exercise_index(source)]
                                    if c.cell_type == "code"]
        assert sum("parameters" in _tags(c) for c in cells) == 1
        assert not any("{admonition}" in c.source or "{term}" in c.source or "{glue:" in c.source
                       for c in cells if c.cell_type == "markdown")
    student_text = "\n".join(c.source for c in student.cells)
    assert "Solution" not in student_text and not any(c for c in student.cells if SOLUTION_TAG in _tags(c))
    for solution in solutions:
        probe = plain_markdown(solution).splitlines()[0][:60]
        assert probe not in student_text, f"{path.name}: solution text left in the student notebook: {probe!r}"
    shown = [c.source for c in instructor.cells if SOLUTION_TAG in _tags(c)]
    assert len(shown) == len(solutions) and all(s.startswith("**Solution.** ") for s in shown)
    # Each exercise's solution follows its code cell (an exercise without code keeps its solution after its text).
    positions = {id(c): i for i, c in enumerate(instructor.cells)}
    for cell in (c for c in instructor.cells if EXERCISE_TAG in _tags(c)):
        following = instructor.cells[positions[id(cell)] + 1:]
        assert next(c for c in following if SOLUTION_TAG in _tags(c) or EXERCISE_TAG in _tags(c)).metadata[
            "tags"] == [SOLUTION_TAG]
    assert student.metadata["funcprune"] == {"audience": "student", "source": path.name, "exercises": len(code)}
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before, "the source notebook was changed"


def _exercise_index(nb: nbformat.NotebookNode) -> int:
    return next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("## Exercises"))


def test_write_workshop_is_reproducible(tmp_path: Path) -> None:
    first = write_workshop(REPO_ROOT / "notebooks", tmp_path / "a")
    second = write_workshop(NOTEBOOKS, tmp_path / "b")
    assert [p.name for p in first] == [p.name for p in second]
    assert len(first) == 2 * len(NOTEBOOKS) + 2
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name
    with zipfile.ZipFile(tmp_path / "a" / "funcprune-student-notebooks.zip") as zf:
        assert sorted(zf.namelist()) == [f"{p.stem}-student.ipynb" for p in NOTEBOOKS]
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkshopError, match="no chapter notebooks"):
        write_workshop(tmp_path / "empty", tmp_path / "c")
    with pytest.raises(WorkshopError, match="no such notebook"):
        write_workshop(tmp_path / "not-there.ipynb", tmp_path / "c")


def test_command_line_writes_the_notebooks(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "funcprune.book.workshop", str(NOTEBOOKS[0]), str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / f"{NOTEBOOKS[0].stem}-student.ipynb").is_file()


def test_site_links_every_notebook_and_tells_the_two_liu_papers_apart(tmp_path: Path) -> None:
    """A one-page Sphinx build with the book's extensions: every download link exists; 2025a and 2025b."""
    src = tmp_path / "book"
    (src / "_ext").mkdir(parents=True)
    for name in ("workshop_notebooks.py", "citations.py"):
        shutil.copy(BOOK / "_ext" / name, src / "_ext" / name)
    shutil.copy(BOOK / "references.bib", src / "references.bib")
    shutil.copytree(REPO_ROOT / "notebooks", tmp_path / "notebooks")
    (src / "conf.py").write_text(
        "import os, sys\nsys.path.insert(0, os.path.join(os.path.dirname(__file__), '_ext'))\n"
        "extensions = ['myst_parser', 'sphinxcontrib.bibtex', 'workshop_notebooks', 'citations']\n"
        "bibtex_bibfiles = ['references.bib']\nbibtex_reference_style = 'author_year'\n"
        "bibtex_default_style = 'alpha-year-suffix'\n")
    (src / "index.md").write_text("# Teaching\n\n{cite:t}`liu2025pruning` and {cite:t}`liu2025brain`.\n\n"
                                  "```{workshop-notebooks}\n```\n\n```{bibliography}\n```\n")
    out = tmp_path / "html"
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(src), str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = (out / "index.html").read_text()
    links = re.findall(r'href="(downloads/[^"]+)"', page)
    assert len(links) == 2 * len(NOTEBOOKS) + 2  # no executed copies in this build: they are said to be missing
    assert all((out / link).is_file() for link in links), links
    assert page.count("not in this build") == len(NOTEBOOKS)
    text = re.sub(r"<[^>]+>", "", page)
    assert "Liu et al. [2025b]" in text and "Liu et al. [2025a]" in text
    assert "LNX+25b" in text and "LGS+25a" in text  # the bibliography labels keep the year's two digits


def test_print_stylesheet_hides_the_chrome_for_print_only() -> None:
    css = (BOOK / "_static" / "print.css").read_text()
    body = css[css.index("@media print"):]
    assert css.count("{") == css.count("}") and css.strip().endswith("}")
    outside = re.sub(r"/\*.*?\*/", "", css[:css.index("@media print")], flags=re.DOTALL).strip()
    assert outside == "", "every rule applies to print only"
    for selector in (".bd-sidebar-primary", ".bd-sidebar-secondary", ".bd-header-article", ".bd-footer"):
        assert selector in body
    assert re.search(r"img, svg, figure[^{]*\{\s*max-width: 100% !important", body)


def _one_exercise_chapter(path: Path, code: str) -> Path:
    """A minimal chapter at ``path``: a parameters cell (``run_dir``) and one exercise running ``code``."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(f"# {path.stem}\n\n## Overview\nx"),
        nbformat.v4.new_code_cell("run_dir = 'runs/x'  # run directory", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_markdown_cell(f"## Exercises\n\n**1.** Try.\n\n```python\n{code}\n```\n\n"
                                      ":::{admonition} Solution\n:class: dropdown\nAs shown.\n:::\n"),
        nbformat.v4.new_markdown_cell("## Summary\n- x")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path.write_text(nbformat.writes(nb))
    return path


def test_a_failing_student_notebook_is_named_with_its_cell(tmp_path: Path) -> None:
    """run_student_notebook names the notebook, the cell and the error (every chapter's student notebook is run on
    the tiny run in tests/test_notebooks.py)."""
    chapter = _one_exercise_chapter(tmp_path / "09_broken.ipynb", "1 / 0")
    with pytest.raises(WorkshopError, match=r"09_broken-student.ipynb failed in cell \d+: ZeroDivisionError"):
        run_student_notebook(chapter, {"run_dir": str(tmp_path / "run")}, tmp_path / "out")


def test_command_line_runs_every_student_notebook_on_a_profile(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--run-on PROFILE`` (what ``make book PROFILE=workshop`` runs): each chapter's student notebook, on that
    profile's run; a chapter that fails makes the command fail, naming it."""
    (tmp_path / "chapters").mkdir()
    _one_exercise_chapter(tmp_path / "chapters" / "01_fine.ipynb", "print(run_dir)")
    assert main([str(tmp_path / "chapters"), str(tmp_path / "out"), "--run-on", "tiny"]) == 0
    err = capsys.readouterr().err
    assert "01_fine-student: 1 exercises run" in err and "every student notebook ran on the tiny run" in err
    executed = nbformat.read(tmp_path / "out" / "executed" / "01_fine-student-executed.ipynb", as_version=4)
    assert any("runs/tiny" in o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    _one_exercise_chapter(tmp_path / "chapters" / "02_broken.ipynb", "1 / 0")
    assert main([str(tmp_path / "chapters"), str(tmp_path / "out"), "--run-on", "tiny"]) == 1
    assert "02_broken-student.ipynb failed in cell" in capsys.readouterr().err
