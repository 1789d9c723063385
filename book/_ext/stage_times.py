"""Sphinx extension: the runtime of each stage, one definition for every page.

A stage's runtime is what this build's record of it says (``book/executed/<notebook>.stage.json``,
written by :func:`funcprune.book.buildcache.stage_times` when the stage ran, kept while it is reused).
Chapters and the teaching page print it with

* the role ``{stage-time}`01_capture_activations``` (e.g. "41 s", "2 min 19 s"), and
* the directive ``stage-times`` (a table of every stage),

so no page carries a number typed by hand that another page contradicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

NOT_RECORDED = "not recorded in this build"


def format_seconds(seconds: float) -> str:
    """``41 s``, ``2 min 19 s``."""
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60} s"


def _times(app: Any) -> dict[str, float]:
    from funcprune.book.buildcache import stage_times

    executed = Path(app.srcdir) / "executed"
    return {Path(name).stem: s for name, s in stage_times(executed).items()} if executed.is_dir() else {}


def _role(name: str, rawtext: str, text: str, lineno: int, inliner: Any, options: Any = None,
          content: Any = None) -> tuple[list[Any], list[Any]]:
    from docutils import nodes

    app = inliner.document.settings.env.app
    seconds = _times(app).get(text.strip().removesuffix(".ipynb"))
    return [nodes.inline(rawtext, NOT_RECORDED if seconds is None else format_seconds(seconds))], []


def _directive() -> Any:
    from docutils import nodes
    from docutils.parsers.rst import Directive

    class StageTimes(Directive):
        """A table: each stage and the time it took when this build ran it."""

        def run(self) -> list[Any]:
            times = _times(self.state.document.settings.env.app)
            if not times:
                return [nodes.paragraph(text=f"Stage times: {NOT_RECORDED}.")]
            table = nodes.table()
            group = nodes.tgroup(cols=2)
            table += group
            group += [nodes.colspec(colwidth=3), nodes.colspec(colwidth=1)]
            head, body = nodes.thead(), nodes.tbody()
            group += [head, body]

            def row(*cells: str) -> Any:
                r = nodes.row()
                for cell in cells:
                    r += nodes.entry("", nodes.paragraph(text=cell))
                return r

            head += row("stage (notebook)", "time in this build")
            for stem, seconds in times.items():
                body += row(stem, format_seconds(seconds))
            body += row("all stages", format_seconds(sum(times.values())))
            return [table]

    return StageTimes


def setup(app: Any) -> dict[str, Any]:
    app.add_role("stage-time", _role)
    app.add_directive("stage-times", _directive())
    return {"parallel_read_safe": True, "parallel_write_safe": True}
