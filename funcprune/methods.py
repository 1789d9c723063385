"""Stage 4: one definition of every pruning method, and one way to plan and apply each.

A *method* is one point on each axis of :mod:`funcprune.axes`: a criterion (which channels), an allocation
(how many per layer) and a compensation (how the removed ones are made up for). Every method goes through
the same code: :func:`make_plan` scores the channels with the criterion and lets the allocation select them
(same budget, same protected layers, same ``round_to``), and :func:`build_pruned` slices a fresh copy of the
dense model with :func:`funcprune.prune.prune`, applying the compensation:

===========  ================================================  ==========  ===========================
method       score (larger = keep)                             allocation  bias compensation
===========  ================================================  ==========  ===========================
fn           key-neuron score ``max |z|`` of the functional    global      none
             networks
fn-bias      the same plan as ``fn``                           global      progressive: measured with
                                                                           the pruned network feeding
                                                                           later layers (the paper's)
random       ``U(0, 1)``, seeded (run several seeds)           uniform     none
magnitude    L2 norm of the channel's gate, up and down        uniform     none
             weights
wanda-sp     ``sum_i |W_down[i, j]| * ||x_j||_2``              uniform     none
flap         ``Var_t(x_j) * sum_i W_down[i, j]^2``,            global      static: dense-model means
             z-scored per layer                                            (FLAP)
fn-flap      FLAP's z-scored metric ``+ w *`` the z-scored     global      static (FLAP's)
             ``log(1 + max |z|)`` (chapter 6; ``w = 1``)
fn-protect   FLAP's z-scored metric, every key neuron          global      static (FLAP's)
             (``max |z| > 3``) ranked before any other
             channel (chapter 6)
===========  ================================================  ==========  ===========================

Each method carries the allocation its authors use (``Method.allocation``):

* ``fn``: one global ranking by ``max |z|``, the paper's rule.
* ``flap``: its metric standardised within each layer, then ranked globally (FLAP's adaptive structure search,
  An et al., 2024); the raw metric grows with depth and would empty the first prunable layers.
* ``wanda-sp``, ``magnitude``: the same share of every prunable layer, as FLAP's paper runs Wanda-sp and
  LLM-Pruner its magnitude criteria: raw scores and weight norms change scale with depth, so a global ranking
  would measure layer scale (Wanda-sp at 30 % of SmolLM2-135M: perplexity in the thousands).
* ``random``: the same share of every layer, the lesion-study control ("remove as many random units").

Any other allocation is an ablation: ``allocation="global"`` or ``"uniform"`` passed to
:func:`make_plan` or :func:`funcprune.run.pipeline.prune_all` overrides every method's own (the plan records
``allocation`` and ``settings["allocation_source"]``: ``"method"`` or ``"override"``).

Keys read ``fn_r0.20`` or ``random-s1_r0.10`` (:func:`method_key`).
:mod:`funcprune.run.pipeline` runs a grid of these methods over a run directory. Chapter 4 checks what it
stored with :mod:`funcprune.run.checks`.

Used in the chapters :doc:`/executed/03_key_neurons`, :doc:`/executed/04_structured_pruning` and
:doc:`/executed/06_ablations`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

from torch import nn

from .axes import (ALLOCATIONS, COMPENSATIONS, CRITERIA, GLOBAL, LS_RIDGE, UNIFORM, Allocation, Compensation,
                   Criterion, ProgressiveBias, StaticBias, WidthsOf, compensation_label)
from .compensation import DownMoments
from .models import load_model
from .plan import PruningPlan
from .prune import CalibrationData, prune
from .scoring import ChannelStatistics, Scores

__all__ = [
    "ALLOCATION_CHOICES",
    "METHODS",
    "Method",
    "variant",
    "build_pruned",
    "get_method",
    "make_plan",
    "method_key",
    "plan_from_scores",
    "resolve_allocation",
]


# ----------------------------------------------------------------------------------
# The methods
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """A pruning method: one point on each of the three axes of :mod:`funcprune.axes`.

    Attributes
    ----------
    name : str
        Registry key (``"fn"``, ``"fn-bias"``, ...) or a variant's name (``"fn@flap+static"``).
    label : str
        Name for tables and figures.
    criterion : funcprune.axes.Criterion
        Which channels: the score (its scorer, parameters and needs).
    allocation : funcprune.axes.Allocation
        How many per layer: :data:`funcprune.axes.GLOBAL`, :data:`funcprune.axes.UNIFORM` or
        :class:`funcprune.axes.WidthsOf` another (unseeded) method.
    compensation : funcprune.axes.Compensation or None
        How the removed channels are made up for when the model is sliced; ``None``: not at all.
    description : str
        One line for readers.
    """

    name: str
    label: str
    criterion: Criterion
    allocation: Allocation = GLOBAL
    compensation: Compensation | None = None
    description: str = ""

    @property
    def params(self) -> Mapping[str, Any]:
        """Every keyword argument of the scorer (the criterion's ``params``); recorded via ``scorer_settings``."""
        return self.criterion.params

    @property
    def seeded(self) -> bool:
        """The score is random; run several seeds."""
        return self.criterion.seeded

    @property
    def compensation_params(self) -> dict[str, Any]:
        """Settings of the compensation (``{"ridge": 0.01}`` for a least-squares refit; else empty)."""
        return self.compensation.settings if self.compensation else {}

    @property
    def needs_networks(self) -> bool:
        """The score, or the method whose widths are kept, needs fitted functional networks (stage 2)."""
        return self.criterion.needs_networks or self.allocation.needs_networks

    @property
    def needs_statistics(self) -> bool:
        """The score, the compensation or the widths' method needs activation statistics of the dense model."""
        return (self.criterion.needs_statistics or self.allocation.needs_statistics
                or bool(self.compensation and self.compensation.needs_statistics))

    @property
    def needs_texts(self) -> bool:
        """Calibration texts are needed (statistics, progressive or least-squares compensation)."""
        return self.needs_statistics or bool(self.compensation and self.compensation.needs_texts)

    @property
    def widths_from(self) -> str | None:
        """The method whose per-layer widths this one keeps, or ``None``."""
        return self.allocation.widths_from

    def with_params(self, **params: Any) -> Method:
        """This method with its scorer given ``params`` instead (a setting recorded in each plan)."""
        return dataclasses.replace(self, criterion=dataclasses.replace(self.criterion, params=dict(params)))


_C = CRITERIA
#: The registry, in the order tables and figures show the methods.
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("fn", "FN", _C["fn"],
           description="functional networks: keep the key neurons, max |z| over ICA maps (Liu et al., 2025)"),
    Method("fn-bias", "FN + bias", _C["fn"], compensation=ProgressiveBias(),
           description="the fn plan, then bias compensation measured on the progressively pruned network"),
    Method("random", "random", _C["random"], UNIFORM,
           description="uniform random scores, seeded; the same share of every layer"),
    Method("magnitude", "magnitude", _C["magnitude"], UNIFORM,
           description="L2 norm of the weights a channel owns (gate and up rows, down column); "
                       "the same share of every layer"),
    Method("wanda-sp", "Wanda-sp", _C["wanda-sp"], UNIFORM,
           description="|W_down| column sum times the channel's activation norm; the same share of every "
                       "layer, as FLAP's paper runs it (An et al., 2024)"),
    Method("flap", "FLAP", _C["flap"], compensation=StaticBias(),
           description="fluctuation metric standardised per layer, and bias compensation from dense "
                       "statistics (An et al., 2024)"),
    Method("fn-flap", "FN in FLAP", _C["fn-flap"], compensation=StaticBias(),
           description="FLAP's standardised fluctuation plus a weighted standardised log max |z| (this book's "
                       "criterion, chapter 6); FLAP's allocation and compensation; weight 0 is FLAP"),
    Method("fn-protect", "FLAP + key neurons", _C["fn-protect"], compensation=StaticBias(),
           description="FLAP's criterion, allocation and compensation, with every key neuron (max |z| > 3, the "
                       "paper's threshold) kept before any other channel (chapter 6)"),
)}


def variant(criterion: str, allocation: str | None = None, compensation: str | None = "same",
            *, ridge: float | None = None) -> Method:
    """A point of the method grid: ``criterion``'s score, an allocation and a compensation.

    Parameters
    ----------
    criterion : str
        A registered method whose score ranks the channels (``"fn"``, ``"flap"``, ``"random"`` ...).
    allocation : {"global", "uniform"}, a registered method's name, or None
        ``None``: the criterion's own; a method's name: keep, in every layer, as many channels as that
        method's plan keeps at the same ratio (``"widths:<method>"``).
    compensation : {"same", "none", "static", "progressive", "ls", "progressive-ls"}
        ``"same"``: the criterion's own.
    ridge : float, optional
        Relative ridge strength of ``"ls"`` and ``"progressive-ls"`` (default :data:`funcprune.axes.LS_RIDGE`).

    Returns
    -------
    Method
        The registered method when the point is one (``variant("fn", compensation="progressive")`` is
        ``fn-bias``); otherwise a method named ``<criterion>[@<allocation>][+<compensation>]``
        (``"fn@flap+static"``: FN's score inside FLAP's widths, FLAP's static bias).

    Raises
    ------
    ValueError
        An unknown criterion, allocation or compensation (the accepted ones are listed), or widths taken
        from a seeded method.
    """
    base = get_method(criterion)
    if base.name != base.criterion.name:
        raise ValueError(f"criterion {criterion!r} is a compensated variant; name the criterion "
                         f"{base.criterion.name!r} and compensation={base.compensation and base.compensation.name!r}")
    if allocation is None or allocation == base.allocation.name:
        alloc = base.allocation
    elif allocation in ALLOCATIONS:
        alloc = ALLOCATIONS[allocation]
    elif allocation in METHODS:
        alloc = WidthsOf(METHODS[allocation])
    else:
        raise ValueError(f"allocation {allocation!r} invalid; choose 'global', 'uniform' or a method whose "
                         f"widths to keep: {[n for n, m in METHODS.items() if not m.seeded]}")
    if compensation == "same":
        comp = base.compensation
    elif (compensation or "none") in COMPENSATIONS:
        comp = COMPENSATIONS[compensation or "none"]
    else:
        raise ValueError(f"compensation {compensation!r} invalid; choose one of {['same', *COMPENSATIONS]}")
    if comp is not None and comp.refits:
        comp = dataclasses.replace(comp, ridge=float(LS_RIDGE if ridge is None else ridge))
    for m in METHODS.values():  # a registered point keeps its name
        if (m.criterion, m.allocation, m.compensation) == (base.criterion, alloc, comp):
            return m
    alloc_tag, alloc_label = ("", "") if alloc == base.allocation else (f"@{allocation}", alloc.label)
    comp_tag = "" if comp == base.compensation else f"+{comp.name if comp else 'none'}"
    if comp is not None and comp.refits and ridge is not None:
        comp_tag = f"+{comp.name}{float(ridge):g}"
    comp_words = comp.label if comp else "no compensation"
    parts = [p for p in (alloc_label, compensation_label(comp) if comp != base.compensation else "") if p]
    return dataclasses.replace(
        base, name=f"{base.name}{alloc_tag}{comp_tag}", allocation=alloc, compensation=comp,
        label=f"{base.label} ({', '.join(parts)})" if parts else base.label,
        description=f"{base.label}'s score" + (f", {alloc_label}" if alloc_label else "")
                    + f", {comp_words} (a point of the method grid)")


def _parse_variant(name: str) -> Method:
    """The :func:`variant` a name such as ``"fn@flap+static"`` or ``"flap+ls0.1"`` denotes."""
    rest, _, comp = name.partition("+")
    criterion, _, allocation = rest.partition("@")
    ridge = None
    refit = next((c for c in sorted(COMPENSATIONS, key=len, reverse=True)
                  if COMPENSATIONS[c] is not None and COMPENSATIONS[c].refits and comp.startswith(c)), None)
    if refit is not None and comp != refit:
        try:
            ridge = float(comp[len(refit):])
        except ValueError:
            raise ValueError(f"method {name!r}: ridge {comp[len(refit):]!r} is not a number "
                             f"(write e.g. 'fn+{refit}0.1')") from None
        comp = refit
    return variant(criterion, allocation or None, comp or "same", ridge=ridge)


def get_method(name: str | Method) -> Method:
    """The :class:`Method` registered as ``name``, or the grid point a variant name denotes.

    A variant name is ``<criterion>[@<allocation>][+<compensation>]`` (see :func:`variant`):
    ``"fn+static"``, ``"fn@flap+static"``, ``"random@fn"``, ``"flap+ls"``, ``"wanda-sp+ls0.1"``,
    ``"fn+progressive-ls"``.

    Raises
    ------
    ValueError
        For an unknown name, listing the accepted ones.
    """
    if isinstance(name, Method):
        return name
    if name in METHODS:
        return METHODS[name]
    if ("@" in name or "+" in name) and name.partition("@")[0].partition("+")[0] in METHODS:
        return _parse_variant(name)
    raise ValueError(f"unknown pruning method {name!r}; accepted methods: {list(METHODS)}, or a point of the "
                     "grid '<criterion>[@<allocation>][+<compensation>]' such as 'fn@flap+static' "
                     f"(compensations: {', '.join(COMPENSATIONS)})")


def method_key(method: str, ratio: float, seed: int | None = None) -> str:
    """File-name key of one pruned model: ``"fn_r0.20"``, ``"random-s1_r0.10"``.

    The ratio is written with two decimals when that is exact, else with up to six
    significant digits (``"fn_r0.125"``), so different ratios never share a key.
    """
    tag = f"{ratio:.2f}" if math.isclose(ratio, round(ratio, 2), abs_tol=1e-12) else f"{ratio:.6g}"
    name = get_method(method).name
    return f"{name}-s{seed}_r{tag}" if seed is not None else f"{name}_r{tag}"


#: Values of the ``allocation`` setting: the method's own, or an override for every method.
ALLOCATION_CHOICES: tuple[str, ...] = ("per-method", "global", "uniform")


def resolve_allocation(method: str | Method, allocation: str | None = "per-method") -> tuple[str, str]:
    """The allocation a method uses under a setting, and where it comes from.

    Parameters
    ----------
    method : str or Method
    allocation : {"per-method", "global", "uniform"} or None
        ``"per-method"`` or ``None``: the method's own; otherwise an override (ablation).

    Returns
    -------
    (allocation, source) : tuple of str
        ``source`` is ``"method"`` or ``"override"``.

    Raises
    ------
    ValueError
        An unknown setting, listing the accepted ones.
    """
    m = get_method(method)
    if allocation is None or allocation == "per-method":
        return m.allocation.name, "method"
    if allocation not in ALLOCATION_CHOICES:
        raise ValueError(f"allocation {allocation!r} invalid; choose one of {list(ALLOCATION_CHOICES)}")
    return str(allocation), "override"


def make_plan(method: str | Method, model: nn.Module, ratio: float, *, networks: Any = None,
              stats: ChannelStatistics | None = None, seed: int = 0,
              basis: Literal["total", "mlp"] = "total",
              allocation: Literal["per-method", "global", "uniform"] | None = "per-method",
              protected_layers: Sequence[int] | None = None, round_to: int = 1,
              settings: Mapping[str, Any] | None = None, source: Mapping[str, Any] | None = None) -> PruningPlan:
    """The plan of one method at one ratio: score every channel, then select.

    Parameters
    ----------
    method : str or Method
        A key of :data:`METHODS`.
    model : nn.Module
        The dense model.
    ratio : float
        Fraction of ``basis`` parameters to remove, in ``(0, maximum)`` (the plan's
        error message states the maximum).
    networks : FunctionalNetworks, optional
        Fitted functional networks (``fn`` and ``fn-bias``).
    stats : ChannelStatistics, optional
        Activation statistics of the dense model (``wanda-sp`` and ``flap``).
    seed : int, default=0
        Seed of the ``random`` scores (ignored by the other methods).
    basis : {"total", "mlp"}, default="total"
        What the ratio counts (see :func:`funcprune.plan.select_channels`).
    allocation : {"per-method", "global", "uniform"}, default="per-method"
        ``"per-method"`` (or ``None``): the method's own (:attr:`Method.allocation`).
        ``"global"`` (one ranking across layers) or ``"uniform"`` (the same fraction of
        every prunable layer) override it: an ablation.
    protected_layers : sequence of int, optional
        Layers never pruned; default the first three and the last two.
    round_to : int, default=1
        Kept widths are multiples of this.
    settings : dict, optional
        Extra facts recorded in the plan's ``settings`` (e.g. the calibration data).
    source : dict, optional
        Where ``model`` came from (``LoadedModel.source`` of :func:`funcprune.models.load_model`):
        the plan records its name and revision, which :func:`funcprune.prune.prune` then
        checks. Without it the plan records no revision (a model built from a config).

    Returns
    -------
    PruningPlan
        ``method`` is the method's name; ``allocation`` the allocation used;
        ``settings`` hold the scorer's name and settings, the compensation,
        ``allocation_source`` (``"method"`` or ``"override"``) and (for ``random``)
        the seed.

    Raises
    ------
    ValueError
        Unknown method, a ratio outside ``(0, maximum)``, missing networks or statistics.
    """
    m = get_method(method)
    if not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) < 1.0:
        raise ValueError(f"ratio {ratio!r} must be a number in (0, 1) (a fraction of {basis} parameters "
                         "to remove; the largest reachable one depends on the protected layers)")
    used, allocation_source = resolve_allocation(m, allocation)
    if m.criterion.needs_networks and networks is None:
        raise ValueError(f"method {m.name!r} needs functional networks: pass networks= "
                         "(FunctionalNetworks fitted in stage 2)")
    scorer = m.criterion.scorer_for(networks, seed)
    scores = scorer(model, stats)
    recorded = {"scorer": scorer.name, "scorer_settings": dict(getattr(scorer, "settings", {})),
                "bias_compensation": m.compensation.name if m.compensation else None,
                "allocation_source": allocation_source, "criterion": m.criterion.name}
    if m.compensation_params:
        recorded["compensation_settings"] = dict(m.compensation_params)
    if m.seeded:
        recorded["seed"] = int(seed)
    recorded.update(settings or {})
    alloc = m.allocation if allocation_source == "method" else ALLOCATIONS[used]
    reference = None
    if alloc.widths_from is not None:
        reference = make_plan(alloc.widths_from, model, ratio, networks=networks, stats=stats, basis=basis,
                              protected_layers=protected_layers, round_to=round_to, source=source)
    return plan_from_scores(m, scores, model, ratio, allocation=alloc, reference=reference, basis=basis,
                            protected_layers=protected_layers, round_to=round_to, settings=recorded, source=source)


def plan_from_scores(method: str | Method, scores: Scores, model: nn.Module, ratio: float, *,
                     allocation: Allocation | None = None, reference: PruningPlan | None = None,
                     basis: Literal["total", "mlp"] = "total", protected_layers: Sequence[int] | None = None,
                     round_to: int = 1, settings: Mapping[str, Any] | None = None,
                     source: Mapping[str, Any] | None = None) -> PruningPlan:
    """The plan a method makes from channel scores already computed: its allocation applied to ``scores``.

    :func:`make_plan` computes the scores with the method's scorer and calls this; a caller with scores of its
    own (the settings sweep's refits, :mod:`funcprune.needs`) calls it directly, so a method's plan is made in
    one place.

    Parameters
    ----------
    method : str or Method
    scores : dict[int, ndarray]
        One score per channel of each prunable layer (higher: kept first).
    model : nn.Module
    ratio : float
    allocation : funcprune.axes.Allocation, optional
        Default the method's own.
    reference : PruningPlan, optional
        The plan whose per-layer widths a ``"widths:<method>"`` allocation keeps (required for it).
    basis, protected_layers, round_to, settings, source
        As for :func:`make_plan`; ``settings`` are recorded in the plan.

    Returns
    -------
    PruningPlan
    """
    m = get_method(method)
    return (m.allocation if allocation is None else allocation).select(
        scores, model, ratio, reference=reference, method=m.name, basis=basis, protected_layers=protected_layers,
        round_to=round_to, settings=settings, source=source)


def build_pruned(method: str | Method, base: str | os.PathLike[str] | nn.Module, plan: PruningPlan, *,
                 calibration: CalibrationData | None = None, stats: ChannelStatistics | None = None,
                 moments: DownMoments | None = None, revision: str | None = None,
                 progress: bool = False) -> nn.Module:
    """A pruned copy of the base model: the plan applied the method's way.

    Parameters
    ----------
    method : str or Method
        A key of :data:`METHODS`; decides the bias compensation.
    base : str, path-like or nn.Module
        The dense model: a name for :func:`funcprune.models.load_model` (loaded
        afresh, its revision from the loaded record) or a model (deep-copied; left
        untouched; pass ``revision``).
    plan : PruningPlan
        Made for ``base`` (e.g. by :func:`make_plan`). If its ``method`` differs (the
        ``fn`` plan built as ``fn-bias``), a copy whose ``method`` is ``method`` is
        applied (``config.funcprune["methods"]`` of the pruned model records it).
    calibration : CalibrationData, optional
        Texts for progressive compensation (needed by ``fn-bias`` and ``"progressive-ls"`` variants).
    stats : ChannelStatistics, optional
        Dense-model statistics for static compensation (needed by ``flap``).
    moments : DownMoments, optional
        Dense-model moments of the down projections' inputs for least-squares compensation
        (:func:`funcprune.compensation.down_input_moments`; needed by ``"ls"`` variants).
    revision : str, optional
        The revision of a ``base`` model (``source["revision"]`` of its
        :class:`~funcprune.models.LoadedModel`), needed when the plan records one
        (:func:`funcprune.prune.check_plan`). Ignored when ``base`` is a name.
    progress : bool, default=False
        Progress bar of the progressive compensation.

    Returns
    -------
    nn.Module
        The pruned model, in eval mode.
    """
    m = get_method(method)
    compensation = None if m.compensation is None else m.compensation.for_plan(
        plan, method=m.name, calibration=calibration, stats=stats, moments=moments)
    if plan.method != m.name:
        plan = dataclasses.replace(plan, method=m.name)
    if isinstance(base, nn.Module):
        model = copy.deepcopy(base)
    else:
        loaded = load_model(str(base))
        model, revision = loaded.model, loaded.source["revision"]
    prune(model, plan, revision=revision, bias_compensation=compensation, progress=progress)
    return model.eval()
