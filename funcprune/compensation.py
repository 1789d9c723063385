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

The moments are measured on the dense model (*static*, like FLAP's bias: :func:`down_input_moments`, one forward
pass, ``width^2`` float64 numbers per layer: 18 MB at 1,536, 0.9 GB at LLaMA-7B's 11,008, hence ``layers=``) or,
layer by layer, on the already pruned network (*progressive*, like the authors' bias: :class:`ProgressiveLeastSquares`).
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
from .prune import prune_layer, prune_progressively

__all__ = [
    "DownMoments",
    "bias_effect",
    "bias_effect_table",
    "describe_bias_effect",
    "norm_after_mlp",
    "LeastSquaresCompensation",
    "ProgressiveLeastSquares",
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


class _GramMoments:
    """Streaming ``E[x]`` and ``Cov(x)`` (population) of ``(tokens, width)`` blocks, in float64."""

    def __init__(self, width: int) -> None:
        self.n = 0
        self.sum = torch.zeros(width, dtype=torch.float64)
        self.gram = torch.zeros(width, width, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        """Add the rows of one block."""
        x = x.to("cpu", torch.float64)
        self.sum += x.sum(dim=0)
        self.gram += x.T @ x
        self.n += x.shape[0]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, cov)`` of every row added."""
        mean = self.sum / self.n
        return mean, self.gram / self.n - torch.outer(mean, mean)


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
    acc = {i: _GramMoments(widths[i]) for i in chosen}
    batches = list(tokenize_batches(tokenizer, list(texts), batch_size=batch_size, max_tokens=max_tokens))
    if not batches:
        raise ValueError("least-squares compensation needs calibration tokens: every text is empty")
    device = input_device(model)
    n = 0
    was_training = model.training
    model.eval()
    try:
        with MLPRecorder(model, kinds=("product",), layers=chosen, stop_early=True, adapter=get_adapter(model)) as rec:
            for _, batch in tqdm(batches, desc="down-projection moments", unit="batch", disable=not progress):
                rec.mask = batch["attention_mask"].bool()
                rec.forward(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
                for i in chosen:
                    acc[i].update(rec.records[(i, "product")])
                n += int(batch["attention_mask"].sum())
    finally:
        model.train(was_training)
    moments = {i: acc[i].result() for i in chosen}
    return DownMoments({i: m for i, (m, _) in moments.items()}, {i: c for i, (_, c) in moments.items()}, n,
                       {"n_texts": len(texts), "batch_size": batch_size, "max_tokens": max_tokens})


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


class _LeastSquaresStep:
    """One layer of :class:`ProgressiveLeastSquares`: moments on the pruned prefix, then the refit."""

    desc = "pruning with least-squares refits"

    def __init__(self, ridge: float) -> None:
        self.ridge = ridge
        self.acc: _GramMoments | None = None

    def update(self, x: torch.Tensor) -> None:
        """Add one batch of the layer's down-projection inputs (tokens, width)."""
        if self.acc is None:
            self.acc = _GramMoments(x.shape[1])
        self.acc.update(x)

    def finish(self, model: nn.Module, adapter: Any, i: int, plan: Any) -> bool:
        """Refit and slice layer ``i`` (:func:`least_squares_down`); whether its down projection gained a bias."""
        if self.acc is None or self.acc.n == 0:
            raise ValueError(f"layer {i}: no calibration token reached the layer")
        mean, cov = self.acc.result()
        layer = adapter.get_layers(model)[i]
        down = adapter.module(layer, "mlp.down")
        had_bias = down.bias is not None
        new_w, new_b = least_squares_down(adapter.mlp_weight(layer, "mlp.down"), down.bias, mean, cov,
                                          plan.kept[i], self.ridge)
        prune_layer(model, i, plan.kept[i])
        _set_down(adapter, layer, new_w, new_b)
        self.acc = None
        return not had_bias


@dataclass
class ProgressiveLeastSquares:
    """Least-squares reconstruction measured on the already pruned network, layer by layer.

    Like the authors' progressive bias, layer ``i`` is refitted on the inputs it receives when layers
    ``0 .. i-1`` are already pruned and refitted (:func:`funcprune.prune.prune_progressively`); the target
    is the dense layer's output on those inputs, as in SlimGPT's and ZipLM's sequential reconstruction.
    About three forward passes over the texts, and ``width^2`` float64 numbers for one layer at a time.

    Parameters
    ----------
    calibration : funcprune.prune.CalibrationData
        The texts the inputs are measured on.
    ridge : float, default=0.01
        Relative ridge strength (:func:`least_squares_down`).
    """

    calibration: Any
    ridge: float = 0.01

    def apply_to(self, model: nn.Module, plan: Any) -> list[int]:
        """Refit and slice every layer ``plan`` prunes, in place; the layers whose down projection gained a bias."""
        return prune_progressively(model, plan, self.calibration, step=_LeastSquaresStep(self.ridge))


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
# Why a mean-based bias can hurt: what it does to each token's output
# ----------------------------------------------------------------------------------
def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def bias_effect(x: np.ndarray, weight: np.ndarray, kept: Sequence[int], doc_ids: np.ndarray) -> dict[str, float]:
    """What FLAP's static bias does to one layer's MLP output, token by token.

    A bias compensation adds ``b = W_R mean(x_R)`` (the removed channels' mean contribution) to every
    token. On average that is right; on a token whose own output ``W_K x_K`` is small, ``b`` takes it
    over. The first position of a text (the BOS token, an attention sink in many models) is such a
    token in some families, and a norm after the MLP (Gemma's) then passes the bias on at full scale.

    Parameters
    ----------
    x : ndarray of shape (n_tokens, width)
        The down projection's input on calibration tokens.
    weight : ndarray of shape (hidden, width)
        The down projection's weight.
    kept : sequence of int
        The channels the plan keeps.
    doc_ids : ndarray of shape (n_tokens,)
        The text of each row, rows of a text consecutive and in order.

    Returns
    -------
    dict
        ``cos_without`` and ``cos_with``: mean cosine between the pruned output (without, with the bias)
        and the dense output over the tokens after the first of each text; ``first_cos_without`` and
        ``first_cos_with``: the same at the first positions; ``bias_ratio`` and ``first_bias_ratio``: the
        bias's norm over the median norm of the kept output, on those two sets of tokens.

    Examples
    --------
    >>> x = np.array([[0.01, 0.0], [1.0, 1.0], [1.0, 1.0]]); w = np.eye(2)
    >>> r = bias_effect(x, w, [0], np.array([0, 0, 0]))
    >>> r["cos_with"] > r["cos_without"], r["first_cos_with"] < r["first_cos_without"]
    (True, True)
    """
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    doc_ids = np.asarray(doc_ids)
    if len(x) != len(doc_ids) or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x {x.shape}, weight {weight.shape} and {len(doc_ids)} doc ids do not fit together")
    kept = np.asarray(sorted(kept), dtype=int)
    removed = np.setdiff1d(np.arange(x.shape[1]), kept)
    first = np.r_[True, doc_ids[1:] != doc_ids[:-1]]
    if first.all() or not len(removed):
        raise ValueError("need tokens after the first of a text and at least one removed channel")
    bias = weight[:, removed] @ x[:, removed].mean(axis=0)
    kept_out = x[:, kept] @ weight[:, kept].T
    dense = x @ weight.T
    without, with_bias = _row_cosine(kept_out, dense), _row_cosine(kept_out + bias, dense)
    norms = np.linalg.norm(kept_out, axis=1)
    b = float(np.linalg.norm(bias))
    return {"cos_without": float(without[~first].mean()), "cos_with": float(with_bias[~first].mean()),
            "first_cos_without": float(without[first].mean()), "first_cos_with": float(with_bias[first].mean()),
            "bias_ratio": b / max(float(np.median(norms[~first])), 1e-30),
            "first_bias_ratio": b / max(float(np.median(norms[first])), 1e-30)}


def bias_effect_table(model: nn.Module, store: Any, kept: Mapping[int, Sequence[int]]) -> pd.DataFrame:
    """:func:`bias_effect` for every layer a plan prunes (``kept``), from an activation store's ``act * up``.

    Returns
    -------
    pandas.DataFrame
        Index ``layer``; the columns of :func:`bias_effect`.
    """
    adapter = get_adapter(model)
    layers = adapter.get_layers(model)
    doc_ids = store.doc_ids
    rows = {}
    for layer, channels in sorted(kept.items()):
        width = store.width(layer)
        if len(channels) >= width:
            continue
        x = np.asarray(store.layer(layer, "act"), dtype=np.float64)
        if "up" in store.kinds:
            x = x * np.asarray(store.layer(layer, "up"), dtype=np.float64)
        weight = adapter.mlp_weight(layers[layer], "mlp.down").detach().double().cpu().numpy()
        rows[layer] = bias_effect(x, weight, channels, doc_ids)
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("layer")


def norm_after_mlp(model: nn.Module) -> bool:
    """Whether the family normalises the MLP's output before the residual sum (Gemma's post-feed-forward norm)."""
    return any(name.endswith(("post_feedforward_layernorm", "post_mlp_layernorm")) for name, _ in model.named_modules())


#: The first positions are called *turned* by the bias when their mean cosine with the dense output falls by more.
TURN = 0.2


def describe_bias_effect(table: pd.DataFrame, *, normed: bool, turn: float = TURN) -> str:
    """Sentences on what a mean-based bias does to the typical token and to the first position of each text.

    Rule: the first positions are said to be **turned away** from the dense output when, in the median pruned
    layer, the bias lowers their cosine with it by more than ``turn``; the typical token is said to be
    **brought closer** when its cosine rises.

    Examples
    --------
    >>> t = pd.DataFrame({"cos_without": [0.8], "cos_with": [0.9], "first_cos_without": [0.9],
    ...                   "first_cos_with": [0.1], "bias_ratio": [0.4], "first_bias_ratio": [50.0]})
    >>> "turns the first position of each text away" in describe_bias_effect(t, normed=True)
    True
    """
    if table.empty:
        return "The plan prunes no layer, so no bias is added."
    m = table.median()
    typical = ("brings the typical token's MLP output closer to the dense one" if m["cos_with"] > m["cos_without"]
               else "does not bring the typical token's MLP output closer to the dense one")
    out = (f"In the median pruned layer the static bias {typical} (cosine {m['cos_without']:.2f} without it, "
           f"{m['cos_with']:.2f} with it; the bias is {m['bias_ratio']:.2f} times the kept output's norm).")
    drop = m["first_cos_without"] - m["first_cos_with"]
    if drop > turn:
        out += (f" It turns the first position of each text away from the dense output (cosine "
                f"{m['first_cos_without']:.2f} without it, {m['first_cos_with']:.2f} with it): there the MLP's own "
                f"output is small and the bias is {_times(m['first_bias_ratio'])} times it.")
    else:
        out += (f" At the first position of each text it does not turn the output away (cosine "
                f"{m['first_cos_without']:.2f} without it, {m['first_cos_with']:.2f} with it).")
    if normed:
        out += (" This model normalises the MLP's output before adding it to the residual stream, so whatever the "
                "bias sets there reaches the stream at full scale.")
    return out


def _times(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.1f}" if x >= 1 else f"{x:.2f}"
