"""The book's teaching material: exercises with hidden solutions, a glossary every {term} resolves to, sane config."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
import yaml

from funcprune.book.workflow import REPO_ROOT

BOOK = REPO_ROOT / "book"
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9]*.ipynb"))
TERM = re.compile(r"\{term\}`([^`]+)`")
EXERCISE = re.compile(r"^\*\*(\d+)\. ", re.MULTILINE)
DROPDOWN = re.compile(r"^:::\{admonition\} Solution\n:class: dropdown\n", re.MULTILINE)


def _glossary_terms(text: str) -> set[str]:
    """Terms defined by the ```{glossary} block of a MyST page (unindented lines inside it)."""
    block = text.split("```{glossary}\n", 1)[1].split("\n```", 1)[0]
    return {line.strip().lower() for line in block.splitlines() if line.strip() and not line[0].isspace()}


def _term_targets(text: str) -> list[str]:
    """The glossary entry each {term} role points at (``{term}`shown text <entry>``` or ``{term}`entry```)."""
    targets = []
    for content in TERM.findall(text):
        match = re.fullmatch(r"(?s).*<([^<>]+)>", content)
        targets.append((match.group(1) if match else content).strip().lower())
    return targets


def _markdown_sources() -> dict[str, str]:
    sources = {p.name: p.read_text() for p in sorted(BOOK.glob("*.md"))}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        sources[path.name] = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    return sources


def test_glossary_parser_and_term_roles() -> None:
    page = "# G\n\n```{glossary}\nvoxel\n  A column.\n\nz-map\n  A map.\n```\n"
    assert _glossary_terms(page) == {"voxel", "z-map"}
    assert _term_targets("a {term}`voxel`, {term}`the maps <z-map>` and {term}`Voxel`") == ["voxel", "z-map", "voxel"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_chapter_has_exercises_with_hidden_solutions(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    markdown = [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"]
    exercises = [(i, s) for i, s in markdown if s.startswith("## Exercises\n")]
    assert len(exercises) == 1, f"{path.name}: expected one markdown cell starting with '## Exercises'"
    index, text = exercises[0]
    summary = next(i for i, s in markdown if "## Summary" in s)
    assert index < summary, f"{path.name}: the exercises must come before the Summary"
    numbers = [int(n) for n in EXERCISE.findall(text)]
    assert 2 <= len(numbers) <= 4 and numbers == list(range(1, len(numbers) + 1)), (path.name, numbers)
    assert "Predict, then" in text, f"{path.name}: no 'predict, then run' exercise"
    # Every exercise is followed by exactly one solution, hidden in a sphinx-togglebutton dropdown admonition.
    parts = EXERCISE.split(text)[1:]
    for number, body in zip(parts[::2], parts[1::2]):
        assert len(DROPDOWN.findall(body)) == 1, f"{path.name}: exercise {number} needs one hidden solution"
        assert body.rstrip().endswith(":::"), f"{path.name}: exercise {number}: the solution must close its fence"
    assert any(word in text for word in ("Change a parameter", "change a parameter")), path.name


def test_exercise_sets_change_each_kind_of_parameter() -> None:
    """Across the chapters the exercises change the allocation, the threshold, the first token, k and a layer."""
    text = "\n".join(s for name, s in _markdown_sources().items() if name.endswith(".ipynb"))
    for marker in ('allocation="uniform"', "threshold=t", "drop_first_token=drop", "for k in", "for layer in"):
        assert marker in text, marker


def test_every_term_resolves_to_a_glossary_entry() -> None:
    terms = _glossary_terms((BOOK / "glossary.md").read_text())
    for required in ("functional network", "spatial ica", "z-map", "voxel", "key neuron", "structured pruning",
                     "bias compensation", "perplexity", "flap", "wanda-sp"):
        assert required in terms, required
    used = {name: _term_targets(text) for name, text in _markdown_sources().items()}
    missing = {name: sorted(set(t) - terms) for name, t in used.items() if set(t) - terms}
    assert not missing, f"{{term}} references without a glossary entry: {missing}"
    assert all(any(_term_targets(text)) for name, text in _markdown_sources().items()
               if name.endswith(".ipynb")), "every chapter links the glossary"


def _toc_files(toc: dict) -> list[str]:
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [chapter["file"] for chapter in part["chapters"]]
    return files


def test_toc_lists_every_chapter_and_page_once() -> None:
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    assert toc["format"] == "jb-book"
    files = _toc_files(toc)
    assert len(files) == len(set(files))
    executed = [f for f in files if f.startswith("executed/")]
    assert [f.split("/", 1)[1] for f in executed] == [p.stem for p in NOTEBOOKS]
    for page in set(files) - set(executed):
        assert (BOOK / f"{page}.md").exists(), page
    assert {"glossary", "teaching"} <= set(files)


def test_config_launch_repository_and_download() -> None:
    config = yaml.safe_load((BOOK / "_config.yml").read_text())
    repo = config["repository"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repo["url"]), repo["url"]
    assert (REPO_ROOT / repo["path_to_book"] / "_config.yml").exists()
    launch = config["launch_buttons"]
    assert launch["notebook_interface"] == "jupyterlab"
    for key in ("binderhub_url", "colab_url", "jupyterhub_url"):
        assert launch[key].startswith("https://"), key
    assert config["html"]["use_repository_button"] is True
    assert config["execute"]["execute_notebooks"] == "off"
    for name, folder in config["sphinx"]["local_extensions"].items():
        assert (BOOK / folder / f"{name}.py").exists(), name
    # Placeholders live in one place: _config.yml (the only book file naming the repository's owner).
    owner = repo["url"].split("/")[3]
    if owner.isupper() or "YOUR" in owner:
        others = [p.name for p in BOOK.rglob("*.md") if owner in p.read_text() and "_build" not in p.parts]
        assert not others, f"placeholder {owner} repeated in {others}"


def _launch_extension():
    spec = importlib.util.spec_from_file_location("launch_sources", BOOK / "_ext" / "launch_sources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launch_buttons_open_the_source_notebook() -> None:
    ext = _launch_extension()
    app = SimpleNamespace(config=SimpleNamespace(html_theme_options={"path_to_docs": "book"}))
    urls = ["https://mybinder.org/v2/gh/o/r/main?urlpath=lab/tree/book/executed/03_key_neurons.ipynb",
            "https://colab.research.google.com/github/o/r/blob/main/book/executed/03_key_neurons.ipynb"]
    context = {"header_buttons": [{"label": "download-buttons", "buttons": [{"url": "_sources/x.ipynb"}]},
                                  {"label": "launch-buttons", "buttons": [{"url": u} for u in urls]}]}
    ext._point_at_sources(app, "executed/03_key_neurons", "page.html", context, None)
    launched = [b["url"] for b in context["header_buttons"][1]["buttons"]]
    assert launched == [u.replace("book/executed/", "notebooks/") for u in urls]
    assert all((REPO_ROOT / u.split("/main/")[-1].split("lab/tree/")[-1]).exists() for u in launched)
    assert context["header_buttons"][0]["buttons"] == [{"url": "_sources/x.ipynb"}]
    other = {"header_buttons": [{"label": "launch-buttons", "buttons": [{"url": "book/intro.md"}]}]}
    ext._point_at_sources(app, "intro", "page.html", other, None)
    assert other["header_buttons"][0]["buttons"] == [{"url": "book/intro.md"}]


def test_workshop_profile_has_the_default_keys() -> None:
    default = yaml.safe_load((REPO_ROOT / "params" / "default.yaml").read_text())
    workshop = yaml.safe_load((REPO_ROOT / "params" / "workshop.yaml").read_text())
    assert set(workshop) == set(default)
    assert len(workshop["ratios"]) >= 3 and {"wanda-sp", "flap", "random", "fn"} <= set(workshop["methods"])
    assert len(workshop["random_seeds"]) >= 2


@pytest.mark.slow
def test_strict_build_fails_on_a_missing_term(tmp_path: Path) -> None:
    """Sphinx's glossary makes an unknown {term} a warning, which the strict build turns into a failure."""
    jb = shutil.which("jupyter-book", path=str(Path(sys.executable).parent))
    assert jb, "jupyter-book is not installed in this environment"
    book = tmp_path / "book"
    book.mkdir()
    (book / "_config.yml").write_text("title: t\nexecute:\n  execute_notebooks: 'off'\n")
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: glossary\n")
    shutil.copy(BOOK / "glossary.md", book / "glossary.md")
    (book / "glossary.md").write_text(re.sub(r"\{cite:p\}`[^`]+`", "", (book / "glossary.md").read_text()))
    for term, ok in (("voxel", True), ("no such term", False)):
        (book / "intro.md").write_text(f"# Intro\n\nA {{term}}`{term}`.\n")
        shutil.rmtree(book / "_build", ignore_errors=True)
        result = subprocess.run([jb, "build", str(book), "--warningiserror"], capture_output=True, text=True)
        assert (result.returncode == 0) == ok, result.stdout[-2000:] + result.stderr[-2000:]


def test_pages_workflow_deploys_what_make_publish_writes() -> None:
    workflow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "pages.yml").read_text())
    assert workflow["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    build = workflow["jobs"]["build"]["steps"]
    runs = [step["run"] for step in build if "run" in step]
    assert any(run.startswith("make publish") for run in runs)
    upload = next(step for step in build if step.get("uses", "").startswith("actions/upload-pages-artifact@"))
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "build" and deploy["environment"]["name"] == "github-pages"
    assert any(step.get("uses", "").startswith("actions/deploy-pages@") for step in deploy["steps"])
    dry_run = subprocess.run(["make", "-n", "-W", "book", "publish"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout
    assert f"mv public.tmp {upload['with']['path']}" in dry_run and ".nojekyll" in dry_run


@pytest.mark.parametrize("path", NOTEBOOKS[:3], ids=lambda p: p.stem)
def test_prerequisites_are_a_table_of_what_and_why(path: Path) -> None:
    """Chapters 1-3: concept, importance, what it is needed for, time to learn, link."""
    first = nbformat.read(path, as_version=4).cells[0].source
    section = first.split("## Prerequisites\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert section[0] == "| Concept | Importance | Needed for | Time to learn | Link |"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in section[2:]]
    assert rows and all(len(row) == 5 and all(row) for row in rows), rows
    assert all(row[1] in {"essential", "helpful", "optional"} for row in rows)
