"""Stage 3: one importance score per MLP channel, for the paper's method and every baseline.

A *scorer* is a callable ``scorer(model, stats=None) -> dict[int, ndarray (width,)]``:
layer index to one score per intermediate channel, larger meaning "keep". The
functional-network score and the baselines are interchangeable, as importance
criteria are in Torch-Pruning; :func:`funcprune.plan.select_channels` turns any of
them into a :class:`~funcprune.plan.PruningPlan`.

Scores (channel ``j`` of a layer; ``x_j`` is the input of the down projection,
i.e. ``act(gate x)_j * (up x)_j`` for gated MLPs, ``act(up x)_j`` otherwise, over
the ``T`` calibration tokens):

=====================  ======================================================================
functional networks    ``s_j = max |z|`` over every ICA map, group and both voxel copies of j
random                 ``s_j ~ U(0, 1)``, seeded
magnitude              ``s_j = sqrt(||W_gate[j, :]||^2 + ||W_up[j, :]||^2 + ||W_down[:, j]||^2)``
Wanda-sp               ``s_j = sum_i |W_down[i, j]| * ||x_j||_2``
FLAP                   ``s_j = Var_t(x_j) * sum_i W_down[i, j]^2``
FN inside FLAP         ``s_j = z(FLAP_j) + w * z(log(1 + max |z|_j))``, z-scored per layer
=====================  ======================================================================

Wanda-sp is the structured variant of Wanda (Sun et al., 2024, "A simple and effective
pruning approach for large language models") defined by An et al. (2024, "Fluctuation-based
adaptive structured pruning for large language models", FLAP), who also define the
fluctuation metric (their "WIFV"). Their code averages ``|W| * ||x||`` over output rows
and uses ``||x||^2 / n`` per sample; constant factors shared by every layer do not change
the ranking, so the sums above rank channels identically. FLAP's own *adaptive structure
search* standardises the metric within each layer before a global ranking; pass
``FlapScorer(standardize=True)`` for that. FLAP's bias compensation lives in
:func:`funcprune.prune.compensate_bias`.

The activation statistics the last two need (mean, variance, squared L2 norm per channel
of the down projection's input) come from :func:`channel_statistics` (one streaming pass
with :class:`~funcprune.capture.MLPRecorder`) or :func:`channel_statistics_from_store`.

Used in the chapters :doc:`/executed/03_key_neurons` and :doc:`/executed/04_structured_pruning`.

Why one module: each baseline's score is a few lines next to the statistics it reads
(:class:`ChannelStatistics`); side by side a reader can check that every method is scored as its
authors define it, on the same statistics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .adapters import get_adapter, layer_widths
from .capture import MLPRecorder, tokenize_batches
from .models import input_device
from .store import ActivationStore

__all__ = [
    "ChannelStatistics",
    "ColumnMoments",
    "FlapScorer",
    "FnFlapScorer",
    "FunctionalNetworkScorer",
    "is_key",
    "MagnitudeScorer",
    "RandomScorer",
    "Scorer",
    "WandaSpScorer",
    "channel_statistics",
    "channel_statistics_from_store",
    "flap_scores",
    "fn_flap_scores",
    "key_neuron_scores",
    "magnitude_scores",
    "random_scores",
    "wanda_sp_scores",
]

Scores = dict[int, np.ndarray]


class Scorer(Protocol):
    """What :func:`funcprune.plan.select_channels` expects from an importance criterion."""

    name: str

    def __call__(self, model: nn.Module, stats: "ChannelStatistics | None" = None) -> Scores:
        """Return ``{layer: scores of shape (width,)}``; larger means more important."""
        ...


# ----------------------------------------------------------------------------------
# Activation statistics
# ----------------------------------------------------------------------------------


@dataclass
class ChannelStatistics:
    """Per-channel statistics of the down projection's input, per layer.

    Attributes
    ----------
    mean : dict[int, ndarray of shape (width,)]
        Mean over tokens (float64).
    var : dict[int, ndarray of shape (width,)]
        Population variance over tokens (``ddof=0``, float64), accumulated with
        Chan et al.'s parallel update (no ``E[x^2] - E[x]^2`` cancellation).
    sq_norm : dict[int, ndarray of shape (width,)]
        Squared L2 norm over tokens, ``sum_t x_tj^2`` (float64).
    n_tokens : int
        Tokens (padding excluded) the statistics are over.
    source : dict
        How they were computed (texts, batch size, store path ...).
    """

    mean: dict[int, np.ndarray]
    var: dict[int, np.ndarray]
    sq_norm: dict[int, np.ndarray]
    n_tokens: int
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        """Layers with statistics."""
        return sorted(self.mean)

    def l2_norm(self, layer: int) -> np.ndarray:
        """``||x_j||_2`` over tokens, shape ``(width,)``."""
        return np.sqrt(self.sq_norm[layer])

    def check_model(self, model: nn.Module) -> None:
        """Raise if the statistics do not cover ``model``'s layers with its widths."""
        widths = layer_widths(model)
        missing = [i for i in widths if i not in self.mean]
        if missing:
            raise ValueError(f"statistics lack layers {missing}; they cover {self.layers}")
        bad = {i: (len(self.mean[i]), w) for i, w in widths.items() if len(self.mean[i]) != w}
        if bad:
            raise ValueError(f"statistics widths differ from the model's (layer: (stats, model)): {bad}; "
                             "were they measured on another (or an unpruned) model?")


class ColumnMoments:
    """Streaming mean, variance and sum of squares of the columns of ``(n, width)`` blocks, in float64.

    Feed blocks with :meth:`update` (Chan et al.'s parallel update of mean and M2);
    :meth:`result` gives ``(mean, variance, sum of squares)`` per column.
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None
        self.sq: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        """Add the rows of a ``(n, width)`` block."""
        x = x.to(torch.float64)
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_b = x.mean(dim=0)
        m2_b = ((x - mean_b) ** 2).sum(dim=0)
        sq_b = (x * x).sum(dim=0)
        if self.mean is None:
            self.n, self.mean, self.m2, self.sq = n_b, mean_b, m2_b, sq_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta ** 2 * (self.n * n_b / n)
        self.sq = self.sq + sq_b
        self.n = n

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mean, variance, sum of squares)`` of each column over every row seen.

        Raises
        ------
        ValueError
            No row was seen.
        """
        if self.mean is None:
            raise ValueError("no tokens were seen")
        return self.mean.numpy(), (self.m2 / self.n).numpy(), self.sq.numpy()


def _finish(accumulators: Mapping[int, ColumnMoments], source: dict[str, Any]) -> ChannelStatistics:
    parts: dict[str, dict[int, np.ndarray]] = {"mean": {}, "var": {}, "sq_norm": {}}
    for i, acc in accumulators.items():
        parts["mean"][i], parts["var"][i], parts["sq_norm"][i] = acc.result()
    n_tokens = next(iter(accumulators.values())).n
    return ChannelStatistics(**parts, n_tokens=n_tokens, source=source)


@torch.inference_mode()
def channel_statistics(model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 4,
                       max_tokens: int = 512, layers: Sequence[int] | None = None,
                       progress: bool = True, windows: torch.Tensor | None = None) -> ChannelStatistics:
    """Statistics of every MLP channel's down-projection input, in one streaming pass.

    Uses :class:`~funcprune.capture.MLPRecorder` with ``kinds=("product",)`` and
    :func:`~funcprune.capture.tokenize_batches`; padded positions are excluded
    (``recorder.mask = attention_mask``). Memory is bounded by one batch.

    Parameters
    ----------
    model : nn.Module
        Causal LM (dense or pruned; widths may differ per layer).
    tokenizer : transformers tokenizer
        Pads on the right.
    texts : sequence of str
        Calibration texts.
    batch_size : int, default=4
        Texts per forward pass.
    max_tokens : int, default=512
        Truncation length per text.
    layers : sequence of int, optional
        Layers to measure (default all).
    progress : bool, default=True
        Show a progress bar over batches.
    windows : torch.Tensor of shape (n_windows, seq_len), optional
        Token windows to measure instead of ``texts`` (the calibration of FLAP's and Wanda's own code:
        fixed-length windows cut from a token stream); ``batch_size`` windows per forward pass.

    Returns
    -------
    ChannelStatistics
    """
    if windows is not None:
        chunks = [windows[s:s + batch_size] for s in range(0, len(windows), batch_size)]
        batches = [([], {"input_ids": c, "attention_mask": torch.ones_like(c)}) for c in chunks]
    else:
        batches = list(tokenize_batches(tokenizer, texts, batch_size=batch_size, max_tokens=max_tokens))
    if not batches:
        raise ValueError("no calibration tokens: every text is empty")
    recorder = MLPRecorder(model, kinds=("product",), layers=layers, stop_early=True)  # no LM head needed
    accumulators = {i: ColumnMoments() for i in recorder.layers}
    device = input_device(model)
    was_training = model.training
    model.eval()
    try:
        with recorder:
            for _, batch in tqdm(batches, desc="channel statistics", unit="batch", disable=not progress):
                recorder.mask = batch["attention_mask"].bool()
                recorder.forward(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
                for i, acc in accumulators.items():
                    acc.update(recorder.records[(i, "product")])
    finally:
        model.train(was_training)
    if windows is not None:
        return _finish(accumulators, {"kind": "windows", "n_windows": int(windows.shape[0]),
                                      "seq_len": int(windows.shape[1]), "batch_size": batch_size})
    return _finish(accumulators, {"kind": "texts", "n_texts": len(texts), "batch_size": batch_size,
                                  "max_tokens": max_tokens})


def channel_statistics_from_store(store: ActivationStore | str | os.PathLike[str], *,
                                  chunk_rows: int = 8192, progress: bool = True) -> ChannelStatistics:
    """The same statistics from an :class:`~funcprune.store.ActivationStore` holding ``"product"``.

    Parameters
    ----------
    store : ActivationStore or path
        A completed store captured with ``"product"`` among its kinds.
    chunk_rows : int, default=8192
        Rows read from the memory map at a time.
    progress : bool, default=True
        Show a progress bar over layers.

    Returns
    -------
    ChannelStatistics
    """
    if not isinstance(store, ActivationStore):
        store = ActivationStore(store)
    if "product" not in store.kinds:
        raise ValueError(f"the store holds kinds {list(store.kinds)}; statistics need 'product' "
                         "(capture with kinds=(..., 'product'))")
    accumulators: dict[int, ColumnMoments] = {}
    for i in tqdm(store.layers, desc="channel statistics", unit="layer", disable=not progress):
        acc = accumulators[i] = ColumnMoments()
        data = store.layer(i, "product")
        for start in range(0, store.n_tokens, chunk_rows):
            acc.update(torch.from_numpy(np.asarray(data[start:start + chunk_rows], dtype=np.float64)))
    return _finish(accumulators, {"kind": "store", "path": str(store.path), "dtype": store.dtype.name})


# ----------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------
def is_key(values: np.ndarray | Sequence[float], threshold: float) -> np.ndarray:
    """Which entries pass the key-neuron rule: ``|value| > threshold`` (Liu et al., 2025).

    The one definition of the package: a voxel belongs to a network when ``|z| > t``, and a channel is a key
    neuron when its score ``max |z|`` exceeds ``t``.

    >>> is_key([2.9, 3.0, 3.1, -4.0], 3.0).tolist()
    [False, False, True, True]
    """
    return np.abs(np.asarray(values, dtype=float)) > threshold


def key_neuron_scores(maps: Mapping[int, np.ndarray], voxel_channels: Mapping[int, np.ndarray],
                      widths: Mapping[int, int] | int) -> Scores:
    """The paper's key-neuron score: ``max |z|`` of a channel over maps, groups and voxel copies.

    A channel is a key neuron at threshold ``t`` iff its score exceeds ``t`` (Liu et al.,
    2025): either of its two voxels (``act``, ``up``) has ``|z| > t`` in some map of some group.

    Parameters
    ----------
    maps : dict[int, ndarray of shape (n_maps, n_voxels)]
        z-scored ICA maps of each layer, all groups stacked.
    voxel_channels : dict[int, ndarray of shape (n_voxels,)]
        Channel index of every voxel.
    widths : dict[int, int] or int
        Channels per layer (a channel with no voxel scores 0).

    Returns
    -------
    dict[int, ndarray of shape (width,)]
    """
    scores: Scores = {}
    for layer, z in maps.items():
        width = widths if isinstance(widths, int) else widths[layer]
        channels = np.asarray(voxel_channels[layer])
        if z.ndim != 2 or z.shape[1] != len(channels):
            raise ValueError(f"layer {layer}: maps of shape {z.shape} do not match {len(channels)} voxels")
        if channels.size and (channels.min() < 0 or channels.max() >= width):
            raise ValueError(f"layer {layer}: voxel channels outside [0, {width})")
        score = np.zeros(width)
        np.maximum.at(score, channels, np.abs(z).max(axis=0))  # s_j = max over maps and voxels of j of |z|
        scores[layer] = score
    return scores


class FunctionalNetworkScorer:
    """Key-neuron scores from fitted functional networks.

    Parameters
    ----------
    networks : FunctionalNetworks or any object with ``maps_`` and ``voxel_channels_``
        ``maps_[layer]``: ``(n_maps, n_voxels)`` z-scored maps; ``voxel_channels_[layer]``:
        ``(n_voxels,)`` channel of each voxel.
    """

    name = "functional_networks"

    def __init__(self, networks: Any) -> None:
        for attr in ("maps_", "voxel_channels_"):
            if not hasattr(networks, attr):
                raise TypeError(f"{type(networks).__name__} has no {attr!r}: pass fitted FunctionalNetworks "
                                "(mode='layer') or an object with maps_ and voxel_channels_")
        if not networks.maps_:
            raise ValueError("the networks hold no per-layer maps (fitted with mode='window'?)")
        self.networks = networks

    @property
    def settings(self) -> dict[str, Any]:
        """Facts recorded in a plan."""
        fn = self.networks
        out: dict[str, Any] = {"n_maps": {str(k): int(v.shape[0]) for k, v in fn.maps_.items()}}
        for attr in ("n_components", "n_groups", "random_state"):
            value = getattr(fn, attr, None)
            if isinstance(value, (int, float, str)) or value is None:
                out[attr] = value
        return out

    def __call__(self, model: nn.Module | None = None, stats: ChannelStatistics | None = None) -> Scores:
        """Scores of the fitted layers; widths from ``model`` when given, else from the voxels."""
        fn = self.networks
        if model is not None:
            widths: Mapping[int, int] = layer_widths(model)
        else:
            widths = {k: int(np.max(fn.voxel_channels_[k])) + 1 for k in fn.maps_}
        return key_neuron_scores(fn.maps_, fn.voxel_channels_, widths)


def random_scores(model: nn.Module, seed: int = 0) -> Scores:
    """Uniform random scores, ``U(0, 1)`` per channel, from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return {i: rng.random(w) for i, w in layer_widths(model).items()}


@torch.no_grad()
def magnitude_scores(model: nn.Module) -> Scores:
    """L2 norm of all weights a channel owns: its gate and up rows and its down column.

    ``s_j = sqrt(||W_gate[j, :]||^2 + ||W_up[j, :]||^2 + ||W_down[:, j]||^2)`` (biases excluded;
    no gate term for non-gated MLPs).
    """
    adapter = get_adapter(model)
    scores: Scores = {}
    for i, layer in enumerate(adapter.get_layers(model)):
        sq = adapter.mlp_weight(layer, "mlp.down").double().pow(2).sum(dim=0)
        sq += adapter.mlp_weight(layer, "mlp.up").double().pow(2).sum(dim=1)
        if adapter.gated:
            sq += adapter.mlp_weight(layer, "mlp.gate").double().pow(2).sum(dim=1)
        scores[i] = sq.sqrt().cpu().numpy()
    return scores


def _down_weights(model: nn.Module) -> dict[int, torch.Tensor]:
    adapter = get_adapter(model)
    return {i: adapter.mlp_weight(layer, "mlp.down").detach().double().cpu()
            for i, layer in enumerate(adapter.get_layers(model))}


def wanda_sp_scores(model: nn.Module, stats: ChannelStatistics) -> Scores:
    """Wanda-sp (An et al., 2024; after Sun et al., 2024): ``s_j = sum_i |W_down[i, j]| * ||x_j||_2``."""
    stats.check_model(model)
    return {i: w.abs().sum(dim=0).numpy() * stats.l2_norm(i) for i, w in _down_weights(model).items()}


def flap_scores(model: nn.Module, stats: ChannelStatistics, *, standardize: bool = False) -> Scores:
    """FLAP's fluctuation metric (An et al., 2024): ``s_j = Var_t(x_j) * sum_i W_down[i, j]^2``.

    With ``standardize=True`` each layer's scores are z-scored (FLAP's adaptive structure
    search ranks standardised scores globally).
    """
    stats.check_model(model)
    scores = {i: stats.var[i] * w.pow(2).sum(dim=0).numpy() for i, w in _down_weights(model).items()}
    if standardize:
        scores = {i: _standardize(s) for i, s in scores.items()}
    return scores


def _standardize(s: np.ndarray) -> np.ndarray:
    """z-score over one layer's channels (a constant layer is only centred)."""
    return (s - s.mean()) / (s.std(ddof=1) if len(s) > 1 and s.std() > 0 else 1.0)


def fn_flap_scores(model: nn.Module, stats: ChannelStatistics, networks: Any, *, weight: float = 1.0,
                   protect: float | None = None) -> Scores:
    """FLAP's standardised fluctuation plus ``weight`` times the standardised log key-neuron score.

    ``s_j = z_layer(Var_t(x_j) * sum_i W_down[i, j]^2) + weight * z_layer(log(1 + max |z|_j))``,
    each term z-scored within its layer, then ranked globally as FLAP ranks. ``weight=0``
    is FLAP exactly; a large weight orders channels within a layer by the functional-network
    score while FLAP still sets how many each layer keeps. The logarithm tames the heavy tail
    of ``max |z|`` so that a few extreme loadings do not decide the sum. Layers without
    fitted networks get the FLAP term alone.

    With ``protect``, every key neuron (``max |z|_j > protect``, the paper's rule, :func:`is_key`) is kept
    before any other channel: its score is raised by more than the span of all scores, so
    the global ranking is lexicographic (key neurons first, each group ordered by ``s_j``).
    Key neurons are pruned only when the budget cannot keep them all, lowest ``s_j`` first.
    """
    flap = flap_scores(model, stats, standardize=True)
    key = FunctionalNetworkScorer(networks)(model)
    mixed = {i: s + weight * _standardize(np.log1p(key[i])) if i in key else s for i, s in flap.items()}
    if protect is None or not mixed:
        return mixed
    span = max(float(s.max()) for s in mixed.values()) - min(float(s.min()) for s in mixed.values()) + 1.0
    return {i: s + span * is_key(key[i], protect) if i in key else s for i, s in mixed.items()}


class RandomScorer:
    """Random baseline. Parameters: ``seed`` (int, default 0)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    @property
    def settings(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def __call__(self, model: nn.Module, stats: ChannelStatistics | None = None) -> Scores:
        return random_scores(model, self.seed)


class MagnitudeScorer:
    """Weight-magnitude baseline (see :func:`magnitude_scores`); needs no data."""

    name = "magnitude"

    @property
    def settings(self) -> dict[str, Any]:
        """The norm and the weights it is taken over (a new dict each time)."""
        return {"norm": "l2", "weights": "gate rows, up rows, down columns"}

    def __call__(self, model: nn.Module, stats: ChannelStatistics | None = None) -> Scores:
        return magnitude_scores(model)


class _StatsScorer:
    name = ""

    def _need(self, stats: ChannelStatistics | None) -> ChannelStatistics:
        if stats is None:
            raise ValueError(f"the {self.name} scorer needs activation statistics: pass "
                             "stats=channel_statistics(model, tokenizer, texts)")
        return stats


class WandaSpScorer(_StatsScorer):
    """Wanda-sp baseline (see :func:`wanda_sp_scores`); needs :class:`ChannelStatistics`."""

    name = "wanda_sp"

    @property
    def settings(self) -> dict[str, Any]:
        """The score's formula (a new dict each time)."""
        return {"formula": "sum_i |W_down[i, j]| * ||x_j||_2"}

    def __call__(self, model: nn.Module, stats: ChannelStatistics | None = None) -> Scores:
        return wanda_sp_scores(model, self._need(stats))


class FlapScorer(_StatsScorer):
    """FLAP baseline (see :func:`flap_scores`); needs :class:`ChannelStatistics`.

    Parameters
    ----------
    standardize : bool, default=False
        z-score the scores within each layer before they are ranked globally.
    """

    name = "flap"

    def __init__(self, standardize: bool = False) -> None:
        self.standardize = standardize

    @property
    def settings(self) -> dict[str, Any]:
        return {"formula": "Var_t(x_j) * sum_i W_down[i, j]^2", "standardize": self.standardize}

    def __call__(self, model: nn.Module, stats: ChannelStatistics | None = None) -> Scores:
        return flap_scores(model, self._need(stats), standardize=self.standardize)


class FnFlapScorer(_StatsScorer):
    """Functional networks inside FLAP (see :func:`fn_flap_scores`); needs statistics and networks.

    Parameters
    ----------
    networks : FunctionalNetworks
        Fitted in ``mode="layer"``.
    weight : float, default=1.0
        Weight of the functional-network term (``0``: FLAP). Choose it on validation
        text, never on the text that is reported.
    protect : float, optional
        Keep every key neuron (``max |z| > protect``) before any other channel
        (``fn-protect``); default none protected.
    """

    name = "fn_flap"

    def __init__(self, networks: Any, weight: float = 1.0, protect: float | None = None) -> None:
        if not np.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        if protect is not None and not (np.isfinite(protect) and protect > 0):
            raise ValueError(f"protect must be a finite |z| threshold > 0 (e.g. 3.0, the paper's) or None, "
                             f"got {protect!r}")
        self.networks = FunctionalNetworkScorer(networks).networks
        self.weight = float(weight)
        self.protect = None if protect is None else float(protect)

    @property
    def settings(self) -> dict[str, Any]:
        formula = "z_layer(FLAP) + weight * z_layer(log1p(max |z|))"
        if self.protect is not None:
            formula += "; channels with max |z| > protect ranked first"
        return {"formula": formula, "weight": self.weight, "protect": self.protect,
                **FunctionalNetworkScorer(self.networks).settings}

    def __call__(self, model: nn.Module, stats: ChannelStatistics | None = None) -> Scores:
        return fn_flap_scores(model, self._need(stats), self.networks, weight=self.weight, protect=self.protect)
