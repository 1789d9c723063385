"""The three axes of a pruning method, as objects: which channels, how many per layer, how the rest is made up for.

A :class:`funcprune.methods.Method` holds one of each:

* a :class:`Criterion`: a channel score (larger = keep), the scorer of :mod:`funcprune.scoring` that computes
  it, its parameters and what it needs (functional networks, activation statistics, a seed);
* an :class:`Allocation`: how the budget is spread over layers: one ranking across layers (:data:`GLOBAL`),
  the same share of every prunable layer (:data:`UNIFORM`), or the per-layer widths another method's plan
  chose (:class:`WidthsOf`);
* a :class:`Compensation` (or ``None``): what is done for the removed channels when the model is sliced: a
  bias from the dense model's statistics (:class:`StaticBias`, FLAP's), a bias measured on the progressively
  pruned network (:class:`ProgressiveBias`, the paper's), or the down projection refitted by least squares on
  the dense model's inputs (:class:`LeastSquaresRefit`) or on the progressively pruned network's
  (:class:`ProgressiveLeastSquaresRefit`).

Each object does its own part: ``Criterion.scorer_for`` builds the scorer with exactly ``params``,
``Allocation.select`` turns scores into a plan, ``Compensation.for_plan`` builds what
:func:`funcprune.prune.prune` applies. Adding one is one object here and one entry in the registries below
(:data:`CRITERIA`, :data:`ALLOCATIONS`, :data:`COMPENSATIONS`); a method that combines them is one entry in
:data:`funcprune.methods.METHODS`, or no code at all (a variant name such as ``"fn@flap+static"``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

from torch import nn

from .compensation import DownMoments, LeastSquaresCompensation, ProgressiveLeastSquares, moments_for
from .plan import PruningPlan, select_channels, select_within_widths
from .prune import CalibrationData
from .scoring import (ChannelStatistics, FlapScorer, FnFlapScorer, FunctionalNetworkScorer, MagnitudeScorer,
                      RandomScorer, Scorer, Scores, WandaSpScorer)

if TYPE_CHECKING:  # pragma: no cover
    from .methods import Method

__all__ = ["ALLOCATIONS", "COMPENSATIONS", "CRITERIA", "GLOBAL", "LS_RIDGE", "UNIFORM", "Allocation",
           "Compensation", "Criterion", "LeastSquaresRefit", "ProgressiveBias", "ProgressiveLeastSquaresRefit",
           "RankedAllocation", "StaticBias", "WidthsOf", "compensation_label"]


# ----------------------------------------------------------------------------------
# Which channels
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Criterion:
    """A channel score: which channels a method keeps first.

    Attributes
    ----------
    name : str
        The registered method this score is first defined by (``"fn"`` for ``fn`` and ``fn-bias``).
    scorer : callable
        A scorer class of :mod:`funcprune.scoring`, called as ``scorer([networks], [seed=seed], **params)``.
    params : dict
        Every keyword argument the scorer gets, and nothing else (recorded by the scorer in each plan's
        ``scorer_settings``).
    needs_networks : bool
        The scorer takes fitted functional networks (stage 2) as its first argument.
    needs_statistics : bool
        The scorer reads activation statistics of the dense model.
    seeded : bool
        The score is random: the scorer takes ``seed``; run several seeds.
    """

    name: str
    scorer: Callable[..., Scorer]
    params: Mapping[str, Any] = field(default_factory=dict)
    needs_networks: bool = False
    needs_statistics: bool = False
    seeded: bool = False

    def __post_init__(self) -> None:
        taken = [p for p in inspect.signature(self.scorer).parameters if p not in ("networks", "seed")]
        unknown = sorted(set(self.params) - set(taken))
        if unknown:
            raise ValueError(f"criterion {self.name!r}: {getattr(self.scorer, '__name__', self.scorer)} takes no "
                             f"parameter {unknown}; it takes {taken}")

    def scorer_for(self, networks: Any = None, seed: int = 0) -> Scorer:
        """The scorer, built with ``params`` (and ``networks``, ``seed`` where the criterion takes them)."""
        args = (networks,) if self.needs_networks else ()
        return self.scorer(*args, **({"seed": seed} if self.seeded else {}), **self.params)


#: The criteria of the registered methods, by name.
CRITERIA: dict[str, Criterion] = {c.name: c for c in (
    Criterion("fn", FunctionalNetworkScorer, needs_networks=True),
    Criterion("random", RandomScorer, seeded=True),
    Criterion("magnitude", MagnitudeScorer),
    Criterion("wanda-sp", WandaSpScorer, needs_statistics=True),
    Criterion("flap", FlapScorer, {"standardize": True}, needs_statistics=True),
    Criterion("fn-flap", FnFlapScorer, {"weight": 1.0}, needs_networks=True, needs_statistics=True),
    Criterion("fn-protect", FnFlapScorer, {"weight": 0.0, "protect": 3.0}, needs_networks=True,
              needs_statistics=True),
)}


# ----------------------------------------------------------------------------------
# How many per layer
# ----------------------------------------------------------------------------------
class Allocation:
    """How a method spreads its budget over the layers (see :class:`RankedAllocation` and :class:`WidthsOf`)."""

    #: The name plans record in ``allocation``.
    name = ""
    #: The words a variant's label uses for it.
    label = ""
    #: The method whose per-layer widths this allocation keeps, or ``None``.
    widths_from: str | None = None
    needs_networks = False
    needs_statistics = False

    def select(self, scores: Scores, model: nn.Module, ratio: float, *, reference: PruningPlan | None,
               method: str, basis: Literal["total", "mlp"], protected_layers: Sequence[int] | None,
               round_to: int, settings: Mapping[str, Any] | None,
               source: Mapping[str, Any] | None) -> PruningPlan:
        """The plan that keeps the best-scored channels under this allocation."""
        raise NotImplementedError


@dataclass(frozen=True)
class RankedAllocation(Allocation):
    """One ranking across layers (``"global"``) or the same share of every prunable layer (``"uniform"``)."""

    kind: Literal["global", "uniform"]

    @property  # type: ignore[override]
    def name(self) -> str:
        return self.kind

    @property  # type: ignore[override]
    def label(self) -> str:
        return f"{self.kind} allocation"

    def select(self, scores: Scores, model: nn.Module, ratio: float, *, reference: PruningPlan | None,
               method: str, basis: Literal["total", "mlp"], protected_layers: Sequence[int] | None,
               round_to: int, settings: Mapping[str, Any] | None,
               source: Mapping[str, Any] | None) -> PruningPlan:
        return select_channels(scores, model, ratio=float(ratio), basis=basis, allocation=self.kind,
                               protected_layers=protected_layers, round_to=round_to, method=method,
                               settings=settings, source=source)


@dataclass(frozen=True)
class WidthsOf(Allocation):
    """In every layer, as many channels as ``reference``'s plan keeps there at the same ratio.

    The control that separates *which* channels a layer keeps from *how many* it keeps
    (:func:`funcprune.plan.select_within_widths`). The reference must not be seeded: its widths would
    depend on the seed.
    """

    reference: Method

    def __post_init__(self) -> None:
        if self.reference.seeded:
            raise ValueError(f"widths from {self.reference.name!r} would depend on its seed; "
                             "use allocation='uniform'")

    @property  # type: ignore[override]
    def name(self) -> str:
        return f"widths:{self.reference.name}"

    @property  # type: ignore[override]
    def label(self) -> str:
        return f"{self.reference.label}'s widths"

    @property  # type: ignore[override]
    def widths_from(self) -> str:
        return self.reference.name

    @property  # type: ignore[override]
    def needs_networks(self) -> bool:
        return self.reference.needs_networks

    @property  # type: ignore[override]
    def needs_statistics(self) -> bool:
        return self.reference.needs_statistics

    def select(self, scores: Scores, model: nn.Module, ratio: float, *, reference: PruningPlan | None,
               method: str, basis: Literal["total", "mlp"], protected_layers: Sequence[int] | None,
               round_to: int, settings: Mapping[str, Any] | None,
               source: Mapping[str, Any] | None) -> PruningPlan:
        if reference is None:
            raise ValueError(f"allocation {self.name!r} needs reference= (the plan whose widths to keep)")
        return select_within_widths(scores, model, reference, method=method, settings=settings, source=source)


GLOBAL = RankedAllocation("global")
UNIFORM = RankedAllocation("uniform")
#: The allocations a profile may name for every method (an ablation); widths are named by method.
ALLOCATIONS: dict[str, Allocation] = {"global": GLOBAL, "uniform": UNIFORM}


# ----------------------------------------------------------------------------------
# How the removed channels are made up for
# ----------------------------------------------------------------------------------
#: Relative ridge strength of least-squares compensation when none is given (see :mod:`funcprune.compensation`).
LS_RIDGE = 0.01


@dataclass(frozen=True)
class Compensation:
    """What is done for the removed channels when a model is sliced (subclasses below)."""

    name = ""
    label = ""
    needs_texts = False       # calibration texts (progressive measurement, least-squares moments)
    needs_statistics = False  # dense-model channel statistics
    needs_moments = False     # dense-model moments of the down projections' inputs
    refits = False            # the down projection's kept columns are refitted (takes a ridge)

    @property
    def settings(self) -> dict[str, Any]:
        """Settings plans record in ``compensation_settings`` (none for a bias)."""
        return {}

    def for_plan(self, plan: PruningPlan, *, method: str, calibration: CalibrationData | None,
                 stats: ChannelStatistics | None, moments: DownMoments | None) -> Any:
        """The object :func:`funcprune.prune.prune` applies as ``bias_compensation`` for ``plan``.

        Raises
        ------
        ValueError
            What ``method`` needs is missing (named, with how to make it).
        """
        raise NotImplementedError

    @staticmethod
    def _calibration(method: str, calibration: CalibrationData | None, what: str) -> CalibrationData:
        if calibration is None:
            raise ValueError(f"method {method!r} needs calibration=CalibrationData(tokenizer, texts) for its {what}")
        return calibration


@dataclass(frozen=True)
class StaticBias(Compensation):
    """FLAP's: each removed channel's dense-model mean contribution added to the down projection's bias."""

    name = "static"
    label = "static bias"
    needs_texts = needs_statistics = True

    def for_plan(self, plan: PruningPlan, *, method: str, calibration: CalibrationData | None,
                 stats: ChannelStatistics | None, moments: DownMoments | None) -> ChannelStatistics:
        if stats is None:
            raise ValueError(f"method {method!r} needs stats= (ChannelStatistics of the dense model) "
                             "for its bias compensation")
        return stats


@dataclass(frozen=True)
class ProgressiveBias(Compensation):
    """The paper's: the bias measured layer by layer on the network whose earlier layers are already pruned."""

    name = "progressive"
    label = "progressive bias"
    needs_texts = True

    def for_plan(self, plan: PruningPlan, *, method: str, calibration: CalibrationData | None,
                 stats: ChannelStatistics | None, moments: DownMoments | None) -> CalibrationData:
        return self._calibration(method, calibration, "bias compensation")


@dataclass(frozen=True)
class LeastSquaresRefit(Compensation):
    """The down projection's kept columns and bias refitted to the dense layer's output on dense inputs."""

    ridge: float = LS_RIDGE
    name = "ls"
    label = "least squares"
    needs_texts = needs_moments = refits = True

    @property
    def settings(self) -> dict[str, Any]:
        return {"ridge": float(self.ridge)}

    def for_plan(self, plan: PruningPlan, *, method: str, calibration: CalibrationData | None,
                 stats: ChannelStatistics | None, moments: DownMoments | None) -> LeastSquaresCompensation:
        return LeastSquaresCompensation(moments_for(moments, [i for i in plan.layers if plan.removed(i)]),
                                        float(self.ridge))


@dataclass(frozen=True)
class ProgressiveLeastSquaresRefit(Compensation):
    """The same refit, on the inputs of the progressively pruned network."""

    ridge: float = LS_RIDGE
    name = "progressive-ls"
    label = "progressive least squares"
    needs_texts = refits = True

    @property
    def settings(self) -> dict[str, Any]:
        return {"ridge": float(self.ridge)}

    def for_plan(self, plan: PruningPlan, *, method: str, calibration: CalibrationData | None,
                 stats: ChannelStatistics | None, moments: DownMoments | None) -> ProgressiveLeastSquares:
        return ProgressiveLeastSquares(self._calibration(method, calibration, "progressive least-squares refit"),
                                       float(self.ridge))


#: The compensations of the method grid, by the name a variant uses (``"none"``: no compensation).
COMPENSATIONS: dict[str, Compensation | None] = {
    "none": None, "static": StaticBias(), "progressive": ProgressiveBias(), "ls": LeastSquaresRefit(),
    "progressive-ls": ProgressiveLeastSquaresRefit()}


def compensation_label(compensation: Compensation | None) -> str:
    """Words for a compensation in labels and descriptions (``"no compensation"`` for ``None``).

    >>> compensation_label(None), compensation_label(LeastSquaresRefit(0.1))
    ('no compensation', 'least squares, ridge 0.1')
    """
    if compensation is None:
        return "no compensation"
    return compensation.label + (f", ridge {compensation.ridge:g}" if compensation.refits else "")
