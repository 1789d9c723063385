"""The built book's content as a careful reader checks it: no machinery in the prose, one value per number.

:func:`check_content` reads every page of the built HTML (no browser needed) and the executed
notebooks, and reports:

* ``template-token``: an unfilled placeholder or template token in the prose: an
  ALL_CAPS_TOKEN such as ``NEEDS_RUNTIME``, ``YOUR-ORG``, ``TODO``/``FIXME``/``TBD``, a
  ``{name}`` or ``{{ name }}`` left by a format string or template, or an unrendered
  ``{glue:text}`` role;
* ``empty-value``: a glued value (``{glue:text}``, rendered as ``span.pasted-text``) that is
  empty, ``nan``, ``None``, ``inf`` or ``<NA>``, or such a word anywhere in the prose;
* ``dangling``: what an empty value leaves behind in a sentence: two spaces between words
  (``"ratio  also"``), two relations in a row (``"p = < 0.001"``), empty brackets
  (``"( )"``), a space before a comma or a full stop;
* ``glued-twice``: one glue key given two different values, in one executed notebook or in
  two (a name means one quantity in the whole book);
* ``empty-table``: a table of a cell output whose cells are mostly ``NaN`` or empty;
* ``machine-path``: a path of the build machine or of the package internals in what the
  reader sees (``site-packages``, ``exllamav3/...``, ``.venv/lib``, ``/work``, ``/tmp``, ``/root``,
  ``/home``); source listings (``_modules/``) are exempt, and so is a command such as
  ``.venv/bin/pip`` that a reader types.

Prose is the text of a page outside code, cell inputs, cell outputs, math and scripts; glued
values are part of it. Tables wider than the page and pages that overflow a 390-pixel screen
need a layout engine: :mod:`funcprune.book.bookcheck` measures them in Chromium (``wide-table``,
``phone-overflow``). Figures with an empty axis are refused where they are drawn
(:func:`funcprune.figures.require_data`).

Command line (``make book`` runs it beside the browser check)::

    python -m funcprune.book.contentcheck book/_build/html --executed book/executed
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator, Sequence

from .bookcheck import SKIP_DIRS, UNPHOTOGRAPHED, Problem

__all__ = ["PageContent", "check_content", "check_page", "glue_conflicts", "glue_values", "page_content"]

#: Elements whose text is not prose (code, math, scripts).
CODE_TAGS = {"pre", "code", "script", "style", "noscript", "textarea", "math", "mjx-container", "svg", "kbd", "samp"}
#: Classes whose subtree is not prose: code, cell inputs and outputs, typeset math.
CODE_CLASSES = {"highlight", "cell_input", "cell_output", "output", "math", "MathJax", "sig", "headerlink",
                "toctree-wrapper", "bd-toc", "bd-sidebar-primary", "bd-sidebar-secondary", "bd-header",
                "bd-footer", "bd-footer-article", "prev-next-area", "header-article", "bd-header-article",
                "footnote-reference", "citation"}
#: Elements that never hold text and never close.
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
#: Words that mean a value is missing.
MISSING = re.compile(r"^\s*(?:nan|NaN|NAN|None|none|null|inf|-inf|<NA>|NaT|N/A|)\s*$")
#: Unfilled template tokens in prose.
TOKENS = [
    ("ALL_CAPS token", re.compile(r"(?<![\w-])[A-Z][A-Z0-9]+(?:_[A-Z0-9]+)+(?![\w-])")),
    ("placeholder", re.compile(r"\bYOUR[-_][A-Z][A-Z-]*\b|\b(?:TODO|FIXME|TBD|XXX)\b")),
    ("format field", re.compile(r"\{\{?\s*[A-Za-z_][\w.\[\]'\"]*(?::[^{}\s]*)?\s*\}?\}")),
    ("unrendered role", re.compile(r"\{(?:glue|doc|ref|cite|term)(?::\w+)?\}`")),
]
#: Missing-value words inside a sentence (``None`` only where it cannot start a sentence).
MISSING_WORDS = re.compile(
    r"(?:(?<=[=:(] )|(?<=[=:(])|(?<=\bis )|(?<=\bare )|(?<=\bof )|(?<=\bwas )|(?<=\bat )|(?<=\bto ))"
    r"(?:nan|NaN|-?inf|<NA>|NaT|None)(?![\w-])"  # where a value stands: "is nan", "= None", "(inf"
    r"|(?<![\w.-])(?:nan|NaN|inf)(?= (?:times|x\b|%))")  # a missing number with its unit: "nan times FLAP's"
#: What an empty value leaves in a sentence.
DANGLING = [
    ("two spaces between words", re.compile(r"(?<=[\w%)])[ \u00a0]{2,}(?=[\w(])")),
    ("two relations in a row", re.compile(r"(?<![<>=!])(?:>=|<=|==|!=|[=<>≤≥])\s+(?:>=|<=|==|!=|[=<>≤≥])")),
    ("empty brackets", re.compile(r"\(\s*\)|\[\s*\]|\(\s*[,;:]\s*\)")),
    ("space before punctuation", re.compile(r"(?<=\w)[ \u00a0]+[,;](?=\s)|(?<=\w)[ \u00a0]+\.(?=\s|$)")),
]
#: Paths of a build machine or the package internals that a page must not show.
PATHS = re.compile(r"(?:site-packages|dist-packages|(?<![\w/])exllamav3/[\w./-]+|\.venv/lib\b"
                   r"|(?<![\w.])/(?:work|tmp|root|home|Users|mnt|opt)/[\w.@+-]+)")
#: Generated reference pages (API, indexes, search, source listings): their prose is docstrings and signatures,
#: where ``None``, ``()`` and constant names are the right words, so the prose checks skip them (the path check
#: still reads every page but the source listings).
REFERENCE_PAGES: tuple[str, ...] = ("api.html", "genindex.html", "py-modindex.html", "search.html", "_modules/")
#: Share of missing cells above which an output table is reported as empty.
EMPTY_TABLE_SHARE = 0.5


class PageContent:
    """What a reader sees on one page, split by where it is.

    Attributes
    ----------
    prose : str
        Text outside code, cell inputs and outputs, math, navigation and scripts (each such
        element stands as one "\u2026"), one line per block, other whitespace kept as written.
    visible : str
        Every text a reader sees, outputs included (scripts and styles excluded).
    pasted : list of str
        The text of each glued value (``span.pasted-text``) in the prose.
    tables : list of list of str
        The cells of each table inside a cell output.
    """

    def __init__(self) -> None:
        self.prose = ""
        self.visible = ""
        self.pasted: list[str] = []
        self.tables: list[list[str]] = []


class _Walker(HTMLParser):
    """One pass over a page: a stack of open elements, each marked prose or not."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool, bool, bool]] = []  # tag, not prose, hidden, in output
        self.prose: list[str] = []
        self.visible: list[str] = []
        self.pasted: list[list[str]] = []
        self.pasted_depth: list[int] = []
        self.tables: list[list[str]] = []
        self.cell: list[str] | None = None

    def _flags(self) -> tuple[bool, bool, bool]:
        if not self.stack:
            return False, False, False
        _, code, hidden, output = self.stack[-1]
        return code, hidden, output

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID_TAGS:
            return
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        code, hidden, output = self._flags()
        output = output or bool(classes & {"cell_output", "output"})
        code = code or tag in CODE_TAGS or bool(classes & CODE_CLASSES) or tag in ("nav", "header", "footer")
        hidden = hidden or tag in ("script", "style", "noscript", "head", "title") or "hidden" in a
        if code and not self._flags()[0] and not hidden:
            self.prose.append("\u2026")  # code or math stands in the sentence as one word: "\u2026"
        self.stack.append((tag, code, hidden, output))
        if "pasted-text" in classes and not code:
            self.pasted.append([])
            self.pasted_depth.append(len(self.stack))
        if tag == "table" and output:
            self.tables.append([])
        if tag in ("td", "th") and output and self.tables:
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID_TAGS or tag not in (entry[0] for entry in self.stack):
            return
        while self.stack:  # tolerate unclosed elements (<p>, <li>) as browsers do
            open_tag = self.stack.pop()[0]
            if self.pasted_depth and len(self.stack) < self.pasted_depth[-1]:
                self.pasted_depth.pop()
            if open_tag in ("td", "th") and self.cell is not None:
                self.tables[-1].append("".join(self.cell).strip())
                self.cell = None
            if open_tag == tag:
                break
        if tag in ("p", "li", "div", "td", "th", "h1", "h2", "h3", "h4", "dd", "dt", "section", "table", "tr"):
            self.prose.append("\n")
            self.visible.append("\n")

    def handle_data(self, data: str) -> None:
        code, hidden, _ = self._flags()
        if hidden:
            return
        self.visible.append(data)
        if self.cell is not None:
            self.cell.append(data)
        if not code:
            self.prose.append(data)
            if self.pasted_depth:
                self.pasted[-1].append(data)


def page_content(html: str) -> PageContent:
    """Split a page's text into prose, visible text, glued values and output tables.

    Examples
    --------
    >>> c = page_content("<p>ratio <span class='pasted-text'></span> also <code>x  y</code></p>")
    >>> c.prose.strip(), c.pasted
    ('ratio  also \u2026', [''])
    """
    walker = _Walker()
    walker.feed(html)
    walker.close()
    content = PageContent()
    content.prose = re.sub(r"[ \t]*\n[ \t\n]*", "\n", "".join(walker.prose))
    content.visible = "".join(walker.visible)
    content.pasted = ["".join(p) for p in walker.pasted]
    content.tables = walker.tables
    return content


def _snippet(text: str, start: int, end: int, width: int = 40) -> str:
    return repr(text[max(0, start - width):end + width].replace("\n", " "))


def check_page(page: str, html: str) -> list[Problem]:
    """Every content problem of one page (see the module docstring for the kinds).

    Parameters
    ----------
    page : str
        The page's path relative to the build folder (names the problems; ``_modules/``
        pages are exempt from the path check).
    html : str
        The page's HTML.

    Returns
    -------
    list of Problem
    """
    content = page_content(html)
    problems: list[Problem] = []
    reference = page.startswith(REFERENCE_PAGES)  # generated: "None", "()" and CONSTANT names are right there
    lines = content.prose.split("\n")  # one line per block: a match never spans two paragraphs
    for value in content.pasted:
        if MISSING.match(value):
            problems.append(Problem(page, "empty-value", f"a glued value is {value.strip()!r}" if value.strip()
                                    else "a glued value is empty"))
    for line in [] if reference else lines:
        for what, pattern in TOKENS:
            for m in pattern.finditer(line):
                problems.append(Problem(page, "template-token", f"{what} {m.group()!r} in "
                                                                f"{_snippet(line, *m.span())}"))
        for m in MISSING_WORDS.finditer(line):
            problems.append(Problem(page, "empty-value", f"{m.group()!r} in prose: {_snippet(line, *m.span())}"))
        for what, pattern in DANGLING:
            for m in pattern.finditer(line):
                problems.append(Problem(page, "dangling", f"{what}: {_snippet(line, *m.span())}"))
    for table in content.tables:
        missing = sum(bool(MISSING.match(cell)) for cell in table)
        if table and missing / len(table) > EMPTY_TABLE_SHARE:
            problems.append(Problem(page, "empty-table", f"{missing} of {len(table)} cells of an output table "
                                                         f"are empty or NaN"))
    if not page.startswith(UNPHOTOGRAPHED):
        seen: set[str] = set()
        for m in PATHS.finditer(content.visible):
            if m.group() not in seen:
                seen.add(m.group())
                problems.append(Problem(page, "machine-path", f"{m.group()!r} in "
                                                              f"{_snippet(content.visible, *m.span())}"))
    return problems


def glue_values(executed: str | Path | Sequence[str | Path]) -> dict[str, list[tuple[str, str]]]:
    """Every value glued in executed notebooks, by key: ``{key: [(notebook, text), ...]}``.

    Parameters
    ----------
    executed : path or sequence of paths
        A folder of executed notebooks (``book/executed``) or notebook files.

    Returns
    -------
    dict
        The ``text/plain`` form of each glued value (myst-nb's ``glue`` output).
    """
    if isinstance(executed, (str, Path)):
        folder = Path(executed)
        paths = sorted(folder.glob("*.ipynb")) if folder.is_dir() else [folder]
    else:
        paths = [Path(p) for p in executed]
    values: dict[str, list[tuple[str, str]]] = {}
    for path in paths:
        notebook = json.loads(path.read_text())
        for cell in notebook.get("cells", []):
            for output in cell.get("outputs", []) or []:
                meta = (output.get("metadata") or {}).get("scrapbook") or {}
                if "name" not in meta:
                    continue
                prefix = meta.get("mime_prefix") or ""  # display=False: "application/papermill.record/"
                data = {key.removeprefix(prefix): value for key, value in (output.get("data") or {}).items()}
                plain = data.get("text/plain", "")
                text = "".join(plain) if isinstance(plain, list) else str(plain)
                if data.get("image/png") is not None:
                    text = "<figure>"
                values.setdefault(meta["name"], []).append((path.name, text))
    return values


def glue_conflicts(executed: str | Path | Sequence[str | Path]) -> list[Problem]:
    """``glued-twice`` problems: a key glued with two different values (figures excepted)."""
    problems = []
    for key, entries in glue_values(executed).items():
        texts = dict.fromkeys(text for _, text in entries if text != "<figure>")
        if len(texts) > 1:
            where = "; ".join(f"{nb}: {text[:60]}" for nb, text in entries)
            problems.append(Problem(entries[0][0], "glued-twice", f"key {key!r} has {len(texts)} values ({where})"))
    return problems


def _pages(html_dir: Path) -> Iterator[Path]:
    for path in sorted(html_dir.rglob("*.html")):
        if not SKIP_DIRS & set(path.relative_to(html_dir).parts[:-1]):
            yield path


def check_content(html_dir: str | Path, executed: str | Path | None = None) -> list[Problem]:
    """Check every page of a built book, and the glue of its executed notebooks.

    Parameters
    ----------
    html_dir : str or path
        The built HTML folder (``book/_build/html``).
    executed : str or path, optional
        The executed notebooks (``book/executed``) for the ``glued-twice`` check.

    Returns
    -------
    list of Problem
        Empty when the content is clean.

    Raises
    ------
    FileNotFoundError
        If ``html_dir`` holds no page.
    """
    html_dir = Path(html_dir)
    pages = list(_pages(html_dir)) if html_dir.is_dir() else []
    if not pages:
        raise FileNotFoundError(f"no HTML pages under {html_dir}; build the book first (make book)")
    problems: list[Problem] = []
    for path in pages:
        problems += check_page(path.relative_to(html_dir).as_posix(), path.read_text(errors="replace"))
    if executed is not None:
        problems += glue_conflicts(executed)
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print every problem, exit 1 when there is one."""
    parser = argparse.ArgumentParser(prog="python -m funcprune.book.contentcheck", description=__doc__.split("\n")[0])
    parser.add_argument("html_dir", nargs="?", default="book/_build/html")
    parser.add_argument("--executed", default=None, help="folder of executed notebooks (glue checked across them)")
    args = parser.parse_args(argv)
    try:
        problems = check_content(args.html_dir, args.executed)
    except FileNotFoundError as exc:
        print(f"[contentcheck] {exc}", file=sys.stderr)
        return 1
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"[contentcheck] {len(problems)} problem(s) in {args.html_dir}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
