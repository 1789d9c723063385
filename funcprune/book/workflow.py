"""Run profiles and notebook execution: what ``make book`` and the notebook tests call.

A *profile* (``params/<name>.yaml``) names a model, data and the settings of every
stage. :func:`run_notebooks` executes each notebook of ``notebooks/`` in order with
papermill, passing each one only the profile values its ``parameters`` cell
declares, into executed copies (``book/executed/`` for the book). Every stage
reads what earlier stages wrote to the profile's run directory. A stage whose notebook,
parameters, ``funcprune`` source and earlier stages are unchanged is not run again: its
executed copy is reused (:mod:`funcprune.book.buildcache`; ``--no-cache`` runs everything).

Command line::

    python -m funcprune.book.workflow run --profile default [--model ID_OR_PATH] [--out book/executed] [--skip-preflight]
        [--no-cache]
    python -m funcprune.book.workflow preflight --profile default [--model ID_OR_PATH]
    python -m funcprune.book.workflow check-html book/_build/html

``run`` checks the whole profile first (:func:`funcprune.run.preflight.check_profile`, seconds)
and stops with every problem listed; ``--model`` derives the profile for another model
(:func:`funcprune.run.preflight.derive_profile`, each change printed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from ..run.profiles import load_profile
from ..provenance import REPO_ROOT, display_path
from ..run.rundir import RunDir

__all__ = ["REPO_ROOT", "find_errors", "fold_injected_parameters", "load_profile", "notebook_parameters",
           "run_notebooks"]

def notebook_parameters(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """Parameters declared by a notebook's ``parameters`` cell (papermill's inspection)."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def run_notebooks(profile: str | Path | dict[str, Any], out_dir: str | Path, *,
                  notebooks: Sequence[str | Path] | None = None, kernel_name: str = "python3",
                  log_output: bool = False, use_cache: bool = True) -> list[dict[str, Any]]:
    """Execute the stage notebooks in order with one profile.

    Parameters
    ----------
    profile : str, path or dict
        Profile name, YAML path, or an already loaded profile.
    out_dir : str or path
        Where executed notebooks are written (same file names).
    notebooks : sequence of paths, optional
        Notebooks to run (default: ``notebooks/[0-9]*.ipynb`` sorted).
    kernel_name : str, default="python3"
        Jupyter kernel.
    log_output : bool, default=False
        Stream cell output to the log while running.
    use_cache : bool, default=True
        Reuse an executed notebook whose notebook, parameters, ``funcprune`` source and upstream
        stages are unchanged (:mod:`funcprune.book.buildcache`); False runs every stage.

    Returns
    -------
    list of dict
        Per notebook: name, parameters passed, seconds (of the run that produced the executed
        copy), whether it ran now, why, and its cache key.

    Raises
    ------
    ValueError
        If the profile sets a parameter no notebook declares (a typo would otherwise be ignored).
    funcprune.run.rundir.RunLockedError
        Another live run writes the same ``run_dir`` (its lock, :meth:`funcprune.run.rundir.RunDir.locked`,
        is held for the whole run; a stale one is taken over with a warning).
    """
    prof = profile if isinstance(profile, dict) else load_profile(profile)
    paths = [Path(p) for p in notebooks] if notebooks else sorted((REPO_ROOT / "notebooks").glob("[0-9]*.ipynb"))
    declared = {p: notebook_parameters(p) for p in paths}
    known = set().union(*declared.values()) | {"profile"}
    unknown = sorted(set(prof) - known)
    if unknown and notebooks is None:
        raise ValueError(f"profile sets {unknown}, which no notebook declares; declared: {sorted(known)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with RunDir(prof["run_dir"]).locked(f"funcprune.book.workflow run, profile {prof.get('profile')!r}"):
        return _run_all(paths, declared, prof, out, kernel_name, log_output, use_cache)


def _run_all(paths: list[Path], declared: dict[Path, dict[str, Any]], prof: dict[str, Any], out: Path,
             kernel_name: str, log_output: bool, use_cache: bool) -> list[dict[str, Any]]:
    """Execute (or reuse) every stage in order, holding the run directory's lock (see :func:`run_notebooks`)."""
    import papermill

    report: list[dict[str, Any]] = []
    for path in paths:
        params = {k: _repo_relative(v) for k, v in prof.items() if k in declared[path]}

        def execute(path: Path = path, params: dict[str, Any] = params) -> None:
            print(f"[funcprune] executing {path.name} with {params}", file=sys.stderr, flush=True)
            papermill.execute_notebook(str(path), str(out / path.name), parameters=params,
                                       kernel_name=kernel_name, cwd=str(REPO_ROOT), log_output=log_output,
                                       progress_bar=False)
            fold_injected_parameters(out / path.name, params, profile=prof.get("profile"))

        report.append(_run_cached(path, out / path.name, params, execute, report, prof["run_dir"], use_cache))
    return report


def _run_cached(path: Path, executed: Path, params: dict[str, Any], execute: Callable[[], None],
                earlier: list[dict[str, Any]], run_dir: str, use_cache: bool) -> dict[str, Any]:
    """Run one stage through :mod:`funcprune.book.buildcache` and return its report entry.

    A stage runs when its inputs changed, when an earlier stage of this build ran, or when
    ``use_cache`` is False; otherwise its executed notebook is reused.
    """
    from .buildcache import package_digest, run_stage

    force = "the cache is off" if not use_cache else \
        "an earlier stage ran" if any(entry["ran"] for entry in earlier) else None
    upstream = earlier[-1]["key"] if earlier else None
    package = earlier[0]["package"] if earlier else package_digest()  # hashed once per build
    outcome = run_stage(path, executed, {**params, **_read_inputs(params)}, execute, upstream=upstream, force=force,
                        run_dir=run_dir, package=package)
    verb = f"done in {outcome.seconds} s ({outcome.reason})" if outcome.ran else \
        f"reused (cached; it took {outcome.seconds} s)"
    print(f"[funcprune] {path.name} {verb}", file=sys.stderr, flush=True)
    return {"notebook": path.name, "parameters": params, "seconds": outcome.seconds, "ran": outcome.ran,
            "reason": outcome.reason, "key": outcome.key, "package": package}


def _read_inputs(params: dict[str, Any]) -> dict[str, Any]:
    """What a stage reads besides its parameters and the run directory, by content, for its cache key: the
    bundles a ``bundles_dir`` parameter names (chapter 7), so that adding or replacing one runs it again."""
    from .._io import file_digest

    if "bundles_dir" not in params:
        return {}
    folder = Path(params["bundles_dir"])
    folder = folder if folder.is_absolute() else REPO_ROOT / folder
    return {"bundles_read": {p.name: file_digest(p) for p in sorted(folder.glob("*.tar.gz"))}}


def _repo_relative(value: Any) -> Any:
    """An absolute path inside the repository as a relative one (kernels run there); else unchanged.

    What the kernel receives is what its outputs print: relative run directories keep
    the builder's file system out of the book.
    """
    if isinstance(value, str) and Path(value).is_absolute() and Path(value).is_relative_to(REPO_ROOT):
        return Path(value).relative_to(REPO_ROOT).as_posix() or "."
    return value


def fold_injected_parameters(notebook: str | Path, params: dict[str, Any], *,
                             profile: str | None = None) -> bool:
    """Show readers one parameters cell holding the run's values; hide papermill's injected copy.

    In an executed notebook, every assignment of the ``parameters`` cell whose name
    papermill injected gets the injected value (its documenting comment kept), with
    absolute paths shown by :func:`funcprune.provenance.display_path` (relative to
    the repository, the notebooks' working folder, so the cell still runs as shown);
    a first comment line names the profile. The ``injected-parameters`` cell is
    tagged ``remove-cell``: it stays in the notebook, executed, but the book does not
    render it. The notebook is rewritten atomically.

    Parameters
    ----------
    notebook : str or path
        Executed notebook (papermill output).
    params : dict
        The parameters papermill injected.
    profile : str, optional
        Profile name shown in the note.

    Returns
    -------
    bool
        Whether an injected cell was found (and the notebook rewritten).
    """
    import ast
    import os

    import nbformat
    from papermill.translators import PythonTranslator

    from .._io import atomic_write_text
    from ..provenance import display_path

    path = Path(notebook)
    nb = nbformat.read(path, as_version=4)
    tagged = {tag: i for i, cell in enumerate(nb.cells) for tag in cell.metadata.get("tags", [])}
    if "injected-parameters" not in tagged:
        return False
    injected = nb.cells[tagged["injected-parameters"]]
    injected.metadata["tags"] = [*injected.metadata["tags"], "remove-cell"]
    if "parameters" in tagged:
        cell = nb.cells[tagged["parameters"]]
        lines = cell.source.split("\n")
        shown = {name: display_path(value) if isinstance(value, str) and os.path.isabs(value) else value
                 for name, value in params.items()}
        for node in reversed(ast.parse(cell.source).body):  # bottom up: earlier offsets stay valid
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and node.targets[0].id in shown):
                first = lines[node.value.lineno - 1].encode()  # ast offsets count UTF-8 bytes
                last = lines[node.value.end_lineno - 1].encode()
                literal = PythonTranslator.translate(shown[node.targets[0].id])
                joined = (first[:node.value.col_offset].decode() + literal
                          + last[node.value.end_col_offset:].decode())
                lines[node.value.lineno - 1:node.value.end_lineno] = [joined]
        note = f"profile {profile!r}" if profile else "this run"
        cell.source = "\n".join([f"# Parameters of {note}, as papermill passed them to this notebook", *lines])
    atomic_write_text(path, nbformat.writes(nb))
    return True


def find_errors(paths: Sequence[str | Path]) -> list[str]:
    """Error outputs in executed notebooks or tracebacks in built HTML pages.

    Parameters
    ----------
    paths : sequence of paths
        ``.ipynb`` files, ``.html`` files, or directories searched recursively for both.

    Returns
    -------
    list of str
        One line per problem found (empty when clean).
    """
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.rglob("*.ipynb")) + sorted(p.rglob("*.html")) if p.is_dir() else [p]
    problems = []
    for f in files:
        if {"_sources", "_modules", ".ipynb_checkpoints"} & set(f.parts):
            continue
        if f.suffix == ".ipynb":
            nb = json.loads(f.read_text())
            for i, cell in enumerate(nb.get("cells", [])):
                for output in cell.get("outputs", []):
                    if output.get("output_type") == "error":
                        problems.append(f"{f}: cell {i}: {output.get('ename')}: {output.get('evalue')}")
        elif "Traceback (most recent call last)" in f.read_text(errors="replace"):
            problems.append(f"{f}: contains a Python traceback")
    return problems


def _preflight(profile: str, model: str | None, *, check: bool = True) -> dict[str, Any]:
    """The profile to run: derived for ``model`` when given (notes printed), checked unless ``check=False``.

    Raises
    ------
    funcprune.run.preflight.PreflightError
        Listing every problem of the profile, each with its fix.
    """
    from ..run.preflight import PreflightError, check_profile, derive_profile

    prof = load_profile(profile)
    if model:
        prof, notes = derive_profile(prof, model)
        for note in notes:
            print(f"[funcprune] note: {note}", file=sys.stderr, flush=True)
        Path(prof["run_dir"]).mkdir(parents=True, exist_ok=True)
        kept = {k: v for k, v in prof.items() if k not in ("profile", "run_dir")}
        header = f"# derived from profile {profile!r} for model {display_path(model)!r} by `--model`\n"
        run = RunDir(prof["run_dir"])
        with run.locked(f"funcprune.book.workflow, writing {run.PROFILE}"):  # never under a run writing it now
            run.profile.write_text(header + yaml.safe_dump(kept, sort_keys=False))
    if check:
        report = check_profile(prof, strict=False)
        print(f"[funcprune] {report}", file=sys.stderr, flush=True)
        if not report.ok:
            raise PreflightError(report)
    return prof


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m funcprune.book.workflow")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the notebooks with a profile")
    run.add_argument("--profile", default="default")
    run.add_argument("--model", default=None, help="run the profile on this model instead (alias, hub id or path)")
    run.add_argument("--out", default=str(REPO_ROOT / "book" / "executed"))
    run.add_argument("--skip-preflight", action="store_true", help="do not check the profile first")
    run.add_argument("--no-cache", action="store_true", help="run every stage even when its inputs are unchanged")
    pre = sub.add_parser("preflight", help="check a profile against the model's config and this machine")
    pre.add_argument("--profile", default="default")
    pre.add_argument("--model", default=None)
    check = sub.add_parser("check-html", help="fail if built pages or executed notebooks show errors")
    check.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    if args.command in ("run", "preflight"):
        from ..run.preflight import PreflightError

        try:
            prof = _preflight(args.profile, args.model,
                              check=args.command == "preflight" or not args.skip_preflight)
        except PreflightError as err:  # the report above lists every problem
            print(f"[funcprune] stopped before stage 1: fix the {len(err.report.problems)} problem(s) above; "
                  f"`make preflight PROFILE={args.profile}` checks again in seconds", file=sys.stderr)
            return 2
        except ValueError as err:  # a model that cannot be found for --model
            print(f"[funcprune] {err}", file=sys.stderr)
            return 2
        if args.command == "preflight":
            return 0
    if args.command == "run":
        start = time.perf_counter()
        report = run_notebooks(prof, args.out, use_cache=not args.no_cache)
        total = round(time.perf_counter() - start, 1)
        print(json.dumps({"profile": args.profile, "notebooks": report, "seconds": total}, indent=2))
        return 0
    problems = find_errors(args.paths)
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
