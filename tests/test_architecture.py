"""The package's shape: no import circle, no long module without a stated reason."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "funcprune"
#: Lines past which a module must say at its top why it stays in one piece.
MAX_LINES = 500
#: The phrase that opens that reason in the module's docstring.
REASON = "Why one module:"


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package, by its short name (unique across the subpackages), to its file.

    A subpackage's ``__init__`` is its docstring and is not a module of the table; the package's own
    ``__init__`` (the facade) is ``"__init__"``. Files outside a package (``templates/``) are data.
    """
    files = [p for p in package.rglob("*.py") if p.stem != "__init__" and (p.parent / "__init__.py").exists()]
    found = {p.stem: p for p in files}
    assert len(found) == len(files), "two modules share a name"
    return found | {"__init__": package / "__init__.py"}


def _dotted(path: Path, package: Path) -> list[str]:
    """``funcprune/run/pipeline.py`` -> ``["funcprune", "run", "pipeline"]``."""
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports at run time, relative imports resolved through subpackages.

    Function-level imports count; ``if TYPE_CHECKING:`` blocks do not (they never run).
    """
    files = modules(package)
    by_dotted = {".".join(_dotted(path, package)): name for name, path in files.items() if name != "__init__"}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        here = _dotted(path, package)
        here_pkg = here if path.stem == "__init__" else here[:-1]
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
        targets: list[str] = []
        for node in (n for n in ast.walk(tree) if id(n) not in typing_only):
            if isinstance(node, ast.ImportFrom):
                base = here_pkg[:len(here_pkg) - node.level + 1] if node.level else []
                stem = ".".join(base + (node.module.split(".") if node.module else []))
                targets += [stem] + [f"{stem}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
        graph[name] = {by_dotted[t] for t in targets if t in by_dotted} - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_planted_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_circle() -> None:
    graph = import_graph()
    assert len(graph) > 20 and graph["setup_assets"] >= {"data", "model_assets", "tasks"}
    assert cycles(graph) == []


def test_low_modules_import_nothing_of_the_package() -> None:
    graph = import_graph()
    assert graph["_io"] == set() and graph["assets"] == set()


def test_long_modules_say_why_they_are_one_module() -> None:
    unexplained = []
    for path in sorted(modules().values()):
        n_lines = len(path.read_text().splitlines())
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        if n_lines > MAX_LINES and REASON not in docstring:
            unexplained.append(f"{path.name} ({n_lines} lines)")
    assert unexplained == [], f"split these or state '{REASON} ...' in their docstring: {unexplained}"


ARCHITECTURE = PACKAGE.parent / "ARCHITECTURE.md"
#: The super-layers of the table, bottom to top: the science, the run machinery, the book.
SUPER_LAYERS = ("core", "run", "book")


def layer_table(text: str) -> list[tuple[str, list[str]]]:
    """The rows of ARCHITECTURE.md's layer table, bottom first: ``(layer, [modules])``."""
    section = text.split("## Who owns what", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].split(":")[0] in SUPER_LAYERS:
            rows.append((cells[0], re.findall(r"`([A-Za-z_]\w*)`", cells[1])))
    return rows


def layer_violations(graph: dict[str, set[str]], rows: list[tuple[str, list[str]]]) -> list[str]:
    """Every import from a module to one of a later row (a lower layer importing a higher one), named."""
    rank = {m: i for i, (_, modules) in enumerate(rows) for m in modules}
    return [f"{a} ({rows[rank[a]][0]}) imports {b} ({rows[rank[b]][0]})"
            for a in sorted(graph) for b in sorted(graph[a]) if a in rank and b in rank and rank[b] > rank[a]]


def test_layer_check_finds_a_planted_upward_import() -> None:
    rows = [("core: base", ["a"]), ("core: top", ["b"]), ("run: stages", ["c"])]
    assert layer_violations({"a": set(), "b": {"a"}, "c": {"a", "b"}}, rows) == []
    assert layer_violations({"a": {"c"}, "b": {"a"}, "c": set()}, rows) == ["a (core: base) imports c (run: stages)"]


def test_the_import_graph_follows_the_documented_layers() -> None:
    """ARCHITECTURE.md's table is the import graph: every module in one row, no import of a later row."""
    rows = layer_table(ARCHITECTURE.read_text())
    assert [r[0].split(":")[0] for r in rows] == sorted((r[0].split(":")[0] for r in rows), key=SUPER_LAYERS.index)
    listed = [m for _, modules in rows for m in modules]
    graph = import_graph()
    assert sorted(listed) == sorted(set(graph) - {"__init__"}), "each module in exactly one row of the table"
    assert layer_violations(graph, rows) == []
    core = {m for layer, modules in rows if layer.startswith("core") for m in modules}
    assert graph["__init__"] <= core, f"the package's facade imports {sorted(graph['__init__'] - core)}"


def test_each_layer_is_its_own_folder() -> None:
    """The core is the package's top level; the run layer is ``funcprune/run/``, the book ``funcprune/book/``."""
    folder = {name: path.parent.relative_to(PACKAGE).as_posix() for name, path in modules().items()}
    misplaced = [f"{m} ({layer}) is in {folder[m]!r}" for layer, names in layer_table(ARCHITECTURE.read_text())
                 for m in names if folder[m] != {"core": "."}.get(layer.split(":")[0], layer.split(":")[0])]
    assert misplaced == []


def test_the_core_imports_without_the_book_tools() -> None:
    """Every core module imports with Jupyter, papermill, nbformat and the browser tooling made unimportable."""
    core = [m for layer, names in layer_table(ARCHITECTURE.read_text()) if layer.startswith("core") for m in names]
    blocked = ["papermill", "nbformat", "nbclient", "jupyter_book", "jupyter_client", "ipykernel", "playwright"]
    script = (f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
              f"import funcprune\nfor m in {core!r}:\n    __import__('funcprune.' + m)\n"
              "assert not any(k.startswith(('funcprune.run', 'funcprune.book')) for k in sys.modules)\nprint('ok')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent, env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
