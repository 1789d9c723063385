"""Describing functional networks and key neurons: tables and figures for stages 2 and 3.

Everything takes a fitted :class:`~funcprune.ica.FunctionalNetworks` (and, where
needed, the activation store it was fitted on) and returns a tidy
``pandas.DataFrame`` or a matplotlib figure. Used in the chapters
:doc:`/executed/02_functional_networks` and :doc:`/executed/03_key_neurons`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .agreement import match_maps
from .ica import FunctionalNetworks
from .scoring import is_key
from .store import ActivationStore

__all__ = [
    "key_channel_sets",
    "key_neuron_overlap",
    "network_connectivity",
    "network_table",
    "plot_digital_brain",
    "plot_key_overlap",
    "plot_layer_maps",
    "plot_score_distributions",
    "plot_widths",
    "stability",
    "window_table",
]


def _channels_above(z: np.ndarray, channels: np.ndarray, threshold: float) -> np.ndarray:
    """Channels with ``|z| > threshold`` in either voxel copy."""
    return np.unique(channels[is_key(z, threshold)])


def network_table(fn: FunctionalNetworks, threshold: float = 3.0) -> pd.DataFrame:
    """Size of every network (map) of every layer.

    Parameters
    ----------
    fn : FunctionalNetworks
        Fitted in ``mode="layer"``.
    threshold : float, default=3.0
        A voxel belongs to a network when ``|z| > threshold``.

    Returns
    -------
    pandas.DataFrame
        One row per (layer, map): ``group``, ``explained_variance``, ``n_voxels``
        above threshold, ``n_channels`` (distinct channels), ``peak_z`` and
        ``up_share`` (fraction of the member voxels that are ``up`` copies; the
        store's second kind).
    """
    rows = []
    for layer, maps in fn.maps_.items():
        channels = fn.voxel_channels_[layer]
        second_kind = np.arange(len(channels)) >= len(channels) // 2
        for m, z in enumerate(maps):
            member = is_key(z, threshold)
            rows.append({"layer": layer, "map": m, "group": int(fn.map_groups_[layer][m]),
                         "explained_variance": float(fn.explained_variance_[layer][m]),
                         "n_voxels": int(member.sum()),
                         "n_channels": int(len(_channels_above(z, channels, threshold))),
                         "peak_z": float(z.max()),
                         "up_share": float(second_kind[member].mean()) if member.any() else np.nan})
    return pd.DataFrame(rows)


def stability(fn_a: FunctionalNetworks, fn_b: FunctionalNetworks | None = None) -> pd.DataFrame:
    """How reproducible the maps are: across two fits, or across two groups of one fit.

    Maps are matched one to one (Hungarian assignment on ``|corr|``, see
    :func:`~funcprune.agreement.match_maps`).

    Parameters
    ----------
    fn_a : FunctionalNetworks
    fn_b : FunctionalNetworks, optional
        A second fit (another seed). Without it, group 0 of ``fn_a`` is compared
        with group 1 (split-half stability; needs ``n_groups >= 2``).

    Returns
    -------
    pandas.DataFrame
        Per layer: ``median``, ``min`` matched ``|corr|`` and ``frac_above_0.8``.
    """
    rows = []
    for layer in fn_a.maps_:
        if fn_b is None:
            groups = fn_a.map_groups_[layer]
            if groups.max() < 1:
                raise ValueError("split-half stability needs a fit with n_groups >= 2")
            ref, est = fn_a.maps_[layer][groups == 0], fn_a.maps_[layer][groups == 1]
        else:
            if layer not in fn_b.maps_:
                continue
            ref, est = fn_a.maps_[layer], fn_b.maps_[layer]
        _, corr = match_maps(ref, est)
        rows.append({"layer": layer, "median": float(np.median(corr)), "min": float(corr.min()),
                     "frac_above_0.8": float((corr > 0.8).mean())})
    return pd.DataFrame(rows)


def network_connectivity(fn: FunctionalNetworks, store: ActivationStore, layer: int,
                         kind: str = "correlation") -> np.ndarray:
    """Functional connectivity between the networks of one layer.

    The networks' time courses (least-squares projection of the z-scored
    activity onto the maps, as nilearn does) go to nilearn's
    :class:`~nilearn.connectome.ConnectivityMeasure`.

    Returns
    -------
    ndarray of shape (n_maps, n_maps)
    """
    from nilearn.connectome import ConnectivityMeasure

    courses = fn.time_courses(np.asarray(store.layer(layer), dtype=np.float64), layer)
    return ConnectivityMeasure(kind=kind, standardize="zscore_sample").fit_transform([courses])[0]


def window_table(fn: FunctionalNetworks, threshold: float = 3.0, min_share: float = 0.1) -> pd.DataFrame:
    """Which layers each cross-layer network touches (``mode="window"`` fits).

    A z-scored map has a few voxels above any threshold by chance (about 0.3% above
    3 for Gaussian noise, i.e. ~8 of 3072 voxels), so a layer counts as touched only
    when it holds at least ``min_share`` of the network's member voxels.

    Returns
    -------
    pandas.DataFrame
        One row per (window, map): ``layers_touched``, ``n_layers_touched``,
        ``n_members`` and the share of the members in each layer of the window
        (``share_l<k>`` columns in window order).
    """
    rows = []
    for start, maps in fn.window_maps_.items():
        layers = fn.window_voxel_layers_[start]
        window = fn.window_layers_[start]
        for m, z in enumerate(maps):
            member = is_key(z, threshold)
            n_members = int(member.sum())
            shares = {layer: float(member[layers == layer].sum() / max(n_members, 1)) for layer in window}
            touched = [layer for layer, share in shares.items() if share >= min_share]
            rows.append({"window": start, "map": m, "layers_touched": touched,
                         "n_layers_touched": len(touched), "n_members": n_members,
                         **{f"share_l{i}": shares[layer] for i, layer in enumerate(window)}})
    return pd.DataFrame(rows)


def key_channel_sets(fn: FunctionalNetworks, threshold: float) -> dict[int, list[np.ndarray]]:
    """Key channels of each network: per layer, one array of channel indices per map."""
    return {layer: [_channels_above(z, fn.voxel_channels_[layer], threshold) for z in maps]
            for layer, maps in fn.maps_.items()}


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = len(np.union1d(a, b))
    return len(np.intersect1d(a, b)) / union if union else np.nan


def key_neuron_overlap(fn_a: FunctionalNetworks, fn_b: FunctionalNetworks | None = None, *,
                       threshold: float = 3.0) -> pd.DataFrame:
    """Overlap (Jaccard) of key-neuron sets.

    Without ``fn_b``: between the networks of each layer (mean over map pairs: do
    networks share their key neurons?). With ``fn_b``: between the union of key
    neurons of each layer in two fits (are the same channels key under another seed?).

    Returns
    -------
    pandas.DataFrame
        Per layer: ``jaccard`` and ``n_key`` (key channels of ``fn_a``).
    """
    sets_a = key_channel_sets(fn_a, threshold)
    sets_b = key_channel_sets(fn_b, threshold) if fn_b is not None else None
    rows = []
    for layer, per_map in sets_a.items():
        union_a = np.unique(np.concatenate(per_map)) if per_map else np.array([], dtype=int)
        if sets_b is None:
            pairs = [_jaccard(per_map[i], per_map[j]) for i in range(len(per_map))
                     for j in range(i + 1, len(per_map))]
            value = float(np.nanmean(pairs)) if pairs else np.nan
        elif layer in sets_b:
            value = _jaccard(union_a, np.unique(np.concatenate(sets_b[layer])))
        else:
            continue
        rows.append({"layer": layer, "jaccard": value, "n_key": int(len(union_a))})
    return pd.DataFrame(rows)


def plot_layer_maps(fn: FunctionalNetworks, layer: int, n_maps: int = 6, kinds: Sequence[str] = ("act", "up"),
                    vmax: float = 6.0) -> Any:
    """The first ``n_maps`` maps of a layer as images, one row per map, one column per voxel kind.

    Each kind's channels are folded into a near-square grid, like a brain slice.
    """
    import matplotlib.pyplot as plt

    maps = fn.maps_[layer][:n_maps]
    n_kinds = len(kinds)
    width = maps.shape[1] // n_kinds
    cols = int(np.ceil(np.sqrt(width)))
    rows_ = int(np.ceil(width / cols))
    fig, axes = plt.subplots(len(maps), n_kinds, figsize=(2.2 * n_kinds, 2.0 * len(maps)), squeeze=False,
                             constrained_layout=True)
    image = None
    for m, z in enumerate(maps):
        for k, kind in enumerate(kinds):
            grid = np.full(rows_ * cols, np.nan)
            grid[:width] = z[k * width:(k + 1) * width]
            image = axes[m, k].imshow(grid.reshape(rows_, cols), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            axes[m, k].set_xticks([])
            axes[m, k].set_yticks([])
            if m == 0:
                axes[m, k].set_title(kind)
        axes[m, 0].set_ylabel(f"map {m}")
    fig.colorbar(image, ax=axes, label="z", shrink=0.6)
    fig.suptitle(f"layer {layer}: channels folded into a {rows_} x {cols} grid")
    return fig


def plot_digital_brain(scores: Mapping[int, np.ndarray], *, threshold: float | None = None,
                       sort: bool = True) -> Any:
    """The whole model as one image: layers (rows) x channels (columns), coloured by key score.

    Parameters
    ----------
    scores : Mapping[int, ndarray of shape (width,)]
        Per-layer channel scores (e.g. key-neuron ``max |z|``).
    threshold : float, optional
        Draw only whether a channel is key (score above it).
    sort : bool, default=True
        Sort each layer's channels by score, so the image shows how many are key.
    """
    import matplotlib.pyplot as plt

    layers = sorted(scores)
    width = max(len(scores[layer]) for layer in layers)
    image = np.full((len(layers), width), np.nan)
    for r, layer in enumerate(layers):
        s = np.sort(scores[layer])[::-1] if sort else scores[layer]
        image[r, :len(s)] = (s > threshold).astype(float) if threshold is not None else s
    fig, ax = plt.subplots(figsize=(9, 4), constrained_layout=True)
    shown = ax.imshow(image, aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_xlabel("channel" + (" (sorted by score within layer)" if sort else ""))
    ax.set_ylabel("layer")
    fig.colorbar(shown, ax=ax, label="key" if threshold is not None else "score = max |z|")
    return fig


def plot_score_distributions(scores: Mapping[int, np.ndarray]) -> Any:
    """Box plots of the channel scores of every layer."""
    import matplotlib.pyplot as plt

    layers = sorted(scores)
    fig, ax = plt.subplots(figsize=(10, 3.5), constrained_layout=True)
    ax.boxplot([scores[layer] for layer in layers], positions=layers, widths=0.6, showfliers=False)
    ax.set_xlabel("layer")
    ax.set_ylabel("score = max |z|")
    return fig


def plot_widths(widths: pd.DataFrame, original: int | None = None, title: str = "") -> Any:
    """Kept MLP width per layer, one line per column of ``widths`` (index: layer).

    Columns with identical widths are drawn as one line labelled with all their names
    (``"a = b"``), so no line hides another; markers and dashes differ from line to line,
    and the legend sits below the axes, off the data.
    """
    import matplotlib.pyplot as plt

    from .figures import legend_outside, require_data

    merged: dict[tuple[float, ...], list[str]] = {}
    for column in widths.columns:
        merged.setdefault(tuple(widths[column].to_numpy(float)), []).append(str(column))
    fig, ax = plt.subplots(figsize=(8, 3.8), constrained_layout=True)
    styles = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--")]
    for j, (values, names) in enumerate(merged.items()):
        marker, dash = styles[j % len(styles)]
        ax.plot(widths.index, values, marker=marker, ms=3.5, ls=dash, label=" = ".join(names))
    if original is not None:
        ax.axhline(original, color="grey", ls=":", label="dense")
    ax.set_xlabel("layer")
    ax.set_ylabel("kept channels")
    ax.set_title(title)
    legend_outside(ax, ncol=3)
    require_data(ax, what="the widths figure")
    return fig


def plot_key_overlap(overlap: pd.DataFrame) -> Any:
    """Jaccard overlap of key-neuron sets per layer, one series per ``comparison``; the legend off the data.

    Parameters
    ----------
    overlap : pandas.DataFrame
        :func:`key_neuron_overlap` rows with a ``comparison`` column (e.g. "between networks",
        "between seeds").
    """
    import matplotlib.pyplot as plt

    from .figures import legend_outside, require_data

    fig, ax = plt.subplots(figsize=(8, 3.4), constrained_layout=True)
    for name, part in overlap.groupby("comparison"):
        ax.plot(part["layer"], part["jaccard"], marker="o", ms=3, ls="-" if len(part) > 3 else "", label=name)
    ax.set_xlabel("layer")
    ax.set_ylabel("Jaccard overlap")
    ax.set_ylim(0, max(1.0, float(overlap["jaccard"].max()) * 1.05) if len(overlap) else 1.0)
    legend_outside(ax, ncol=2)
    require_data(ax, what="the overlap figure")
    return fig
