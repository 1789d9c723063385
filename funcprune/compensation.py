r"""Least-squares reconstruction: refit the down projection from the channels a plan keeps.

The strongest training-free structured methods since FLAP (SlimGPT, ZipLM, OSSCAR, SoBP, SlimLLM,
Olica, FASP) do not stop at a bias: they refit the remaining weights so that each layer's output is
reconstructed from the kept channels. This module is the simplest member of that family, in closed
form. A layer's MLP output is ``y = W x + b`` with ``x`` the down projection's input (one entry per
channel). Keeping channels ``K`` and removing ``R``, refit ``W_K`` and ``b`` to

.. math::

    \min_{A, c}\; \mathbb{E}_t \| A x_K + c - (W x + b) \|^2 + \lambda \| A - W_K \|_F^2

over calibration tokens ``t`` of the dense model. With ``mu = E[x]`` and ``C = Cov(x)`` the solution is

.. math::

    A = W_K + W_R X^{\top}, \qquad c = b + W_R (\mu_R - X^{\top} \mu_K), \qquad
    X = (C_{KK} + \lambda I)^{-1} C_{KR}

(:func:`least_squares_down`). Two properties follow, and are tested:

* **exact** when the removed channels are affine functions of the kept ones on the calibration tokens
  (``lambda = 0``): the layer's output is reproduced token for token;
* **never worse than FLAP's static bias on its own calibration tokens**, at any ``lambda``: the ridge
  pulls ``A`` towards ``W_K``, and ``A = W_K`` with ``c = b + W_R mu_R`` *is* the static bias, a feasible
  point whose objective the optimum cannot exceed.

``lambda`` is relative: ``ridge * trace(C_KK) / |K|``, so one value means the same on every layer and
model; the book chooses it on validation text (:func:`funcprune.decompose.choose_ridge`).

The moments are measured on the dense model (a *static* compensation, like FLAP's bias): one forward
pass over the calibration texts (:func:`down_input_moments`), memory ``width^2`` float64 numbers per
layer (18 MB for a width of 1,536; 0.9 GB for LLaMA-7B's 11,008, so ``layers=`` lets a large model be
measured a few layers at a time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .adapters import get_adapter, layer_widths
from .capture import MLPRecorder, tokenize_batches
from .models import input_device

__all__ = [
    "DownMoments",
    "describe_first_position",
    "first_position_effect",
    "first_position_table",
    "LeastSquaresCompensation",
    "down_input_moments",
    "least_squares_down",
    "reconstruction_error",
    "set_down_weights",
]


@dataclass
class DownMoments:
    """Mean and covariance of each layer's down-projection input over calibration tokens.

    Attributes
    ----------
    mean : dict[int, torch.Tensor of shape (width,)]
        ``E[x]``, float64.
    cov : dict[int, torch.Tensor of shape (width, width)]
        ``Cov(x)`` (population, ``ddof=0``), float64.
    n_tokens : int
        Tokens the moments are over (padding excluded).
    source : dict
        How they were measured (texts, batch size, truncation).
    """

    mean: dict[int, torch.Tensor]
    cov: dict[int, torch.Tensor]
    n_tokens: int
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        """Layers with moments."""
        return sorted(self.mean)


@torch.no_grad()
def down_input_moments(model: nn.Module, tokenizer: Any, texts: Sequence[str], *,
                       layers: Sequence[int] | None = None, batch_size: int = 4, max_tokens: int = 512,
                       progress: bool = False) -> DownMoments:
    """Measure ``E[x]`` and ``Cov(x)`` of the down projection's input of ``layers`` on ``texts``.

    Parameters
    ----------
    model : nn.Module
        The dense model (any supported family; left unchanged).
    tokenizer : transformers tokenizer
    texts : sequence of str
        Calibration texts (each truncated to ``max_tokens``).
    layers : sequence of int, optional
        Default every layer.
    batch_size, max_tokens : int
        Texts per forward pass; truncation length.
    progress : bool, default=False
        Progress bar over batches.

    Returns
    -------
    DownMoments

    Raises
    ------
    ValueError
        When every text is empty (no calibration token).
    """
    widths = layer_widths(model)
    chosen = sorted(widths) if layers is None else sorted(int(i) for i in layers)
    sums = {i: torch.zeros(widths[i], dtype=torch.float64) for i in chosen}
    grams = {i: torch.zeros(widths[i], widths[i], dtype=torch.float64) for i in chosen}
    batches = list(tokenize_batches(tokenizer, list(texts), batch_size=batch_size, max_tokens=max_tokens))
    if not batches:
        raise ValueError("least-squares compensation needs calibration tokens: every text is empty")
    device = input_device(model)
    n = 0
    was_training = model.training
    model.eval()
    try:
        with MLPRecorder(model, kinds=("product",), layers=chosen, adapter=get_adapter(model)) as rec:
            for _, batch in tqdm(batches, desc="down-projection moments", unit="batch", disable=not progress):
                rec.mask = batch["attention_mask"].bool()
                model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
                for i in chosen:
                    x = rec.records[(i, "product")].to(torch.float64)
                    sums[i] += x.sum(dim=0)
                    grams[i] += x.T @ x
                n += int(batch["attention_mask"].sum())
    finally:
        model.train(was_training)
    mean = {i: sums[i] / n for i in chosen}
    cov = {i: grams[i] / n - torch.outer(mean[i], mean[i]) for i in chosen}
    return DownMoments(mean, cov, n, {"n_texts": len(texts), "batch_size": batch_size, "max_tokens": max_tokens})


def least_squares_down(weight: torch.Tensor, bias: torch.Tensor | None, mean: torch.Tensor, cov: torch.Tensor,
                       kept: Sequence[int], ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The refitted kept columns and bias of one down projection (see the module notes).

    Parameters
    ----------
    weight : torch.Tensor of shape (hidden, width)
        The dense down projection.
    bias : torch.Tensor of shape (hidden,) or None
    mean, cov : torch.Tensor
        ``E[x]`` (width,) and ``Cov(x)`` (width, width) of its input.
    kept : sequence of int
        Channels kept, in the order the pruned layer holds them.
    ridge : float
        Relative ridge strength, ``>= 0``: ``lambda = ridge * trace(C_KK) / |K|``. ``0`` is plain least
        squares (a minimum-norm solution where ``C_KK`` is singular); large values tend to the static bias.

    Returns
    -------
    (weight_kept, bias) : tuple of torch.Tensor
        Shapes ``(hidden, |K|)`` and ``(hidden,)``, float64.

    Raises
    ------
    ValueError
        A negative or non-finite ``ridge``.
    """
    if not ridge >= 0 or ridge != ridge or ridge == float("inf"):
        raise ValueError(f"ridge {ridge!r} must be a finite number >= 0 (0: plain least squares)")
    w = weight.detach().to("cpu", torch.float64)
    k = torch.as_tensor(list(kept), dtype=torch.long)
    r_mask = torch.ones(w.shape[1], dtype=torch.bool)
    r_mask[k] = False
    r = torch.nonzero(r_mask).flatten()
    b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.detach().to("cpu", torch.float64)
    w_k, w_r = w[:, k], w[:, r]
    mu_k, mu_r = mean[k], mean[r]
    if len(r) == 0:
        return w_k, b
    c_kk = cov[k][:, k]
    c_kr = cov[k][:, r]
    lam = ridge * float(torch.diagonal(c_kk).sum()) / max(len(k), 1)
    if lam > 0:
        x = torch.linalg.solve(c_kk + lam * torch.eye(len(k), dtype=torch.float64), c_kr)  # (|K|, |R|)
    else:
        x = torch.linalg.pinv(c_kk, hermitian=True) @ c_kr
    a = w_k + w_r @ x.T
    c = b + w_r @ (mu_r - x.T @ mu_k)
    return a, c


def reconstruction_error(weight: torch.Tensor, bias: torch.Tensor | None, mean: torch.Tensor, cov: torch.Tensor,
                         kept: Sequence[int], new_weight: torch.Tensor, new_bias: torch.Tensor) -> float:
    """``E_t || A x_K + c - (W x + b) ||^2`` under the given moments (exact, from the moments alone).

    The error of the static bias is this with ``A = W_K`` and ``c = b + W_R mu_R``.
    """
    w = weight.detach().to("cpu", torch.float64)
    b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.detach().to("cpu", torch.float64)
    k = torch.as_tensor(list(kept), dtype=torch.long)
    full = torch.zeros_like(w)
    full[:, k] = new_weight.to(torch.float64)
    d = full - w  # the error is D x + (c - b), with D the difference of the full-width maps
    shift = d @ mean + (new_bias.to(torch.float64) - b)
    return float(torch.trace(d @ cov @ d.T) + shift @ shift)


@dataclass
class LeastSquaresCompensation:
    """A compensation for :func:`funcprune.prune.prune`: slice each layer, then refit its down projection.

    Parameters
    ----------
    moments : DownMoments
        Moments of the dense model's down-projection inputs (:func:`down_input_moments`), covering
        every layer the plan prunes.
    ridge : float, default=0.01
        Relative ridge strength (:func:`least_squares_down`).
    """

    moments: DownMoments
    ridge: float = 0.01

    @torch.no_grad()
    def apply_to(self, model: nn.Module, plan: Any) -> list[int]:
        """Refit and slice every layer ``plan`` prunes, in place; the layers whose down projection gained a bias."""
        from .prune import prune_layer  # prune dispatches here; importing it at the top would be circular

        adapter = get_adapter(model)
        layers = adapter.get_layers(model)
        added = []
        for i in plan.layers:
            if len(plan.kept[i]) >= plan.widths[i]:
                continue
            if i not in self.moments.mean:
                raise ValueError(f"least-squares compensation lacks the moments of layer {i}; they cover "
                                 f"{self.moments.layers}: measure them with down_input_moments(layers=None)")
            down = adapter.module(layers[i], "mlp.down")
            had_bias = down.bias is not None
            weight = adapter.mlp_weight(layers[i], "mlp.down")
            new_w, new_b = least_squares_down(weight, down.bias, self.moments.mean[i], self.moments.cov[i],
                                              plan.kept[i], self.ridge)
            prune_layer(model, i, plan.kept[i])
            _set_down(adapter, layers[i], new_w, new_b)
            if not had_bias:
                added.append(i)
        return added


def _set_down(adapter: Any, layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Write a refitted ``(hidden, kept)`` weight and a bias into a sliced down projection."""
    down = adapter.module(layer, "mlp.down")
    current = adapter.mlp_weight(layer, "mlp.down")  # (hidden, kept), a view of the parameter
    current.copy_(weight.to(current.device, current.dtype))
    if down.bias is None:
        down.bias = nn.Parameter(bias.to(current.device, current.dtype), requires_grad=current.requires_grad)
    else:
        down.bias.copy_(bias.to(down.bias.device, down.bias.dtype))


def set_down_weights(model: nn.Module, weights: Mapping[int, torch.Tensor]) -> None:
    """Copy saved ``(hidden, kept)`` down-projection weights into an already sliced model (a stored
    least-squares compensation rebuilt), checking their shapes."""
    adapter = get_adapter(model)
    layers = adapter.get_layers(model)
    with torch.no_grad():
        for i, value in weights.items():
            current = adapter.mlp_weight(layers[int(i)], "mlp.down")
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(f"layer {i}: a saved down weight of shape {tuple(value.shape)} for a projection "
                                 f"of shape {tuple(current.shape)}: the compensation file belongs to another plan")
            current.copy_(value.to(current.device, current.dtype))


def moments_for(moments: DownMoments | None, layers: Mapping[int, Any] | Sequence[int]) -> DownMoments:
    """``moments`` after checking it covers ``layers``."""
    if moments is None:
        raise ValueError("least-squares compensation needs moments= (DownMoments of the dense model, "
                         "funcprune.compensation.down_input_moments)")
    missing = sorted(set(int(i) for i in layers) - set(moments.layers))
    if missing:
        raise ValueError(f"the down-projection moments lack layers {missing}; they cover {moments.layers}")
    return moments


# ----------------------------------------------------------------------------------
# Why a mean-based compensation can hurt: the first position of each text
# ----------------------------------------------------------------------------------
def first_position_effect(x: np.ndarray, doc_ids: np.ndarray) -> dict[str, float]:
    """How far the first position of each text moves the calibration mean of a layer's down-projection input.

    A bias compensation (FLAP's static one, the authors' progressive one) adds ``W_R mu_R`` to every token:
    the removed channels' *mean* input. Some models put very large activations on the first position
    (the BOS token, an attention sink); one such row in every text can move the mean that every other
    token then receives.

    Parameters
    ----------
    x : ndarray of shape (n_tokens, width)
        The down projection's input on calibration tokens (``act * up`` for a gated MLP).
    doc_ids : ndarray of shape (n_tokens,)
        The text each row came from, rows of a text consecutive and in order.

    Returns
    -------
    dict
        ``norm_ratio``: mean norm of a first-position row over that of the other rows; ``mean_shift``:
        ``||mean(all) - mean(others)|| / ||mean(others)||``; ``share``: the fraction of rows that are first.

    Examples
    --------
    >>> x = np.ones((4, 2)); x[0] = 100.0
    >>> {k: round(v, 2) for k, v in first_position_effect(x, np.array([0, 0, 0, 0])).items()}
    {'norm_ratio': 100.0, 'mean_shift': 24.75, 'share': 0.25}
    """
    x = np.asarray(x, dtype=np.float64)
    doc_ids = np.asarray(doc_ids)
    if len(x) != len(doc_ids) or len(x) < 2:
        raise ValueError(f"need one doc id per row and at least two rows, got {len(x)} rows and {len(doc_ids)} ids")
    first = np.r_[True, doc_ids[1:] != doc_ids[:-1]]
    if first.all():
        raise ValueError("every row is the first of its text: nothing to compare the first positions with")
    rest_mean = x[~first].mean(axis=0)
    norms = np.linalg.norm(x, axis=1)
    return {"norm_ratio": float(norms[first].mean() / max(norms[~first].mean(), 1e-30)),
            "mean_shift": float(np.linalg.norm(x.mean(axis=0) - rest_mean) / max(np.linalg.norm(rest_mean), 1e-30)),
            "share": float(first.mean())}


def first_position_table(store: Any, layers: Sequence[int] | None = None) -> pd.DataFrame:
    """:func:`first_position_effect` for every layer of an activation store (``act * up`` when both are stored).

    Returns
    -------
    pandas.DataFrame
        Index ``layer``; columns ``norm_ratio``, ``mean_shift``, ``share``.
    """
    doc_ids = store.doc_ids
    rows = {}
    for layer in layers if layers is not None else store.layers:
        x = np.asarray(store.layer(layer, "act"), dtype=np.float64)
        if "up" in store.kinds:
            x = x * np.asarray(store.layer(layer, "up"), dtype=np.float64)
        rows[layer] = first_position_effect(x, doc_ids)
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("layer")


#: A mean moved by more than this fraction by the first positions is called dominated by them.
FIRST_POSITION_SHIFT = 0.5


def _times(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.1f}" if x >= 1 else f"{x:.2f}"


def describe_first_position(table: pd.DataFrame, *, threshold: float = FIRST_POSITION_SHIFT) -> str:
    """One sentence on whether the first positions dominate the means a bias compensation is built from.

    Rule: the means are called *dominated by the first position* in the layers where it moves them by more
    than ``threshold`` (relative norm); the sentence gives the median layer's numbers either way.

    Examples
    --------
    >>> t = pd.DataFrame({"norm_ratio": [90.0, 80.0], "mean_shift": [2.0, 0.7], "share": [0.002, 0.002]})
    >>> "in 2 of 2 layers by more than 50 %" in describe_first_position(t)
    True
    """
    if table.empty:
        return "No layer was measured, so the first position's weight in the means is not known here."
    dominated = int((table["mean_shift"] > threshold).sum())
    where = (f"in {dominated} of {len(table)} layers by more than {100 * threshold:.0f} %: there the bias is mostly "
             "the first position's" if dominated else f"in no layer by more than {100 * threshold:.0f} %")
    return (f"The first position of each text is {100 * table['share'].median():.1f} % of the calibration tokens; "
            f"its down-projection input is {_times(table['norm_ratio'].median())} times a typical token's in the median "
            f"layer (at most {_times(table['norm_ratio'].max())} times), and it moves the mean that a bias compensation "
            f"adds to every token by {100 * table['mean_shift'].median():.0f} % in the median layer; {where}.")
