"""Student and instructor notebooks made from the chapters: exercises as runnable cells, solutions kept or removed.

Each chapter (``notebooks/NN_*.ipynb``) ends with a ``## Exercises`` section written for the book: questions in
markdown, the code to try in fenced ````` ```python ````` blocks, and each solution in a MyST dropdown
(``:::{admonition} Solution`` ... ``:::``). :func:`workshop_notebook` turns one chapter into a notebook a
participant runs top to bottom in Jupyter:

- every cell before and after the exercises is kept (the exercise code reads the chapter's variables, e.g.
  ``run_dir``, ``lm``, ``tokenizer``), with every output and execution count removed;
- every ``python`` fence of the exercises becomes a code cell tagged ``exercise``;
- the *student* version drops every solution; the *instructor* version keeps each one as a markdown cell tagged
  ``solution`` right after the code cell of its exercise;
- MyST syntax that Jupyter does not render (``{term}``, ``{doc}``, ``{glue:text}``, ``{cite}`` roles and colon
  admonitions) is turned into plain markdown.

The source notebooks are only read. ``make book`` writes the notebooks into the built site
(``book/_ext/workshop_notebooks.py``: ``_build/html/downloads/``); by hand::

    python -m funcprune.book.workshop notebooks/ OUT_DIR

writes ``OUT_DIR/<chapter>-student.ipynb`` and ``<chapter>-instructor.ipynb`` for every chapter, and two zip files
with all of them.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import nbformat

__all__ = ["AUDIENCES", "EXERCISE_TAG", "SOLUTION_TAG", "Block", "WorkshopError", "plain_markdown",
           "run_student_notebook", "run_students", "split_exercises", "workshop_notebook", "write_workshop"]

Audience = Literal["student", "instructor"]
AUDIENCES: tuple[Audience, ...] = ("student", "instructor")
EXERCISE_TAG = "exercise"
SOLUTION_TAG = "solution"
HEADING = "## Exercises"
#: Files of :func:`write_workshop` that hold every chapter of one audience.
ZIP_NAME = "funcprune-{audience}-notebooks.zip"

_FENCE = re.compile(r"^(?P<fence>`{3,}|:{3,})\s*(?P<info>.*?)\s*$")
_SOLUTION = re.compile(r"^\{admonition\}\s*Solution\b", re.IGNORECASE)
_ADMONITION = re.compile(r"^\{(?P<kind>admonition|note|important|warning|tip|caution|attention|hint|danger|error|"
                         r"seealso)\}\s*(?P<title>.*)$")
_OPTION = re.compile(r"^:[\w-]+:")
_ROLE = re.compile(r"\{(?P<role>[\w:-]+)\}`(?P<body>[^`]*)`")
_LABELLED = re.compile(r"^(?P<text>.*?)\s*<(?P<target>[^<>]+)>$", re.DOTALL)


_NOTE = {
    "student": ("*Workshop notebook (student version) of `{source}`.* Run it top to bottom from the repository's "
                "root folder, or set `run_dir` in the parameters cell to the full path of your run directory "
                "(e.g. `runs/workshop`). The exercises at the end are code cells under their questions: predict "
                "first, then run and change them. The solutions are in the instructor version and in the book."),
    "instructor": ("*Workshop notebook (instructor version) of `{source}`.* The student version without the "
                   "solutions: each solution follows its exercise's code cell. Run it top to bottom from the "
                   "repository's root folder, or set `run_dir` in the parameters cell to the full path of the run "
                   "directory."),
}


class WorkshopError(ValueError):
    """A chapter whose exercises cannot be turned into cells (the message names the notebook and the fix)."""


@dataclass(frozen=True)
class Block:
    """One piece of an exercises section, in order.

    Attributes
    ----------
    kind : {"text", "code", "solution"}
        Markdown to keep as it is, exercise code (a ``python`` fence) or a solution's body.
    source : str
        The markdown, the code, or the solution's text without its admonition lines.
    """

    kind: Literal["text", "code", "solution"]
    source: str


def _closes(line: str, fence: str) -> bool:
    """Whether ``line`` closes a block opened by ``fence`` (same character, at least as long, nothing else)."""
    stripped = line.strip()
    return len(stripped) >= len(fence) and set(stripped) == {fence[0]}


def split_exercises(markdown: str, *, where: str = "exercises") -> list[Block]:
    """Split the markdown of an exercises section into text, exercise code and solutions.

    Parameters
    ----------
    markdown : str
        The section's markdown (MyST).
    where : str, default="exercises"
        Named in errors (e.g. the notebook's file name).

    Returns
    -------
    list of Block
        In the order they appear; empty text between two blocks is left out.

    Raises
    ------
    WorkshopError
        If a fence or a solution admonition is never closed.

    Examples
    --------
    >>> blocks = split_exercises("**1.** Try it.\\n\\n```python\\nprint(1)\\n```\\n\\n"
    ...                          ":::{admonition} Solution\\n:class: dropdown\\nIt prints 1.\\n:::\\n")
    >>> [(b.kind, b.source) for b in blocks]
    [('text', '**1.** Try it.'), ('code', 'print(1)'), ('solution', 'It prints 1.')]
    """
    lines = markdown.splitlines()
    blocks: list[Block] = []
    text: list[str] = []

    def flush_text() -> None:
        joined = "\n".join(text).strip("\n")
        if joined.strip():
            blocks.append(Block("text", joined))
        text.clear()

    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None or _closes(lines[i], match["fence"]) and not match["info"]:
            text.append(lines[i])
            i += 1
            continue
        fence, info = match["fence"], match["info"]
        end = next((j for j in range(i + 1, len(lines)) if _closes(lines[j], fence)), None)
        if end is None:
            raise WorkshopError(f"{where}: the block opened on line {i + 1} ({lines[i].strip()!r}) is never closed; "
                                f"close it with a line {fence!r}")
        body = lines[i + 1:end]
        if fence[0] == "`" and info.lower() in ("python", "python3", "ipython", "ipython3"):
            flush_text()
            blocks.append(Block("code", "\n".join(body).strip("\n")))
        elif _SOLUTION.match(info):
            while body and _OPTION.match(body[0]):
                body = body[1:]
            flush_text()
            blocks.append(Block("solution", "\n".join(body).strip("\n")))
        else:
            text.extend(lines[i:end + 1])
        i = end + 1
    flush_text()
    return blocks


def _role(match: re.Match[str]) -> str:
    """Plain markdown for one MyST role (see :func:`plain_markdown`)."""
    role, body = match["role"], match["body"]
    labelled = _LABELLED.match(body)
    text, target = (labelled["text"], labelled["target"]) if labelled else (body, body)
    if role in ("term", "ref", "numref", "abbr"):
        return text
    if role == "doc":
        return text if labelled else f"the book's *{Path(target).name}* page"
    if role.startswith("glue"):
        return f"`{body}`"
    if role.startswith("cite"):
        return f"[{body}]"
    if role == "math":
        return f"${body}$"
    return f"`{text}`"


def plain_markdown(markdown: str) -> str:
    """MyST markdown as plain (Jupyter) markdown: roles as text, admonitions as quoted paragraphs.

    ``{term}`voxels <voxel>``` becomes ``voxels``, ``{glue:text}`store_mb``` the variable name in code
    (``store_mb``), ``{doc}`../teaching``` "the book's *teaching* page", ``{cite}`key``` ``[key]``, and a
    ``:::{note}`` block a block quote opened by **Note.** Fenced code and everything else is left as it is.

    Examples
    --------
    >>> plain_markdown("Each {term}`voxel <voxel>` of {glue:text}`n_layers` layers (see {doc}`../teaching`).")
    "Each voxel of `n_layers` layers (see the book's *teaching* page)."
    """
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match and match["fence"][0] == ":" and _ADMONITION.match(match["info"]):
            end = next((j for j in range(i + 1, len(lines)) if _closes(lines[j], match["fence"])), len(lines))
            head = _ADMONITION.match(match["info"])
            body = [line for line in lines[i + 1:end] if not _OPTION.match(line)]
            title = head["title"] or head["kind"].capitalize()
            out.extend(f"> {line}".rstrip() for line in [f"**{title}.**", *body])
            i = end + 1
            continue
        if match and match["fence"][0] == "`":  # code: no role rewriting inside
            end = next((j for j in range(i + 1, len(lines)) if _closes(lines[j], match["fence"])), len(lines) - 1)
            out.extend(lines[i:end + 1])
            i = end + 1
            continue
        out.append(lines[i])
        i += 1
    # Roles may span a line break ({term}`functional networks\n<functional network>`): rewrite the joined text,
    # except inside code fences, which were copied as they are.
    return _rewrite_roles("\n".join(out))


def _rewrite_roles(markdown: str) -> str:
    """Apply :func:`_role` outside fenced code."""
    parts = re.split(r"(^`{3,}.*?^`{3,}\s*$)", markdown, flags=re.MULTILINE | re.DOTALL)
    return "".join(part if k % 2 else _ROLE.sub(_role, part) for k, part in enumerate(parts))


def _heading(cell: nbformat.NotebookNode) -> str | None:
    """The first line of a markdown cell that opens a level-2 section, else None."""
    if cell.cell_type != "markdown":
        return None
    first = cell.source.lstrip().splitlines()[0] if cell.source.strip() else ""
    return first.strip() if first.startswith("## ") else None


def _clean(cell: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of a cell without outputs, execution count or execution metadata; markdown made plain."""
    cell = copy.deepcopy(cell)
    if cell.cell_type == "code":
        cell.outputs = []
        cell.execution_count = None
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    elif cell.cell_type == "markdown":
        cell.source = plain_markdown(cell.source)
    cell.metadata.pop("papermill", None)
    return cell


def _cell(kind: str, source: str, cell_id: str, tags: Sequence[str] = ()) -> nbformat.NotebookNode:
    """A new cell with a fixed id (the same chapter gives the same notebook, byte for byte)."""
    make = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
    cell = make(source, id=cell_id)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def workshop_notebook(source: str | Path | nbformat.NotebookNode, audience: Audience) -> nbformat.NotebookNode:
    """One chapter as a student or instructor notebook (see the module docstring).

    Parameters
    ----------
    source : str, path or NotebookNode
        The chapter (read, never written).
    audience : {"student", "instructor"}
        The student version has no solutions; the instructor version has each after its exercise.

    Returns
    -------
    NotebookNode
        A valid nbformat 4 notebook with no outputs. ``metadata["funcprune"]`` names the audience, the source
        file and the number of exercise cells.

    Raises
    ------
    WorkshopError
        If the chapter has no ``## Exercises`` section or its exercises hold no ``python`` fence and no code cell,
        or a fence is not closed.
    """
    if audience not in AUDIENCES:
        raise WorkshopError(f"audience must be one of {AUDIENCES}, not {audience!r}")
    name = Path(source).name if isinstance(source, (str, Path)) else source.metadata.get("funcprune", {}).get(
        "source", "notebook")
    nb = nbformat.read(source, as_version=4) if isinstance(source, (str, Path)) else copy.deepcopy(source)
    start = next((k for k, c in enumerate(nb.cells) if _heading(c) == HEADING), None)
    if start is None:
        raise WorkshopError(f"{name}: no markdown cell opens with {HEADING!r}; the workshop notebooks are made from "
                            f"that section")
    end = next((k for k in range(start + 1, len(nb.cells)) if _heading(nb.cells[k])), len(nb.cells))
    cells = [_cell("markdown", _NOTE[audience].format(source=name), "workshop-note", ["workshop-note"])]
    cells += [_clean(c) for c in nb.cells[:start]]
    n_exercises = 0
    for k, cell in enumerate(nb.cells[start:end], start):
        base = (cell.get("id") or f"cell{k}")[:48]
        if cell.cell_type == "code":  # already a runnable cell: tag it
            cleaned = _clean(cell)
            cleaned.metadata["tags"] = sorted(set(cleaned.metadata.get("tags", [])) | {EXERCISE_TAG})
            cells.append(cleaned)
            n_exercises += 1
            continue
        if cell.cell_type != "markdown":
            continue
        for n, block in enumerate(split_exercises(cell.source, where=name)):
            cell_id = f"{base}-{block.kind}{n}"
            if block.kind == "code":
                cells.append(_cell("code", block.source, cell_id, [EXERCISE_TAG]))
                n_exercises += 1
            elif block.kind == "solution" and audience == "instructor":
                cells.append(_cell("markdown", plain_markdown(f"**Solution.** {block.source}"), cell_id,
                                   [SOLUTION_TAG]))
            elif block.kind == "text":
                cells.append(_cell("markdown", plain_markdown(block.source), cell_id))
    if n_exercises == 0:
        raise WorkshopError(f"{name}: its {HEADING} section has no ```python fence and no code cell to run")
    cells.extend(_clean(c) for c in nb.cells[end:])
    nb.cells = cells
    for key in ("papermill", "funcprune"):
        nb.metadata.pop(key, None)
    nb.metadata["funcprune"] = {"audience": audience, "source": name, "exercises": n_exercises}
    nbformat.validate(nb)
    return nb


def write_workshop(notebooks: str | Path | Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """Write the student and instructor notebook of every chapter, and one zip file per audience.

    Parameters
    ----------
    notebooks : str, path or sequence of paths
        A folder (its ``[0-9]*.ipynb``, sorted) or the chapters themselves.
    out_dir : str or path
        Created if needed; files of the same names are replaced.

    Returns
    -------
    list of Path
        ``<chapter>-student.ipynb`` and ``<chapter>-instructor.ipynb`` per chapter, then the two zip files.

    Raises
    ------
    WorkshopError
        If no chapter is found, or a chapter cannot be converted (:func:`workshop_notebook`).
    """
    if isinstance(notebooks, (str, Path)) and Path(notebooks).is_dir():
        paths = sorted(Path(notebooks).glob("[0-9]*.ipynb"))
    else:
        paths = [Path(notebooks)] if isinstance(notebooks, (str, Path)) else [Path(p) for p in notebooks]
    if not paths:
        raise WorkshopError(f"no chapter notebooks ([0-9]*.ipynb) in {notebooks}")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise WorkshopError(f"{', '.join(missing)}: no such notebook (give a folder of chapters or their files)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[Audience, list[Path]] = {a: [] for a in AUDIENCES}
    for path in paths:
        for audience in AUDIENCES:
            target = out / f"{path.stem}-{audience}.ipynb"
            target.write_text(nbformat.writes(workshop_notebook(path, audience)) + "\n", encoding="utf-8")
            written[audience].append(target)
    zips = []
    for audience in AUDIENCES:
        archive = out / ZIP_NAME.format(audience=audience)
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in written[audience]:
                info = zipfile.ZipInfo(path.name, date_time=(2026, 1, 1, 0, 0, 0))  # same bytes every build
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes())
        zips.append(archive)
    return [p for pair in zip(written["student"], written["instructor"]) for p in pair] + zips


def run_student_notebook(chapter: str | Path, profile: dict, out_dir: str | Path, *,
                         kernel_name: str = "python3") -> nbformat.NotebookNode:
    """Run a chapter's student notebook top to bottom on a profile's run, as a participant would.

    Parameters
    ----------
    chapter : str or path
        The source chapter (``notebooks/NN_*.ipynb``).
    profile : dict
        A loaded profile (:func:`funcprune.run.profiles.load_profile`); the parameters the notebook declares are
        passed, ``run_dir`` included.
    out_dir : str or path
        Where the student notebook and its executed copy are written.

    Returns
    -------
    nbformat.NotebookNode
        The executed notebook.

    Raises
    ------
    WorkshopError
        A cell failed (its number, the error and the notebook named), or an exercise cell ran without output.
    """
    import papermill

    from .workflow import REPO_ROOT, notebook_parameters

    chapter, out = Path(chapter), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    student = out / f"{chapter.stem}-student.ipynb"
    student.write_text(nbformat.writes(workshop_notebook(chapter, "student")))
    executed = out / f"{chapter.stem}-student-executed.ipynb"
    params = {k: v for k, v in profile.items() if k in notebook_parameters(student)}
    try:
        papermill.execute_notebook(str(student), str(executed), parameters=params, cwd=str(REPO_ROOT),
                                   kernel_name=kernel_name, progress_bar=False)
    except papermill.PapermillExecutionError as exc:
        raise WorkshopError(f"{student.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}") from None
    nb = nbformat.read(executed, as_version=4)
    for cell in (c for c in nb.cells if EXERCISE_TAG in c.metadata.get("tags", [])):
        if cell.execution_count is None or not cell.outputs:
            raise WorkshopError(f"{student.name}: an exercise cell ran without output: {cell.source[:80]!r}")
    return nb


def run_students(notebooks: str | Path, profile: dict, out_dir: str | Path) -> list[dict]:
    """Every chapter's student notebook run top to bottom on a profile's run (:func:`run_student_notebook`).

    Returns
    -------
    list of dict
        Per chapter: ``notebook``, ``exercises`` (exercise cells executed, each with output) and ``seconds``.

    Raises
    ------
    WorkshopError
        The first notebook that fails, with its cell and error.
    """
    report = []
    for chapter in sorted(Path(notebooks).glob("[0-9]*.ipynb")):
        start = time.perf_counter()
        nb = run_student_notebook(chapter, profile, out_dir)
        report.append({"notebook": chapter.name, "exercises": nb.metadata["funcprune"]["exercises"],
                       "seconds": round(time.perf_counter() - start, 1)})
        print(f"[funcprune.book.workshop] {chapter.stem}-student: {report[-1]['exercises']} exercises run "
              f"({report[-1]['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m funcprune.book.workshop NOTEBOOKS OUT_DIR [--run-on PROFILE]``: write the workshop notebooks.

    With ``--run-on``, every chapter's student notebook is then run top to bottom on that profile's run, as a
    participant would (``make book PROFILE=workshop`` does this).
    """
    parser = argparse.ArgumentParser(prog="python -m funcprune.book.workshop", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", help="folder of chapter notebooks (notebooks/) or one notebook")
    parser.add_argument("out_dir", help="where the student and instructor notebooks are written")
    parser.add_argument("--run-on", metavar="PROFILE",
                        help="run every student notebook on this profile's run (its stages already executed)")
    args = parser.parse_args(argv)
    try:
        written = write_workshop(args.notebooks, args.out_dir)
        print(f"[funcprune.book.workshop] wrote {len(written)} files to {args.out_dir}", file=sys.stderr)
        if args.run_on:
            from ..run.profiles import load_profile

            report = run_students(args.notebooks, load_profile(args.run_on), Path(args.out_dir) / "executed")
            print(f"[funcprune.book.workshop] every student notebook ran on the {args.run_on} run: "
                  f"{sum(r['exercises'] for r in report)} exercises in {len(report)} chapters", file=sys.stderr)
    except WorkshopError as exc:
        print(f"[funcprune.book.workshop] {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
