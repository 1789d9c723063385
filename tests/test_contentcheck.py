"""The content check of the built book: each defect planted in a small page or notebook is found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from funcprune.book import contentcheck
from funcprune.book.contentcheck import check_content, check_page, glue_conflicts, page_content


def _page(body: str) -> str:
    return (f"<!DOCTYPE html><html><head><title>t</title><style>p {{}}</style></head><body>"
            f"<nav>NAV_TOKEN {{x}}</nav><main>{body}</main></body></html>")


def _kinds(body: str, page: str = "chapter.html") -> list[str]:
    return [p.kind for p in check_page(page, _page(body))]


CLEAN = ("<h1>Stage 5</h1><p>The dense model's perplexity is <span class='pasted-text'>12.3</span> on "
         "32 windows (p = 0.18, or p &lt; 0.001).</p><p>None of the methods beat FLAP. End.  Next sentence.</p>"
         "<div class='cell_input'><pre>HF_HUB_OFFLINE = 1\nx = None  # {placeholder}</pre></div>"
         "<div class='cell_output'><table><tr><td>1.0</td><td>NaN</td><td>2.0</td></tr></table></div>"
         "<p>Run <code>make book PROFILE=YOUR_PROFILE</code> with <code>.venv/bin/python</code>.</p>")


def test_a_clean_page_passes() -> None:
    assert check_page("chapter.html", _page(CLEAN)) == []


@pytest.mark.parametrize("body, kind", [
    ("<p>Expected runtime: about <strong>NEEDS_RUNTIME</strong>.</p>", "template-token"),
    ("<p>Set the repository to YOUR-ORG first.</p>", "template-token"),
    ("<p>The ratio is {ratio:.2f} here.</p>", "template-token"),
    ("<p>The value {{ value }} here.</p>", "template-token"),
    ("<p>See {glue:text}`n_models` here.</p>", "template-token"),
    ("<p>TODO: write this.</p>", "template-token"),
    ("<p>the models at ratio <span class='pasted-text'></span> also get longer windows</p>", "empty-value"),
    ("<p>the perplexity is <span class='pasted-text'>nan</span>.</p>", "empty-value"),
    ("<p>the perplexity is <span class='pasted-text'>None</span>.</p>", "empty-value"),
    ("<p>the median is nan over layers</p>", "empty-value"),
    ("<p>the threshold is None here</p>", "empty-value"),
    ("<p>the dense model and the models at ratio  also get the longer windows</p>", "dangling"),
    ("<p>decided (p = &lt; 0.001)</p>", "dangling"),
    ("<p>the corpus ( ) was used</p>", "dangling"),
    ("<p>at ratios , and 0.3</p>", "dangling"),
    ("<p>wiki (exllamav3/conversion/standard_cal_data/wiki.utf8)</p>", "machine-path"),
    ("<p>read from /usr/lib/python3/site-packages/x</p>", "machine-path"),
    ("<div class='cell_output'><pre>/work/main/runs/default</pre></div>", "machine-path"),
    ("<div class='cell_output'><pre>saved to /tmp/abc/x</pre></div>", "machine-path"),
    ("<div class='cell_output'><pre>/root/.cache/funcprune</pre></div>", "machine-path"),
    ("<div class='cell_output'><table><tr><td>NaN</td><td>nan</td><td></td><td>1</td></tr></table></div>",
     "empty-table"),
])
def test_each_planted_defect_is_found(body: str, kind: str) -> None:
    assert kind in _kinds(CLEAN + body)


def test_source_listings_may_show_package_paths() -> None:
    body = "<div class='highlight'><pre>ASSET = 'exllamav3/conversion/standard_cal_data/wiki.utf8'</pre></div>"
    assert "machine-path" in _kinds(body, "api.html")
    assert "machine-path" not in _kinds(body, "_modules/funcprune/assets.html")


def test_prose_excludes_code_and_navigation_and_keeps_glued_values() -> None:
    content = page_content(_page("<p>a <span class='pasted-text'>7</span> b</p><pre>NOT_PROSE</pre>"))
    assert "a 7 b" in content.prose and content.pasted == ["7"]
    assert "NOT_PROSE" in content.visible and "NAV_TOKEN" not in content.prose


def _notebook(path: Path, glued: dict[str, str]) -> Path:
    """A notebook as myst-nb's glue writes it: shown (no prefix) or hidden (display=False: a record prefix)."""
    cells = []
    for i, (key, value) in enumerate(glued.items()):
        prefix = "application/papermill.record/" if i % 2 else ""
        cells.append({"cell_type": "code", "metadata": {}, "source": "glue(...)", "execution_count": 1,
                      "outputs": [{"output_type": "display_data", "data": {f"{prefix}text/plain": repr(value)},
                                   "metadata": {"scrapbook": {"name": key, "mime_prefix": prefix}}}]})
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_a_key_glued_twice_with_two_values(tmp_path: Path) -> None:
    _notebook(tmp_path / "05.ipynb", {"random_ppl_30": "13,531", "dense": "12.3"})
    _notebook(tmp_path / "06.ipynb", {"random_ppl_30": "9,866", "dense": "12.3"})
    _notebook(tmp_path / "07.ipynb", {"other": "1", "dense": "12.4"})  # a hidden glue (display=False) differs
    problems = glue_conflicts(tmp_path)
    assert sorted(p.detail.split("'")[1] for p in problems) == ["dense", "random_ppl_30"]
    assert {p.kind for p in problems} == {"glued-twice"}


def test_the_book_check_reads_pages_and_notebooks(tmp_path: Path) -> None:
    html = tmp_path / "html"
    (html / "_static").mkdir(parents=True)
    (html / "_static" / "x.html").write_text(_page("<p>NEEDS_RUNTIME</p>"))  # assets are not pages
    (html / "index.html").write_text(_page(CLEAN))
    assert check_content(html) == []
    (html / "intro.html").write_text(_page("<p>about NEEDS_RUNTIME</p>"))
    _notebook(tmp_path / "a.ipynb", {"k": "1"})
    _notebook(tmp_path / "b.ipynb", {"k": "2"})
    kinds = sorted(p.kind for p in check_content(html, tmp_path))
    assert kinds == ["glued-twice", "template-token"]
    assert contentcheck.main([str(html), "--executed", str(tmp_path)]) == 1
    with pytest.raises(FileNotFoundError, match="no HTML pages"):
        check_content(tmp_path / "nothing")


@pytest.mark.parametrize("body", [
    "<p>every key neuron with max |z| &gt;= 5 kept first</p>",
    "<p>rows are checked for NaN and inf in the hook</p>",
])
def test_words_about_missing_values_and_inequalities_are_not_defects(body: str) -> None:
    from funcprune.book.contentcheck import check_page

    assert check_page("executed/01.html", f"<html><body><main>{body}</main></body></html>") == []


def test_reference_pages_are_not_checked_as_prose() -> None:
    from funcprune.book.contentcheck import check_page

    body = "<html><body><main><p>tokenizer (transformers tokenizer or None), default=ALL_TASKS, f()</p></main></body></html>"
    assert check_page("api.html", body) == [] and check_page("genindex.html", body) == []
    assert check_page("intro.html", body)
