"""Descriptive statistics and figures of captured activity (stage 1).

Everything here reads an :class:`~funcprune.store.ActivationStore` one layer at a
time, computes in float64, and returns a tidy ``pandas.DataFrame`` or a matplotlib
figure, so the chapter :doc:`/executed/01_capture_activations` only calls and shows.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from .store import ActivationStore

__all__ = ["brain_scan", "layer_summary", "massive_activations", "plot_layer_summary"]


def layer_summary(store: ActivationStore) -> pd.DataFrame:
    """Per-layer, per-kind statistics of the captured activity.

    Returns
    -------
    pandas.DataFrame
        One row per (layer, kind) with ``mean``, ``std``, ``max_abs``, ``kurtosis``
        (excess, averaged over channels: heavy tails mean a few huge values),
        ``dead_fraction`` (channels whose std over tokens is below 1e-6) and
        ``top1_share`` (fraction of the layer's total absolute activity carried by its
        single most active channel).
    """
    rows = []
    for layer in store.layers:
        for kind in store.kinds:
            x = np.asarray(store.layer(layer, kind), dtype=np.float64)
            mean = x.mean(axis=0)
            absolute = np.abs(x)
            total, max_abs = absolute.sum(axis=0), float(absolute.max())
            del absolute
            squares = np.square(x - mean)  # products, not pow(): ``** 4`` costs six times as much here
            var = squares.mean(axis=0)
            m4 = np.square(squares, out=squares).mean(axis=0)
            std, live = np.sqrt(var), var > 0
            kurt = m4[live] / var[live] ** 2 - 3.0  # excess kurtosis of each channel that varies
            rows.append({
                "layer": layer, "kind": kind, "mean": float(mean.mean()),
                # every channel has the same tokens: the layer's variance is the channels' mean
                # variance plus the variance of their means
                "std": float(np.sqrt(np.mean(var + (mean - mean.mean()) ** 2))),
                "max_abs": max_abs, "kurtosis": float(kurt.mean()),
                "dead_fraction": float((std < 1e-6).mean()),
                "top1_share": float(total.max() / max(total.sum(), 1e-300)),
            })
    return pd.DataFrame(rows)


def massive_activations(store: ActivationStore, tokenizer: Any = None, *, kind: str = "act",
                        top: int = 10) -> pd.DataFrame:
    """The largest single activations in the model: which layer, channel and token.

    "Massive activations" (Sun et al., 2024) are a handful of values thousands of
    times larger than the median, usually on the first token or on delimiters.

    Parameters
    ----------
    store : ActivationStore
    tokenizer : transformers tokenizer, optional
        Decodes the token of each row when given.
    kind : str, default="act"
        Voxel kind to search.
    top : int, default=10
        Number of rows returned.

    Returns
    -------
    pandas.DataFrame
        Columns ``layer, channel, row, position, token, value, ratio_to_median``,
        sorted by ``|value|``; ``position`` is the token's index within its text.
    """
    docs = store.doc_ids
    starts = np.r_[0, np.flatnonzero(np.diff(docs)) + 1]
    position = np.arange(len(docs)) - np.repeat(starts, np.diff(np.r_[starts, len(docs)]))
    token_ids = store.token_ids
    candidates = []
    for layer in store.layers:
        x = np.abs(np.asarray(store.layer(layer, kind), dtype=np.float64))
        median = float(np.median(x))
        flat = np.argpartition(x.ravel(), -top)[-top:]
        for f in flat:
            row, channel = np.unravel_index(f, x.shape)
            value = float(store.layer(layer, kind)[row, channel])
            candidates.append({"layer": layer, "channel": int(channel), "row": int(row),
                               "position": int(position[row]), "token_id": int(token_ids[row]),
                               "value": value, "ratio_to_median": abs(value) / max(median, 1e-12)})
    table = pd.DataFrame(candidates)
    table = table.reindex(table["value"].abs().sort_values(ascending=False).index).head(top)
    if tokenizer is not None:
        table["token"] = [repr(tokenizer.decode([t])) for t in table["token_id"]]
    return table.reset_index(drop=True)


def brain_scan(store: ActivationStore, layers: Sequence[int], *, kind: str = "act", n_tokens: int = 256,
               n_channels: int | None = None, ax_width: float = 4.0) -> Any:
    """Image the activity of channels (rows) over tokens (columns), like an fMRI carpet plot.

    Each channel is z-scored over the shown tokens (float64), so the image shows
    when each "voxel" is unusually active, whatever its scale.

    Parameters
    ----------
    store : ActivationStore
    layers : sequence of int
        One panel per layer.
    kind : str, default="act"
    n_tokens : int, default=256
        Tokens (time points) shown, from the start of the store.
    n_channels : int, optional
        Show only the first channels (default: all).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(layers), figsize=(ax_width * len(layers), 4), squeeze=False,
                             constrained_layout=True)
    image = None
    for ax, layer in zip(axes[0], layers):
        x = np.asarray(store.layer(layer, kind)[:n_tokens], dtype=np.float64)
        if n_channels is not None:
            x = x[:, :n_channels]
        z = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
        image = ax.imshow(z.T, aspect="auto", cmap="RdBu_r", vmin=-4, vmax=4, interpolation="nearest")
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("token (time point)")
        ax.set_ylabel("channel (voxel)")
    fig.colorbar(image, ax=axes[0].tolist(), label="z-score over tokens", shrink=0.8)
    return fig


def plot_layer_summary(summary: pd.DataFrame, columns: Sequence[str] = ("std", "max_abs", "kurtosis")) -> Any:
    """Line plots of :func:`layer_summary` columns against depth, one line per kind."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 3.2), constrained_layout=True)
    for ax, column in zip(np.atleast_1d(axes), columns):
        for kind, part in summary.groupby("kind"):
            ax.plot(part["layer"], part[column], marker="o", ms=3, label=kind)
        ax.set_xlabel("layer")
        ax.set_title(column)
        if column in ("max_abs", "kurtosis"):
            ax.set_yscale("symlog")
    from .figures import legend_outside, require_data

    for ax, column in zip(np.atleast_1d(axes), columns):
        require_data(ax, what=f"the {column} panel")
    legend_outside(np.atleast_1d(axes)[len(columns) // 2], ncol=len(summary["kind"].unique()), title="voxel kind")
    return fig
