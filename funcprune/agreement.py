"""Do two fits agree? Matching maps, shared key neurons, converged and stopped layers side by side.

Functions on fitted :class:`~funcprune.ica.FunctionalNetworks` (two seeds, two halves of
the text, a fit and a longer run of it) that say how much of what a fit found is stable:
:func:`match_maps` pairs maps one to one, :func:`top_overlap` counts shared key neurons,
:func:`seed_agreement` puts the layers whose runs converged beside those that stopped.
:func:`funcprune.ica.convergence_check` (which reruns FastICA) and
:func:`funcprune.atlas.stability` build on them. Used in :doc:`/executed/02_functional_networks`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .ica import FunctionalNetworks

__all__ = ["match_maps", "seed_agreement", "top_overlap"]


def match_maps(reference: np.ndarray, estimate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pair two sets of maps by Hungarian assignment on their absolute correlation.

    Parameters
    ----------
    reference : ndarray of shape (n_ref, n_voxels)
    estimate : ndarray of shape (n_est, n_voxels)

    Returns
    -------
    pairs : ndarray of shape (min(n_ref, n_est), 2)
        Row ``(i, j)`` pairs ``reference[i]`` with ``estimate[j]``.
    abs_corr : ndarray of shape (min(n_ref, n_est),)
        ``|corr(reference[i], estimate[j])|`` of each pair.
    """
    from scipy.optimize import linear_sum_assignment

    n_ref = reference.shape[0]
    corr = np.abs(np.corrcoef(reference, estimate)[:n_ref, n_ref:])
    rows, cols = linear_sum_assignment(-corr)
    return np.stack([rows, cols], axis=1), corr[rows, cols]


def top_overlap(scores_a: np.ndarray, scores_b: np.ndarray, fraction: float = 0.2) -> float:
    """Share of the top ``fraction`` of channels by ``scores_a`` that are also top by ``scores_b``.

    Parameters
    ----------
    scores_a, scores_b : ndarray of shape (n_channels,)
        Key-neuron scores (``max |z|``) of the same channels from two fits.
    fraction : float, default=0.2
        Share of channels counted as key (at least one).

    Returns
    -------
    float
        1.0 when both fits pick the same key neurons.
    """
    k = max(1, int(round(fraction * len(scores_a))))
    top_a = np.argsort(-scores_a, kind="stable")[:k]
    top_b = np.argsort(-scores_b, kind="stable")[:k]
    return len(np.intersect1d(top_a, top_b)) / k


def seed_agreement(fn_a: "FunctionalNetworks", fn_b: "FunctionalNetworks", fraction: float = 0.2) -> "Any":
    """Converged and non-converged layers side by side: how well two fits (two seeds) agree.

    Parameters
    ----------
    fn_a, fn_b : FunctionalNetworks
        Two fits of the same input in ``mode="layer"`` (e.g. two ``random_state``);
        layers fitted by both are compared.
    fraction : float, default=0.2
        Share of channels counted as key neurons for :func:`top_overlap`.

    Returns
    -------
    pandas.DataFrame
        Per layer: ``converged`` (every group's selected restart converged, in both
        fits), ``restarts_converged`` (share of all restarts of both fits that
        converged), ``map_corr_median`` and ``map_corr_min`` (maps matched one to
        one) and ``key_overlap`` of the key-neuron scores.
    """
    import pandas as pd

    from .scoring import key_neuron_scores

    rows = []
    for layer in sorted(set(fn_a.maps_) & set(fn_b.maps_)):
        records = [r for fn in (fn_a, fn_b) for r in fn.convergence_ if r["key"] == layer]
        _, corr = match_maps(fn_a.maps_[layer].astype(np.float64), fn_b.maps_[layer].astype(np.float64))
        channels = fn_a.voxel_channels_[layer]
        width = int(channels.max()) + 1
        score_a = key_neuron_scores({layer: fn_a.maps_[layer]}, {layer: channels}, width)[layer]
        score_b = key_neuron_scores({layer: fn_b.maps_[layer]}, {layer: fn_b.voxel_channels_[layer]}, width)[layer]
        restarts = [c for r in records for c in r["converged"]]
        rows.append({"layer": layer, "converged": all(r["status"] == "ok" for r in records),
                     "restarts_converged": float(np.mean(restarts)) if restarts else float("nan"),
                     "map_corr_median": float(np.median(corr)), "map_corr_min": float(corr.min()),
                     "key_overlap": top_overlap(score_a, score_b, fraction)})
    return pd.DataFrame(rows, columns=["layer", "converged", "restarts_converged", "map_corr_median",
                                       "map_corr_min", "key_overlap"])
