"""Stage 4, high level: one definition of every pruning method, and pruning a model with all of them.

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
:func:`make_plan` or :func:`prune_all` overrides every method's own (the plan records
``allocation`` and ``settings["allocation_source"]``: ``"method"`` or ``"override"``).

:func:`prune_all` runs a grid of methods, ratios and seeds over one run directory::

    run_dir/activations/manifest.json   stage 1: which calibration texts (read by calibration_texts)
    run_dir/networks/                   stage 2: FunctionalNetworks.save
    run_dir/stats/                      activation statistics for wanda-sp and flap (cached)
    run_dir/plans/<key>.json            one plan per (method, ratio[, seed])
    run_dir/pruned/biases/<key>.*       compensation biases (fn-bias, flap): safetensors + record
    run_dir/pruned/index.json           what was made: ratios, parameters, widths, digests, seconds

Plans, not checkpoints: a plan is a few kB, the biases of one compensated model a few
hundred kB, where a checkpoint is the whole model. :func:`rebuild_pruned` turns the dense
model, a plan and its biases back into the pruned model in seconds (equal to what
:func:`build_pruned` gave); :func:`funcprune.prune.save_pruned` exports one as an HF
checkpoint when wanted.

Keys read ``fn_r0.20`` or ``random-s1_r0.10``. Work already done is reused: a plan on
disk equal to the new plan (provenance aside), with its bias file intact (SHA-256
checked against its record), is not recomputed.

Used in the chapter :doc:`/executed/04_structured_pruning`.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from torch import nn
from tqdm.auto import tqdm

from ._io import ArtefactError, atomic_write_json, file_record, read_json, verify_file
from .adapters import layer_widths
from .data import DATASETS, HUB_DATASETS, Text, check_dataset, dataset_info, load_texts
from .evaluate import count_parameters
from .models import load_model
from .plan import PruningPlan, model_identity, select_channels
from .prune import PLAN_FILE, CalibrationData, prune
from .scoring import (ChannelStatistics, FlapScorer, FnFlapScorer, FunctionalNetworkScorer, MagnitudeScorer,
                      RandomScorer, Scorer, WandaSpScorer, channel_statistics)

__all__ = [
    "INDEX_FORMAT",
    "METHODS",
    "Method",
    "build_pruned",
    "calibration_data",
    "calibration_statistics",
    "calibration_texts",
    "ALLOCATION_CHOICES",
    "get_method",
    "make_plan",
    "method_key",
    "prune_all",
    "read_index",
    "rebuild_pruned",
    "resolve_allocation",
]

INDEX_FORMAT = "funcprune-pruned-index/1"
STATS_DIR = "stats"
PLANS_DIR = "plans"
PRUNED_DIR = "pruned"
INDEX_FILE = "index.json"
BIASES_DIR = "biases"
BIASES_FORMAT = "funcprune-biases/1"


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
        Importance criterion (see :mod:`funcprune.scoring`).
    compensation : {None, "progressive", "static"}
        Bias compensation at pruning time: none; measured layer by layer on the
        network whose earlier layers are already pruned
        (:class:`funcprune.prune.CalibrationData`); or from statistics of the dense
        model (:class:`funcprune.scoring.ChannelStatistics`, FLAP's).
    allocation : {"global", "uniform"}
        How the method's authors spread the budget over layers (see the module notes):
        one ranking across layers, or the same share of every prunable layer.
    needs_networks : bool
        The score needs fitted functional networks (stage 2).
    needs_statistics : bool
        The score or the compensation needs activation statistics of the dense model.
    seeded : bool
        The score is random; run several seeds.
    params : dict
        Keyword arguments of the scorer (``{"weight": 1.0}`` for ``fn-flap``); another
        setting is another :class:`Method` (``dataclasses.replace(method, params=...)``),
        recorded in each plan's ``scorer_settings``.
    description : str
        One line for readers.
    """

    name: str
    label: str
    scorer: str
    compensation: Literal["progressive", "static"] | None = None
    allocation: Literal["global", "uniform"] = "global"
    needs_networks: bool = False
    needs_statistics: bool = False
    seeded: bool = False
    params: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def needs_texts(self) -> bool:
        """Calibration texts are needed (statistics or progressive compensation)."""
        return self.needs_statistics or self.compensation == "progressive"


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
)}


def get_method(name: str | Method) -> Method:
    """The :class:`Method` registered as ``name``.

    Raises
    ------
    ValueError
        For an unknown name, listing the accepted ones.
    """
    if isinstance(name, Method):
        return name
    if name not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; accepted methods: {list(METHODS)}")
    return METHODS[name]


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


def _scorer(method: Method, networks: Any, seed: int) -> Scorer:
    if method.scorer == "functional_networks":
        if networks is None:
            raise ValueError(f"method {method.name!r} needs functional networks: pass networks= "
                             "(FunctionalNetworks fitted in stage 2)")
        return FunctionalNetworkScorer(networks)
    if method.scorer == "random":
        return RandomScorer(seed)
    if method.scorer == "magnitude":
        return MagnitudeScorer()
    if method.scorer == "wanda_sp":
        return WandaSpScorer()
    if method.scorer == "flap":
        return FlapScorer(standardize=True)
    if method.scorer == "fn_flap":
        if networks is None:
            raise ValueError(f"method {method.name!r} needs functional networks: pass networks= "
                             "(FunctionalNetworks fitted in stage 2)")
        return FnFlapScorer(networks, **method.params)
    raise ValueError(f"method {method.name!r} has an unknown scorer {method.scorer!r}")


def make_plan(method: str | Method, model: nn.Module, ratio: float, *, networks: Any = None,
              stats: ChannelStatistics | None = None, seed: int = 0,
              basis: Literal["total", "mlp"] = "total",
              allocation: Literal["per-method", "global", "uniform"] | None = "per-method",
              protected_layers: Sequence[int] | None = None, round_to: int = 1,
              settings: Mapping[str, Any] | None = None) -> PruningPlan:
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
    used, source = resolve_allocation(m, allocation)
    scorer = _scorer(m, networks, seed)
    scores = scorer(model, stats)
    recorded = {"scorer": scorer.name, "scorer_settings": dict(getattr(scorer, "settings", {})),
                "bias_compensation": m.compensation, "allocation_source": source}
    if m.seeded:
        recorded["seed"] = int(seed)
    recorded.update(settings or {})
    return select_channels(scores, model, ratio=float(ratio), basis=basis, allocation=used,
                           protected_layers=protected_layers, round_to=round_to, method=m.name,
                           settings=recorded)


def build_pruned(method: str | Method, base: str | os.PathLike[str] | nn.Module, plan: PruningPlan, *,
                 calibration: CalibrationData | None = None, stats: ChannelStatistics | None = None,
                 progress: bool = False) -> nn.Module:
    """A pruned copy of the base model: the plan applied the method's way.

    Parameters
    ----------
    method : str or Method
        A key of :data:`METHODS`; decides the bias compensation.
    base : str, path-like or nn.Module
        The dense model: a name for :func:`funcprune.models.load_model` (loaded
        afresh) or a model (deep-copied; left untouched).
    plan : PruningPlan
        Made for ``base`` (e.g. by :func:`make_plan`). If its ``method`` differs (the
        ``fn`` plan built as ``fn-bias``), the pruned model records a copy whose
        ``method`` is ``method``.
    calibration : CalibrationData, optional
        Texts for progressive compensation (needed by ``fn-bias``).
    stats : ChannelStatistics, optional
        Dense-model statistics for static compensation (needed by ``flap``).
    progress : bool, default=False
        Progress bar of the progressive compensation.

    Returns
    -------
    nn.Module
        The pruned model, in eval mode, with ``funcprune_plan`` set.
    """
    m = get_method(method)
    compensation: CalibrationData | ChannelStatistics | None = None
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
    if plan.method != m.name:
        plan = dataclasses.replace(plan, method=m.name)
    if isinstance(base, nn.Module):
        model = copy.deepcopy(base)
    else:
        model, _ = load_model(str(base))
    prune(model, plan, bias_compensation=compensation, progress=progress)
    return model.eval()


# ----------------------------------------------------------------------------------
# Calibration data of a run
# ----------------------------------------------------------------------------------
def _read_activation_manifest(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(run_dir) / "activations" / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run stage 1 (notebooks/01_capture_activations.ipynb) "
                                "with this run_dir first")
    return read_json(path)


def calibration_texts(run_dir: str | os.PathLike[str]) -> list[Text]:
    """The calibration texts stage 1 used, reloaded through :mod:`funcprune.data`.

    Parameters
    ----------
    run_dir : str or path-like
        Run directory holding ``activations/manifest.json``.

    Returns
    -------
    list of Text
        In the order of the manifest's text ids.

    Raises
    ------
    FileNotFoundError
        No stage-1 manifest.
    ValueError
        The manifest names no registered dataset, its dataset checksum differs from the
        registered one (the texts would not be the same), or an id is not in the corpus.
    """
    manifest = _read_activation_manifest(run_dir)
    dataset = manifest.get("dataset") or {}
    name = dataset.get("name")
    if name not in DATASETS and name not in HUB_DATASETS:
        raise ValueError(f"the stage-1 manifest of {run_dir} names dataset {name!r}; registered datasets: "
                         f"{sorted({*DATASETS, *HUB_DATASETS})} (texts passed by hand cannot be reloaded: "
                         "pass texts=)")
    check_dataset(name)  # a hub corpus must be readable now (offline: from the datasets cache)
    expected = dataset_info(name, dataset.get("split", "calibration"), [])["sha256"]
    if dataset.get("sha256") != expected:
        raise ValueError(f"dataset {name!r}: the stage-1 manifest records checksum {dataset.get('sha256')!r}, "
                         f"the registered file has {expected!r}; the calibration texts cannot be reproduced "
                         "(run stage 1 again)")
    ids = [str(i) for i in dataset.get("ids") or manifest.get("text_ids") or []]
    if manifest.get("text_ids") is not None and [str(i) for i in manifest["text_ids"]] != ids:
        raise ValueError("the stage-1 manifest's text_ids differ from its dataset ids")
    if not ids:
        raise ValueError(f"the stage-1 manifest of {run_dir} lists no text ids")
    by_id = {t.id: t for t in load_texts(name, dataset.get("split", "calibration"))}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"text ids {missing[:5]} of the stage-1 manifest are not in the "
                         f"{dataset.get('split')!r} split of {name!r}")
    return [by_id[i] for i in ids]


def calibration_data(tokenizer: Any, texts: Sequence[str | Text], *, batch_size: int = 4,
                     max_tokens: int = 512) -> CalibrationData:
    """Calibration texts for progressive bias compensation, longest first.

    The compensation (like the statistics) sums over tokens, so the order of the texts
    does not matter; grouping texts of similar length into a batch wastes less compute
    on padding (about a fifth less on the default calibration set).

    Returns
    -------
    CalibrationData
    """
    return CalibrationData(tokenizer, _by_length(texts), batch_size=batch_size, max_tokens=max_tokens)


def _by_length(texts: Sequence[str | Text]) -> list[str]:
    """Texts as strings, longest first (ties keep their order): less padding per batch."""
    strings = [t.text if isinstance(t, Text) else str(t) for t in texts]
    return sorted(strings, key=len, reverse=True)


def _texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for t in texts:
        digest.update(t.encode("utf-8") + b"\0")
    return digest.hexdigest()


def _calibration_record(texts: Sequence[str], batch_size: int, max_tokens: int) -> dict[str, Any]:
    return {"n_texts": len(texts), "sha256": _texts_digest(texts), "max_tokens": int(max_tokens),
            "batch_size": int(batch_size)}


def calibration_statistics(run_dir: str | os.PathLike[str], model: nn.Module, tokenizer: Any,
                           texts: Sequence[str | Text], *, batch_size: int = 4, max_tokens: int = 512,
                           progress: bool = True) -> ChannelStatistics:
    """Activation statistics of the dense model on the calibration texts, cached in ``run_dir/stats``.

    Computed with :func:`funcprune.scoring.channel_statistics` once (texts batched
    longest first, see :func:`calibration_data`); later calls with the same model
    (name, revision), texts and ``max_tokens`` read the cache.

    Returns
    -------
    ChannelStatistics
        ``source["calibration"]`` and ``source["model"]`` identify what they were measured on.
    """
    texts = [t.text if isinstance(t, Text) else t for t in texts]
    path = Path(run_dir) / STATS_DIR
    ident = model_identity(model)
    key = {"model": {k: ident[k] for k in ("name", "model_type", "revision")},
           "calibration": _calibration_record(texts, batch_size, max_tokens)}
    key["calibration"].pop("batch_size")  # padding is excluded: the batch size does not matter
    if (path / "stats.json").exists():
        cached = ChannelStatistics.load(path)
        if {k: cached.source.get(k) for k in key} == _normalise(key):
            cached.check_model(model)
            return cached
    stats = channel_statistics(model, tokenizer, _by_length(texts), batch_size=batch_size,
                               max_tokens=max_tokens, progress=progress)
    stats.source.update(key)
    stats.save(path)
    return stats


# ----------------------------------------------------------------------------------
# Pruning a grid of methods, ratios and seeds
# ----------------------------------------------------------------------------------
def _normalise(obj: Any) -> Any:
    """What ``obj`` becomes after a JSON round trip."""
    return json.loads(json.dumps(obj, sort_keys=True))


def _plan_content(plan: PruningPlan) -> dict[str, Any]:
    """The plan minus its provenance, JSON-normalised: what must match for reuse."""
    data = plan.to_dict()
    data.pop("provenance", None)
    return _normalise(data)


def _plan_sha(plan: PruningPlan) -> str:
    return hashlib.sha256(json.dumps(_plan_content(plan), sort_keys=True).encode()).hexdigest()


def read_index(run_dir: str | os.PathLike[str]) -> "Any":
    """The pruned-model index of a run (``run_dir/pruned/index.json``) as a DataFrame.

    One row per pruned model; columns as listed in :func:`prune_all`. Empty (with no
    columns) when nothing was pruned yet.
    """
    import pandas as pd

    path = Path(run_dir) / PRUNED_DIR / INDEX_FILE
    if not path.exists():
        return pd.DataFrame()
    return pd.DataFrame(read_json(path)["entries"])


@dataclass
class _Job:
    key: str
    method: Method
    ratio: float
    seed: int | None
    plan: PruningPlan | None = None


def _check_grid(methods: Sequence[str], ratios: Sequence[float], seeds: Sequence[int]) -> list[Method]:
    if isinstance(methods, str):
        methods = [methods]
    resolved = [get_method(m) for m in dict.fromkeys(methods)]
    if not resolved:
        raise ValueError(f"no methods given; accepted methods: {list(METHODS)}")
    if not ratios:
        raise ValueError("no ratios given")
    for r in ratios:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < float(r) < 1.0:
            raise ValueError(f"ratio {r!r} must be a number in (0, 1)")
    if any(m.seeded for m in resolved) and not seeds:
        raise ValueError("the random method needs at least one seed (seeds=[0, 1, 2])")
    return resolved


def prune_all(model: str | os.PathLike[str] | nn.Module, run_dir: str | os.PathLike[str],
              methods: Sequence[str], ratios: Sequence[float], seeds: Sequence[int] = (0,), *,
              texts: Sequence[str | Text] | None = None, tokenizer: Any = None, networks: Any = None,
              basis: Literal["total", "mlp"] = "total",
              allocation: Literal["per-method", "global", "uniform"] | None = "per-method",
              protected_layers: Sequence[int] | None = None, round_to: int = 1, batch_size: int = 4,
              max_tokens: int = 512, progress: bool = True) -> "Any":
    """Prune the dense model with every method at every ratio (and seed); save plans and biases.

    For each ``(method, ratio[, seed])`` the plan is made (all plans first, so a bad
    ratio fails before any work) and written to ``run_dir/plans/<key>.json``; it is
    applied to a fresh copy of the dense model to count its parameters, and for methods
    with bias compensation the down-projection biases of the pruned layers are saved to
    ``run_dir/pruned/biases/<key>.safetensors`` with a record (size, SHA-256). No
    checkpoint is written: :func:`rebuild_pruned` rebuilds any model in seconds. A plan
    on disk equal to the new one (provenance aside), with intact biases, is reused; a
    corrupt bias file is recomputed with a warning naming it. After each model
    ``run_dir/pruned/index.json`` is rewritten atomically. Checkpoint directories an
    earlier version wrote to ``run_dir/pruned/<key>/`` for these keys are deleted.

    Parameters
    ----------
    model : str, path-like or nn.Module
        The dense model: a name for :func:`funcprune.models.load_model`, or a loaded
        model (then pass ``tokenizer``; it is never modified).
    run_dir : str or path-like
        Run directory (see the module docstring).
    methods : sequence of str
        Keys of :data:`METHODS`.
    ratios : sequence of float
        Fractions of ``basis`` parameters to remove, each in ``(0, maximum)``.
    seeds : sequence of int, default=(0,)
        Seeds of the ``random`` method (one model per seed).
    texts : sequence of str or Text, optional
        Calibration texts for statistics and progressive compensation; default the
        texts of stage 1 (:func:`calibration_texts`).
    tokenizer : transformers tokenizer, optional
        Needed when ``model`` is a module and a method uses texts.
    networks : FunctionalNetworks, optional
        Default: loaded from ``run_dir/networks`` when a method needs them.
    basis, protected_layers, round_to
        Selection settings shared by every method (see :func:`make_plan`).
    allocation : {"per-method", "global", "uniform"}, default="per-method"
        Each method's own allocation (the headline), or one override for all (an ablation).
    batch_size : int, default=4
        Texts per forward pass for statistics and compensation.
    max_tokens : int, default=512
        Truncation length of each calibration text.
    progress : bool, default=True
        Progress bars.

    Returns
    -------
    pandas.DataFrame
        The rows of this call, in grid order (ratio, method, seed). Columns: ``key``,
        ``method``, ``seed``, ``ratio_requested``, ``ratio_reached`` (plan, on
        ``ratio_basis``), ``ratio_basis``, ``allocation``, ``protected_layers``,
        ``params_total_before``/``_after``, ``params_mlp_before``/``_after``,
        ``ratio_total``, ``ratio_mlp`` (measured on the models, compensation biases
        counted), ``widths`` (per layer), ``plan`` (relative to ``run_dir``),
        ``plan_sha256``, ``biases`` (``None``, or the bias file's ``path``, ``size``,
        ``sha256``, ``plan_sha256`` and ``layers``), ``allocation_source``,
        ``seconds`` (build) and ``status`` (``"built"`` or ``"reused"``).

    Raises
    ------
    ValueError
        Unknown method (the accepted ones are listed), a ratio outside ``(0, maximum)``,
        no seed for ``random``.
    FileNotFoundError
        Functional networks or the stage-1 manifest are needed but missing.
    """
    import pandas as pd
    from .ica import FunctionalNetworks

    resolved = _check_grid(methods, ratios, seeds)
    run_dir = Path(run_dir)
    if isinstance(model, nn.Module):
        dense = model
    else:
        dense, loaded_tokenizer = load_model(str(model))
        tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
    dense.eval()

    if networks is None and any(m.needs_networks for m in resolved):
        net_dir = run_dir / "networks"
        if not net_dir.exists():
            raise FileNotFoundError(f"{net_dir} does not exist: methods "
                                    f"{[m.name for m in resolved if m.needs_networks]} need the functional "
                                    "networks of stage 2 (notebooks/02_*.ipynb)")
        networks = FunctionalNetworks.load(net_dir)
    calib_texts: list[str] = []
    calibration = None
    stats = None
    if any(m.needs_texts for m in resolved):
        if tokenizer is None:
            raise ValueError("a tokenizer is needed to read the calibration texts: pass tokenizer=")
        source = calibration_texts(run_dir) if texts is None else texts
        calib_texts = [t.text if isinstance(t, Text) else str(t) for t in source]
        calibration = calibration_data(tokenizer, calib_texts, batch_size=batch_size, max_tokens=max_tokens)
    if any(m.needs_statistics for m in resolved):
        stats = calibration_statistics(run_dir, dense, tokenizer, calib_texts, batch_size=batch_size,
                                       max_tokens=max_tokens, progress=progress)
    record = _calibration_record(calib_texts, batch_size, max_tokens) if calib_texts else None

    jobs = [_Job(method_key(m.name, r, s if m.seeded else None), m, float(r), s if m.seeded else None)
            for r in ratios for m in resolved for s in (seeds if m.seeded else [None])]
    for job in jobs:
        extra = {"calibration": record} if job.method.needs_texts else {}
        job.plan = make_plan(job.method, dense, job.ratio, networks=networks, stats=stats,
                             seed=job.seed or 0, basis=basis, allocation=allocation,
                             protected_layers=protected_layers, round_to=round_to, settings=extra)

    index_path = run_dir / PRUNED_DIR / INDEX_FILE
    previous = _read_entries(index_path)
    before = count_parameters(dense)
    base_widths = layer_widths(dense)
    entries: dict[str, dict[str, Any]] = {k: e for k, e in previous.items()
                                          if (run_dir / e["plan"]).exists()}
    rows = []
    bar = tqdm(jobs, desc="pruning", unit="model", disable=not progress)
    for job in bar:
        bar.set_postfix_str(job.key)
        plan = job.plan
        assert plan is not None
        plan_path = run_dir / PLANS_DIR / f"{job.key}.json"
        plan_on_disk = plan_path.exists() and _plan_content(PruningPlan.load(plan_path)) == _plan_content(plan)
        if not plan_on_disk:
            plan.save(plan_path)
        sha = _plan_sha(plan)
        start = time.perf_counter()
        old = previous.get(job.key)
        biases = _saved_biases(run_dir, job.key, sha) if job.method.compensation else None
        reused = plan_on_disk and (job.method.compensation is None or biases is not None)
        if reused:
            status = "reused"
            same = old is not None and old.get("plan_sha256") == sha and (
                biases is None or (old.get("biases") or {}).get("sha256") == biases["sha256"])
            if same:
                report = {k: old[k] for k in ("params_total_after", "params_mlp_after")}
                seconds = old.get("seconds")
            else:
                report = _count_after(_apply(dense, plan, _read_biases(run_dir, job.key, biases)))
                seconds = None
        else:
            status = "built"
            pruned = build_pruned(job.method, dense, plan, calibration=calibration, stats=stats)
            report = _count_after(pruned)
            if job.method.compensation:
                biases = _write_biases(run_dir, job.key, sha, pruned, plan)
            del pruned
            gc.collect()
            seconds = round(time.perf_counter() - start, 2)
        entry = {
            "key": job.key, "method": job.method.name, "seed": job.seed,
            "ratio_requested": job.ratio, "ratio_reached": plan.ratio_reached, "ratio_basis": plan.ratio_basis,
            "allocation": plan.allocation, "allocation_source": plan.settings.get("allocation_source"),
            "protected_layers": plan.protected_layers,
            "params_total_before": before["total"], "params_mlp_before": before["mlp"], **report,
            "ratio_total": (before["total"] - report["params_total_after"]) / before["total"],
            "ratio_mlp": (before["mlp"] - report["params_mlp_after"]) / before["mlp"],
            "widths": [len(plan.kept[i]) for i in sorted(base_widths)],
            "plan": f"{PLANS_DIR}/{job.key}.json", "plan_sha256": sha, "biases": biases,
            "seconds": seconds, "status": status,
        }
        entries[job.key] = entry
        rows.append(entry)
        _write_index(index_path, dense, entries)
    bar.close()
    _remove_legacy_checkpoints(run_dir, [job.key for job in jobs])
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------
# Plans and biases on disk; rebuilding a pruned model
# ----------------------------------------------------------------------------------
_BIAS_FIX = "delete it and re-run stage 4 (prune_all recomputes the biases)"


def _bias_paths(run_dir: Path, key: str) -> tuple[Path, Path]:
    folder = Path(run_dir) / PRUNED_DIR / BIASES_DIR
    return folder / f"{key}.safetensors", folder / f"{key}.json"


def _count_after(model: nn.Module) -> dict[str, int]:
    counted = count_parameters(model)
    return {"params_total_after": counted["total"], "params_mlp_after": counted["mlp"]}


def _write_biases(run_dir: Path, key: str, plan_sha: str, pruned: nn.Module, plan: PruningPlan) -> dict[str, Any]:
    """Save the down-projection biases of the layers a compensated plan prunes; return their record."""
    from safetensors.torch import save_file

    from .adapters import get_adapter

    adapter = get_adapter(pruned)
    tensors = {}
    for i, layer in enumerate(adapter.get_layers(pruned)):
        bias = adapter.module(layer, "mlp.down").bias
        if plan.removed(i) and bias is not None:
            tensors[f"layers.{i}.mlp.down.bias"] = bias.detach().to("cpu").contiguous().clone()
    path, sidecar = _bias_paths(run_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"format": BIASES_FORMAT, "plan_sha256": plan_sha})
    os.replace(tmp, path)
    record = {"path": str(path.relative_to(run_dir)), **file_record(path), "plan_sha256": plan_sha,
              "layers": sorted(int(k.split(".")[1]) for k in tensors)}
    atomic_write_json(sidecar, {"format": BIASES_FORMAT, **record})
    return record


def _saved_biases(run_dir: Path, key: str, plan_sha: str) -> dict[str, Any] | None:
    """The record of biases saved for this plan, if their file is intact; else ``None`` (a warning names a bad file)."""
    path, sidecar = _bias_paths(run_dir, key)
    if not sidecar.exists():
        return None
    try:
        record = read_json(sidecar, fix=_BIAS_FIX)
        if record.get("plan_sha256") != plan_sha:
            return None
        verify_file(path, record, digest=True, fix=_BIAS_FIX)
    except ArtefactError as exc:
        warnings.warn(f"recomputing the biases of {key}: {exc}", stacklevel=3)
        return None
    record.pop("format", None)
    return record


def _read_biases(run_dir: Path, key: str, record: Mapping[str, Any] | None) -> dict[int, Any]:
    if not record:
        return {}
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(run_dir) / record["path"]
    verify_file(path, record, digest=True, fix=_BIAS_FIX)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ArtefactError(path, f"cannot be read ({exc})", _BIAS_FIX) from None
    return {int(k.split(".")[1]): v for k, v in tensors.items()}


def _apply(dense: nn.Module, plan: PruningPlan, biases: Mapping[int, Any]) -> nn.Module:
    """A deep copy of ``dense`` pruned by ``plan`` with the saved down biases set."""
    model = copy.deepcopy(dense)
    prune(model, plan, bias_compensation=dict(biases) if biases else None, progress=False)
    return model.eval()


def rebuild_pruned(run_dir: str | os.PathLike[str], key: str, dense: nn.Module) -> nn.Module:
    """A pruned model of a run, rebuilt in seconds from the dense model, its plan and its biases.

    Stage 4 (:func:`prune_all`) stores plans and compensation biases, not checkpoints.
    This deep-copies ``dense``, sets the saved down-projection biases and slices the
    channels the plan drops (:func:`funcprune.prune.prune`): the result equals what
    :func:`build_pruned` gave when the plan was made. Export it as an HF checkpoint
    with :func:`funcprune.prune.save_pruned`.

    Parameters
    ----------
    run_dir : str or path-like
        Run directory with ``pruned/index.json``.
    key : str
        The model's key (:func:`method_key`), e.g. ``"fn-bias_r0.20"``.
    dense : nn.Module
        The dense model the plans were made for (any device and dtype; left untouched).

    Returns
    -------
    nn.Module
        In eval mode, with ``funcprune_plan`` and ``funcprune_source`` (key, plan and
        bias digests, the dense model's source).

    Raises
    ------
    KeyError
        ``key`` is not in the index (the message lists the keys).
    funcprune._io.ArtefactError
        The plan or the bias file is missing, changed or unreadable, naming the file and the fix.
    funcprune.prune.PlanMismatchError
        The plan was made for another model.
    """
    run_dir = Path(run_dir)
    entries = _read_entries(run_dir / PRUNED_DIR / INDEX_FILE)
    if key not in entries:
        raise KeyError(f"{key!r} is not in {run_dir / PRUNED_DIR / INDEX_FILE}; keys: {sorted(entries)}")
    entry = entries[key]
    plan_path = run_dir / entry["plan"]
    fix = "delete it and re-run stage 4 (prune_all)"
    if not plan_path.exists():
        raise ArtefactError(plan_path, "is missing", fix)
    plan = PruningPlan.load(plan_path)
    if _plan_sha(plan) != entry["plan_sha256"]:
        raise ArtefactError(plan_path, "differs from the plan the index records (plan_sha256)", fix)
    model = _apply(dense, plan, _read_biases(run_dir, key, entry.get("biases")))
    model.funcprune_source = {
        "name": key, "source": "rebuilt", "plan_sha256": entry["plan_sha256"],
        "biases_sha256": (entry.get("biases") or {}).get("sha256"),
        "dense": dict(getattr(dense, "funcprune_source", {}) or {}),
        "dtype": str(next(dense.parameters()).dtype).replace("torch.", ""),
    }
    return model


def _read_entries(index_path: Path) -> dict[str, dict[str, Any]]:
    if not index_path.exists():
        return {}
    entries = read_json(index_path, fix="delete it and re-run stage 4 (prune_all)")["entries"]
    # an index of an older layout lists checkpoints, not plans: its entries are rebuilt
    return {e["key"]: e for e in entries if "plan" in e and "biases" in e}


def _remove_legacy_checkpoints(run_dir: Path, keys: Sequence[str]) -> None:
    """Delete checkpoints an earlier layout of stage 4 saved for these keys (they can take gigabytes)."""
    import shutil

    for key in keys:
        folder = run_dir / PRUNED_DIR / key
        if folder.is_dir() and (folder / PLAN_FILE).exists():
            shutil.rmtree(folder)


def _write_index(path: Path, dense: nn.Module, entries: Mapping[str, dict[str, Any]]) -> None:
    order = {name: i for i, name in enumerate(METHODS)}
    ordered = sorted(entries.values(), key=lambda e: (e["ratio_requested"], order.get(e["method"], 99),
                                                      -1 if e["seed"] is None else e["seed"], e["key"]))
    atomic_write_json(path, {"format": INDEX_FORMAT, "base_model": model_identity(dense),
                             "base_widths": list(layer_widths(dense).values()), "entries": ordered})
