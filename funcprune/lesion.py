"""Lesion studies: are the functional networks functional?

The neuroscience test of a network's function is a lesion: silence its units and see
what breaks, against a control lesion of as many units chosen at random from the same
region. Here a *network* is one ICA map of one layer, its units are its key neurons
(channels with ``|z| > threshold`` in either voxel copy, as in
:func:`funcprune.atlas.key_channel_sets`), and the region is the layer. A lesion zeroes
those channels at the input of the layer's down projection (exactly what pruning them
without bias compensation does), and its effect is the change in per-token negative
log-likelihood (NLL) on held-out text.

:func:`lesion_study` answers two questions per network, each against its own random
controls on the same tokens:

* **does it matter more than its size?** the mean NLL change over all tokens, network
  lesion minus random lesion of the same size;
* **does it matter for "its" tokens?** the network's *active tokens* are those where its
  time course (:meth:`funcprune.ica.FunctionalNetworks.transform` on the dense model's
  activations) is in the top ``active_share``. Specificity is the NLL change on active
  tokens minus that on the other tokens; the network's specificity is compared with the
  random lesions' specificity on the same split.

:func:`lesion_verdict` turns the per-network table into a test across networks
(Wilcoxon signed-rank, one-sided) and sentences that say what was found, true for any
outcome. Used in the chapter :doc:`/executed/06_ablations`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats as sps
from torch import nn
from tqdm.auto import tqdm

from .adapters import get_adapter
from .atlas import key_channel_sets
from .capture import MLPRecorder
from .ica import FunctionalNetworks

__all__ = ["lesion", "lesion_study", "lesion_verdict", "plot_lesions", "token_nll"]


@contextmanager
def lesion(model: nn.Module, channels: Mapping[int, Sequence[int]]) -> Iterator[None]:
    """Silence MLP channels for the duration of a ``with`` block.

    A forward pre-hook on each listed layer's down projection zeroes the given input
    channels: the same function as pruning them without bias compensation. The hooks
    are removed on exit, also on error.

    Parameters
    ----------
    model : nn.Module
        A causal LM with a registered adapter.
    channels : dict[int, sequence of int]
        Layer -> channels to silence.
    """
    adapter = get_adapter(model)
    layers = adapter.get_layers(model)
    handles = []
    try:
        for layer, chans in channels.items():
            idx = torch.as_tensor(np.asarray(chans, dtype=np.int64))
            if idx.numel() == 0:
                continue
            down = adapter.module(layers[layer], "mlp.down")

            def zero(_module: nn.Module, args: tuple[Any, ...], idx: torch.Tensor = idx) -> tuple[Any, ...]:
                x = args[0].clone()
                x[..., idx.to(x.device)] = 0
                return (x, *args[1:])

            handles.append(down.register_forward_pre_hook(zero))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def token_nll(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 4) -> np.ndarray:
    """Negative log-likelihood of every predicted token of every window.

    Parameters
    ----------
    model : nn.Module
        A causal LM returning ``logits``.
    windows : LongTensor of shape (n_windows, seq_len)
        Token ids; position ``i`` predicts token ``i + 1`` within its window (put the
        BOS token first where the family needs it).
    batch_size : int, default=4
        Windows per forward pass.

    Returns
    -------
    ndarray of shape (n_windows, seq_len - 1)
        NLL (nats) of tokens ``1 .. seq_len - 1`` of each window, computed in float32
        as :func:`funcprune.evaluate.perplexity` does, returned as float64.
    """
    if windows.ndim != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must have shape (n_windows, seq_len >= 2), got {tuple(windows.shape)}")
    device = next(model.parameters()).device
    out = []
    for start in range(0, windows.shape[0], batch_size):
        ids = windows[start:start + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        out.append(nll.double().cpu().numpy())
    return np.concatenate(out)


def _kinds(fn: FunctionalNetworks, kinds: Sequence[str] | None) -> tuple[str, ...]:
    """Voxel copies the networks were fitted on: given, or read from the fit's input record."""
    if kinds is None:
        kinds = fn.input_.get("kinds")
    if not kinds:
        raise ValueError("these networks were fitted on arrays, which do not record their voxel copies: pass "
                         "kinds= (e.g. ('act',) when voxel j is channel j's activation)")
    return tuple(kinds)


def _time_courses(model: nn.Module, fn: FunctionalNetworks, windows: torch.Tensor, layers: Sequence[int],
                  kinds: tuple[str, ...], batch_size: int) -> dict[int, np.ndarray]:
    """Time course of every map of ``layers`` at each predicting position: ``(n_windows, seq_len - 1, n_maps)``."""
    rows: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    with torch.no_grad(), MLPRecorder(model, kinds=kinds, layers=list(layers), stop_early=True) as rec:
        device = next(model.parameters()).device
        for start in range(0, windows.shape[0], batch_size):
            rec.forward(input_ids=windows[start:start + batch_size].to(device))
            for layer in layers:
                rows[layer].append(np.concatenate([rec.records[(layer, k)].numpy() for k in kinds], axis=1))
    n, length = windows.shape
    courses = {}
    for layer in layers:
        X = np.concatenate(rows[layer]).astype(np.float64)
        tc = fn.transform(X, layer).reshape(n, length, -1)
        courses[layer] = tc[:, :-1]  # the activity at position i shapes the prediction of token i + 1
    return courses


def lesion_study(model: nn.Module, fn: FunctionalNetworks, windows: torch.Tensor, *,
                 layers: Sequence[int] | None = None, maps_per_layer: int = 4, threshold: float = 3.0,
                 n_random: int = 2, active_share: float = 0.1, seed: int = 0,
                 kinds: Sequence[str] | None = None, batch_size: int = 4, progress: bool = True) -> pd.DataFrame:
    """Lesion each network and random sets of the same size; compare the NLL changes.

    Parameters
    ----------
    model : nn.Module
        The dense model the networks were fitted on (never modified).
    fn : FunctionalNetworks
        Fitted in ``mode="layer"``.
    windows : LongTensor of shape (n_windows, seq_len)
        Held-out token windows (not calibration text; a validation split is right).
    layers : sequence of int, optional
        Layers whose networks are lesioned; default three evenly spaced fitted layers.
    maps_per_layer : int, default=4
        The first maps of each layer (ordered by explained variance).
    threshold : float, default=3.0
        Key neurons of a map: ``|z| > threshold`` in either voxel copy.
    n_random : int, default=2
        Random control lesions per network (same layer, same number of channels).
    active_share : float, default=0.1
        Share of the predicting positions that count as the network's active tokens.
    seed : int, default=0
        Seed of the random control sets.
    kinds : sequence of str, optional
        Voxel copies of the fit (default: as recorded by a fit on an activation store).
    batch_size : int, default=4
        Windows per forward pass.
    progress : bool, default=True
        Progress bar over lesions.

    Returns
    -------
    pandas.DataFrame
        One row per network: ``layer``, ``map``, ``n_channels``, and for the network
        (``net_``) and the mean of its random controls (``rand_``) the mean NLL change
        ``*_all``, on active tokens ``*_active`` and on the rest ``*_rest``; plus
        ``excess_all = net_all - rand_all`` and ``excess_specificity =
        (net_active - net_rest) - (rand_active - rand_rest)``. ``attrs`` hold the
        settings and the dense NLL.

    Raises
    ------
    ValueError
        Bad settings or layers that were not fitted, naming the accepted values.
    """
    if not 0.0 < active_share < 1.0:
        raise ValueError(f"active_share must be in (0, 1), got {active_share}")
    if n_random < 1 or maps_per_layer < 1:
        raise ValueError(f"n_random and maps_per_layer must be >= 1, got {n_random} and {maps_per_layer}")
    fitted = sorted(fn.maps_)
    if layers is None:
        layers = [fitted[i] for i in np.linspace(0, len(fitted) - 1, 3).round().astype(int)]
    bad = [layer for layer in layers if layer not in fn.maps_]
    if bad:
        raise ValueError(f"layers {bad} were not fitted; fitted layers: {fitted}")
    layers = list(dict.fromkeys(int(x) for x in layers))
    model.eval()
    adapter = get_adapter(model)
    widths = {i: adapter.mlp_weight(adapter.get_layers(model)[i], "mlp.down").shape[1] for i in layers}
    members = key_channel_sets(fn, threshold)
    courses = _time_courses(model, fn, windows, layers, _kinds(fn, kinds), batch_size)
    dense = token_nll(model, windows, batch_size=batch_size)
    rng = np.random.default_rng(seed)

    jobs = [(layer, m) for layer in layers for m in range(min(maps_per_layer, len(members[layer])))
            if len(members[layer][m]) > 0]
    bar = tqdm(total=len(jobs) * (1 + n_random), desc="lesions", unit="lesion", disable=not progress)
    rows = []
    for layer, m in jobs:
        chans = members[layer][m]
        tc = courses[layer][..., m]
        active = tc >= np.quantile(tc, 1.0 - active_share)

        def effect(channels: np.ndarray) -> tuple[float, float, float]:
            with lesion(model, {layer: channels}):
                delta = token_nll(model, windows, batch_size=batch_size) - dense
            bar.update(1)
            return float(delta.mean()), float(delta[active].mean()), float(delta[~active].mean())

        net = effect(chans)
        controls = np.array([effect(rng.choice(widths[layer], size=len(chans), replace=False))
                             for _ in range(n_random)])
        rand = controls.mean(axis=0)
        rows.append({"layer": layer, "map": m, "n_channels": len(chans),
                     "net_all": net[0], "net_active": net[1], "net_rest": net[2],
                     "rand_all": rand[0], "rand_active": rand[1], "rand_rest": rand[2],
                     "excess_all": net[0] - rand[0],
                     "excess_specificity": (net[1] - net[2]) - (rand[1] - rand[2])})
    bar.close()
    table = pd.DataFrame(rows)
    table.attrs.update({"threshold": threshold, "n_random": n_random, "active_share": active_share,
                        "seed": seed, "n_windows": int(windows.shape[0]), "seq_len": int(windows.shape[1]),
                        "dense_nll": float(dense.mean()), "layers": layers})
    return table


def lesion_verdict(table: pd.DataFrame, alpha: float = 0.05) -> dict[str, Any]:
    """Test across networks whether network lesions beat random ones, and say so in sentences.

    Two one-sided Wilcoxon signed-rank tests over the networks of ``table``: is
    ``excess_all`` (network minus random NLL change) greater than zero, and is
    ``excess_specificity`` greater than zero.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`lesion_study`.
    alpha : float, default=0.05
        Level of the tests.

    Returns
    -------
    dict
        ``n_networks``, for ``"harm"`` and ``"specificity"`` the median excess, the
        share of networks with a positive excess, the p-value and whether it is
        significant; ``sentences`` (list of str) stating the outcome either way.
    """
    n = len(table)
    out: dict[str, Any] = {"n_networks": n, "alpha": alpha}
    sentences = []
    texts = {
        "harm": ("lesioning a network raises the loss more than lesioning as many random channels of its layer",
                 "excess_all"),
        "specificity": ("a network's lesion hurts the tokens where the network is most active more than the "
                        "other tokens, beyond what random lesions do", "excess_specificity"),
    }
    for key, (claim, column) in texts.items():
        values = table[column].to_numpy(dtype=float) if n else np.array([])
        nonzero = values[values != 0]
        p = float(sps.wilcoxon(nonzero, alternative="greater").pvalue) if len(nonzero) >= 2 else float("nan")
        significant = bool(p < alpha)
        share = float((values > 0).mean()) if n else float("nan")
        out[key] = {"median": float(np.median(values)) if n else float("nan"), "share_positive": share,
                    "p": p, "significant": significant}
        if not n:
            sentences.append(f"No network could be tested, so nothing is known about whether {claim}.")
        elif significant:
            sentences.append(f"Supported on this model: {claim} (in {share:.0%} of {n} networks; "
                             f"one-sided Wilcoxon p = {p:.3g}).")
        else:
            sentences.append(f"Not supported on this model: the evidence does not show that {claim} "
                             f"(in {share:.0%} of {n} networks; one-sided Wilcoxon p = {p:.3g}, "
                             f"level {alpha}).")
    out["sentences"] = sentences
    return out


def plot_lesions(table: pd.DataFrame) -> Any:
    """Network lesions against their random controls: overall damage and damage on the network's tokens.

    Left: mean NLL change of each network's lesion against the mean of its random
    controls (above the diagonal: the network matters more than its size). Right: the
    same for specificity, the change on active tokens minus that on the other tokens.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), constrained_layout=True)
    pairs = [("rand_all", "net_all", "NLL change, all tokens"),
             (None, None, "active minus other tokens")]
    for ax, (x, y, title) in zip(axes, pairs):
        if x is None:
            xs = table["rand_active"] - table["rand_rest"]
            ys = table["net_active"] - table["net_rest"]
        else:
            xs, ys = table[x], table[y]
        for layer, part in table.groupby("layer"):
            ax.scatter(xs[part.index], ys[part.index], s=18 + part["n_channels"] / part["n_channels"].max() * 40,
                       label=f"layer {layer}", alpha=0.8)
        lo, hi = float(min(xs.min(), ys.min(), 0)), float(max(xs.max(), ys.max(), 0))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
        ax.set(xlabel="random lesions of the same size", ylabel="network lesion", title=title)
    axes[0].legend(fontsize=8)
    return fig
