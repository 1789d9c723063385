"""Functional networks: spatial group ICA over MLP channels, in the style of CanICA.

Channels are voxels and tokens are time points. For every layer (or window of
consecutive layers) and every group of texts, :class:`FunctionalNetworks` runs the
CanICA recipe of nilearn on the matrix ``X`` of shape ``(n_tokens, n_voxels)``:

1. z-score every voxel over time, in float64 (constant voxels become zeros);
2. randomized SVD of ``X``; keep the ``n_components`` spatial singular vectors
   (``n_voxels x n_components``);
3. FastICA on them, voxels being the samples (``fun="cube"``, unit-variance
   whitening), restarted ``n_init`` times from seeds drawn off ``random_state``;
   the sparsest run (lowest max over components of the L1 norm) among those that
   converged is kept, the sparsest of all when none did;
4. each map is z-scored over its voxels and its sign flipped so that its peak
   (largest ``|z|``) is positive; maps are ordered by the variance of ``X`` they
   explain, largest first.

Non-convergence, overflow, NaN and rank deficiency (``n_components`` above the
numerical rank of the data, so that some maps are numerical noise) are never silent:
they raise an :class:`ICAConvergenceWarning` that names the layer and the group and
are recorded in ``convergence_`` (``status`` other than ``"ok"``) and listed in
``warnings_``; a group whose every restart produced NaN is discarded, with a
warning, and ``n_groups_used_`` counts the groups that remain.

A fit is plain data (:meth:`FunctionalNetworks.to_dict`, :meth:`FunctionalNetworks.arrays`,
:meth:`FunctionalNetworks.from_record`); writing it to a run and checking it when read back is
the run layer's (:func:`funcprune.run.artefacts.save_networks` and ``load_networks``).

On a 2-D array :class:`FunctionalNetworks` is a scikit-learn transformer (input checked by
scikit-learn, ``n_features_in_``, ``transform(X)``, ``fit_transform``, ``set_output``; its
estimator checks run in ``tests/test_ica_estimator.py``); the maps of one layer of a store
(or of one group) are projected with :meth:`FunctionalNetworks.time_courses`.

Used in the chapter :doc:`/executed/02_functional_networks`.

Why one module: :class:`FunctionalNetworks` is one estimator whose fitting (groups, seeds,
converged-first selection among restarts) and record are read top to bottom by someone checking
the method; the numerical steps it calls (z-scoring, randomized SVD, whitening, one FastICA
restart) live in :mod:`funcprune._fastica`, its inputs (arrays, mappings, a store; groups of
texts) in :mod:`funcprune._ica_input`, and the agreement measures and the longer-run convergence
check in :mod:`funcprune.agreement`.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import Tags, check_random_state
from sklearn.utils.extmath import randomized_svd
from sklearn.utils.validation import check_array, check_is_fitted, validate_data
from tqdm.auto import tqdm

from ._fastica import _fastica_restart, _numerical_rank, _randomized_svd_torch, _whiten, zscore_time_in_place
from ._ica_input import _as_source, _is_array, _Source, _split_groups

__all__ = ["FunctionalNetworks", "ICAConvergenceWarning", "zscore_time_in_place"]

NETWORKS_FORMAT = "funcprune-networks/1"
MODES = ("layer", "window")
DEVICES = ("cpu", "cuda")
#: Below this ratio of smallest to largest singular value of the centred spatial
#: components, whitening amplifies noise: warned about and recorded.
WHITENING_MIN_CONDITION = 1e-2


class ICAConvergenceWarning(ConvergenceWarning):
    """FastICA did not converge, overflowed or produced NaN, or the data's rank is below ``k``."""


# ----------------------------------------------------------------------------------
# The estimator
# ----------------------------------------------------------------------------------
class FunctionalNetworks(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Spatial group ICA of MLP activations (CanICA-style functional networks).

    Parameters
    ----------
    n_components : int, default=32
        Maps (independent components) per layer and group: ``k`` of the paper,
        which used 128 for 2 x 11008 voxels per layer; 32 suits the 2 x 1536 voxels
        of SmolLM2-135M.
    n_groups : int, default=1
        Groups of texts fitted separately; all groups' maps are kept (stacked).
        Rows of one text always fall in the same group (see ``doc_ids``).
    mode : {"layer", "window"}, default="layer"
        ``"layer"``: one decomposition per layer (the pruning mode).
        ``"window"``: one per window of ``window_size`` consecutive layers, the
        voxels of the window's layers concatenated.
    window_size : int, default=3
        Layers per window when ``mode="window"`` (stride 1).
    n_init : int, default=10
        FastICA restarts; the sparsest run that converged is kept (the sparsest of
        all when none converged).
    max_iter : int, default=300
        FastICA iterations per restart.
    tol : float, default=1e-4
        FastICA convergence tolerance.
    svd_n_iter : int or "auto", default="auto"
        Power iterations of the randomized SVD (scikit-learn's rule for "auto").
    layers : sequence of int, optional
        Layers to fit; default all layers of the input.
    random_state : int, RandomState instance or None, default=None
        Drives every random draw. One base seed is drawn from it (``seed_``); the
        seeds of layer/window ``key`` and group ``g`` derive from ``(seed_, mode,
        key, g)``, so a layer's maps do not depend on which other layers are fitted.
    n_jobs : int, default=1
        Parallel FastICA restarts (joblib). Results do not depend on it.
    device : {"cpu", "cuda"}, default="cpu"
        Where the randomized SVD runs. ``"cuda"`` uses a torch implementation in
        float64; FastICA always runs on the CPU. ``"cpu"`` never imports torch.
    progress : bool, default=True
        Show a tqdm progress bar over layers (or windows) x groups.

    Attributes
    ----------
    maps_ : dict[int, ndarray of shape (n_groups_used * n_components, n_voxels)]
        ``mode="layer"`` only (empty otherwise). Key: layer. Float32 maps, each
        z-scored over voxels with its peak positive; group 0's maps first, each
        group's ordered by explained variance.
    window_maps_ : dict[int, ndarray of shape (n_groups_used * n_components, n_window_voxels)]
        ``mode="window"`` only (empty otherwise). Key: first layer of the window;
        voxels are the window's layers' voxels concatenated in layer order.
    window_voxel_layers_ : dict[int, ndarray of shape (n_window_voxels,)]
        Layer of each voxel of a window (``mode="window"``).
    window_voxel_channels_ : dict[int, ndarray of shape (n_window_voxels,)]
        Channel index of each voxel of a window (``mode="window"``).
    voxel_channels_ : dict[int, ndarray of shape (n_voxels,)]
        Channel index of each voxel of a layer (``store.voxel_channels(layer)``;
        ``arange(n_voxels)`` for arrays).
    map_groups_ : dict[int, ndarray of shape (n_maps,)]
        Group of each row of ``maps_[key]`` (or ``window_maps_[key]``).
    explained_variance_ : dict[int, ndarray of shape (n_maps,)]
        Fraction of the group's z-scored variance each map explains alone.
    n_groups_used_ : dict[int, int]
        Groups whose maps were kept, per key (a group is dropped only if every
        FastICA restart produced NaN/inf).
    groups_ : list of dict
        ``group``, ``n_tokens``, ``rows`` (``[start, stop]`` or None) and ``docs``
        (text indices, or None for array input without ``doc_ids``).
    convergence_ : list of dict
        One record per key and group: ``key``, ``layers``, ``group``, ``status``
        (``"ok"``, ``"rank_deficient"``, ``"not_converged"`` or ``"discarded"``), the
        data's numerical ``rank`` (of the first ``n_components`` singular directions),
        per-restart ``n_iter``, ``converged``, ``finite``, ``sparsity``, the ``selected``
        restart, captured ``warnings``, the ``problems`` warned about (sentences),
        ``n_constant_voxels`` and ``seconds`` per step.
    layers_ : list of int
        Layers fitted.
    keys_ : list of int
        Keys of the map dictionaries: layers (``mode="layer"``) or window starts.
    window_layers_ : dict[int, list of int]
        Layers of each window (``mode="window"``).
    seed_ : int
        Base seed actually used (record it to repeat a ``random_state=None`` fit).
    input_ : dict
        Description of the fitted input (store path, model, dtype, shapes).
    warnings_ : list of str
        One sentence per fit that warned (layer, group, status and what went wrong),
        for a chapter to show; empty when every fit is clean.
    n_iter_ : int
        Most FastICA iterations among the restarts whose maps were kept (``max_iter``
        when one of them was stopped); per restart in ``convergence_``.
    n_features_in_ : int
        Voxels of ``X`` when ``fit`` was given a 2-D array (scikit-learn's contract);
        not set for a mapping or a store, whose layers have their own widths.
    feature_names_in_ : ndarray of shape (n_voxels,)
        Column names of ``X`` when ``fit`` was given a DataFrame with string column names.

    Notes
    -----
    Differences from nilearn's CanICA: no spatial smoothing, temporal reduction or
    CCA (one matrix per group); unit-variance whitening as the paper (CanICA:
    ``"arbitrary-variance"``), computed here and passed to
    ``FastICA(whiten=False)``: scikit-learn's own whitening fixes signs with
    ``np.sign(u[0])`` and silently drops a direction when an entry is exactly 0,
    which CanICA's degenerate input (orthonormal singular vectors) makes happen;
    no thresholding, maps z-scored instead; maps ordered by explained
    variance. Sign flip and the sparsest of ``n_init`` restarts are CanICA's, except
    that a restart stopped by ``max_iter`` competes only when none converged: it is a
    point on the way to an optimum, not one, and its sparsity says little (stopped
    restarts that looked sparser than converged ones were seen on the default profile;
    :func:`convergence_check` measures what a stopped run's maps are worth). On
    planted sources the maps agree with CanICA's to ``|corr| > 0.99999``
    (``tests/test_ica.py``). z-scoring over time uses ``ddof=0``.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).laplace(size=(200, 300))
    >>> fn = FunctionalNetworks(4, n_init=2, random_state=0, progress=False).fit(X)
    >>> fn.maps_[0].shape, fn.transform(X).shape, fn.n_features_in_
    ((4, 300), (200, 4), 300)
    """

    def __init__(self, n_components: int = 32, *, n_groups: int = 1,
                 mode: Literal["layer", "window"] = "layer", window_size: int = 3,
                 n_init: int = 10, max_iter: int = 300, tol: float = 1e-4,
                 svd_n_iter: int | Literal["auto"] = "auto", layers: Sequence[int] | None = None,
                 random_state: int | np.random.RandomState | None = None, n_jobs: int = 1,
                 device: Literal["cpu", "cuda"] = "cpu", progress: bool = True) -> None:
        self.n_components = n_components
        self.n_groups = n_groups
        self.mode = mode
        self.window_size = window_size
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.svd_n_iter = svd_n_iter
        self.layers = layers
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.device = device
        self.progress = progress

    # -- validation ---------------------------------------------------------------
    def _check_params(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")

        for name in ("n_components", "n_groups", "window_size", "n_init", "max_iter"):
            positive_int(name)
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not supported; choose one of {list(MODES)}")
        if self.device not in DEVICES:
            raise ValueError(f"device={self.device!r} is not supported; choose one of {list(DEVICES)}")
        if not (isinstance(self.tol, (int, float)) and self.tol > 0):
            raise ValueError(f"tol must be a positive number; got {self.tol!r}")
        if self.svd_n_iter != "auto" and not (isinstance(self.svd_n_iter, int) and self.svd_n_iter >= 0):
            raise ValueError(f"svd_n_iter must be 'auto' or a non-negative integer; got {self.svd_n_iter!r}")
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("device='cuda' was requested but torch sees no CUDA device; "
                                 "use device='cpu'")

    def _select_layers(self, source: _Source) -> list[int]:
        if self.layers is None:
            return list(source.layers)
        missing = sorted(set(self.layers) - set(source.layers))
        if missing:
            raise ValueError(f"layers {missing} are not in the input; available: {source.layers}")
        return sorted({int(layer) for layer in self.layers})

    # -- fitting ------------------------------------------------------------------
    def fit(self, X: Any, y: None = None, *, doc_ids: np.ndarray | None = None) -> "FunctionalNetworks":
        """Fit the functional networks of every layer (or window) and group.

        Parameters
        ----------
        X : ndarray of shape (n_tokens, n_voxels), mapping of int to such arrays, \
                ActivationStore or path of a store
            Activations. An array is layer 0, checked by scikit-learn (dense,
            numeric, at least 2 tokens and 2 voxels; sets ``n_features_in_``); a
            mapping's keys are layers; a store is read one layer (and one group) at a
            time from its memory maps.
        y : None
            Ignored (scikit-learn convention).
        doc_ids : ndarray of shape (n_tokens,), optional
            Text of each row, for array inputs (a store provides its own): groups
            never split a text.

        Returns
        -------
        self : FunctionalNetworks
            The fitted estimator.
        """
        del y
        self._check_params()
        if _is_array(X):  # an accepted array is passed on as it is (no copy, same dtype); NaN is named below
            X = validate_data(self, X, dtype="numeric", ensure_min_samples=2, ensure_min_features=2,
                              ensure_all_finite=False)
        else:
            for name in ("n_features_in_", "feature_names_in_"):  # they describe a 2-D array's columns
                self.__dict__.pop(name, None)
        source = _as_source(X, doc_ids)
        layers = self._select_layers(source)
        group_rows, self.groups_ = _split_groups(source.n_rows, source.doc_ids, self.n_groups)

        if self.mode == "layer":
            windows = {layer: [layer] for layer in layers}
        else:
            if len(layers) < self.window_size:
                raise ValueError(f"mode='window' needs at least window_size={self.window_size} "
                                 f"layers; the input has {len(layers)} ({layers})")
            windows = {layers[i]: layers[i:i + self.window_size]
                       for i in range(len(layers) - self.window_size + 1)}

        self.seed_ = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        self.layers_ = layers
        self.keys_ = list(windows)
        self.input_ = source.description
        self.voxel_channels_ = {layer: np.asarray(source.voxel_channels(layer)) for layer in layers}
        self.convergence_: list[dict[str, Any]] = []
        self.n_groups_used_: dict[int, int] = {}
        self.map_groups_: dict[int, np.ndarray] = {}
        self.explained_variance_: dict[int, np.ndarray] = {}
        maps: dict[int, np.ndarray] = {}

        bar = tqdm(total=len(windows) * len(group_rows), desc="FunctionalNetworks",
                   disable=not self.progress)
        try:
            for key, win in windows.items():
                key_maps, key_groups, key_ev = [], [], []
                for g, rows in enumerate(group_rows):
                    bar.set_postfix_str(f"{self._label(key, win, g)}")
                    X_g = self._read_block(source, win, rows)
                    result = self._fit_one(X_g, key, win, g)
                    del X_g
                    if result is not None:
                        key_maps.append(result[0])
                        key_ev.append(result[1])
                        key_groups.append(np.full(len(result[1]), g))
                    bar.update()
                n_vox = sum(len(self.voxel_channels_[layer]) for layer in win)
                maps[key] = (np.concatenate(key_maps) if key_maps
                             else np.empty((0, n_vox))).astype(np.float32)
                self.explained_variance_[key] = np.concatenate(key_ev) if key_ev else np.empty(0)
                self.map_groups_[key] = (np.concatenate(key_groups) if key_groups
                                         else np.empty(0, dtype=int))
                self.n_groups_used_[key] = len(key_maps)
        finally:
            bar.close()

        if self.mode == "layer":
            self.maps_, self.window_maps_ = maps, {}
            self.window_layers_, self.window_voxel_layers_, self.window_voxel_channels_ = {}, {}, {}
        else:
            self.maps_, self.window_maps_ = {}, maps
            self.window_layers_ = windows
            self.window_voxel_layers_ = {
                key: np.concatenate([np.full(len(self.voxel_channels_[layer]), layer) for layer in win])
                for key, win in windows.items()}
            self.window_voxel_channels_ = {
                key: np.concatenate([self.voxel_channels_[layer] for layer in win])
                for key, win in windows.items()}
        return self

    def _read_block(self, source: _Source, win: Sequence[int], rows: slice | np.ndarray
                    ) -> np.ndarray:
        """float64 copy of one group's rows of the window's layers, side by side."""
        if len(win) == 1:
            return source.read(win[0], rows)
        widths = [len(self.voxel_channels_[layer]) for layer in win]
        n_rows = len(range(*rows.indices(source.n_rows))) if isinstance(rows, slice) else len(rows)
        block = np.empty((n_rows, sum(widths)))
        start = 0
        for layer, width in zip(win, widths):
            block[:, start:start + width] = source.read(layer, rows)
            start += width
        return block

    def _spatial_components(self, X: np.ndarray, seed: int) -> np.ndarray:
        """The ``n_components`` spatial singular vectors of z-scored ``X``, shape ``(n_voxels, k)``."""
        if self.device == "cpu":
            return randomized_svd(X, self.n_components, n_iter=self.svd_n_iter, random_state=seed)[2].T
        return _randomized_svd_torch(X, self.n_components, self.svd_n_iter, seed, self.device)

    def _label(self, key: int, win: Sequence[int], group: int) -> str:
        where = f"layer {key}" if self.mode == "layer" else f"window {key} (layers {list(win)})"
        return f"{where}, group {group}"

    def _unit_seeds(self, key: int, group: int) -> np.ndarray:
        """``1 + n_init`` seeds (SVD, then FastICA restarts) of one key and group."""
        sequence = np.random.SeedSequence(self.seed_, spawn_key=(MODES.index(self.mode), key, group))
        return sequence.generate_state(1 + self.n_init, dtype=np.uint32)

    def _fit_one(self, X: np.ndarray, key: int, win: Sequence[int], group: int
                 ) -> tuple[np.ndarray, np.ndarray] | None:
        """CanICA on one matrix; returns (maps (k, V) float64, explained variance (k,)) or None."""
        label = self._label(key, win, group)
        n_tokens, n_voxels = X.shape
        k = self.n_components
        if k > min(n_tokens, n_voxels):
            raise ValueError(f"{label}: n_components={k} exceeds min(n_tokens={n_tokens}, "
                             f"n_voxels={n_voxels}); lower n_components or n_groups")
        if not np.isfinite(X).all():
            bad = ~np.isfinite(X)
            row, col = np.argwhere(bad)[0]
            raise ValueError(
                f"{label}: {int(bad.sum())} non-finite activation(s) (NaN or inf; first at group row "
                f"{row}, voxel {col}). float16 stores overflow above 65504: capture in float32.")
        seeds = self._unit_seeds(key, group)
        record: dict[str, Any] = {"key": key, "layers": list(win), "group": group,
                                  "n_tokens": n_tokens, "n_voxels": n_voxels,
                                  "svd_seed": int(seeds[0]), "ica_seeds": [int(s) for s in seeds[1:]]}
        t0 = time.perf_counter()
        record["n_constant_voxels"] = int(zscore_time_in_place(X).sum())
        t1 = time.perf_counter()
        spatial = self._spatial_components(X, int(seeds[0]))
        record["rank"] = _numerical_rank(X, spatial)
        t2 = time.perf_counter()
        white, record["whitening_condition"] = _whiten(spatial)
        runs = Parallel(n_jobs=self.n_jobs)(
            delayed(_fastica_restart)(white, int(seed), self.max_iter, self.tol) for seed in seeds[1:])
        t3 = time.perf_counter()
        finite = [i for i, run in enumerate(runs) if run["finite"]]
        candidates = [i for i in finite if runs[i]["converged"]] or finite  # an optimum beats a stopped run
        selected = min(candidates, key=lambda i: runs[i]["sparsity"]) if candidates else None
        record.update({
            "n_iter": [run["n_iter"] for run in runs],
            "converged": [run["converged"] for run in runs],
            "finite": [run["finite"] for run in runs],
            "sparsity": [run["sparsity"] if run["finite"] else None for run in runs],
            "warnings": sorted({msg for run in runs for msg in run["warnings"]}),
            "selected": selected,
        })
        n_bad = self.n_init - sum(record["converged"])
        problems: list[str] = []
        if selected is None:
            record["status"] = "discarded"
            problems.append(f"every FastICA restart ({self.n_init}) produced NaN/inf; the group is discarded")
            warnings.warn(f"{label}: every FastICA restart ({self.n_init}) produced NaN/inf; this "
                          f"group is discarded for this layer (see n_groups_used_ and convergence_). "
                          f"Captured: {record['warnings']}", ICAConvergenceWarning, stacklevel=3)
        else:
            record["status"] = "ok" if runs[selected]["converged"] else "not_converged"
            if record["rank"] < k:
                record["status"] = "rank_deficient"
                problems.append(f"the data have numerical rank {record['rank']} < n_components={k}, so "
                                f"{k - record['rank']} of the {k} maps are numerical noise; lower n_components "
                                "or n_groups (more tokens per group)")
            if n_bad:
                problems.append(f"FastICA did not converge in {n_bad} of {self.n_init} restarts "
                                f"(max_iter={self.max_iter}, tol={self.tol}); the selected restart "
                                f"{'converged' if runs[selected]['converged'] else 'did NOT converge'}")
            if len(finite) < self.n_init:
                problems.append(f"{self.n_init - len(finite)} restart(s) produced NaN/inf and were dropped")
            if record["whitening_condition"] < WHITENING_MIN_CONDITION:
                problems.append(f"a spatial component is nearly constant over voxels (whitening "
                                f"condition {record['whitening_condition']:.1e}); its map is mostly noise")
            if record["warnings"] and not n_bad:
                problems.append("FastICA raised warnings")
            if problems:
                warnings.warn(f"{label}: {'; '.join(problems)}. Captured: {record['warnings']} "
                              "(recorded in convergence_)", ICAConvergenceWarning, stacklevel=3)
        record["problems"] = problems
        out = None
        if selected is not None:
            maps = runs[selected]["sources"].T  # (k, n_voxels)
            maps = maps - maps.mean(axis=1, keepdims=True)
            std = maps.std(axis=1, keepdims=True)
            maps = maps / np.where(std > 0, std, 1.0)
            flip = maps.max(axis=1) < -maps.min(axis=1)  # peak positive (CanICA's rule)
            maps[flip] *= -1
            unit = maps / np.maximum(np.linalg.norm(maps, axis=1, keepdims=True), 1e-300)
            total = float(np.einsum("ij,ij->", X, X))
            projected = X @ unit.T  # (n_tokens, k)
            ev = np.einsum("tk,tk->k", projected, projected) / total if total > 0 else np.zeros(k)
            order = np.argsort(-ev, kind="stable")
            out = (maps[order], ev[order])
        record["seconds"] = {"zscore": t1 - t0, "svd": t2 - t1, "ica": t3 - t2,
                             "total": time.perf_counter() - t0}
        self.convergence_.append(record)
        return out

    # -- using the fit ------------------------------------------------------------
    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "maps_")

    @property
    def warnings_(self) -> list[str]:
        """One sentence per fit that warned: its status is not ``"ok"`` or it recorded ``problems``."""
        check_is_fitted(self)
        out = []
        for r in self.convergence_:
            if r["status"] != "ok" or r.get("problems"):
                where = self._label(r["key"], r["layers"], r["group"])
                detail = "; ".join(r.get("problems") or []) or "see convergence_"
                out.append(f"{where}: {r['status']}: {detail}")
        return out

    @property
    def _fitted_maps(self) -> dict[int, np.ndarray]:
        return self.maps_ if self.mode == "layer" else self.window_maps_

    @property
    def n_iter_(self) -> int:
        """Most FastICA iterations among the kept restarts (scikit-learn's ``n_iter_``)."""
        check_is_fitted(self)
        return max((r["n_iter"][r["selected"]] for r in self.convergence_ if r["selected"] is not None), default=0)

    @property
    def _n_features_out(self) -> int:
        """Columns of ``transform(X)``, for ``get_feature_names_out`` and ``set_output``."""
        return len(self._fitted_maps[self._only_key()])

    def _only_key(self) -> int:
        keys = sorted(self._fitted_maps)
        if len(keys) != 1:
            raise ValueError(f"several layers (or windows) were fitted ({keys}): pass one, as in "
                             "time_courses(X, layer); transform(X) needs a fit of one")
        return keys[0]

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False  # fit and transform reject NaN and inf
        tags.input_tags.sparse = False  # z-scoring over tokens makes every voxel dense
        tags.transformer_tags.preserves_dtype = ["float64"]  # time courses are float64 whatever the input
        return tags

    def transform(self, X: Any) -> np.ndarray:
        """Time courses of the networks of a one-layer fit (scikit-learn's ``transform``).

        The same as :meth:`time_courses` of the fitted layer (or window); after a fit on
        a 2-D array, ``X`` is checked by scikit-learn against ``n_features_in_`` (and
        ``feature_names_in_``). For a fit of several layers, call :meth:`time_courses`.

        Parameters
        ----------
        X : array-like of shape (n_tokens, n_voxels)
            Activations, z-scored here over the tokens given: each row's time course
            depends on the other rows, so transform whole texts, not one token at a time.

        Returns
        -------
        ndarray of shape (n_tokens, n_maps)
            Time course of each of the layer's maps.
        """
        check_is_fitted(self)
        key = self._only_key()
        if hasattr(self, "n_features_in_"):
            X = validate_data(self, X, reset=False, dtype="numeric")
        return self.time_courses(X, key)

    def time_courses(self, X: Any, layer: int | None = None, *, group: int | None = None) -> np.ndarray:
        """Time courses of the networks of one layer: least squares of z-scored ``X`` onto the maps.

        As nilearn's maps maskers: solve ``maps.T @ C.T ~= X_z.T`` for ``C``. Feed the
        result to :class:`nilearn.connectome.ConnectivityMeasure` for functional
        connectivity between networks.

        Parameters
        ----------
        X : array-like of shape (n_tokens, n_voxels)
            Activations of one layer (or of a window's layers concatenated), z-scored
            here over the tokens given.
        layer : int, optional
            Layer (``mode="layer"``) or window start (``mode="window"``); may be
            omitted when only one was fitted.
        group : int, optional
            Use only this group's maps; default all maps of the key.

        Returns
        -------
        ndarray of shape (n_tokens, n_maps)
            Time course of each map (``n_maps = n_components`` when ``group`` is given).
        """
        check_is_fitted(self)
        maps_by_key = self._fitted_maps
        if layer is None:
            layer = self._only_key()
        if layer not in maps_by_key:
            raise KeyError(f"{layer} was not fitted; fitted: {sorted(maps_by_key)}")
        maps = maps_by_key[layer].astype(np.float64)
        if group is not None:
            if group not in set(self.map_groups_[layer].tolist()):
                raise KeyError(f"group {group} has no maps for {layer}; groups used: "
                               f"{sorted(set(self.map_groups_[layer].tolist()))}")
            maps = maps[self.map_groups_[layer] == group]
        X = np.array(check_array(X, dtype="numeric", estimator=self), dtype=np.float64)
        if X.shape[1] != maps.shape[1]:
            raise ValueError(f"X has {X.shape[1]} features, but the maps of {layer} have {maps.shape[1]} "
                             f"voxels: expected shape (n_tokens, {maps.shape[1]})")
        zscore_time_in_place(X)
        return np.linalg.lstsq(maps.T, X.T, rcond=None)[0].T

    # -- persistence --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary of the fit: parameters and every fitted record.

        Arrays (maps, channels, ...) are not included: :meth:`arrays` gives them.

        Returns
        -------
        dict
        """
        check_is_fitted(self)
        params = self.get_params()
        if not (params["random_state"] is None or isinstance(params["random_state"], int)):
            params["random_state"] = repr(params["random_state"])
        if params["layers"] is not None:
            params["layers"] = [int(layer) for layer in params["layers"]]
        return {
            "format": NETWORKS_FORMAT,
            "params": params,
            "seed_": self.seed_,
            "layers_": [int(layer) for layer in self.layers_],
            "keys_": [int(key) for key in self.keys_],
            "window_layers_": {str(k): list(v) for k, v in self.window_layers_.items()},
            "n_groups_used_": {str(k): int(v) for k, v in self.n_groups_used_.items()},
            "groups_": self.groups_,
            "convergence_": self.convergence_,
            "input_": self.input_,
        }

    _ARRAY_FIELDS = ("maps_", "window_maps_", "map_groups_", "explained_variance_",
                     "voxel_channels_", "window_voxel_layers_", "window_voxel_channels_")

    def arrays(self) -> dict[str, np.ndarray]:
        """Every fitted array by name (``maps_3``, ``voxel_channels_3``, ...): the rest of the fit beside :meth:`to_dict`."""
        check_is_fitted(self)
        return {f"{name}{key}": value for name in self._ARRAY_FIELDS for key, value in getattr(self, name).items()}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> "FunctionalNetworks":
        """The fit that :meth:`to_dict` and :meth:`arrays` describe (the inverse of the two).

        Parameters
        ----------
        record : mapping
            :meth:`to_dict`'s summary (extra keys, such as a file record, are ignored).
        arrays : mapping of str to ndarray
            :meth:`arrays`'s arrays.

        Returns
        -------
        FunctionalNetworks
            A fitted estimator (``random_state`` is None if it was not an int).
        """
        params = dict(record["params"])
        if isinstance(params["random_state"], str):
            params["random_state"] = None
        est = cls(**params)
        est.seed_ = record["seed_"]
        est.layers_ = record["layers_"]
        est.keys_ = record["keys_"]
        est.window_layers_ = {int(k): v for k, v in record["window_layers_"].items()}
        est.n_groups_used_ = {int(k): v for k, v in record["n_groups_used_"].items()}
        est.groups_ = record["groups_"]
        est.convergence_ = record["convergence_"]
        est.input_ = record["input_"]
        for name in cls._ARRAY_FIELDS:
            setattr(est, name, {})
        for stored, value in arrays.items():
            name = next(n for n in sorted(cls._ARRAY_FIELDS, key=len, reverse=True)
                        if stored.startswith(n) and stored[len(n):].lstrip("-").isdigit())
            getattr(est, name)[int(stored[len(name):])] = value
        return est
