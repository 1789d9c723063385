"""Thin notebooks: no code cell of a chapter holds more than 15 lines of logic (the package holds the rest).

Only the cell tagged ``parameters`` (papermill's plain assignments) is exempt. A line of logic is a non-blank
line that is not a comment, not part of an import statement and not an IPython magic (``%...``, ``!...``).
These tests only parse the notebooks: they run nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9]*.ipynb"))
#: The most lines of logic a code cell may hold.
MAX_LOGIC_LINES = 15


def logic_lines(source: str) -> int:
    """Lines of logic in a cell: non-blank, not a comment, not in an import statement, not an IPython magic."""
    lines = source.splitlines()
    magics = {i for i, line in enumerate(lines, 1) if line.lstrip().startswith(("%", "!"))}
    tree = ast.parse("\n".join("" if i in magics else line for i, line in enumerate(lines, 1)))
    imports = {n for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
               for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)}
    return sum(1 for i, line in enumerate(lines, 1)
               if line.strip() and not line.strip().startswith("#") and i not in imports | magics)


def fat_cells(nb: nbformat.NotebookNode, limit: int = MAX_LOGIC_LINES) -> list[tuple[int, int]]:
    """``(cell index, lines of logic)`` of every code cell over ``limit``, the ``parameters`` cell left out."""
    return [(i, n) for i, cell in enumerate(nb.cells)
            if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", [])
            and (n := logic_lines(cell.source)) > limit]


def test_logic_lines_counts_logic_only() -> None:
    planted = ("import os\n"
               "from pathlib import (Path,\n"
               "                     PurePath)\n"
               "\n"
               "# a comment\n"
               "%matplotlib inline\n"
               "!ls\n"
               "x = 1  # a trailing comment does not hide the line\n"
               "y = [\n"
               "    x,\n"
               "]\n"
               "    \n"
               "print(y)\n")
    assert logic_lines(planted) == 5
    assert logic_lines("") == 0


def test_fat_cells_names_every_fat_cell_but_the_parameters_cell() -> None:
    fat = "\n".join(f"x{i} = {i}" for i in range(MAX_LOGIC_LINES + 1))
    thin = "\n".join(f"x{i} = {i}" for i in range(MAX_LOGIC_LINES)) + "\nimport os\n# note\n"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(fat),
                                         nbformat.v4.new_code_cell(fat, metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell(thin),
                                         nbformat.v4.new_code_cell(fat, metadata={"tags": ["hide-input"]})])
    assert fat_cells(nb) == [(3, MAX_LOGIC_LINES + 1)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_cell_holds_more_than_15_lines_of_logic(path: Path) -> None:
    """Library first: a chapter calls funcprune; what a cell computes lives in the package and is tested there."""
    assert fat_cells(nbformat.read(path, as_version=4)) == [], \
        f"{path.name}: (cell index, lines of logic) over {MAX_LOGIC_LINES}; move the logic into funcprune"
