"""Stage 4: one definition of every pruning method, and one way to plan and apply each.

A *method* is a scorer plus a way to apply its plan. Every method goes through the
same code: :func:`make_plan` ranks the channels with the method's scorer and selects
them with :func:`funcprune.plan.select_channels` (same budget, same protected layers,
same ``round_to``), and :func:`build_pruned` slices a fresh copy of the dense model
with :func:`funcprune.prune.prune`. Methods differ only in the score and the bias
compensation:

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

* ``fn``: one global ranking by ``max |z|``, the paper's rule (a channel is key if its
  ``|z|`` exceeds one threshold in any map of any layer).
* ``flap``: its metric standardised within each layer, then ranked globally, as FLAP's
  adaptive structure search does (An et al., 2024); without the standardisation the raw
  fluctuation metric, which grows with depth, would empty the first prunable layers.
* ``wanda-sp``: the same share of every prunable layer, as FLAP's paper defines and
  reports Wanda-sp; raw Wanda scores grow with depth, so a global ranking empties early
  layers (at 30 % of SmolLM2-135M: perplexity in the thousands).
* ``magnitude``: the same share of every layer, like Wanda-sp and LLM-Pruner's
  magnitude criteria: weight norms are not comparable across layers (their scale changes
  with depth), so a global ranking would measure layer scale, not channel importance.
* ``random``: the same share of every layer, the lesion-study control ("remove as many
  random units"): a global ranking of i.i.d. scores spreads the removal evenly only in
  expectation, so uniform removes layer-share noise between seeds without changing what
  random pruning means.

Any other allocation is an ablation: ``allocation="global"`` or ``"uniform"`` passed to
:func:`make_plan` or :func:`funcprune.run.pipeline.prune_all` overrides every method's own (the plan records
``allocation`` and ``settings["allocation_source"]``: ``"method"`` or ``"override"``).

Keys read ``fn_r0.20`` or ``random-s1_r0.10`` (:func:`method_key`).
:mod:`funcprune.run.pipeline` runs a grid of these methods over a run directory. Chapter 4 checks what it
stored with :mod:`funcprune.run.checks`.

Used in the chapters :doc:`/executed/03_key_neurons`, :doc:`/executed/04_structured_pruning` and
:doc:`/executed/06_ablations`.

Why one module: a method *is* its point on the grid (criterion, allocation, compensation). The registry,
the names of the other points (``"fn@flap+static"``) and the two functions that turn a point into a plan
and a model read the same three fields; split, a new allocation or compensation would have to be taught to
a parser, a planner and a builder in different files that must never drift apart.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

from torch import nn

from .compensation import DownMoments, LeastSquaresCompensation, ProgressiveLeastSquares, moments_for
from .models import load_model
from .plan import PruningPlan, select_channels, select_within_widths
from .prune import CalibrationData, prune
from .scoring import (ChannelStatistics, FlapScorer, FnFlapScorer, FunctionalNetworkScorer, MagnitudeScorer,
                      RandomScorer, Scorer, Scores, WandaSpScorer)

__all__ = [
    "ALLOCATION_CHOICES",
    "COMPENSATIONS",
    "LEAST_SQUARES",
    "LS_RIDGE",
    "METHODS",
    "SCORERS",
    "Method",
    "criterion_of",
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
    """A pruning method: a scorer and how its plan is applied.

    Attributes
    ----------
    name : str
        Registry key (``"fn"``, ``"fn-bias"``, ...).
    label : str
        Name for tables and figures.
    scorer : {"functional_networks", "random", "magnitude", "wanda_sp", "flap", "fn_flap"}
        Importance criterion (see :mod:`funcprune.scoring`; :data:`SCORERS` builds it with ``params``).
    compensation : {None, "progressive", "static", "ls", "progressive-ls"}
        Compensation at pruning time: none; a bias measured layer by layer on the
        network whose earlier layers are already pruned
        (:class:`funcprune.prune.CalibrationData`); a bias from statistics of the dense
        model (:class:`funcprune.scoring.ChannelStatistics`, FLAP's); or the down
        projection's kept columns and bias refitted by least squares to the dense layer's
        output on the dense model's inputs (:mod:`funcprune.compensation`), or on the inputs of the
        progressively pruned network (``"progressive-ls"``,
        :class:`funcprune.compensation.ProgressiveLeastSquares`).
    allocation : {"global", "uniform"} or "widths:<method>"
        How the budget is spread over layers (see the module notes): one ranking across
        layers, the same share of every prunable layer, or the per-layer widths that
        another (unseeded) method's plan chose at the same ratio.
    needs_networks : bool
        The score needs fitted functional networks (stage 2).
    needs_statistics : bool
        The score or the compensation needs activation statistics of the dense model.
    seeded : bool
        The score is random; run several seeds.
    params : dict
        Keyword arguments of the scorer (``{"weight": 1.0}`` for ``fn-flap``, ``{"weight": 0.0,
        "protect": 3.0}`` for ``fn-protect``); another
        setting is another :class:`Method` (``dataclasses.replace(method, params=...)``),
        recorded in each plan's ``scorer_settings``.
    description : str
        One line for readers.
    compensation_params : dict
        Settings of the compensation (``{"ridge": 0.01}`` for ``"ls"``: the relative ridge strength
        of :func:`funcprune.compensation.least_squares_down`).
    """

    name: str
    label: str
    scorer: str
    compensation: Literal["progressive", "static", "ls", "progressive-ls"] | None = None
    allocation: str = "global"
    needs_networks: bool = False
    needs_statistics: bool = False
    seeded: bool = False
    params: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    compensation_params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def needs_texts(self) -> bool:
        """Calibration texts are needed (statistics, progressive or least-squares compensation)."""
        return self.needs_statistics or self.compensation in ("progressive", *LEAST_SQUARES)

    @property
    def criterion(self) -> str:
        """The registered method whose score this method ranks channels by (``"fn"`` for ``fn-bias``)."""
        return criterion_of(self)

    @property
    def widths_from(self) -> str | None:
        """The method whose per-layer widths this one keeps (allocation ``"widths:<method>"``), or ``None``."""
        return self.allocation.split(":", 1)[1] if self.allocation.startswith("widths:") else None


#: The registry, in the order tables and figures show the methods.
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("fn", "FN", "functional_networks", needs_networks=True,
           description="functional networks: keep the key neurons, max |z| over ICA maps (Liu et al., 2025)"),
    Method("fn-bias", "FN + bias", "functional_networks", compensation="progressive", needs_networks=True,
           description="the fn plan, then bias compensation measured on the progressively pruned network"),
    Method("random", "random", "random", allocation="uniform", seeded=True,
           description="uniform random scores, seeded; the same share of every layer"),
    Method("magnitude", "magnitude", "magnitude", allocation="uniform",
           description="L2 norm of the weights a channel owns (gate and up rows, down column); "
                       "the same share of every layer"),
    Method("wanda-sp", "Wanda-sp", "wanda_sp", allocation="uniform", needs_statistics=True,
           description="|W_down| column sum times the channel's activation norm; the same share of every "
                       "layer, as FLAP's paper runs it (An et al., 2024)"),
    Method("flap", "FLAP", "flap", compensation="static", needs_statistics=True,
           description="fluctuation metric standardised per layer, and bias compensation from dense "
                       "statistics (An et al., 2024)"),
    Method("fn-flap", "FN in FLAP", "fn_flap", compensation="static", needs_networks=True, needs_statistics=True,
           params={"weight": 1.0},
           description="FLAP's standardised fluctuation plus a weighted standardised log max |z| (this book's "
                       "criterion, chapter 6); FLAP's allocation and compensation; weight 0 is FLAP"),
    Method("fn-protect", "FLAP + key neurons", "fn_flap", compensation="static", needs_networks=True,
           needs_statistics=True, params={"weight": 0.0, "protect": 3.0},
           description="FLAP's criterion, allocation and compensation, with every key neuron (max |z| > 3, the "
                       "paper's threshold) kept before any other channel (chapter 6)"),
)}


#: The compensations of the method grid (``None`` is written ``none`` in a variant's name).
COMPENSATIONS: tuple[str | None, ...] = (None, "static", "progressive", "ls", "progressive-ls")
#: The compensations that refit the down projection by least squares (they take a ``ridge``).
LEAST_SQUARES: tuple[str, ...] = ("ls", "progressive-ls")
#: Relative ridge strength of least-squares compensation when none is given (see :mod:`funcprune.compensation`).
LS_RIDGE = 0.01
_COMP_LABELS = {None: "no compensation", "static": "static bias", "progressive": "progressive bias",
                "ls": "least squares", "progressive-ls": "progressive least squares"}


def criterion_of(method: Method) -> str:
    """The registered method that defines ``method``'s channel score: the first with its scorer and settings.

    ``fn-bias`` and ``"fn@flap+static"`` rank by ``fn``'s score; ``fn-protect`` is a criterion of its own.
    """
    for name, m in METHODS.items():
        if m.scorer == method.scorer and dict(m.params) == dict(method.params):
            return name
    return method.name


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
        Relative ridge strength of ``"ls"`` and ``"progressive-ls"`` (default :data:`LS_RIDGE`).

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
    if base.name != criterion_of(base):
        raise ValueError(f"criterion {criterion!r} is a compensated variant; name the criterion "
                         f"{criterion_of(base)!r} and compensation={base.compensation!r}")
    if allocation is None or allocation == base.allocation:
        used, alloc_tag, alloc_label = base.allocation, "", ""
    elif allocation in ("global", "uniform"):
        used, alloc_tag, alloc_label = allocation, f"@{allocation}", f"{allocation} allocation"
    elif allocation in METHODS:
        ref = METHODS[allocation]
        if ref.seeded:
            raise ValueError(f"widths from {allocation!r} would depend on its seed; use allocation='uniform'")
        used, alloc_tag, alloc_label = f"widths:{allocation}", f"@{allocation}", f"{ref.label}'s widths"
    else:
        raise ValueError(f"allocation {allocation!r} invalid; choose 'global', 'uniform' or a method whose "
                         f"widths to keep: {[n for n, m in METHODS.items() if not m.seeded]}")
    comp = base.compensation if compensation == "same" else (None if compensation in (None, "none") else compensation)
    if comp not in COMPENSATIONS:
        raise ValueError(f"compensation {compensation!r} invalid; choose one of "
                         f"{['same', 'none'] + [c for c in COMPENSATIONS if c]}")
    comp_params = {"ridge": float(LS_RIDGE if ridge is None else ridge)} if comp in LEAST_SQUARES else {}
    for m in METHODS.values():  # a registered point keeps its name
        if (m.scorer, dict(m.params), m.allocation, m.compensation) == (base.scorer, dict(base.params), used, comp) \
                and not comp_params:
            return m
    comp_tag = "" if comp == base.compensation else f"+{comp or 'none'}"
    if comp in LEAST_SQUARES and ridge is not None:
        comp_tag = f"+{comp}{float(ridge):g}"
    name = f"{base.name}{alloc_tag}{comp_tag}"
    comp_label = _COMP_LABELS[comp] + (f", ridge {comp_params['ridge']:g}" if comp in LEAST_SQUARES else "")
    parts = [p for p in (alloc_label, comp_label if comp != base.compensation else "") if p]
    label = f"{base.label} ({', '.join(parts)})" if parts else base.label
    widths_of = METHODS[allocation] if used.startswith("widths:") else None  # the method whose plan sets the widths
    return dataclasses.replace(
        base, name=name, label=label, allocation=used, compensation=comp, compensation_params=comp_params,
        needs_statistics=base.needs_statistics or comp == "static" or bool(widths_of and widths_of.needs_statistics),
        needs_networks=base.needs_networks or bool(widths_of and widths_of.needs_networks),
        description=f"{base.label}'s score" + (f", {alloc_label}" if alloc_label else "")
                    + f", {_COMP_LABELS[comp]} (a point of the method grid)")


def _parse_variant(name: str) -> Method:
    """The :func:`variant` a name such as ``"fn@flap+static"`` or ``"flap+ls0.1"`` denotes."""
    rest, _, comp = name.partition("+")
    criterion, _, allocation = rest.partition("@")
    ridge = None
    refit = next((c for c in sorted(LEAST_SQUARES, key=len, reverse=True) if comp.startswith(c)), None)
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
                     f"(compensations: none, static, progressive, ls, progressive-ls)")


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
        return m.allocation, "method"
    if allocation not in ALLOCATION_CHOICES:
        raise ValueError(f"allocation {allocation!r} invalid; choose one of {list(ALLOCATION_CHOICES)}")
    return str(allocation), "override"


def _with_networks(make: Callable[..., Scorer]) -> Callable[..., Scorer]:
    """A scorer factory whose scorer needs the functional networks of stage 2."""
    def factory(method: Method, networks: Any, seed: int) -> Scorer:
        if networks is None:
            raise ValueError(f"method {method.name!r} needs functional networks: pass networks= "
                             "(FunctionalNetworks fitted in stage 2)")
        return make(networks, **method.params)
    return factory


#: Scorer name -> ``factory(method, networks, seed)``; every factory passes ``Method.params`` to its scorer.
SCORERS: dict[str, Callable[[Method, Any, int], Scorer]] = {
    "functional_networks": _with_networks(FunctionalNetworkScorer),
    "random": lambda method, networks, seed: RandomScorer(seed, **method.params),
    "magnitude": lambda method, networks, seed: MagnitudeScorer(**method.params),
    "wanda_sp": lambda method, networks, seed: WandaSpScorer(**method.params),
    "flap": lambda method, networks, seed: FlapScorer(**{"standardize": True, **method.params}),
    "fn_flap": _with_networks(FnFlapScorer),
}


def _scorer(method: Method, networks: Any, seed: int) -> Scorer:
    if method.scorer not in SCORERS:
        raise ValueError(f"method {method.name!r} has an unknown scorer {method.scorer!r}; known: {list(SCORERS)}")
    return SCORERS[method.scorer](method, networks, seed)


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
    scorer = _scorer(m, networks, seed)
    scores = scorer(model, stats)
    recorded = {"scorer": scorer.name, "scorer_settings": dict(getattr(scorer, "settings", {})),
                "bias_compensation": m.compensation, "allocation_source": allocation_source,
                "criterion": m.criterion}
    if m.compensation_params:
        recorded["compensation_settings"] = dict(m.compensation_params)
    if m.seeded:
        recorded["seed"] = int(seed)
    recorded.update(settings or {})
    reference = None
    if used.startswith("widths:"):
        reference = make_plan(used.split(":", 1)[1], model, ratio, networks=networks, stats=stats, basis=basis,
                              protected_layers=protected_layers, round_to=round_to, source=source)
    return plan_from_scores(m, scores, model, ratio, allocation=used, reference=reference, basis=basis,
                            protected_layers=protected_layers, round_to=round_to, settings=recorded, source=source)


def plan_from_scores(method: str | Method, scores: Scores, model: nn.Module, ratio: float, *,
                     allocation: str | None = None, reference: PruningPlan | None = None,
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
    allocation : str, optional
        ``"global"``, ``"uniform"`` or ``"widths:<method>"``; default the method's own.
    reference : PruningPlan, optional
        The plan whose per-layer widths a ``"widths:<method>"`` allocation keeps (required for it).
    basis, protected_layers, round_to, settings, source
        As for :func:`make_plan`; ``settings`` are recorded in the plan.

    Returns
    -------
    PruningPlan
    """
    m = get_method(method)
    used = m.allocation if allocation is None else allocation
    if used.startswith("widths:"):
        if reference is None:
            raise ValueError(f"allocation {used!r} needs reference= (the plan whose widths to keep)")
        return select_within_widths(scores, model, reference, method=m.name, settings=settings, source=source)
    return select_channels(scores, model, ratio=float(ratio), basis=basis, allocation=used,
                           protected_layers=protected_layers, round_to=round_to, method=m.name,
                           settings=settings, source=source)


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
    compensation: CalibrationData | ChannelStatistics | LeastSquaresCompensation | ProgressiveLeastSquares | None = None
    if m.compensation == "progressive":
        if calibration is None:
            raise ValueError(f"method {m.name!r} needs calibration=CalibrationData(tokenizer, texts) "
                             "for its bias compensation")
        compensation = calibration
    elif m.compensation == "static":
        if stats is None:
            raise ValueError(f"method {m.name!r} needs stats= (ChannelStatistics of the dense model) "
                             "for its bias compensation")
        compensation = stats
    elif m.compensation == "ls":
        compensation = LeastSquaresCompensation(moments_for(moments, [i for i in plan.layers if plan.removed(i)]),
                                                float(m.compensation_params.get("ridge", LS_RIDGE)))
    elif m.compensation == "progressive-ls":
        if calibration is None:
            raise ValueError(f"method {m.name!r} needs calibration=CalibrationData(tokenizer, texts) "
                             "for its progressive least-squares refit")
        compensation = ProgressiveLeastSquares(calibration, float(m.compensation_params.get("ridge", LS_RIDGE)))
    if plan.method != m.name:
        plan = dataclasses.replace(plan, method=m.name)
    if isinstance(base, nn.Module):
        model = copy.deepcopy(base)
    else:
        loaded = load_model(str(base))
        model, revision = loaded.model, loaded.source["revision"]
    prune(model, plan, revision=revision, bias_compensation=compensation, progress=progress)
    return model.eval()
