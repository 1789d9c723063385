"""Sphinx extension: launch buttons of a chapter open its source notebook, not the executed copy.

The chapters are built from executed copies in ``book/executed/`` (written at build time, not
committed), so the links sphinx-book-theme makes for Binder, JupyterHub and Colab would point at
files the repository does not hold. This rewrites them to ``notebooks/<name>.ipynb``, the committed
source without outputs, which a reader runs top to bottom. The download button keeps serving the
executed copy (with outputs).
"""

from __future__ import annotations

from typing import Any

EXECUTED = "executed/"
SOURCES = "notebooks/"


def _point_at_sources(app: Any, pagename: str, templatename: str, context: dict[str, Any],
                      doctree: Any) -> None:
    if not pagename.startswith(EXECUTED):
        return
    book_path = app.config.html_theme_options.get("path_to_docs", "").strip("/")
    executed = f"{book_path}/{EXECUTED}" if book_path else EXECUTED
    for button in context.get("header_buttons", []):
        if button.get("label") == "launch-buttons":
            for link in button.get("buttons", []):
                if "url" in link:
                    link["url"] = link["url"].replace(executed, SOURCES)


def setup(app: Any) -> dict[str, Any]:
    # sphinx-book-theme adds the launch buttons at priority 501; rewrite them right after.
    app.connect("html-page-context", _point_at_sources, priority=502)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
