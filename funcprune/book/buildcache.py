"""Content-addressed cache of executed notebooks: an unchanged book rebuilds in seconds.

A stage (one notebook) is executed again only when one of its inputs changed:

- the source notebook (its bytes),
- the parameters it receives from the profile (its ``parameters`` cell's names only),
- the ``funcprune`` package source (every ``.py`` file of the package: simple and safe,
  a change to any module re-runs every stage), the Python version and the versions of
  the libraries the stages compute with,
- the key of the stage before it (so a change anywhere upstream re-runs everything
  downstream);

or when an earlier stage of the same build ran again, or when the run directory lost
an entry that existed after the stage ran (for example after ``rm -rf runs/default/networks``).

The executed notebook is an artefact of the run layer's one contract
(:class:`funcprune.run.artefacts.Artefact`): its record, ``<notebook>.stage.json``, holds the key as
its inputs and the notebook's size and SHA-256, and is written atomically only after a successful
execution; the stage is reused by the contract's one rule (:meth:`~funcprune.run.artefacts.Artefact.stale`).
A failed or interrupted stage leaves no record and runs again next time, while the stages that
finished before it are reused (the build resumes).

The HTML build and the browser check are cached as one whole, never page by page: an
incremental strict Sphinx build would not report again the warnings of pages it does not
re-read, nor notice a changed docstring (autodoc) or a removed glossary term. So ``make
book`` either reuses the site as it is, or removes ``book/_build`` and builds and checks
every page again. The site is reused only when a record, written after a strict build *and*
its checks passed, carries the same :func:`site_key` (every file under ``book/`` outside
``_build``, executed notebooks included; the ``funcprune`` source, which autodoc renders;
the versions of the book's tools; whether a browser is there to check the pages) and the
built folder still holds exactly the files it recorded (:func:`tree_fingerprint`: paths,
sizes and modification times). A deleted page, an edited chapter, a new docstring or a
newly installed Chromium all rebuild the site.

Command line::

    python -m funcprune.book.buildcache times book/executed   # seconds per stage, from the records
    python -m funcprune.book.buildcache site-fresh book       # exit 0 when the built site can be reused
    python -m funcprune.book.buildcache site-record book      # after a strict build and its checks passed
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

from .._io import read_json
from ..run.artefacts import Artefact

__all__ = ["SITE_RECORD", "STAGE_SUFFIX", "StageOutcome", "package_digest", "record_site", "run_stage", "site_key",
           "site_reason", "stage_key", "stage_times", "tree_fingerprint"]

#: Suffix of the record written beside an executed notebook.
STAGE_SUFFIX = ".stage.json"
#: Libraries whose version is part of every stage key (their results can change with them).
KEY_LIBRARIES = ("torch", "transformers", "numpy", "scipy", "scikit-learn", "nilearn", "pandas", "lm-eval",
                 "papermill", "matplotlib")
#: Tools whose version is part of the site key (they render the pages).
SITE_LIBRARIES = ("jupyter-book", "sphinx", "myst-nb", "sphinx-book-theme", "sphinx-mathjax-offline", "playwright")
#: Record of the last strict, checked build, inside the build folder (``rm -rf book/_build`` removes it too).
SITE_RECORD = Path("_build") / "site.json"
_PACKAGE_DIR = Path(__file__).resolve().parent.parent
_FORMAT = 1


def package_digest(package_dir: str | Path = _PACKAGE_DIR) -> str:
    """SHA-256 over the source of every ``.py`` file of a package (relative path and bytes).

    Parameters
    ----------
    package_dir : str or path, default: the installed ``funcprune`` package
        Directory searched recursively.

    Returns
    -------
    str
        64 hexadecimal characters; changes whenever any module is edited, added or removed.
    """
    root = Path(package_dir)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _environment(libraries: Sequence[str] = KEY_LIBRARIES) -> dict[str, str | None]:
    """Python version and the versions of ``libraries`` (None when not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in libraries:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def stage_key(notebook: str | Path, parameters: dict[str, Any], *, upstream: str | None,
              package: str | None = None, environment: dict[str, Any] | None = None) -> str:
    """Content-addressed key of one stage execution.

    Parameters
    ----------
    notebook : str or path
        Source notebook.
    parameters : dict
        Values passed to its ``parameters`` cell (JSON-serialisable).
    upstream : str or None
        Key of the previous stage of the build (None for the first one).
    package : str, optional
        :func:`package_digest` (computed when omitted).
    environment : dict, optional
        Versions that enter the key (default: Python and :data:`KEY_LIBRARIES`).

    Returns
    -------
    str
        64 hexadecimal characters.
    """
    return _digest({
        "format": _FORMAT,
        "notebook": hashlib.sha256(Path(notebook).read_bytes()).hexdigest(),
        "parameters": parameters,
        "upstream": upstream,
        "package": package if package is not None else package_digest(),
        "environment": environment if environment is not None else _environment(),
    })


def _run_dir_entries(run_dir: str | Path | None) -> list[str]:
    if run_dir is None or not Path(run_dir).is_dir():
        return []
    return sorted(p.name for p in Path(run_dir).iterdir() if not p.name.startswith("."))


@dataclass(frozen=True)
class StageOutcome:
    """What :func:`run_stage` did for one notebook.

    Attributes
    ----------
    key : str
        The stage key (pass it as ``upstream`` to the next stage).
    ran : bool
        True when the notebook was executed, False when the cached copy was reused.
    seconds : float
        Execution time of this run, or of the run that produced the cached copy.
    reason : str
        Why it ran ("notebook, parameters, package or environment changed", "an earlier stage
        ran", "no record", ...) or "cached".
    """

    key: str
    ran: bool
    seconds: float
    reason: str


#: An executed notebook and its record: an artefact made from its stage key (:func:`stage_key`).
STAGE = Artefact("funcprune-stage/2", "this stage's executed notebook", "run make book again (the stage runs again)")


def _cached(record_path: Path, key: str, run_dir: str | Path | None) -> tuple[dict[str, Any] | None, str | None]:
    """The executed notebook's record if it can be reused (the one reuse rule, and no run-directory entry lost),
    else ``(None, why not)``; the record is read once."""
    record, reason = STAGE.reusable(record_path, ["notebook"], {"key": key})
    if record is None:
        return None, reason
    missing = sorted(set(record.get("run_dir_entries", [])) - set(_run_dir_entries(run_dir)))
    return (None, f"run directory lost {missing}") if missing else (record, None)


def run_stage(notebook: str | Path, executed: str | Path, parameters: dict[str, Any],
              execute: Callable[[], None], *, upstream: str | None, force: str | None = None,
              run_dir: str | Path | None = None, package: str | None = None) -> StageOutcome:
    """Execute one stage unless an executed copy with the same key exists.

    Parameters
    ----------
    notebook : str or path
        Source notebook.
    executed : str or path
        Where ``execute`` writes the executed notebook; its record goes to
        ``executed`` + :data:`STAGE_SUFFIX`.
    parameters : dict
        Values passed to the notebook (part of the key).
    execute : callable
        Runs the notebook into ``executed`` (e.g. a papermill call); must raise on failure.
    upstream : str or None
        Key of the previous stage (None for the first one).
    force : str, optional
        Run even when cached, for this reason (e.g. "an earlier stage ran").
    run_dir : str or path, optional
        The run directory the stages share: its entries after the run are recorded, and a
        cached copy is not reused when one of them has disappeared.
    package : str, optional
        :func:`package_digest`, computed once per build by the caller.

    Returns
    -------
    StageOutcome
    """
    executed = Path(executed)
    record_path = executed.with_name(executed.name + STAGE_SUFFIX)
    key = stage_key(notebook, parameters, upstream=upstream, package=package)
    record, reason = (None, force) if force else _cached(record_path, key, run_dir)
    if record is not None:
        return StageOutcome(key, False, float(record.get("seconds", 0.0)), "cached")
    record_path.unlink(missing_ok=True)  # a failed or interrupted run must leave no record
    start = time.perf_counter()
    execute()
    seconds = round(time.perf_counter() - start, 1)
    STAGE.record(record_path, {"notebook": executed.name}, {"source": Path(notebook).name, "parameters": parameters,
                 "seconds": seconds, "run_dir_entries": _run_dir_entries(run_dir)}, inputs={"key": key})
    return StageOutcome(key, True, seconds, reason)


def site_key(book_dir: str | Path, *, package: str | None = None, browser: bool | None = None) -> str:
    """Content-addressed key of the built site: what the HTML and its browser check depend on.

    Parameters
    ----------
    book_dir : str or path
        The book's folder (``book/``); every file under it except ``_build`` enters the key
        by relative path and bytes (chapters, executed notebooks, figures, configuration).
    package : str, optional
        :func:`package_digest` (computed when omitted): autodoc renders the docstrings.
    browser : bool, optional
        Whether the browser check can run here (default: :func:`funcprune.book.bookcheck.find_chromium`
        finds one); a site built where the check was skipped is not reused once it can run.

    Returns
    -------
    str
        64 hexadecimal characters.
    """
    root = Path(book_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        if relative.parts[0] == "_build" or "__pycache__" in relative.parts:
            continue
        digest.update(relative.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    if browser is None:
        from .bookcheck import find_chromium

        browser = find_chromium() is not None
    return _digest({"format": _FORMAT, "book": digest.hexdigest(),
                    "package": package if package is not None else package_digest(),
                    "environment": _environment(SITE_LIBRARIES), "browser": browser})


def tree_fingerprint(folder: str | Path) -> str:
    """SHA-256 over every file's relative path, size and modification time under ``folder``.

    Cheap (no file is read): it tells whether a built folder is still the one recorded.
    """
    root = Path(folder)
    entries = [f"{p.relative_to(root).as_posix()}\0{p.stat().st_size}\0{p.stat().st_mtime_ns}"
               for p in sorted(root.rglob("*")) if p.is_file()]
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _site_paths(book_dir: str | Path) -> tuple[Path, Path]:
    root = Path(book_dir)
    return root / SITE_RECORD, root / "_build" / "html"


#: The built site, strict and checked: an artefact made from its site key (:func:`site_key`); its HTML folder is
#: checked by a cheap fingerprint of paths, sizes and times (:func:`tree_fingerprint`), not file by file.
SITE = Artefact("funcprune-site/2", "a strict, checked build", "run make book (the site is built and checked again)")


def site_reason(book_dir: str | Path, *, key: str | None = None) -> str | None:
    """None when the built site of ``book_dir`` can be reused as it is, else why it cannot.

    Parameters
    ----------
    book_dir : str or path
        The book's folder.
    key : str, optional
        :func:`site_key` (computed when omitted).
    """
    record_path, html = _site_paths(book_dir)
    if not html.is_dir():
        return "no built HTML folder"
    record, reason = SITE.reusable(record_path, [], {"key": key or site_key(book_dir)})
    if record is None:
        return reason
    return None if record.get("html") == tree_fingerprint(html) else "the built HTML folder changed since it was checked"


def record_site(book_dir: str | Path, *, key: str | None = None) -> Path:
    """Record the built site of ``book_dir`` as strict and checked (call only after both passed).

    Returns
    -------
    Path
        The record written atomically (``book_dir/_build/site.json``).
    """
    record_path, html = _site_paths(book_dir)
    if not html.is_dir():
        raise FileNotFoundError(f"{html} does not exist: build the book before recording it")
    SITE.record(record_path, {}, {"html": tree_fingerprint(html), "recorded": time.time()},
                inputs={"key": key or site_key(book_dir)})
    return record_path


def stage_times(executed_dir: str | Path) -> dict[str, float]:
    """Seconds each cached stage took when it last ran, from the records in ``executed_dir``.

    Returns
    -------
    dict
        Source notebook name -> seconds, in notebook order.
    """
    times = {}
    for record_path in sorted(Path(executed_dir).glob(f"*{STAGE_SUFFIX}")):
        record = read_json(record_path)
        times[record["source"]] = float(record["seconds"])
    return times


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m funcprune.book.buildcache")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("times", help="seconds per stage from the records in DIR").add_argument("dir")
    sub.add_parser("site-fresh", help="exit 0 when the built site of BOOK can be reused").add_argument("book")
    sub.add_parser("site-record", help="record BOOK's site as built strictly and checked").add_argument("book")
    args = parser.parse_args(argv)
    if args.command == "times":
        print(json.dumps(stage_times(args.dir), indent=2))
        return 0
    if args.command == "site-record":
        record_site(args.book)
        return 0
    reason = site_reason(args.book)
    if reason is None:
        print("[funcprune] HTML reused: nothing the site depends on changed since its last strict, checked build "
              "(NOCACHE=1 builds it again)", file=sys.stderr)
        return 0
    print(f"[funcprune] building the HTML: {reason}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
