"""The build cache: a stage re-runs only when its inputs change (tiny fake notebooks, no model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest

from funcprune.book import buildcache
from funcprune.book.workflow import run_notebooks


def _notebook(path: Path, stage: str, params: dict[str, Any]) -> Path:
    """A stage notebook: a parameters cell and a cell writing ``run_dir/<stage>/done.txt``."""
    nb = nbformat.v4.new_notebook()
    literal = "\n".join(f"{k} = {v!r}  # {k}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(literal)
    cell.metadata["tags"] = ["parameters"]
    body = (f"from pathlib import Path\nout = Path(run_dir) / {stage!r}\nout.mkdir(exist_ok=True)\n"
            "(out / 'done.txt').write_text(repr(sorted(locals())))\n")
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {stage}"), cell, nbformat.v4.new_code_cell(body)]
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["kernelspec"] = kernelspec
    nbformat.write(nb, path)
    return path


@pytest.fixture
def stages(tmp_path: Path) -> list[Path]:
    src = tmp_path / "notebooks"
    src.mkdir()
    return [_notebook(src / "01_a.ipynb", "a", {"run_dir": "x", "alpha": 1}),
            _notebook(src / "02_b.ipynb", "b", {"run_dir": "x", "beta": 2}),
            _notebook(src / "03_c.ipynb", "c", {"run_dir": "x", "gamma": 3})]


class FakePapermill:
    """Stands in for ``papermill.execute_notebook``: writes the stage's output, records the call."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: str | None = None

    def __call__(self, source: str, output: str, parameters: dict[str, Any], **_: Any) -> None:
        name = Path(source).name
        self.calls.append(name)
        nb = nbformat.read(source, as_version=4)
        nb.cells.append(nbformat.v4.new_markdown_cell(json.dumps(parameters, sort_keys=True)))
        nbformat.write(nb, output)
        if name == self.fail:
            raise RuntimeError(f"{name} failed")
        (Path(parameters["run_dir"]) / name.split(".")[0]).mkdir(exist_ok=True)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakePapermill:
    fake = FakePapermill()
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    return fake


def _build(stages: list[Path], tmp_path: Path, fake: FakePapermill, **params: Any) -> list[str]:
    """Run the stages with a profile; return the notebooks that were executed."""
    fake.calls.clear()
    profile = {"run_dir": str(tmp_path / "run"), "alpha": 1, "beta": 2, "gamma": 3, **params}
    report = run_notebooks(profile, tmp_path / "executed", notebooks=stages)
    assert [r["ran"] for r in report] == [r["notebook"] in fake.calls for r in report]
    return fake.calls[:]


def test_unchanged_build_runs_nothing(stages: list[Path], tmp_path: Path, fake: FakePapermill) -> None:
    assert _build(stages, tmp_path, fake) == ["01_a.ipynb", "02_b.ipynb", "03_c.ipynb"]
    assert _build(stages, tmp_path, fake) == []
    assert set(buildcache.stage_times(tmp_path / "executed")) == {"01_a.ipynb", "02_b.ipynb", "03_c.ipynb"}


def test_changed_parameter_reruns_that_stage_and_later_ones(stages: list[Path], tmp_path: Path,
                                                            fake: FakePapermill) -> None:
    _build(stages, tmp_path, fake)
    assert _build(stages, tmp_path, fake, beta=5) == ["02_b.ipynb", "03_c.ipynb"]
    assert _build(stages, tmp_path, fake, beta=5) == []
    assert _build(stages, tmp_path, fake, beta=5, gamma=4) == ["03_c.ipynb"]
    # Back to the first value: a new key again (only the last execution is cached), so stage 2 and 3 run.
    assert _build(stages, tmp_path, fake, gamma=4) == ["02_b.ipynb", "03_c.ipynb"]


def test_changed_notebook_reruns_it_and_later_ones(stages: list[Path], tmp_path: Path,
                                                   fake: FakePapermill) -> None:
    _build(stages, tmp_path, fake)
    nb = nbformat.read(stages[1], as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("A new paragraph."))
    nbformat.write(nb, stages[1])
    assert _build(stages, tmp_path, fake) == ["02_b.ipynb", "03_c.ipynb"]


def test_changed_package_source_reruns_everything(stages: list[Path], tmp_path: Path, fake: FakePapermill,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _build(stages, tmp_path, fake)
    monkeypatch.setattr(buildcache, "package_digest", lambda *a: "0" * 64)
    assert _build(stages, tmp_path, fake) == ["01_a.ipynb", "02_b.ipynb", "03_c.ipynb"]


def test_package_digest_follows_every_module(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    first = buildcache.package_digest(pkg)
    assert buildcache.package_digest(pkg) == first
    (pkg / "sub" / "b.py").write_text("y = 3\n")
    second = buildcache.package_digest(pkg)
    assert second != first
    (pkg / "c.py").write_text("")
    assert buildcache.package_digest(pkg) not in (first, second)
    package = Path(buildcache.__file__).parent.parent
    assert package.name == "funcprune" and buildcache.package_digest() == buildcache.package_digest(package)


def test_failed_stage_is_never_cached_and_the_build_resumes(stages: list[Path], tmp_path: Path,
                                                            fake: FakePapermill) -> None:
    fake.fail = "02_b.ipynb"
    with pytest.raises(RuntimeError, match="02_b"):
        _build(stages, tmp_path, fake)
    assert fake.calls == ["01_a.ipynb", "02_b.ipynb"]
    assert (tmp_path / "executed" / "02_b.ipynb").exists()  # kept for reading the error
    assert not (tmp_path / "executed" / f"02_b.ipynb{buildcache.STAGE_SUFFIX}").exists()
    fake.fail = None
    assert _build(stages, tmp_path, fake) == ["02_b.ipynb", "03_c.ipynb"]  # stage 1 reused


def test_edited_or_missing_outputs_are_not_reused(stages: list[Path], tmp_path: Path, fake: FakePapermill) -> None:
    _build(stages, tmp_path, fake)
    executed = tmp_path / "executed" / "03_c.ipynb"
    executed.write_text(executed.read_text().replace("# c", "# C"))
    assert _build(stages, tmp_path, fake) == ["03_c.ipynb"]
    (tmp_path / "run" / "02_b").rmdir()  # a stage's run directory entry disappeared
    assert _build(stages, tmp_path, fake) == ["02_b.ipynb", "03_c.ipynb"]
    assert _build(stages, tmp_path, fake) == []
    assert _build(stages[:1], tmp_path, fake) == []
    report = run_notebooks({"run_dir": str(tmp_path / "run"), "alpha": 1}, tmp_path / "executed",
                           notebooks=stages[:1], use_cache=False)
    assert report[0]["ran"] and report[0]["reason"] == "the cache is off"


def test_times_command_prints_recorded_seconds(stages: list[Path], tmp_path: Path, fake: FakePapermill,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _build(stages, tmp_path, fake)
    assert buildcache.main(["times", str(tmp_path / "executed")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed) == ["01_a.ipynb", "02_b.ipynb", "03_c.ipynb"]
    assert all(isinstance(v, float) and v >= 0 for v in printed.values())


@pytest.mark.slow
def test_real_papermill_runs_then_reuses(stages: list[Path], tmp_path: Path) -> None:
    profile = {"run_dir": str(tmp_path / "run"), "alpha": 1, "beta": 2, "gamma": 3}
    first = run_notebooks(profile, tmp_path / "executed", notebooks=stages)
    assert [r["ran"] for r in first] == [True, True, True]
    assert (tmp_path / "run" / "c" / "done.txt").exists()
    again = run_notebooks({**profile, "gamma": 7}, tmp_path / "executed", notebooks=stages)
    assert [r["ran"] for r in again] == [False, False, True]
    assert "gamma = 7" in (tmp_path / "executed" / "03_c.ipynb").read_text()


def _site(tmp_path: Path) -> Path:
    """A book folder with a chapter, an executed notebook and a 'built' HTML folder."""
    book = tmp_path / "book"
    (book / "executed").mkdir(parents=True)
    (book / "intro.md").write_text("# Intro\n")
    (book / "executed" / "01_a.ipynb").write_text("{}")
    html = book / "_build" / "html"
    html.mkdir(parents=True)
    (html / "index.html").write_text("<html></html>")
    return book


def test_site_is_reused_only_after_a_record_and_while_nothing_changed(tmp_path: Path) -> None:
    book = _site(tmp_path)
    assert buildcache.site_reason(book, key=buildcache.site_key(book, package="p", browser=True)) \
        == "no record of a strict, checked build"
    key = buildcache.site_key(book, package="p", browser=True)
    buildcache.record_site(book, key=key)
    assert buildcache.site_reason(book, key=key) is None
    # the record and the HTML live in _build: they do not change the key
    assert buildcache.site_key(book, package="p", browser=True) == key


@pytest.mark.parametrize("change", ["chapter", "executed notebook", "new file", "package", "browser"])
def test_site_key_changes_with_every_input(tmp_path: Path, change: str) -> None:
    book = _site(tmp_path)
    before = buildcache.site_key(book, package="p", browser=False)
    package, browser = "p", False
    if change == "chapter":
        (book / "intro.md").write_text("# Intro, edited\n")
    elif change == "executed notebook":
        (book / "executed" / "01_a.ipynb").write_text('{"cells": []}')
    elif change == "new file":
        (book / "glossary.md").write_text("# Glossary\n")
    elif change == "package":
        package = "q"
    else:
        browser = True  # a site whose browser check was skipped is built again once it can run
    after = buildcache.site_key(book, package=package, browser=browser)
    assert after != before
    buildcache.record_site(book, key=before)
    assert buildcache.site_reason(book, key=after) is not None


@pytest.mark.parametrize("damage", ["delete a page", "edit a page", "add a page", "delete the record"])
def test_a_changed_build_folder_is_not_reused(tmp_path: Path, damage: str) -> None:
    book = _site(tmp_path)
    key = buildcache.site_key(book, package="p", browser=True)
    buildcache.record_site(book, key=key)
    html = book / "_build" / "html"
    if damage == "delete a page":
        (html / "index.html").unlink()
    elif damage == "edit a page":
        (html / "index.html").write_text("<html>changed, and longer</html>")
    elif damage == "add a page":
        (html / "stale.html").write_text("<html></html>")
    else:
        (book / buildcache.SITE_RECORD).unlink()
    assert buildcache.site_reason(book, key=key) is not None


def test_site_command_line_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    book = _site(tmp_path)
    monkeypatch.setattr(buildcache, "package_digest", lambda *a, **k: "p")
    assert buildcache.main(["site-fresh", str(book)]) == 1
    assert buildcache.main(["site-record", str(book)]) == 0
    assert buildcache.main(["site-fresh", str(book)]) == 0
    (book / "intro.md").write_text("# changed\n")
    assert buildcache.main(["site-fresh", str(book)]) == 1
