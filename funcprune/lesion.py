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

Random controls of the same size cannot tell function from size: a network of large
channels beats them by size alone. ``control="magnitude"`` draws controls that match the
network's channels stratum by stratum of activation RMS (:func:`matched_channels`,
:func:`channel_magnitude`); ``protected=`` leaves out the layers pruning never touches.

:func:`lesion_verdict` turns the per-network table into a test across networks
(Wilcoxon signed-rank, one-sided), or across layers (``unit="layer"``: the networks of
one layer are one piece of evidence), and sentences that say what was found, true for
any outcome; :func:`lesion_scope` says what the test can and cannot show. Tokens are
scored by the package's one NLL engine, :func:`funcprune.evaluate.token_nll`; a lesioned
pass starts at its layer (:class:`funcprune.layerpass.LayerInputs`: the same NLL to the bit).
Used in the chapter :doc:`/executed/06_ablations`.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats as sps
from torch import nn
from tqdm.auto import tqdm

from .adapters import get_adapter
from .atlas import key_channel_sets
from .capture import MLPRecorder
from .layerpass import LayerInputs
from .evaluate import token_nll
from .ica import FunctionalNetworks
from .models import input_device

__all__ = ["channel_magnitude", "lesion", "lesion_scope", "lesion_study", "lesion_verdict", "matched_channels",
           "plot_lesions", "token_nll"]


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
        device = input_device(model)
        for start in range(0, windows.shape[0], batch_size):
            rec.forward(input_ids=windows[start:start + batch_size].to(device))
            for layer in layers:
                rows[layer].append(np.concatenate([rec.records[(layer, k)].numpy() for k in kinds], axis=1))
    n, length = windows.shape
    courses = {}
    for layer in layers:
        X = np.concatenate(rows[layer]).astype(np.float64)
        tc = fn.time_courses(X, layer).reshape(n, length, -1)
        courses[layer] = tc[:, :-1]  # the activity at position i shapes the prediction of token i + 1
    return courses


def channel_magnitude(model: nn.Module, windows: torch.Tensor, layers: Sequence[int], *,
                      batch_size: int = 4) -> dict[int, np.ndarray]:
    """Root mean square of each MLP channel's activation at the down projection's input.

    Parameters
    ----------
    model : nn.Module
        A causal LM with a registered adapter (sharded or not).
    windows : LongTensor of shape (n_windows, seq_len)
        The tokens it is measured on (every position counts).
    layers : sequence of int
    batch_size : int, default=4

    Returns
    -------
    dict[int, ndarray of shape (width,)]
        Layer -> ``sqrt(mean over tokens of a_j^2)``, float64.
    """
    layers = [int(layer) for layer in layers]
    sums: dict[int, torch.Tensor] = {}
    with torch.inference_mode(), MLPRecorder(model, kinds=("product",), layers=layers, stop_early=True) as rec:
        device = input_device(model)
        for start in range(0, windows.shape[0], batch_size):
            rec.forward(input_ids=windows[start:start + batch_size].to(device), use_cache=False)
            for layer in layers:
                x = rec.records[(layer, "product")].double()
                sums[layer] = sums.get(layer, 0) + (x ** 2).sum(dim=0)
    return {layer: np.sqrt(sums[layer].numpy() / windows.numel()) for layer in layers}


def matched_channels(rng: np.random.Generator, magnitude: np.ndarray, channels: Sequence[int],
                     n_strata: int = 10) -> np.ndarray:
    """A random set of channels with the same magnitude profile as ``channels``.

    The layer's channels are ranked by ``magnitude`` and cut into ``n_strata`` strata of
    equal count (channel of rank ``r`` of ``W`` is in stratum ``floor(r n_strata / W)``).
    For each stratum, as many channels are drawn (without replacement) as ``channels``
    has there, from the stratum's channels outside ``channels``; where the stratum has
    too few of those, the rest are drawn from ``channels`` itself.

    Returns
    -------
    ndarray of int
        Sorted channel indices, ``len(channels)`` of them.
    """
    mag = np.asarray(magnitude, dtype=np.float64)
    chans = np.asarray(channels, dtype=np.int64)
    width = mag.size
    rank = np.empty(width, dtype=np.int64)
    rank[np.argsort(mag, kind="stable")] = np.arange(width)
    stratum = rank * n_strata // width
    inside = np.zeros(width, dtype=bool)
    inside[chans] = True
    drawn = []
    for s in np.unique(stratum[chans]):
        need = int(np.sum(stratum[chans] == s))
        pool = np.flatnonzero((stratum == s) & ~inside)
        take = rng.choice(pool, size=min(need, pool.size), replace=False)
        if take.size < need:
            own = np.flatnonzero((stratum == s) & inside)
            take = np.concatenate([take, rng.choice(own, size=need - take.size, replace=False)])
        drawn.append(take)
    return np.sort(np.concatenate(drawn)) if drawn else np.zeros(0, dtype=np.int64)


def lesion_study(model: nn.Module, fn: FunctionalNetworks, windows: torch.Tensor, *,
                 layers: Sequence[int] | None = None, maps_per_layer: int = 4, threshold: float = 3.0,
                 n_random: int = 2, active_share: float = 0.1, seed: int = 0,
                 kinds: Sequence[str] | None = None, batch_size: int = 4, progress: bool = True,
                 control: str = "size", magnitude: Mapping[int, np.ndarray] | None = None, n_strata: int = 10,
                 protected: Sequence[int] | None = None, n_layers: int = 5) -> pd.DataFrame:
    """Lesion each network and random sets of the same size; compare the NLL changes.

    With ``control="magnitude"`` the random controls also match the network's channel
    magnitudes: the layer's channels are cut into ``n_strata`` equal-count strata by
    magnitude (deciles by default), and each control draws as many channels from each
    stratum as the network has there (from the channels outside the network where the
    stratum has enough). A network whose channels are merely large then no longer beats
    its controls. The magnitude is the root mean square of each channel's activation at
    the down projection's input on ``windows`` (dense model), unless ``magnitude`` gives
    another (e.g. FLAP's score).

    Parameters
    ----------
    model : nn.Module
        The dense model the networks were fitted on (never modified).
    fn : FunctionalNetworks
        Fitted in ``mode="layer"``.
    windows : LongTensor of shape (n_windows, seq_len)
        Held-out token windows (not calibration text; a validation split is right).
    layers : sequence of int, optional
        Layers whose networks are lesioned; default ``n_layers`` evenly spaced fitted layers.
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
    control : {"size", "magnitude"}, default="size"
        ``"size"``: controls of as many channels drawn uniformly from the layer.
        ``"magnitude"``: drawn to match the network's magnitude strata, as above.
    magnitude : dict[int, ndarray of shape (width,)], optional
        Layer -> a magnitude per channel; default: activation RMS (:func:`channel_magnitude`).
    n_strata : int, default=10
        Equal-count magnitude strata per layer (``control="magnitude"``).
    protected : sequence of int, optional
        Layers that pruning never touches (e.g.
        :func:`funcprune.plan.default_protected_layers`): left out of the default choice
        and dropped from ``layers`` (listed in ``attrs["left_out"]``); lesioning them says
        nothing about a pruning decision.
    n_layers : int, default=5
        Layers of the default choice: with layers as the units of the verdict
        (:func:`lesion_verdict` ``unit="layer"``) the smallest one-sided p-value is ``2 ** -n_layers``, so
        five is the fewest that can reach 0.05.

    Returns
    -------
    pandas.DataFrame
        One row per network: ``layer``, ``map``, ``n_channels``, and for the network
        (``net_``) and the mean of its random controls (``rand_``) the mean NLL change
        ``*_all``, on active tokens ``*_active`` and on the rest ``*_rest``; plus
        ``excess_all = net_all - rand_all`` and ``excess_specificity =
        (net_active - net_rest) - (rand_active - rand_rest)``. ``net_magnitude`` and
        ``rand_magnitude`` (mean magnitude of the network's channels and of the controls'
        channels). ``attrs`` hold the settings (``control``, ``magnitude``: what was
        matched), the dense NLL and the left-out layers.

    Raises
    ------
    ValueError
        Bad settings or layers that were not fitted, naming the accepted values.
    """
    user_magnitude = magnitude
    if not 0.0 < active_share < 1.0:
        raise ValueError(f"active_share must be in (0, 1), got {active_share}")
    if n_random < 1 or maps_per_layer < 1:
        raise ValueError(f"n_random and maps_per_layer must be >= 1, got {n_random} and {maps_per_layer}")
    if control not in ("size", "magnitude"):
        raise ValueError(f"unknown control {control!r}; accepted: 'size', 'magnitude'")
    if n_strata < 1:
        raise ValueError(f"n_strata must be >= 1, got {n_strata}")
    skip = {int(x) for x in (protected or ())}
    fitted = sorted(fn.maps_)
    candidates = [layer for layer in fitted if layer not in skip]
    if layers is None:
        if not candidates:
            raise ValueError(f"every fitted layer {fitted} is protected ({sorted(skip)}): nothing to lesion")
        picks = np.linspace(0, len(candidates) - 1, min(int(n_layers), len(candidates))).round().astype(int)
        layers = [candidates[i] for i in dict.fromkeys(picks)]
    bad = [layer for layer in layers if layer not in fn.maps_]
    if bad:
        raise ValueError(f"layers {bad} were not fitted; fitted layers: {fitted}")
    left_out = sorted({int(x) for x in layers} & skip)
    layers = [layer for layer in dict.fromkeys(int(x) for x in layers) if layer not in skip]
    if not layers:
        raise ValueError(f"every requested layer is protected ({left_out}): nothing to lesion")
    model.eval()
    adapter = get_adapter(model)
    widths = {i: adapter.mlp_weight(adapter.get_layers(model)[i], "mlp.down").shape[1] for i in layers}
    members = key_channel_sets(fn, threshold)
    courses = _time_courses(model, fn, windows, layers, _kinds(fn, kinds), batch_size)
    inputs = {layer: LayerInputs(model, layer) for layer in layers}  # a lesion recomputes from its layer on
    with ExitStack() as stack:
        for recorder in inputs.values():
            stack.enter_context(recorder.record())
        dense = token_nll(model, windows, batch_size=batch_size)
    if magnitude is None:
        magnitude = channel_magnitude(model, windows, layers, batch_size=batch_size)
    mags = {}
    for layer in layers:
        if layer not in magnitude or np.asarray(magnitude[layer]).shape != (widths[layer],):
            raise ValueError(f"magnitude must give {widths[layer]} values for layer {layer}, got "
                             f"{None if layer not in magnitude else np.asarray(magnitude[layer]).shape}")
        mags[layer] = np.asarray(magnitude[layer], dtype=np.float64)
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
            with lesion(model, {layer: channels}), inputs[layer].replay():
                delta = token_nll(model, windows, batch_size=batch_size) - dense
            bar.update(1)
            return float(delta.mean()), float(delta[active].mean()), float(delta[~active].mean())

        net = effect(chans)
        if control == "size":
            drawn = [rng.choice(widths[layer], size=len(chans), replace=False) for _ in range(n_random)]
        else:
            drawn = [matched_channels(rng, mags[layer], chans, n_strata) for _ in range(n_random)]
        controls = np.array([effect(c) for c in drawn])
        rand = controls.mean(axis=0)
        rows.append({"layer": layer, "map": m, "n_channels": len(chans),
                     "net_magnitude": float(mags[layer][np.asarray(chans)].mean()),
                     "rand_magnitude": float(np.mean([mags[layer][c].mean() for c in drawn])),
                     "net_all": net[0], "net_active": net[1], "net_rest": net[2],
                     "rand_all": rand[0], "rand_active": rand[1], "rand_rest": rand[2],
                     "excess_all": net[0] - rand[0],
                     "excess_specificity": (net[1] - net[2]) - (rand[1] - rand[2])})
    bar.close()
    table = pd.DataFrame(rows)
    table.attrs.update({"threshold": threshold, "n_random": n_random, "active_share": active_share,
                        "seed": seed, "n_windows": int(windows.shape[0]), "seq_len": int(windows.shape[1]),
                        "dense_nll": float(dense.mean()), "layers": layers, "control": control,
                        "n_strata": n_strata if control == "magnitude" else None, "left_out": left_out,
                        "magnitude": ("activation RMS at the down projection's input (dense model, these windows)"
                                      if user_magnitude is None else "given by the caller")})
    return table


def lesion_verdict(table: pd.DataFrame, alpha: float = 0.05, *, unit: str = "network") -> dict[str, Any]:
    """Test across networks (or layers) whether network lesions beat random ones, and say so in sentences.

    Two one-sided Wilcoxon signed-rank tests over the units of ``table``: is
    ``excess_all`` (network minus random NLL change) greater than zero, and is
    ``excess_specificity`` greater than zero.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`lesion_study`.
    alpha : float, default=0.05
        Level of the tests.
    unit : {"network", "layer"}, default="network"
        ``"network"``: every network is one observation. ``"layer"``: the networks of one
        layer are averaged into one observation, because they share the layer's channels,
        text and controls and are not independent evidence; with ``k`` layers the
        smallest p-value the test can give is ``2 ** -k`` (recorded as ``min_p``).

    Returns
    -------
    dict
        ``n_networks``, ``unit``, ``n_units``, ``min_p``, for ``"harm"`` and
        ``"specificity"`` the median excess, the share of units with a positive excess,
        the p-value and whether it is significant; ``sentences`` (list of str) stating
        the outcome either way.
    """
    if unit not in ("network", "layer"):
        raise ValueError(f"unknown unit {unit!r}; accepted: 'network', 'layer'")
    matched = " with the same magnitude profile" if table.attrs.get("control") == "magnitude" else ""
    n_networks = len(table)
    if unit == "layer" and n_networks:
        table = table.groupby("layer", sort=True)[["excess_all", "excess_specificity"]].mean()
    n = len(table)
    min_p = 2.0 ** -n if n else float("nan")
    out: dict[str, Any] = {"n_networks": n_networks, "alpha": alpha, "unit": unit, "n_units": n, "min_p": min_p}
    sentences = []
    units = "networks" if unit == "network" else "layers, each layer's networks averaged into one"
    texts = {
        "harm": ("lesioning a network raises the loss more than lesioning as many random channels of its layer"
                 + matched, "excess_all"),
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
            sentences.append(f"Supported on this model: {claim} (in {share:.0%} of {n} {units}; "
                             f"one-sided Wilcoxon p = {p:.3g}).")
        else:
            floor = (f"; with {n} layers no outcome could reach p below {min_p:.3g}"
                     if unit == "layer" and min_p >= alpha else "")
            sentences.append(f"Not supported on this model: the evidence does not show that {claim} "
                             f"(in {share:.0%} of {n} {units}; one-sided Wilcoxon p = {p:.3g}, "
                             f"level {alpha}{floor}).")
    out["sentences"] = sentences
    return out


def lesion_scope(table: pd.DataFrame) -> list[str]:
    """Sentences on what this run's lesion test can and cannot show, computed from its settings.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`lesion_study` (its ``attrs`` name the control, the layers and what was left out).

    Returns
    -------
    list of str
        What the control accounts for, what it does not, and how much independent
        evidence the layers give.
    """
    attrs = table.attrs
    control = attrs.get("control", "size")
    layers = sorted({int(x) for x in table["layer"]}) if len(table) else list(attrs.get("layers", []))
    if control == "magnitude":
        can = (f"The test can show whether silencing a network's key neurons hurts the loss more than silencing "
               f"as many channels of the same layer with the same magnitude profile ({attrs.get('magnitude')}, "
               f"{attrs.get('n_strata')} strata): size and magnitude are accounted for, so a larger effect speaks "
               f"for the channels' role, not their size.")
    else:
        can = ("The test can show whether silencing a network's key neurons hurts the loss more than silencing "
               "as many random channels of the same layer; it does not match magnitude, so a network of "
               "large channels beats its controls by size alone, and a positive result cannot tell function "
               "from size.")
    cannot = ("It cannot show what a network computes, nor that a network without an effect is idle: other "
              "channels may stand in for it, zeroing is not the only way to silence a channel, and the "
              "effect is measured on this held-out text only. Matching by activation does not match the "
              "weights that carry each channel into the next layer.")
    left = attrs.get("left_out") or []
    scope = (f"The networks come from {len(layers)} layer{'s' if len(layers) != 1 else ''} ({layers}); "
             f"networks of one layer share its channels and text, so the layers, not the networks, are the "
             f"independent evidence (with {len(layers)} layers the one-sided test cannot go below "
             f"p = {2.0 ** -len(layers):.3g})."
             if layers else "No layer was lesioned.")
    if left:
        scope += f" Protected layers {left} were left out: pruning never touches them."
    return [can, cannot, scope]


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
