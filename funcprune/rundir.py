"""The run directory: one folder that every stage of a run reads and writes, laid out in one place.

Every path of a run directory is spelled here, and nowhere else; the stages and the
notebooks ask a :class:`RunDir` for them::

    run_dir/profile.yaml                       the profile the workflow ran (funcprune.workflow)
    run_dir/activations/                       stage 1: the activation store (funcprune.store)
    run_dir/activations/manifest.json          which model, texts and settings (read by calibration_texts)
    run_dir/networks/                          stage 2: FunctionalNetworks.save (networks.json and arrays)
    run_dir/networks_other_seed/               stage 2: the same fit with another seed (stability)
    run_dir/stats/                             activation statistics for wanda-sp and flap (cached)
    run_dir/plans/<key>.json                   stages 3 and 4: one plan per (method, ratio[, seed])
    run_dir/pruned/index.json                  stage 4: what was made (ratios, parameters, widths, digests)
    run_dir/pruned/biases/<key>.safetensors    stage 4: compensation biases (fn-bias, flap), and <key>.json
    run_dir/results/parts/<key>.json           stage 5: one model's measurements (a cache)
    run_dir/results/results.csv                stage 5: the long results table
    run_dir/results/results.json               stage 5: protocol, records, checks
    run_dir/results/comparisons.csv            stage 5: the paired headline comparisons

The file names inside a store, a networks folder or a statistics folder belong to
their writers (:mod:`funcprune.store`, :mod:`funcprune.ica`, :mod:`funcprune.scoring`);
only the stage-1 manifest and ``networks/networks.json`` are named here, because other
stages and :mod:`funcprune.bundle` look for them.

>>> run = RunDir("runs/demo")
>>> run.plan_path("fn_r0.20").as_posix()
'runs/demo/plans/fn_r0.20.json'
>>> run.plan_ref("fn_r0.20")
'plans/fn_r0.20.json'
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from ._io import read_json

__all__ = ["DENSE_KEY", "RunDir"]

#: Key of the dense model in the results (its part is ``results/parts/dense.json``); no pruned model may use it.
DENSE_KEY = "dense"

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
    directory (what :mod:`funcprune.bundle` and the pruned-model index record); the
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
    BIASES = "pruned/biases"
    RESULTS = "results"
    PARTS = "results/parts"
    RESULTS_CSV = "results/results.csv"
    RESULTS_JSON = "results/results.json"
    COMPARISONS_CSV = "results/comparisons.csv"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

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
        """``networks/``: the functional networks of stage 2 (:meth:`funcprune.ica.FunctionalNetworks.save`)."""
        return self._at(self.NETWORKS)

    @property
    def networks_other_seed(self) -> Path:
        """``networks_other_seed/``: the stage-2 fit with another seed (the stability check)."""
        return self._at(self.NETWORKS_OTHER_SEED)

    # ---- stages 3 and 4 ------------------------------------------------------------------
    @property
    def stats(self) -> Path:
        """``stats/``: cached statistics of the dense model (:func:`funcprune.calibration.calibration_statistics`)."""
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

    def index(self) -> dict[str, Any]:
        """The pruned-model index, checked: keys unique and none equal to :data:`DENSE_KEY`.

        Returns
        -------
        dict
            The index as written by :func:`funcprune.pipeline.prune_all` (``format``,
            ``base_model``, ``base_widths``, ``entries``); ``{"entries": []}`` when
            nothing was pruned yet.

        Raises
        ------
        ValueError
            Duplicated keys or a key :data:`DENSE_KEY`.
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
        """``results/results.csv``: the long results table (:func:`funcprune.tables.load_results`)."""
        return self._at(self.RESULTS_CSV)

    @property
    def results_json(self) -> Path:
        """``results/results.json``: protocol, every model's record and the checks of stage 5."""
        return self._at(self.RESULTS_JSON)

    @property
    def comparisons_csv(self) -> Path:
        """``results/comparisons.csv``: the paired comparisons (:func:`funcprune.compare.headline_comparisons`)."""
        return self._at(self.COMPARISONS_CSV)

    def results_record(self) -> dict[str, Any]:
        """``results/results.json``, read.

        Raises
        ------
        FileNotFoundError
            Stage 5 has not run for this run directory.
        """
        return _read_record(self.results_json, "run evaluate_run (stage 5) for this run_dir first")
