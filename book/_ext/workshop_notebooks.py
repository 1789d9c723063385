"""Sphinx extension: the student and instructor notebooks of every chapter, written into the built site.

At the start of an HTML build, :func:`funcprune.book.workshop.write_workshop` turns every chapter of
``notebooks/`` (read only) into ``_build/html/downloads/<chapter>-student.ipynb`` (exercises as runnable
cells tagged ``exercise``, no solutions, no outputs) and ``<chapter>-instructor.ipynb`` (the solutions after
their exercises), with a zip file of each set; the executed notebook of this build is copied beside them as
``<chapter>-executed.ipynb``. The directive ``{workshop-notebooks}`` (teaching page) lists them in a table, and
each chapter's download menu gets a student and an instructor entry. A chapter whose exercises cannot be
converted fails the build with the notebook named.
"""

from __future__ import annotations

import posixpath
import shutil
from pathlib import Path
from typing import Any

import nbformat

from funcprune.book.workshop import AUDIENCES, ZIP_NAME, write_workshop

DOWNLOADS = "downloads"
EXECUTED = "executed"


def _chapters(app: Any) -> list[Path]:
    """The source notebooks of the chapters (``notebooks/`` beside the book's folder)."""
    return sorted((Path(app.srcdir).parent / "notebooks").glob("[0-9]*.ipynb"))


def _title(path: Path) -> str:
    """A chapter's title: the text of its first level-1 heading, else its file name."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        for line in cell.source.splitlines() if cell.cell_type == "markdown" else []:
            if line.startswith("# "):
                return line[2:].strip()
    return path.stem


def _write(app: Any) -> None:
    """Write the workshop notebooks (and copies of the executed ones) into ``<outdir>/downloads``."""
    app.workshop_notebooks = []
    if app.builder.format != "html":
        return
    chapters = _chapters(app)
    if not chapters:
        return
    out = Path(app.outdir) / DOWNLOADS
    write_workshop(chapters, out)
    for path in chapters:
        executed = Path(app.srcdir) / EXECUTED / path.name
        if executed.is_file():
            shutil.copyfile(executed, out / f"{path.stem}-{EXECUTED}.ipynb")
        app.workshop_notebooks.append({"stem": path.stem, "title": _title(path), "executed": executed.is_file()})


def _href(docname: str, file_name: str) -> str:
    """The relative URL of ``downloads/<file_name>`` from the page of ``docname``."""
    return posixpath.relpath(f"{DOWNLOADS}/{file_name}", posixpath.dirname(docname) or ".")


def _directive() -> Any:
    from docutils import nodes
    from docutils.parsers.rst import Directive

    def link(docname: str, file_name: str, text: str) -> Any:
        para = nodes.paragraph()
        para += nodes.reference("", text, refuri=_href(docname, file_name), classes=["download"])
        return para

    class WorkshopNotebooks(Directive):
        """A table of every chapter's student, instructor and executed notebook, with the two zip files."""

        def run(self) -> list[Any]:
            env = self.state.document.settings.env
            chapters = getattr(env.app, "workshop_notebooks", [])
            if not chapters:
                para = nodes.paragraph(text="No workshop notebooks in this build (no chapters in notebooks/).")
                return [nodes.note("", para)]
            docname = env.docname
            table = nodes.table(classes=["workshop-notebooks"])
            group = nodes.tgroup(cols=4)
            table += group
            group += [nodes.colspec(colwidth=w) for w in (40, 20, 20, 20)]
            head = nodes.thead()
            group += head
            body = nodes.tbody()
            group += body
            header = nodes.row()
            for text in ("chapter", "student (no solutions)", "instructor (with solutions)", "executed (outputs)"):
                header += nodes.entry("", nodes.paragraph(text=text))
            head += header
            for chapter in chapters:
                row = nodes.row()
                row += nodes.entry("", nodes.paragraph(text=chapter["title"]))
                for audience in AUDIENCES:
                    row += nodes.entry("", link(docname, f"{chapter['stem']}-{audience}.ipynb", ".ipynb"))
                row += nodes.entry("", link(docname, f"{chapter['stem']}-{EXECUTED}.ipynb", ".ipynb")
                                   if chapter["executed"] else nodes.paragraph(text="not in this build"))
                body += row
            every = nodes.paragraph()
            every += nodes.Text("Every chapter at once: ")
            every += nodes.reference("", "student notebooks (zip)",
                                     refuri=_href(docname, ZIP_NAME.format(audience="student")))
            every += nodes.Text(", ")
            every += nodes.reference("", "instructor notebooks (zip)",
                                     refuri=_href(docname, ZIP_NAME.format(audience="instructor")))
            every += nodes.Text(".")
            return [table, every]

    return WorkshopNotebooks


def _download_menu(app: Any, pagename: str, templatename: str, context: dict[str, Any], doctree: Any) -> None:
    """Add the chapter's student and instructor notebooks to its download menu."""
    stems = {c["stem"] for c in getattr(app, "workshop_notebooks", [])}
    stem = pagename.split("/", 1)[1] if pagename.startswith(f"{EXECUTED}/") else None
    if stem not in stems:
        return
    for button in context.get("header_buttons", []):
        if button.get("label") == "download-buttons":
            for audience in AUDIENCES:
                button["buttons"].insert(1 if audience == "student" else 2, {
                    "type": "link", "url": context["pathto"](f"{DOWNLOADS}/{stem}-{audience}.ipynb", 1),
                    "text": f".ipynb ({audience})", "icon": "fas fa-chalkboard-user" if audience == "instructor"
                    else "fas fa-pen", "label": f"download-{audience}-button",
                    "tooltip": "Exercises as runnable cells, no outputs" + (
                        ", with the solutions" if audience == "instructor" else ", no solutions")})


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", _write)
    app.add_directive("workshop-notebooks", _directive())
    # sphinx-book-theme adds the download menu at the default priority (500); add to it afterwards.
    app.connect("html-page-context", _download_menu, priority=503)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
