"""The run directory: one folder that every stage of a run reads and writes, laid out in one place.

Every path of a run directory is spelled here, and nowhere else; the stages and the
notebooks ask a :class:`RunDir` for them::

    run_dir/.funcprune.lock                    held by the run that writes the directory (pid, host; RunDir.locked)
    run_dir/profile.yaml                       the profile the workflow ran (funcprune.book.workflow)
    run_dir/activations/                       stage 1: the activation store (funcprune.store)
    run_dir/activations/manifest.json          which model, texts and settings (read by calibration_texts)
    run_dir/networks/                          stage 2: run.artefacts.save_networks (networks.json and arrays)
    run_dir/networks_other_seed/               stage 2: the same fit with another seed (stability)
    run_dir/stats/                             activation statistics for wanda-sp and flap (cached)
    run_dir/plans/<key>.json                   stages 3 and 4: one plan per (method, ratio[, seed])
    run_dir/pruned/index.json                  stage 4: what was made (ratios, parameters, widths, digests)
    run_dir/pruned/biases/<key>.safetensors    stage 4: compensation biases (fn-bias, flap), and <key>.json
    run_dir/results/parts/<key>.json           stage 5: one model's measurements, and <key>.record.json
    run_dir/results/results.csv                stage 5: the long results table
    run_dir/results/results.json               stage 5: protocol, records, checks
    run_dir/results/comparisons.csv            stage 5: the paired headline comparisons

The file names inside a store, a networks folder or a statistics folder belong to
their writers (:mod:`funcprune.store`, :mod:`funcprune.ica`, :mod:`funcprune.scoring`);
only the stage-1 manifest and ``networks/networks.json`` are named here, because other
stages and :mod:`funcprune.run.bundle` look for them.

>>> run = RunDir("runs/demo")
>>> run.plan_path("fn_r0.20").as_posix()
'runs/demo/plans/fn_r0.20.json'
>>> run.plan_ref("fn_r0.20")
'plans/fn_r0.20.json'
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from .._io import read_json
from ..tables import DENSE_KEY

__all__ = ["RunDir", "RunLockedError"]

#: Run directories this process holds the lock of (a nested :meth:`RunDir.locked` is a no-op).
_HELD: set[Path] = set()


class RunLockedError(RuntimeError):
    """Another live process holds the run directory's lock: two runs would write the same files."""


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return False
    return True


_INDEX_FIX = "delete it and re-run stage 4 (prune_all)"


def _read_record(path: Path, missing: str) -> Any:
    """The JSON record at ``path``; a missing one raises ``FileNotFoundError`` saying what writes it."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {missing}")
    return read_json(path)


class RunDir:
    """Every path of a run directory, and the readers of the records stages leave in it.

    Parameters
    ----------
    path : str, path-like or RunDir
        The run directory (need not exist yet). A :class:`RunDir` is path-like, so it can
        be passed wherever a run directory is expected.

    Attributes
    ----------
    path : pathlib.Path
        The run directory as given (relative paths stay relative).

    Notes
    -----
    The class attributes in capitals are the layout, as POSIX paths relative to the run
    directory (what :mod:`funcprune.run.bundle` and the pruned-model index record); the
    properties of the same names in lower case are those paths inside :attr:`path`.
    """

    PROFILE = "profile.yaml"
    ACTIVATIONS = "activations"
    ACTIVATION_MANIFEST = "activations/manifest.json"
    NETWORKS = "networks"
    NETWORKS_RECORD = "networks/networks.json"
    NETWORKS_OTHER_SEED = "networks_other_seed"
    STATS = "stats"
    PLANS = "plans"
    PRUNED = "pruned"
    INDEX = "pruned/index.json"
    DECOMPOSITION = "pruned/decomposition.json"
    BIASES = "pruned/biases"
    RESULTS = "results"
    PARTS = "results/parts"
    RESULTS_CSV = "results/results.csv"
    RESULTS_JSON = "results/results.json"
    COMPARISONS_CSV = "results/comparisons.csv"
    SUMMARY = "summary"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        from ..provenance import display_path  # as a page may show it: never the builder's file system

        return f"RunDir({display_path(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def _at(self, relative: str) -> Path:
        return self.path.joinpath(*PurePosixPath(relative).parts)

    def resolve(self, relative: str | os.PathLike[str]) -> Path:
        """A path recorded relative to the run directory (an index entry's ``plan``, a bias record's ``path``)."""
        return self.path / relative

    def relative(self, path: str | os.PathLike[str]) -> str:
        """``path`` relative to the run directory, as recorded in the index."""
        return str(Path(path).relative_to(self.path))

    # ---- the run's lock ------------------------------------------------------------------
    LOCK = ".funcprune.lock"

    @property
    def lock_path(self) -> Path:
        """``.funcprune.lock``: pid, host and start of the run writing the directory (a dot file: no stage reads it)."""
        return self._at(self.LOCK)

    def lock_holder(self) -> dict[str, Any] | None:
        """The lock's record (``pid``, ``host``, ``started``, ``command``), ``{}`` if unreadable, None if unlocked."""
        try:
            holder = json.loads(self.lock_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    @contextmanager
    def locked(self, command: str = "a funcprune run") -> Iterator[Path]:
        """Hold the run directory's lock while the block writes it.

        The lock is a file created exclusively (``O_EXCL``) holding this process's pid and
        host; it is removed when the block ends, however it ends. A lock whose process is
        gone (killed, machine restarted) is taken over with a warning; one held by a live
        process, or by another host (whose processes cannot be seen from here), raises.
        Nested use in one process is a no-op.

        Parameters
        ----------
        command : str
            What holds the lock, shown to a second writer.

        Yields
        ------
        pathlib.Path
            The lock file.

        Raises
        ------
        RunLockedError
            Naming the holder (pid, host, start, command), the lock file and the fix.
        """
        key = self.path.resolve()
        if key in _HELD:
            yield self.lock_path
            return
        self._acquire(command)
        _HELD.add(key)
        try:
            yield self.lock_path
        finally:
            _HELD.discard(key)
            self.lock_path.unlink(missing_ok=True)

    def _acquire(self, command: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(3):  # a stale lock removed, then created again by us (or a racing run)
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.lock_holder()
                if holder is None:
                    continue  # released meanwhile
                self._refuse_or_take_over(holder)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(me, fh)
            return
        raise RunLockedError(f"{self.lock_path}: could not take the run directory's lock (another run keeps taking "
                             "it); wait for it to end, or choose another run_dir")

    def _refuse_or_take_over(self, holder: dict[str, Any]) -> None:
        """Raise for a lock held by a live process (or another host); remove a stale one with a warning."""
        pid, host = holder.get("pid"), holder.get("host")
        who = (f"pid {pid} on {host} (started {holder.get('started', '?')}: {holder.get('command', '?')})"
               if holder else "an unreadable record")
        here = socket.gethostname()
        if holder and host != here:
            raise RunLockedError(f"{self.path} is being written by {who}; funcprune cannot see that host's processes "
                                 f"from {here}: wait for that run to end, choose another run_dir, or, if no run is "
                                 f"active there, delete {self.lock_path}")
        if isinstance(pid, int) and _alive(pid):
            raise RunLockedError(f"{self.path} is being written by {who}; two runs on one run_dir would overwrite "
                                 f"each other's files: wait for it to end (or stop it: kill {pid}), or choose another "
                                 f"run_dir; {self.lock_path} goes away when it ends")
        warnings.warn(f"{self.path}: taking over the lock of {who}, whose process is gone (killed or the machine "
                      "restarted); the stages check what it left before reusing it", stacklevel=4)
        self.lock_path.unlink(missing_ok=True)

    # ---- stage 1 -------------------------------------------------------------------------
    @property
    def profile(self) -> Path:
        """``profile.yaml``: the workflow profile the run was made with."""
        return self._at(self.PROFILE)

    @property
    def activations(self) -> Path:
        """``activations/``: the stage-1 activation store (:class:`funcprune.store.ActivationStore`)."""
        return self._at(self.ACTIVATIONS)

    @property
    def activation_manifest_path(self) -> Path:
        """``activations/manifest.json``: which model, texts and settings stage 1 used."""
        return self._at(self.ACTIVATION_MANIFEST)

    def activation_manifest(self) -> dict[str, Any]:
        """The stage-1 manifest.

        Raises
        ------
        FileNotFoundError
            The run has no stage-1 manifest (stage 1 did not run with this run directory).
        funcprune._io.ArtefactError
            The manifest is not valid JSON.
        """
        return _read_record(self.activation_manifest_path,
                            "run stage 1 (notebooks/01_capture_activations.ipynb) with this run_dir first")

    # ---- stage 2 -------------------------------------------------------------------------
    @property
    def networks(self) -> Path:
        """``networks/``: the functional networks of stage 2 (:func:`funcprune.run.artefacts.save_networks`)."""
        return self._at(self.NETWORKS)

    @property
    def networks_other_seed(self) -> Path:
        """``networks_other_seed/``: the stage-2 fit with another seed (the stability check)."""
        return self._at(self.NETWORKS_OTHER_SEED)

    # ---- stages 3 and 4 ------------------------------------------------------------------
    @property
    def stats(self) -> Path:
        """``stats/``: cached statistics of the dense model (:func:`funcprune.run.calibration.calibration_statistics`)."""
        return self._at(self.STATS)

    @property
    def plans(self) -> Path:
        """``plans/``: one pruning plan per model."""
        return self._at(self.PLANS)

    def plan_ref(self, key: str) -> str:
        """Where the plan of ``key`` lives, relative to the run directory (as the index records it)."""
        return f"{self.PLANS}/{key}.json"

    def plan_path(self, key: str) -> Path:
        """``plans/<key>.json``."""
        return self.resolve(self.plan_ref(key))

    @property
    def pruned(self) -> Path:
        """``pruned/``: the index and the compensation biases of stage 4."""
        return self._at(self.PRUNED)

    @property
    def index_path(self) -> Path:
        """``pruned/index.json``: every pruned model of the run."""
        return self._at(self.INDEX)

    @property
    def decomposition_record(self) -> Path:
        """``pruned/decomposition.json``: the choices stage 4 made on validation text for the decomposition
        (least-squares ridge, strongest baseline variant; :func:`funcprune.decompose.build_grid_points`)."""
        return self._at(self.DECOMPOSITION)

    def index(self) -> dict[str, Any]:
        """The pruned-model index, checked: keys unique and none equal to :data:`funcprune.tables.DENSE_KEY`.

        Returns
        -------
        dict
            The index as written by :func:`funcprune.run.pipeline.prune_all` (``format``,
            ``base_model``, ``base_widths``, ``entries``); ``{"entries": []}`` when
            nothing was pruned yet.

        Raises
        ------
        ValueError
            Duplicated keys or a key :data:`funcprune.tables.DENSE_KEY`.
        funcprune._io.ArtefactError
            The index is not valid JSON.
        """
        path = self.index_path
        if not path.exists():
            return {"entries": []}
        index = read_json(path, fix=_INDEX_FIX)
        keys = [e["key"] for e in index.get("entries", [])]
        if DENSE_KEY in keys or len(set(keys)) != len(keys):
            raise ValueError(f"{path}: keys must be unique and not {DENSE_KEY!r}, got {keys}")
        return index

    def entries(self) -> dict[str, dict[str, Any]]:
        """The index entries of the current layout (plan and biases, no checkpoint), by key.

        An index of an older layout lists checkpoints, not plans: those entries are left
        out (stage 4 makes them again).
        """
        return {e["key"]: e for e in self.index()["entries"] if "plan" in e and "biases" in e}

    @property
    def biases(self) -> Path:
        """``pruned/biases/``: the down-projection biases of the compensated models."""
        return self._at(self.BIASES)

    def bias_paths(self, key: str) -> tuple[Path, Path]:
        """``pruned/biases/<key>.safetensors`` and its record ``pruned/biases/<key>.json``."""
        return self.biases / f"{key}.safetensors", self.biases / f"{key}.json"

    def legacy_checkpoint(self, key: str) -> Path:
        """``pruned/<key>/``: where an earlier layout of stage 4 saved a whole checkpoint."""
        return self.pruned / key

    # ---- stage 5 -------------------------------------------------------------------------
    @property
    def results(self) -> Path:
        """``results/``: what stage 5 writes."""
        return self._at(self.RESULTS)

    def part_path(self, key: str) -> Path:
        """``results/parts/<key>.json``: one model's cached measurements."""
        return self._at(self.PARTS) / f"{key}.json"

    @property
    def results_csv(self) -> Path:
        """``results/results.csv``: the long results table (:func:`funcprune.run.results.load_results`)."""
        return self._at(self.RESULTS_CSV)

    @property
    def results_json(self) -> Path:
        """``results/results.json``: protocol, every model's record and the checks of stage 5."""
        return self._at(self.RESULTS_JSON)

    @property
    def comparisons_csv(self) -> Path:
        """``results/comparisons.csv``: the paired comparisons (:func:`funcprune.compare.headline_comparisons`)."""
        return self._at(self.COMPARISONS_CSV)

    def summary_path(self, section: str) -> Path:
        """``summary/<section>.json``: a chapter's headline statistics for the comparison across models
        (:func:`funcprune.book.crossmodel.record_summary`)."""
        return self._at(self.SUMMARY) / f"{section}.json"

    def results_record(self) -> dict[str, Any]:
        """``results/results.json``, read.

        Raises
        ------
        FileNotFoundError
            Stage 5 has not run for this run directory.
        """
        return _read_record(self.results_json, "run evaluate_run (stage 5) for this run_dir first")
