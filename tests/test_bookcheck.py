"""The browser check of the built book, on small planted sites (headless Chromium)."""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

import pytest

from funcprune.book import bookcheck
from funcprune.book.bookcheck import BrowserUnavailable, check_book, find_chromium

# A valid 1x1 PNG.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")

needs_browser = pytest.mark.skipif(
    find_chromium() is None or importlib.util.find_spec("playwright") is None,
    reason="no Chromium (make browser) or no playwright (the book extra): the browser check cannot run")


def _mathjax_dir() -> Path | None:
    """MathJax 3 as shipped by the sphinx-mathjax-offline package (what the book bundles)."""
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "static" / "mathjax"


def _page(body: str, head: str = "") -> str:
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'>{head}</head><body>{body}</body></html>"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A clean two-page site: an image, links with anchors, code showing TeX, typeset math."""
    html = tmp_path / "html"
    (html / "_images").mkdir(parents=True)
    (html / "_images" / "dot.png").write_bytes(PNG)
    head = ""
    body = ""
    mathjax = _mathjax_dir()
    if mathjax is not None:
        (html / "_static").mkdir()
        (html / "_static" / "mathjax").symlink_to(mathjax)
        head = "<script async src='_static/mathjax/tex-chtml.js'></script>"
        body = "<p>The score is <span class='math'>\\(s_j = \\max |z|\\)</span>.</p>"
    (html / "index.html").write_text(_page(
        f"<h1 id='top'>Book</h1>{body}<img src='_images/dot.png' alt='dot'>"
        "<p><a href='chapter/one.html#results'>results</a> <a href='#top'>top</a> "
        "<a href='https://example.org/paper'>paper</a> <a href='chapter/'>chapter</a></p>"
        "<pre>re.compile(r'\\(x\\)')  # code may show TeX delimiters</pre>", head))
    (html / "chapter").mkdir()
    (html / "chapter" / "one.html").write_text(_page(
        "<h2 id='results'>Results</h2><p>Run directory: runs/default</p><a href='../index.html'>home</a>"))
    (html / "chapter" / "index.html").write_text(_page("<p>Chapter</p>"))
    return html


def _plant(site: Path, body: str) -> list[tuple[str, str]]:
    (site / "planted.html").write_text(_page(body))
    return [(p.page, p.kind) for p in check_book(site)]


@needs_browser
def test_clean_site_passes_and_is_photographed(site: Path, tmp_path: Path) -> None:
    shots = tmp_path / "shots"
    (site / "_modules").mkdir()
    (site / "_modules" / "code.html").write_text(_page("<pre>def f(): pass</pre><a href='../index.html'>up</a>"))
    problems = check_book(site, screenshots=shots)
    assert problems == []
    names = sorted(p.name for p in shots.iterdir())  # a source listing is checked, not photographed
    assert names == sorted(f"{page}.{view}.png" for page in ("index", "chapter__one", "chapter__index")
                           for view in ("desktop", "phone"))
    assert all((shots / n).read_bytes().startswith(b"\x89PNG") for n in names)
    (site / "_modules" / "code.html").write_text(_page("<img src='../_images/gone.png' alt='gone'>"))
    assert ("_modules/code.html", "broken-image") in [(p.page, p.kind) for p in check_book(site)]


@needs_browser
def test_math_without_mathjax_is_raw_tex(site: Path) -> None:
    found = _plant(site, "<p>Formula: <span class='math'>\\(\\mathrm{act}(W x)\\)</span></p>")
    assert found == [("planted.html", "raw-tex")]


@needs_browser
def test_display_math_dollars_are_raw_tex(site: Path) -> None:
    assert _plant(site, "<p>$$ s = \\max |z| $$</p>") == [("planted.html", "raw-tex")]


@needs_browser
def test_absolute_path_of_the_build_machine(site: Path) -> None:
    found = _plant(site, f"<pre>ActivationStore('{site.parent}/runs/default/activations')</pre>")
    assert found and set(found) == {("planted.html", "machine-path")}


@needs_browser
def test_home_folder_path_in_an_attribute(site: Path) -> None:
    found = _plant(site, "<a title='/home/alice/funcprune/runs' href='index.html'>runs</a>")
    assert found == [("planted.html", "machine-path")]


@needs_browser
def test_broken_image(site: Path) -> None:
    found = set(_plant(site, "<img src='_images/missing.png' alt='gone'>"))
    assert found == {("planted.html", "broken-image"), ("planted.html", "missing-file")}


@needs_browser
def test_broken_internal_link_and_anchor(site: Path) -> None:
    (site / "planted.html").write_text(_page(
        "<a href='chapter/two.html'>two</a> <a href='chapter/one.html#nowhere'>nowhere</a>"))
    problems = check_book(site)
    assert [(p.page, p.kind) for p in problems] == [("planted.html", "broken-link")] * 2
    assert "chapter/two.html does not exist" in problems[0].detail
    assert "#nowhere" in problems[1].detail


@needs_browser
def test_request_outside_the_build_folder_is_blocked(site: Path) -> None:
    found = set(_plant(site, "<script src='https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js'></script>"))
    assert found == {("planted.html", "outside-request")}


@needs_browser
def test_traceback_in_an_output(site: Path) -> None:
    found = _plant(site, "<div class='cell_output'><pre>Traceback (most recent call last):\n"
                         "  ValueError: bad</pre></div>")
    assert found == [("planted.html", "error-output")]


def test_no_browser_is_a_clear_skip(site: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FUNCPRUNE_CHROMIUM", str(site / "no-such-chromium"))
    assert find_chromium() is None
    with pytest.raises(BrowserUnavailable, match="make browser"):
        check_book(site)
    assert bookcheck.main([str(site), "--no-screenshots"]) == 0
    assert "SKIPPED" in capsys.readouterr().err
    assert bookcheck.main([str(site), "--no-screenshots", "--require-browser"]) == 1


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make book"):
        check_book(tmp_path)


@needs_browser
@pytest.mark.slow
def test_book_config_renders_math_offline(tmp_path: Path) -> None:
    """A one-page Jupyter Book with the book's own _config.yml: MathJax served locally, formulas typeset."""
    import shutil
    import subprocess
    import sys

    from funcprune.book.workflow import REPO_ROOT

    book = tmp_path / "book"
    book.mkdir()
    for name in ("_config.yml", "references.bib"):
        shutil.copy(REPO_ROOT / "book" / name, book / name)
    shutil.copytree(REPO_ROOT / "book" / "_ext", book / "_ext")  # the config's local extensions
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    (book / "intro.md").write_text("# Formulas\n\nThe activation $\\mathrm{act}(W_\\text{gate} x)$ and the score\n"
                                   "$s_j = \\max |z|$.\n\n$$ z = \\frac{x - \\mu}{\\sigma} $$\n")
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    subprocess.run([str(jupyter_book), "build", str(book), "--warningiserror"], check=True,
                   capture_output=True, timeout=600)
    html = book / "_build" / "html"
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert "cdn.jsdelivr.net" not in (html / "intro.html").read_text()
    assert [p for p in check_book(html) if p.fatal] == []


def test_display_path_never_shows_the_builder_file_system(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    from funcprune.provenance import display_path
    from funcprune.book.workflow import REPO_ROOT

    monkeypatch.setenv("FUNCPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert display_path(REPO_ROOT / "runs" / "default" / "activations") == "runs/default/activations"
    assert display_path(REPO_ROOT) == "."
    assert display_path("runs/tiny") == "runs/tiny"
    assert display_path(tmp_path / "cache" / "models" / "m") == "$FUNCPRUNE_CACHE/models/m"
    assert display_path(tmp_path / "home" / "runs" / "x") == "~/runs/x"
    assert display_path("/srv/build/runs/activations") == "activations"


def test_store_repr_shows_the_path_relative_to_the_repository(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    import funcprune.book.workflow
    from funcprune.store import ActivationWriter

    identity = {"model": {"name": "synthetic"}, "dataset": "planted", "text_ids": [0], "dtype": "float32",
                "kinds": ["act", "up"], "layers": [0], "widths": {"0": 3}, "max_tokens": 4,
                "drop_first_token": False}
    writer = ActivationWriter(tmp_path / "runs" / "x" / "activations", identity)
    writer.append({(0, kind): np.ones((4, 3), dtype=np.float32) for kind in ("act", "up")},
                  np.zeros(4), np.zeros(4, dtype=np.int32))
    store = writer.finish()
    monkeypatch.setattr(funcprune.provenance, "REPO_ROOT", tmp_path)  # as if the repository were tmp_path
    text = repr(store)
    assert text.startswith("ActivationStore('runs/x/activations', model='synthetic', layers=1, tokens=4")
    assert str(tmp_path) not in text


def test_injected_parameters_folded_into_the_parameters_cell(tmp_path: Path) -> None:
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from funcprune.book.workflow import REPO_ROOT, fold_injected_parameters

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}})
    source = ('run_dir = "runs/default"  # directory shared by all stages # not a second comment\n'
              "n_texts = 16  # number of texts\n"
              "layers = [3,\n          15]  # layers, on two lines\n"
              "title = \"é\"  # unicode before the value shifts byte offsets\n"
              "kept = 1.5  # not passed: unchanged")
    nb.cells = [nbformat.v4.new_markdown_cell("# T"),
                nbformat.v4.new_code_cell(source, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(run_dir)")]
    params = {"run_dir": str(REPO_ROOT / "runs" / "tiny"), "n_texts": 4, "layers": [1, 2], "title": "ü"}
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    nbformat.write(parameterize_notebook(load_notebook_node(str(path)), params), path)  # as papermill does
    assert fold_injected_parameters(path, params, profile="tiny")
    folded = nbformat.read(path, as_version=4)
    injected = next(c for c in folded.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "remove-cell" in injected.metadata.tags
    shown = next(c for c in folded.cells if "parameters" in c.metadata.get("tags", []))
    assert shown.source.startswith("# Parameters of profile 'tiny'")
    assert str(REPO_ROOT) not in shown.source
    assert "# directory shared by all stages # not a second comment" in shown.source
    assert "# layers, on two lines" in shown.source
    namespace: dict = {}
    exec(shown.source, namespace)
    assert (namespace["run_dir"], namespace["n_texts"], namespace["layers"], namespace["title"],
            namespace["kept"]) == ("runs/tiny", 4, [1, 2], "ü", 1.5)
    assert (REPO_ROOT / namespace["run_dir"]) == Path(params["run_dir"])  # the same folder from the repo
    plain = tmp_path / "plain.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), plain)
    before = plain.read_text()
    assert not fold_injected_parameters(plain, {})
    assert plain.read_text() == before


def test_kernels_receive_repository_paths_relative() -> None:
    """Notebooks run in the repository, so a relative run_dir is the same folder and prints no machine path."""
    from funcprune.book.workflow import REPO_ROOT, _repo_relative

    assert _repo_relative(str(REPO_ROOT / "runs" / "default")) == "runs/default"
    assert (REPO_ROOT / _repo_relative(str(REPO_ROOT / "runs" / "default"))).resolve() == \
        (REPO_ROOT / "runs" / "default").resolve()
    assert _repo_relative("/srv/elsewhere/run") == "/srv/elsewhere/run"  # outside: still absolute, still valid
    assert _repo_relative([3, 15]) == [3, 15] and _repo_relative("wiki") == "wiki"


@needs_browser
def test_traceback_quoted_in_source_code_is_not_an_error(site: Path) -> None:
    """Sphinx's source pages (viewcode) may quote the phrase in code; only outputs and prose count."""
    assert _plant(site, "<div class='highlight'><pre>if 'Traceback (most recent call last)' in text:</pre></div>") == []


@needs_browser
def test_table_wider_than_the_content_column(site: Path) -> None:
    cells = "".join(f"<td>column {i} value 12345.678</td>" for i in range(30))
    assert ("planted.html", "wide-table") in _plant(site, f"<main><table><tr>{cells}</tr></table></main>")


@needs_browser
def test_page_wider_than_a_phone_screen(site: Path) -> None:
    kinds = _plant(site, "<main><p style='white-space: nowrap'>" + "word " * 200 + "</p></main>")
    assert ("planted.html", "phone-overflow") in kinds


@needs_browser
def test_wide_content_inside_a_scrolling_box_is_not_an_overflow(site: Path) -> None:
    kinds = _plant(site, "<main><div style='overflow-x: auto'><p style='white-space: nowrap'>"
                         + "word " * 200 + "</p></div></main>")
    assert ("planted.html", "phone-overflow") not in kinds
