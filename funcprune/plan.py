"""Stage 3: pruning plans, the inspectable middle level between scores and pruned weights.

A :class:`PruningPlan` says which MLP channels every layer keeps, for which model, how
they were chosen and how many parameters go. It is plain data: JSON round trip, a
per-layer table, and nothing that touches weights (:func:`funcprune.prune.prune`
applies it).

:func:`select_channels` turns scores (any scorer of :mod:`funcprune.scoring`) into a
plan that removes a requested fraction of parameters. Channels are removed in *units*:
with ``round_to=r`` the kept width of a pruned layer is a multiple of ``r``, so a unit
is the ``r`` (or, first, ``width mod r``) lowest-scored channels still kept. Units are
ordered

* ``allocation="global"``: by score (a unit's score is the largest score in it), one
  ranking across every prunable layer; this is the authors' rule;
* ``allocation="uniform"``: by the fraction of its layer the unit's removal reaches, so
  every prunable layer loses the same fraction (to within one unit), ties by score;

and the prefix of that order whose parameter count is closest to the request is
removed. The reached ratio is therefore within half a unit's parameters of the request
(``r`` channels of ``3 * hidden`` parameters each for gated MLPs) -- exact, unlike the
authors' hand-tuned threshold, which :func:`select_by_threshold` keeps for fidelity.

A plan is checked when it is loaded (:meth:`PruningPlan.load` runs :meth:`PruningPlan.check`:
indices sorted, unique and in range, protected layers whole, totals consistent) and
again, against the model, before pruning (:func:`funcprune.prune.check_plan`); a bad
plan file is named with the fix.

Used in the chapters :doc:`/executed/03_key_neurons` and :doc:`/executed/04_structured_pruning`.

Why one module: the plan (a data class with its checks and its file format) and the two ways to
make one (:func:`select_channels`, :func:`select_by_threshold`) share the budget arithmetic
(:func:`channel_parameters`, :func:`kept_sizes`); apart, the arithmetic would be imported back
and forth.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from torch import nn

from ._io import ArtefactError, atomic_write_json, read_json
from .adapters import get_adapter, layer_widths
from .evaluate import count_parameters
from .models import describe_model
from .provenance import environment_info

__all__ = [
    "PLAN_FORMAT",
    "PlanMismatchError",
    "PruningPlan",
    "channel_parameters",
    "default_protected_layers",
    "kept_sizes",
    "middle_ratio",
    "model_identity",
    "select_by_threshold",
    "select_channels",
    "select_within_widths",
    "threshold_for_ratio",
]

PLAN_FORMAT = "funcprune-plan/1"
BASES = ("total", "mlp")
ALLOCATIONS = ("global", "uniform")
#: How to recover from a bad plan file.
PLAN_FIX = ("delete it and re-run the stage that made it (stage 3, notebooks/03_key_neurons.ipynb; "
            "a plan inside a pruned checkpoint: stage 4)")


class PlanMismatchError(ValueError):
    """A plan does not fit the model it is applied to, or is malformed."""


# ----------------------------------------------------------------------------------
# Facts about a model
# ----------------------------------------------------------------------------------
def model_identity(model: nn.Module, source: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a plan records about its base model, and :func:`funcprune.prune.prune` checks.

    Parameters
    ----------
    model : nn.Module
    source : dict, optional
        Where the model came from (``LoadedModel.source`` of
        :func:`funcprune.models.load_model`), as for :func:`funcprune.models.describe_model`.

    Returns
    -------
    dict
        ``name``, ``model_type``, ``n_layers``, ``hidden_size``, ``revision`` (``None``
        when unknown, e.g. a model built from a config).
    """
    info = describe_model(model, None if source is None else dict(source))
    return {
        "name": str(info.get("name")),
        "model_type": model.config.model_type,
        "n_layers": int(info["n_layers"]),
        "hidden_size": int(model.config.hidden_size),
        "revision": info.get("revision"),
    }


def default_protected_layers(n_layers: int) -> list[int]:
    """The authors' protected layers: the first three and the last two."""
    return sorted({i for i in (0, 1, 2, n_layers - 2, n_layers - 1) if 0 <= i < n_layers})


def channel_parameters(model: nn.Module) -> dict[int, int]:
    """Parameters one MLP channel owns, per layer.

    ``3 * hidden`` for gated MLPs (a gate row, an up row, a down column), ``2 * hidden``
    otherwise, plus one per gate/up bias. The down bias belongs to the hidden size and
    stays.
    """
    adapter = get_adapter(model)
    out = {}
    for i, layer in enumerate(adapter.get_layers(model)):
        names = ("mlp.gate", "mlp.up") if adapter.gated else ("mlp.up",)
        n = int(adapter.mlp_weight(layer, "mlp.down").shape[0])
        for name in names:
            n += int(adapter.mlp_weight(layer, name).shape[1])
            n += int(adapter.module(layer, name).bias is not None)
        out[i] = n
    return out


# ----------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------
@dataclass
class PruningPlan:
    """Which MLP channels each layer keeps, for which model, and why.

    Attributes
    ----------
    kept : dict[int, list of int]
        Layer -> sorted, unique indices of the channels kept (every layer listed).
    widths : dict[int, int]
        Layer -> MLP width of the base model the plan was made for.
    model : dict
        Base model identity (see :func:`model_identity`).
    method : str
        Scorer name (``"functional_networks"``, ``"random"``, ...).
    settings : dict
        Scorer and selection settings (seed, threshold, round_to, min_width ...).
    ratio_requested : float or None
        Fraction of ``ratio_basis`` parameters requested (``None`` in threshold mode).
    ratio_reached : float
        Fraction actually removed: ``params_removed / params_basis``.
    params_removed : int
        Parameters the plan removes.
    params_basis : int
        Denominator of the ratios: all parameters (``"total"``, tied embeddings once)
        or MLP parameters (``"mlp"``) of the base model.
    ratio_basis : {"total", "mlp"}
    allocation : {"global", "uniform"}
    protected_layers : list of int
        Layers never pruned.
    heads : dict
        Reserved for attention-head pruning; empty.
    provenance : dict
        :func:`funcprune.provenance.environment_info` at creation.
    """

    kept: dict[int, list[int]]
    widths: dict[int, int]
    model: dict[str, Any]
    method: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    ratio_requested: float | None = None
    ratio_reached: float = 0.0
    params_removed: int = 0
    params_basis: int = 0
    ratio_basis: str = "total"
    allocation: str = "global"
    protected_layers: list[int] = field(default_factory=list)
    heads: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # JSON turns int keys into strings; normalise so a loaded plan equals the saved one.
        try:  # operator.index refuses 1.5 where int() would truncate it
            self.kept = {int(k): [operator.index(c) for c in v] for k, v in self.kept.items()}
        except TypeError as exc:
            raise PlanMismatchError(f"kept channel indices must be integers ({exc})") from None
        self.widths = {int(k): int(v) for k, v in self.widths.items()}
        self.protected_layers = [int(i) for i in self.protected_layers]

    # -- views --------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        """Layers of the base model."""
        return sorted(self.widths)

    def removed(self, layer: int) -> list[int]:
        """Indices of the channels ``layer`` loses."""
        kept = set(self.kept[layer])
        return [c for c in range(self.widths[layer]) if c not in kept]

    @property
    def pruned_widths(self) -> dict[int, int]:
        """Layer -> width after pruning."""
        return {i: len(self.kept[i]) for i in self.layers}

    def table(self) -> "Any":
        """Per-layer table: ``layer``, ``width``, ``kept``, ``removed``, ``fraction`` (a DataFrame)."""
        import pandas as pd

        rows = [{"layer": i, "width": self.widths[i], "kept": len(self.kept[i]),
                 "removed": self.widths[i] - len(self.kept[i]),
                 "fraction": (self.widths[i] - len(self.kept[i])) / self.widths[i]}
                for i in self.layers]
        return pd.DataFrame(rows, columns=["layer", "width", "kept", "removed", "fraction"])

    def __str__(self) -> str:
        requested = "threshold" if self.ratio_requested is None else f"{self.ratio_requested:.4f}"
        head = (f"PruningPlan: {self.method or '?'} on {self.model.get('name')} "
                f"({self.model.get('model_type')}, {len(self.widths)} layers), {self.allocation} allocation\n"
                f"removes {self.params_removed:,} of {self.params_basis:,} {self.ratio_basis} parameters: "
                f"{self.ratio_reached:.4f} (requested {requested}); protected layers {self.protected_layers}\n")
        return head + self.table().to_string(index=False, float_format=lambda x: f"{x:.3f}")

    def check(self) -> None:
        """Raise :class:`PlanMismatchError` unless the plan is consistent in itself.

        Every layer of ``widths`` has a ``kept`` list that is non-empty, sorted, unique
        and within ``[0, width)``; protected layers keep every channel; ``params_removed``
        lies in ``[0, params_basis]``, is zero exactly when no channel goes, and
        ``ratio_reached == params_removed / params_basis``. The parameters each channel
        owns are a property of the model: :func:`funcprune.prune.check_plan` compares
        ``params_removed`` with the kept lists given the model.
        """
        if sorted(self.kept) != sorted(self.widths):
            raise PlanMismatchError(f"the plan lists kept channels for layers {sorted(self.kept)} but widths for "
                                    f"{sorted(self.widths)}")
        for i in sorted(self.kept):
            arr, width = np.asarray(self.kept[i], dtype=np.int64), self.widths[i]
            if arr.size == 0:
                raise PlanMismatchError(f"layer {i}: the plan keeps no channel (at least one is needed)")
            if arr.min() < 0 or arr.max() >= width:
                bad = arr[(arr < 0) | (arr >= width)][:5].tolist()
                raise PlanMismatchError(f"layer {i}: kept indices {bad} out of range [0, {width})")
            if len(np.unique(arr)) != len(arr):
                dup = sorted({int(c) for c in arr if (arr == c).sum() > 1})[:5]
                raise PlanMismatchError(f"layer {i}: duplicated kept indices {dup}")
            if np.any(np.diff(arr) < 0):
                raise PlanMismatchError(f"layer {i}: kept indices are not sorted")
        cut = [i for i in self.protected_layers if i in self.widths and len(self.kept[i]) != self.widths[i]]
        if cut:
            raise PlanMismatchError(f"protected layers {cut} lose channels")
        n_removed = sum(self.widths[i] - len(self.kept[i]) for i in self.widths)
        if self.params_basis <= 0 or not 0 <= self.params_removed <= self.params_basis:
            raise PlanMismatchError(f"params_removed={self.params_removed} is not within [0, params_basis="
                                    f"{self.params_basis}]")
        if (n_removed == 0) != (self.params_removed == 0):
            raise PlanMismatchError(f"the kept lists remove {n_removed} channels but params_removed="
                                    f"{self.params_removed}")
        if not math.isclose(self.ratio_reached, self.params_removed / self.params_basis, rel_tol=1e-9,
                            abs_tol=1e-12):
            raise PlanMismatchError(f"ratio_reached={self.ratio_reached} but params_removed / params_basis = "
                                    f"{self.params_removed}/{self.params_basis} = "
                                    f"{self.params_removed / self.params_basis}")

    # -- persistence --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (layer keys as strings)."""
        out = dataclasses.asdict(self)
        out["kept"] = {str(k): v for k, v in sorted(self.kept.items())}
        out["widths"] = {str(k): v for k, v in sorted(self.widths.items())}
        return {"format": PLAN_FORMAT, **out}

    def to_json(self) -> str:
        """The plan as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PruningPlan":
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        fmt = data.pop("format", None)
        if fmt != PLAN_FORMAT:
            raise ValueError(f"not a funcprune plan: format {fmt!r}, expected {PLAN_FORMAT!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown plan fields {unknown}")
        return cls(**data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the plan as JSON, atomically."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, fix: str = PLAN_FIX) -> "PruningPlan":
        """Read a plan written by :meth:`save` and :meth:`check` it.

        Parameters
        ----------
        path : str or path-like
            The plan file.
        fix : str, optional
            How to recover, used in the error.

        Raises
        ------
        funcprune._io.ArtefactError
            The file is not valid JSON, not a plan, or an inconsistent plan (naming
            the file, the problem and ``fix``).
        """
        data = read_json(path, fix=fix)
        try:
            if not isinstance(data, dict):
                raise PlanMismatchError(f"holds a JSON {type(data).__name__}, not a plan")
            plan = cls.from_dict(data)
            plan.check()
        except (PlanMismatchError, ValueError, TypeError) as exc:
            raise ArtefactError(path, f"not a valid pruning plan: {exc}", fix) from None
        return plan


# ----------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------
def _check_common(scores: Mapping[int, np.ndarray], model: nn.Module, basis: str,
                  protected_layers: Sequence[int] | None, min_width: int, round_to: int
                  ) -> tuple[dict[int, int], list[int], list[int], dict[int, np.ndarray]]:
    if basis not in BASES:
        raise ValueError(f"basis {basis!r} invalid; choose one of {list(BASES)}")
    if int(min_width) < 1 or int(round_to) < 1:
        raise ValueError(f"min_width ({min_width}) and round_to ({round_to}) must be >= 1")
    widths = layer_widths(model)
    n_layers = len(widths)
    protected = default_protected_layers(n_layers) if protected_layers is None else \
        sorted({int(i) for i in protected_layers})
    bad = [i for i in protected if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"protected layers {bad} out of range; the model has layers 0..{n_layers - 1}")
    prunable = [i for i in range(n_layers) if i not in protected]
    missing = [i for i in prunable if i not in scores]
    if missing:
        raise ValueError(f"no scores for prunable layers {missing}; scores cover {sorted(scores)} "
                         "(protect those layers or score them)")
    checked = {}
    for i in prunable:
        s = np.asarray(scores[i], dtype=np.float64)
        if s.shape != (widths[i],):
            raise ValueError(f"layer {i}: scores of shape {s.shape}, expected ({widths[i]},)")
        if not np.isfinite(s).all():
            raise ValueError(f"layer {i}: scores contain NaN or inf")
        checked[i] = s
    return widths, protected, prunable, checked


def _basis_params(model: nn.Module, basis: str) -> int:
    return int(count_parameters(model)[basis])


def kept_sizes(width: int, min_width: int, round_to: int) -> list[int]:
    """Allowed kept widths, largest first: ``width`` then multiples of ``round_to`` >= ``min_width``."""
    sizes = [width]
    k = ((width - 1) // round_to) * round_to
    while k >= max(min_width, 1) and k > 0:
        sizes.append(k)
        k -= round_to
    return sizes


def _describe_limits(protected: list[int], min_width: int, round_to: int) -> str:
    return f"protected layers {protected}, min_width={min_width}, round_to={round_to}"


def select_channels(scores: Mapping[int, np.ndarray], model: nn.Module, *, ratio: float,
                    basis: Literal["total", "mlp"] = "total",
                    allocation: Literal["global", "uniform"] = "global",
                    protected_layers: Sequence[int] | None = None, min_width: int = 1, round_to: int = 1,
                    method: str = "", settings: Mapping[str, Any] | None = None,
                    source: Mapping[str, Any] | None = None) -> PruningPlan:
    """Keep the highest-scored channels so that ``ratio`` of the parameters go.

    Parameters
    ----------
    scores : dict[int, ndarray of shape (width,)]
        One score per channel (larger = keep), for every prunable layer.
    model : nn.Module
        The model the plan is for (dense, or pruned before).
    ratio : float
        Fraction of ``basis`` parameters to remove, in ``[0, maximum]``.
    basis : {"total", "mlp"}, default="total"
        Denominator: all parameters (embeddings included, tied ones once; the authors'
        basis) or only MLP parameters.
    allocation : {"global", "uniform"}, default="global"
        One ranking across layers, or the same fraction in each prunable layer.
    protected_layers : sequence of int, optional
        Layers never pruned; default the first three and the last two (the authors').
    min_width : int, default=1
        Fewest channels a pruned layer keeps.
    round_to : int, default=1
        Kept widths of pruned layers are multiples of this.
    method : str, default=""
        Scorer name, recorded in the plan.
    settings : dict, optional
        Scorer settings, recorded in the plan.
    source : dict, optional
        Where ``model`` came from (``LoadedModel.source``): its name and revision are
        recorded in the plan (:func:`model_identity`).

    Returns
    -------
    PruningPlan
        ``ratio_reached`` is within half a unit's parameters (``round_to`` channels) of
        ``ratio``; ties in score are broken by layer, then channel index.

    Raises
    ------
    ValueError
        For a ratio outside ``[0, maximum]`` (the message states the maximum reachable
        with these protected layers, ``min_width`` and ``round_to``), out-of-range
        protected layers, missing or malformed scores, or an unknown basis/allocation.
    """
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation {allocation!r} invalid; choose one of {list(ALLOCATIONS)}")
    widths, protected, prunable, checked = _check_common(scores, model, basis, protected_layers,
                                                          min_width, round_to)
    cost = channel_parameters(model)
    n_basis = _basis_params(model, basis)

    # Units: (key, layer, channels, params). Within a layer, channels sorted by (score, index).
    units: list[tuple[tuple, int, np.ndarray, int]] = []
    for i in prunable:
        order = np.lexsort((np.arange(widths[i]), checked[i]))  # ascending score, then index
        sizes = kept_sizes(widths[i], min_width, round_to)
        for u in range(1, len(sizes)):
            start, stop = widths[i] - sizes[u - 1], widths[i] - sizes[u]
            channels = order[start:stop]
            unit_score = float(checked[i][channels].max())
            if allocation == "global":
                key: tuple = (unit_score, i, u)
            else:
                key = (stop / widths[i], unit_score, i, u)
            units.append((key, i, channels, len(channels) * cost[i]))
    units.sort(key=lambda t: t[0])

    max_removed = sum(u[3] for u in units)
    max_ratio = max_removed / n_basis
    if not 0.0 <= ratio <= max_ratio + 1e-12:
        raise ValueError(
            f"ratio {ratio} of {basis} parameters cannot be reached: the maximum with "
            f"{_describe_limits(protected, min_width, round_to)} is {max_ratio:.6f} "
            f"({max_removed:,} of {n_basis:,} parameters)")
    target = ratio * n_basis
    cumulative = np.concatenate([[0], np.cumsum([u[3] for u in units])])
    n_units = int(np.argmin(np.abs(cumulative - target)))  # first minimum: remove less on a tie

    removed: dict[int, list[int]] = {i: [] for i in widths}
    for _, i, channels, _ in units[:n_units]:
        removed[i].extend(int(c) for c in channels)
    return _make_plan(model, widths, removed, cost, n_basis, method=method, settings={
        **dict(settings or {}), "min_width": min_width, "round_to": round_to},
        ratio_requested=float(ratio), basis=basis, allocation=allocation, protected=protected, source=source)


def select_within_widths(scores: Mapping[int, np.ndarray], model: nn.Module, reference: "PruningPlan", *,
                         method: str = "", settings: Mapping[str, Any] | None = None,
                         source: Mapping[str, Any] | None = None) -> PruningPlan:
    """Keep, in every layer, the highest-scored channels, as many as ``reference`` keeps there.

    The allocation of another plan with this criterion's choice inside it: the control that
    separates *which* channels a layer keeps from *how many* it keeps.

    Parameters
    ----------
    scores : dict[int, ndarray of shape (width,)]
        One score per channel (larger = keep), for every layer ``reference`` prunes.
    model : nn.Module
        The model both plans are for.
    reference : PruningPlan
        The plan whose per-layer widths are kept (same model, same basis).
    method, settings, source
        As in :func:`select_channels`.

    Returns
    -------
    PruningPlan
        Same widths, ratio, basis and protected layers as ``reference``; ``allocation`` is
        ``"widths:<reference.method>"``. Ties are broken by channel index.

    Raises
    ------
    ValueError
        Scores missing or of the wrong width for a layer ``reference`` prunes, or a reference made for
        another architecture.
    """
    widths = layer_widths(model)
    if dict(reference.widths) != widths:
        raise ValueError(f"the reference plan ({reference.method!r}) was made for widths {reference.widths}, "
                         f"the model has {widths}")
    removed: dict[int, list[int]] = {i: [] for i in widths}
    for i in widths:
        n_keep = len(reference.kept[i])
        if n_keep == widths[i]:
            continue
        if i not in scores or len(scores[i]) != widths[i]:
            raise ValueError(f"layer {i} is pruned by the reference plan but has no score of width {widths[i]}")
        order = np.lexsort((np.arange(widths[i]), np.asarray(scores[i], dtype=np.float64)))  # ascending
        removed[i] = [int(c) for c in order[:widths[i] - n_keep]]
    cost = channel_parameters(model)
    return _make_plan(model, widths, removed, cost, int(reference.params_basis), method=method,
                      settings={**dict(settings or {}), "widths_from": reference.method},
                      ratio_requested=reference.ratio_requested, basis=reference.ratio_basis,
                      allocation=f"widths:{reference.method}", protected=list(reference.protected_layers),
                      source=source)


def _make_plan(model: nn.Module, widths: dict[int, int], removed: dict[int, list[int]],
               cost: dict[int, int], n_basis: int, *, method: str, settings: dict[str, Any],
               ratio_requested: float | None, basis: str, allocation: str, protected: list[int],
               source: Mapping[str, Any] | None) -> PruningPlan:
    kept = {i: sorted(set(range(widths[i])) - set(removed[i])) for i in widths}
    params_removed = sum(len(removed[i]) * cost[i] for i in widths)
    return PruningPlan(
        kept=kept, widths=widths, model=model_identity(model, source), method=method, settings=settings,
        ratio_requested=ratio_requested, ratio_reached=params_removed / n_basis,
        params_removed=int(params_removed), params_basis=int(n_basis), ratio_basis=basis,
        allocation=allocation, protected_layers=protected, provenance=environment_info())


def select_by_threshold(scores: Mapping[int, np.ndarray], model: nn.Module, threshold: float, *,
                        basis: Literal["total", "mlp"] = "total",
                        protected_layers: Sequence[int] | None = None, min_width: int = 1,
                        method: str = "", settings: Mapping[str, Any] | None = None,
                        source: Mapping[str, Any] | None = None) -> PruningPlan:
    """The authors' rule: in prunable layers keep the channels whose score exceeds ``threshold``.

    A layer left with fewer than ``min_width`` channels keeps its ``min_width``
    highest-scored ones. The plan's ``ratio_requested`` is ``None``; the threshold is in
    ``settings``; ``source`` is as for :func:`select_channels`. See
    :func:`threshold_for_ratio` for the threshold a ratio implies.
    """
    widths, protected, prunable, checked = _check_common(scores, model, basis, protected_layers,
                                                          min_width, 1)
    removed: dict[int, list[int]] = {i: [] for i in widths}
    for i in prunable:
        keep = checked[i] > threshold
        if keep.sum() < min_width:
            order = np.lexsort((np.arange(widths[i]), -checked[i]))  # descending score, then index
            keep[order[:min(min_width, widths[i])]] = True
        removed[i] = np.flatnonzero(~keep).tolist()
    return _make_plan(model, widths, removed, channel_parameters(model), _basis_params(model, basis),
                      method=method, settings={**dict(settings or {}), "threshold": float(threshold),
                                               "min_width": min_width},
                      ratio_requested=None, basis=basis, allocation="global", protected=protected,
                      source=source)


def threshold_for_ratio(scores: Mapping[int, np.ndarray], model: nn.Module, ratio: float, *,
                        basis: Literal["total", "mlp"] = "total",
                        protected_layers: Sequence[int] | None = None, min_width: int = 1) -> float:
    """The threshold ``t`` at which :func:`select_by_threshold` removes about ``ratio``.

    ``t`` is the largest score among the channels that :func:`select_channels` (global
    allocation, ``round_to=1``) removes, so thresholding at ``t`` removes the same
    channels plus any that tie with ``t``. ``-inf`` for ``ratio=0``.
    """
    plan = select_channels(scores, model, ratio=ratio, basis=basis, allocation="global",
                           protected_layers=protected_layers, min_width=min_width)
    removed_scores = [float(np.asarray(scores[i])[plan.removed(i)].max()) for i in plan.layers
                      if plan.removed(i)]
    return max(removed_scores) if removed_scores else float("-inf")


def middle_ratio(ratios: Sequence[float]) -> float:
    """The ratio of a run's detailed comparisons: the middle of its sorted ratios (the upper one of an even count).

    The same rule on every model, whatever its ratios count (all parameters, or MLP parameters only).

    Examples
    --------
    >>> middle_ratio([0.3, 0.1, 0.2]), middle_ratio([0.169, 0.338, 0.507]), middle_ratio([0.1, 0.3])
    (0.2, 0.338, 0.3)
    """
    if not ratios:
        raise ValueError("no ratios: a run needs at least one")
    ordered = sorted(float(r) for r in ratios)
    return ordered[len(ordered) // 2]
