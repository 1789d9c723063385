"""Stage 4: physically remove MLP channels and compensate biases.

Three levels, as in Torch-Pruning:

* :func:`slice_linear` keeps some output rows or input columns of one ``nn.Linear``
  (or GPT-2 ``Conv1D``); :func:`prune_layer` slices one decoder layer's MLP;
* a :class:`~funcprune.plan.PruningPlan` says what every layer keeps;
* :func:`prune` checks the plan against the model and applies it, with optional
  FLAP-style bias compensation.

**Bias compensation** (An et al., 2024, FLAP; used by Liu et al., 2025): the removed
channels ``R`` of a layer contributed ``W_down[:, R] @ x_R`` to its output; their
mean is folded into the down projection's bias, ``b += W_down[:, R] @ mean_t(x_R)``
(a bias is created where the projection has none). :func:`compensate_bias` does this
with given statistics (e.g. measured on the dense model). Passing
:class:`CalibrationData` to :func:`prune` instead measures each layer's means *on the
network whose earlier layers are already pruned and compensated*, as the paper does:
the calibration tokens' hidden states are kept at the current layer; layer ``l`` is
run once to measure its down-projection input, pruned and compensated, and run again
to produce the input of layer ``l + 1``. Cost: about three forward passes over the
calibration set (one to record each layer's call, two layer passes per pruned layer)
and memory for the hidden states of every calibration token
(``n_tokens x hidden`` in the model's dtype, padding included).

**Config**: after pruning, ``config.per_layer_config = {layer: {key: width}}`` lists the
layers whose width differs from the global ``intermediate_size`` (``n_inner`` for
GPT-2), which keeps the *original* width; if every layer ends with the same width the
global value is set to it instead and no per-layer entry is needed. In transformers
5.24 a per-layer attribute then raises when read from the global config, which is what
the families' modeling code does, so :func:`save_pruned` ships ``modeling_funcprune.py``
with such a checkpoint (:mod:`funcprune.hf_export`): ``from_pretrained(path,
trust_remote_code=True)`` then builds it with transformers alone. :func:`load_pruned`
runs no checkpoint code: it builds the architecture at the global width, slices
the MLPs to the saved widths, and loads the weights strictly. ``config.funcprune``
records the widths and the layers whose down projection gained a bias.

Used in the chapter :doc:`/executed/04_structured_pruning`.

Why one module: slicing a layer and the config rule that describes the sliced widths
(:func:`write_width_config`, :func:`read_width_config`, which :mod:`funcprune.checkpoint` reads back)
are one contract, and the progressive layer loop is the one place a pruned prefix feeds the next layer;
saving and loading a pruned checkpoint live in :mod:`funcprune.checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .adapters import ArchitectureAdapter, get_adapter, layer_widths
from .capture import MLPRecorder, StopForward, stop_at_input, tokenize_batches
from .layerpass import layer_calls
from .evaluate import count_parameters
from .plan import PlanMismatchError, PruningPlan, channel_parameters
from .scoring import ChannelStatistics, ColumnMoments

__all__ = [
    "CalibrationData",
    "PlanMismatchError",
    "check_plan",
    "compensate_bias",
    "global_width",
    "parameter_report",
    "prune",
    "prune_layer",
    "prune_progressively",
    "read_width_config",
    "slice_linear",
    "write_width_config",
]

#: The format a pruned model's ``config.funcprune`` and its checkpoint record declare.
PRUNED_FORMAT = "funcprune-pruned/1"


# ----------------------------------------------------------------------------------
# Low level: one projection, one layer
# ----------------------------------------------------------------------------------
def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


@torch.no_grad()
def slice_linear(module: nn.Module, keep: Sequence[int] | torch.Tensor, dim: int) -> nn.Module:
    """Keep some output features (``dim=0``) or input features (``dim=1``) of a projection, in place.

    Parameters
    ----------
    module : nn.Linear or transformers Conv1D
        ``dim`` refers to the linear map ``y = W x + b`` with ``W`` of shape ``(out, in)``
        whatever the storage layout (GPT-2's ``Conv1D`` stores ``(in, out)``).
    keep : sequence of int or LongTensor
        Indices to keep, in the order they will have.
    dim : {0, 1}
        0: output features (weight rows and the bias); 1: input features (columns;
        the bias is unchanged).

    Returns
    -------
    nn.Module
        ``module`` itself, with new parameters (dtype, device and ``requires_grad`` kept).
    """
    if dim not in (0, 1):
        raise ValueError(f"dim must be 0 (output features) or 1 (input features), got {dim!r}")
    conv = _is_conv1d(module)
    if not conv and not isinstance(module, nn.Linear):
        raise TypeError(f"cannot slice a {type(module).__name__}; expected nn.Linear or Conv1D")
    weight = module.weight
    idx = torch.as_tensor(keep, dtype=torch.long, device=weight.device)
    storage_dim = (1 - dim) if conv else dim
    module.weight = nn.Parameter(weight.index_select(storage_dim, idx).contiguous(),
                                 requires_grad=weight.requires_grad)
    if dim == 0 and module.bias is not None:
        module.bias = nn.Parameter(module.bias.index_select(0, idx).contiguous(),
                                   requires_grad=module.bias.requires_grad)
    n = int(idx.numel())
    if conv:
        if dim == 0:
            module.nf = n
        else:
            module.nx = n
    elif dim == 0:
        module.out_features = n
    else:
        module.in_features = n
    return module


def layer_width(adapter: ArchitectureAdapter, layer: nn.Module) -> int:
    """The MLP width of one decoder layer: the input columns of its down projection."""
    return int(adapter.mlp_weight(layer, "mlp.down").shape[1])


def _mlp_parent(adapter: ArchitectureAdapter, layer: nn.Module) -> nn.Module | None:
    path = adapter.modules["mlp.down"]
    parent = path.rsplit(".", 1)[0] if "." in path else ""
    return layer.get_submodule(parent) if parent else None


def prune_layer(model: nn.Module, layer: int, keep: Sequence[int]) -> None:
    """Keep channels ``keep`` of one layer's MLP: rows of gate and up, columns of down.

    Does not update ``model.config``; :func:`prune` does.
    """
    adapter = get_adapter(model)
    module = adapter.get_layers(model)[layer]
    names = ("mlp.gate", "mlp.up") if adapter.gated else ("mlp.up",)
    for name in names:
        slice_linear(adapter.module(module, name), keep, dim=0)
    slice_linear(adapter.module(module, "mlp.down"), keep, dim=1)
    parent = _mlp_parent(adapter, module)
    if parent is not None and isinstance(getattr(parent, "intermediate_size", None), int):
        parent.intermediate_size = len(keep)


# ----------------------------------------------------------------------------------
# Checking a plan
# ----------------------------------------------------------------------------------
def _check_revision(plan: PruningPlan, revision: str | None) -> str | None:
    """The problem with the model's revision for ``plan``, or ``None`` when it matches or the plan records none.

    Raises
    ------
    PlanMismatchError
        The plan records a revision and the model's is unknown.
    """
    expected = plan.model.get("revision")
    if not expected:
        return None
    if revision is None:
        raise PlanMismatchError(
            f"the plan was made for revision {expected!r} of {plan.model.get('name')!r} and the model's revision "
            "is unknown: pass revision= (the source['revision'] funcprune.models.load_model returns, or the "
            "revision of the checkpoint you loaded; source= to rebuild_pruned and prune_all)")
    if revision != expected:
        return f"revision {revision!r} != plan's {expected!r} (plan made for {plan.model.get('name')!r})"
    return None


def check_plan(model: nn.Module, plan: PruningPlan, *, revision: str | None = None) -> None:
    """Raise :class:`PlanMismatchError` unless ``plan`` is well formed and made for ``model``.

    Checks model type, layer count, hidden size, revision, the current MLP widths, the
    plan itself (:meth:`~funcprune.plan.PruningPlan.check`: kept indices sorted, unique,
    in range and non-empty, totals consistent) and that its ``params_removed`` and
    ``params_basis`` are what its kept lists remove from ``model``.

    Parameters
    ----------
    model : nn.Module
    plan : PruningPlan
    revision : str, optional
        The model's revision (``source["revision"]`` of :func:`funcprune.models.load_model`).
        Needed when the plan records one: a plan with a revision and a model without
        one is an error, never a skipped check.
    """
    ident = plan.model
    config = model.config
    widths = layer_widths(model)
    problems = []
    if ident.get("model_type") != config.model_type:
        problems.append(f"model type {config.model_type!r} != plan's {ident.get('model_type')!r}")
    if int(ident.get("n_layers", -1)) != len(widths):
        problems.append(f"{len(widths)} layers != plan's {ident.get('n_layers')}")
    if int(ident.get("hidden_size", -1)) != int(config.hidden_size):
        problems.append(f"hidden size {config.hidden_size} != plan's {ident.get('hidden_size')}")
    revision_problem = _check_revision(plan, revision)
    if revision_problem:
        problems.append(revision_problem)
    if problems:
        raise PlanMismatchError(f"the plan was made for another model: {'; '.join(problems)}")
    if sorted(plan.widths) != list(range(len(widths))) or sorted(plan.kept) != list(range(len(widths))):
        raise PlanMismatchError(f"the plan lists layers {sorted(plan.kept)} (widths for {sorted(plan.widths)}); "
                                f"the model has layers 0..{len(widths) - 1}")
    differ = {i: (plan.widths[i], w) for i, w in widths.items() if plan.widths[i] != w}
    if differ:
        already = all(len(plan.kept[i]) == w for i, w in widths.items())
        raise PlanMismatchError(
            "MLP widths differ (layer: (plan, model)): " + str(differ)
            + ("; the model looks already pruned with this plan" if already else ""))
    plan.check()
    cost = channel_parameters(model)
    removed = sum((widths[i] - len(plan.kept[i])) * cost[i] for i in widths)
    basis = int(count_parameters(model)[plan.ratio_basis])
    if removed != plan.params_removed or basis != plan.params_basis:
        raise PlanMismatchError(f"the plan's totals disagree with its kept lists on this model: its channels "
                                f"hold {removed} of {basis} {plan.ratio_basis} parameters, the plan says "
                                f"params_removed={plan.params_removed} of params_basis={plan.params_basis}")


# ----------------------------------------------------------------------------------
# Bias compensation
# ----------------------------------------------------------------------------------
@torch.no_grad()
def _add_compensation(adapter: ArchitectureAdapter, layer: nn.Module, removed: Sequence[int],
                      mean: np.ndarray | torch.Tensor) -> bool:
    """``b_down += W_down[:, R] @ mean(x_R)`` for the removed channels ``R`` of one layer.

    Returns whether the down projection had no bias (one was added).
    """
    down = adapter.module(layer, "mlp.down")
    weight = adapter.mlp_weight(layer, "mlp.down")  # (hidden, width)
    idx = torch.as_tensor(list(removed), dtype=torch.long)
    mean = torch.as_tensor(np.asarray(mean), dtype=torch.float64)
    delta = weight[:, idx.to(weight.device)].double().cpu() @ mean[idx]  # W_down[:, R] @ mean_t(x_R)
    added = down.bias is None
    if added:
        down.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device),
                                 requires_grad=weight.requires_grad)
    down.bias.add_(delta.to(down.bias.device, down.bias.dtype))
    return added


def _set_down_biases(model: nn.Module, biases: Mapping[int, torch.Tensor]) -> list[int]:
    """Set each listed layer's down-projection bias (created where the projection has none).

    Returns the layers whose bias was created.
    """
    adapter = get_adapter(model)
    layers = adapter.get_layers(model)
    added = []
    with torch.no_grad():
        for i, value in biases.items():
            down = adapter.module(layers[int(i)], "mlp.down")
            weight = adapter.mlp_weight(layers[int(i)], "mlp.down")
            value = torch.as_tensor(value).to(weight.device, weight.dtype)
            if tuple(value.shape) != (weight.shape[0],):
                raise ValueError(f"layer {i}: a down bias of shape {tuple(value.shape)} for an output of "
                                 f"{weight.shape[0]} features")
            if down.bias is None:
                down.bias = nn.Parameter(value.clone(), requires_grad=weight.requires_grad)
                added.append(int(i))
            else:
                down.bias.copy_(value)
    return added


def compensate_bias(model: nn.Module, plan: PruningPlan, stats: ChannelStatistics,
                    layers: Sequence[int] | None = None) -> list[int]:
    """Fold the mean contribution of the channels a plan removes into the down-projection bias.

    Call it *before* the channels are sliced away (it needs ``W_down[:, removed]``);
    :func:`prune` with ``bias_compensation=stats`` does both.

    Parameters
    ----------
    model : nn.Module
        The unpruned model (widths equal ``plan.widths``).
    plan : PruningPlan
    stats : ChannelStatistics
        Means of the down projection's input channels (:func:`funcprune.scoring.channel_statistics`).
    layers : sequence of int, optional
        Layers to compensate (default every layer the plan prunes).

    Returns
    -------
    list of int
        The layers whose down projection had no bias and gained one (what
        ``config.funcprune["down_bias_layers"]`` must list; :func:`prune` records it).
    """
    adapter = get_adapter(model)
    modules = adapter.get_layers(model)
    widths = layer_widths(model)
    targets = [i for i in plan.layers if plan.removed(i)] if layers is None else list(layers)
    added = []
    for i in targets:
        if widths[i] != plan.widths[i]:
            raise PlanMismatchError(f"layer {i} has width {widths[i]}, the plan expects {plan.widths[i]}: "
                                    "compensate before pruning")
        if i not in stats.mean or len(stats.mean[i]) != widths[i]:
            raise ValueError(f"statistics lack layer {i} at width {widths[i]}")
        if _add_compensation(adapter, modules[i], plan.removed(i), stats.mean[i]):
            added.append(i)
    return added


@dataclass
class CalibrationData:
    """Texts on which :func:`prune` measures the means for progressive bias compensation.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    texts : sequence of str
    batch_size : int, default=4
    max_tokens : int, default=512
    """

    tokenizer: Any
    texts: Sequence[str]
    batch_size: int = 4
    max_tokens: int = 512


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class _BiasStep:
    """The authors' progressive step: ``b_down += W_down[:, R] @ mean(x_R)``, means measured on the pruned prefix."""

    desc = "pruning with bias compensation"

    def __init__(self) -> None:
        self.acc = ColumnMoments()

    def update(self, x: torch.Tensor) -> None:
        """Add one batch of the layer's down-projection inputs (tokens, width)."""
        self.acc.update(x)

    def finish(self, model: nn.Module, adapter: ArchitectureAdapter, i: int, plan: PruningPlan) -> bool:
        """Compensate and slice layer ``i``; whether its down projection gained a bias."""
        layer = adapter.get_layers(model)[i]
        added = _add_compensation(adapter, layer, plan.removed(i), self.acc.result()[0])
        prune_layer(model, i, plan.kept[i])
        self.acc = ColumnMoments()
        return added


@torch.no_grad()
def prune_progressively(model: nn.Module, plan: PruningPlan, calib: CalibrationData, *,
                        step: Any = None, progress: bool = False) -> list[int]:
    """Prune layer by layer, each layer compensated on inputs from the already pruned prefix.

    Parameters
    ----------
    model : nn.Module
        Pruned in place.
    plan : PruningPlan
    calib : CalibrationData
        The texts the inputs are measured on.
    step : object, optional
        What is done to each pruned layer: ``update(x)`` receives the layer's down-projection input
        batch by batch (padding removed), then ``finish(model, adapter, i, plan)`` compensates and
        slices the layer and says whether its down projection gained a bias. Default the authors'
        bias (the mean of the removed inputs folded into the bias);
        :class:`funcprune.compensation.ProgressiveLeastSquares` refits the kept columns instead.
    progress : bool, default=False
        Progress bar over layers.

    Returns
    -------
    list of int
        The layers whose down projection gained a bias.
    """
    step = _BiasStep() if step is None else step
    adapter = get_adapter(model)
    layers = adapter.get_layers(model)
    n_layers = len(layers)
    batches = list(tokenize_batches(calib.tokenizer, calib.texts, batch_size=calib.batch_size,
                                    max_tokens=calib.max_tokens))
    if not batches:
        raise ValueError("bias compensation needs calibration tokens: every text is empty")
    # 1. How each layer is called (masks, position embeddings ...) and layer 0's input, no layer computed.
    hidden, calls = layer_calls(model, [batch for _, batch in batches], adapter=adapter)

    def run(i: int, b: int) -> torch.Tensor:
        rest, kwargs = calls[b][i]
        return _first(layers[i](hidden[b], *rest, **kwargs))

    # 2. Layer by layer: measure on the pruned prefix, compensate, prune, move on.
    added = []
    for i in tqdm(range(n_layers), desc=getattr(step, "desc", "pruning progressively"), unit="layer",
                  disable=not progress):
        if plan.removed(i):
            down = adapter.module(layers[i], "mlp.down")
            with MLPRecorder(model, kinds=("product",), layers=[i], adapter=adapter) as rec, \
                    stop_at_input(down):  # recorded first; the rest of the layer is computed once, pruned
                for b, (_, batch) in enumerate(batches):
                    rec.mask = batch["attention_mask"].bool()
                    try:
                        run(i, b)
                    except StopForward:
                        pass
                    step.update(rec.records[(i, "product")])
            if step.finish(model, adapter, i, plan):
                added.append(i)
        if i < n_layers - 1:
            hidden = [run(i, b) for b in range(len(batches))]
    return added


# ----------------------------------------------------------------------------------
# High level
# ----------------------------------------------------------------------------------
def global_width(config: Any, adapter: ArchitectureAdapter) -> int:
    """The config's global MLP width (:meth:`~funcprune.adapters.ArchitectureAdapter.intermediate_size`).

    Read from ``config.to_dict()``: with ``per_layer_config`` set, transformers raises when
    the attribute itself is read.
    """
    return adapter.intermediate_size(SimpleNamespace(**config.to_dict()))


def write_width_config(model: nn.Module, method: str, added_bias: Sequence[int]) -> None:
    """Make ``model.config`` describe the current per-layer MLP widths (see the module notes).

    ``added_bias`` lists the layers whose down projection gained a bias in this pruning;
    those of earlier prunings are kept from ``config.funcprune``.
    """
    adapter = get_adapter(model)
    config = model.config
    key = adapter.intermediate_size_key
    widths = layer_widths(model)
    width = global_width(config, adapter)
    config.per_layer_config = None  # homogeneous again while we edit
    if len(set(widths.values())) == 1:
        setattr(config, key, next(iter(widths.values())))
    else:
        overrides = {i: {key: w} for i, w in widths.items() if w != width}
        config.per_layer_config = overrides or None
    previous = getattr(config, "funcprune", None) or {}
    config.funcprune = {
        "format": PRUNED_FORMAT,
        "mlp_widths": {str(i): w for i, w in widths.items()},
        "down_bias_layers": sorted({*map(int, previous.get("down_bias_layers", [])), *map(int, added_bias)}),
        "methods": list(previous.get("methods", [])) + ([method] if method else []),
    }


def prune(model: nn.Module, plan: PruningPlan, *, revision: str | None = None,
          bias_compensation: ChannelStatistics | CalibrationData | Mapping[int, torch.Tensor] | None = None,
          progress: bool = True) -> nn.Module:
    """Physically remove the MLP channels a plan drops, in place.

    Parameters
    ----------
    model : nn.Module
        The model the plan was made for (checked by :func:`check_plan`).
    plan : PruningPlan
    revision : str, optional
        The model's revision, needed when the plan records one (see :func:`check_plan`).
    bias_compensation : ChannelStatistics or CalibrationData, optional
        ``None``: no compensation. :class:`~funcprune.scoring.ChannelStatistics`: fold the
        given means into the biases (statistics measured beforehand, e.g. on the dense
        model, as FLAP does). :class:`CalibrationData`: measure each layer's means with its
        earlier layers already pruned and compensated (the paper's procedure; about three
        forward passes over the texts). A mapping ``layer -> (hidden,) tensor``: down-projection
        biases measured before (by either way), set as they are (how a stored plan is rebuilt).
        :class:`funcprune.compensation.LeastSquaresCompensation`: the kept columns of each
        down projection and its bias refitted by least squares to the dense layer's output;
        :class:`funcprune.compensation.ProgressiveLeastSquares`: the same refit measured layer by
        layer on the already pruned network (:func:`prune_progressively`).
    progress : bool, default=True
        Progress bar for progressive compensation.

    Returns
    -------
    nn.Module
        ``model``, pruned, with ``model.config`` updated (``per_layer_config`` and
        ``funcprune``, see the module notes). Save it with ``save_pruned(model, tokenizer,
        path, plan=plan)``.
    """
    check_plan(model, plan, revision=revision)
    was_training = model.training
    model.eval()
    added: list[int] = []
    try:
        if isinstance(bias_compensation, CalibrationData):
            added = prune_progressively(model, plan, bias_compensation, progress=progress)
        elif callable(getattr(bias_compensation, "apply_to", None)):
            # a compensation object that slices and refits itself
            # (funcprune.compensation.LeastSquaresCompensation)
            added = bias_compensation.apply_to(model, plan)
        elif isinstance(bias_compensation, (ChannelStatistics, Mapping)) or bias_compensation is None:
            if isinstance(bias_compensation, ChannelStatistics):
                added = compensate_bias(model, plan, bias_compensation)
            elif bias_compensation is not None:
                added = _set_down_biases(model, bias_compensation)
            for i in plan.layers:
                if len(plan.kept[i]) < plan.widths[i]:
                    prune_layer(model, i, plan.kept[i])
        else:
            raise TypeError(f"bias_compensation must be None, ChannelStatistics, CalibrationData, "
                            f"LeastSquaresCompensation or a mapping of layer to bias, "
                            f"got {type(bias_compensation).__name__}")
    finally:
        model.train(was_training)
    write_width_config(model, plan.method, added)
    return model


def parameter_report(model_before: nn.Module, model_after: nn.Module) -> dict[str, Any]:
    """Parameters before and after pruning (counted by :func:`funcprune.evaluate.count_parameters`).

    Returns
    -------
    dict
        ``total_before``, ``total_after``, ``mlp_before``, ``mlp_after``, ``removed``,
        ``ratio_total`` and ``ratio_mlp`` (fractions removed), ``widths_before`` and
        ``widths_after`` (per layer). Compensation biases count as added parameters.
    """
    before, after = count_parameters(model_before), count_parameters(model_after)
    removed = before["total"] - after["total"]
    return {
        "total_before": before["total"], "total_after": after["total"],
        "mlp_before": before["mlp"], "mlp_after": after["mlp"],
        "removed": removed,
        "ratio_total": removed / before["total"],
        "ratio_mlp": (before["mlp"] - after["mlp"]) / before["mlp"],
        "widths_before": layer_widths(model_before),
        "widths_after": layer_widths(model_after),
    }


def read_width_config(config: Any, adapter: ArchitectureAdapter) -> dict[int, int]:
    """The per-layer MLP widths a config describes: the widths :func:`write_width_config` wrote."""
    n_layers = int(config.num_hidden_layers)
    meta = getattr(config, "funcprune", None) or {}
    if "mlp_widths" in meta:
        return {int(k): int(v) for k, v in meta["mlp_widths"].items()}
    if getattr(config, "is_heterogeneous", False):
        return {i: adapter.intermediate_size(config.per_layer_config[i]) for i in range(n_layers)}
    return {i: adapter.intermediate_size(config) for i in range(n_layers)}
