"""Do two fits agree? Matching maps, shared key neurons, converged and stopped layers side by side.

Functions on fitted :class:`~funcprune.ica.FunctionalNetworks` (two seeds, two halves of
the text, a fit and a longer run of it) that say how much of what a fit found is stable:
:func:`match_maps` pairs maps one to one, :func:`top_overlap` counts shared key neurons,
:func:`seed_agreement` puts the layers whose runs converged beside those that stopped, and
:func:`convergence_facts` states what the two tables and the fit's convergence record say.
:func:`convergence_check` reruns a fit's selected FastICA restart for longer and compares;
:func:`funcprune.atlas.stability` builds on them. Used in :doc:`/executed/02_functional_networks`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ._fastica import _fastica_restart, _whiten, zscore_time_in_place
from ._ica_input import _as_source, _split_groups

if TYPE_CHECKING:
    from .ica import FunctionalNetworks

__all__ = ["convergence_check", "convergence_facts", "match_maps", "seed_agreement", "top_overlap"]


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


def convergence_facts(agreement: Any, longer: Any, convergence: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What chapter 2 says of the fits that did not converge, by the name it glues each value under.

    Parameters
    ----------
    agreement : pandas.DataFrame
        :func:`seed_agreement` of the fit and another seed.
    longer : pandas.DataFrame
        :func:`convergence_check` of the fit (may be empty).
    convergence : sequence of dict
        The fit's ``convergence_`` record (``converged``: one bool per restart of a layer and group).

    Returns
    -------
    dict
        ``conv_overlap_ok``, ``conv_overlap_stopped``, ``conv_corr_ok`` and ``conv_corr_stopped`` (medians of
        ``key_overlap`` and ``map_corr_median`` over converged and stopped layers, two decimals, or
        ``"n/a (no such layer checked)"``), ``conv_restart_share`` (percentage of all restarts that converged),
        ``conv_no_restart`` (layer-and-group fits where no restart converged), ``conv_n_longer`` and
        ``conv_n_longer_converged`` (fits run longer, and how many then converged), ``conv_longer_corr``,
        ``conv_longer_corr_min`` and ``conv_longer_overlap`` (median, minimum and median of the longer runs'
        agreement, or ``"n/a"``) and ``conv_longer_seconds``.
    """
    by_status = agreement.groupby("converged")[["map_corr_median", "key_overlap"]].median()
    restarts = [c for record in convergence for c in record["converged"]]

    def by(converged: bool, column: str) -> str:
        if converged not in by_status.index:
            return "n/a (no such layer checked)"
        return f"{by_status.loc[converged, column]:.2f}"

    def of_longer(column: str, stat: str) -> str:
        return f"{getattr(longer[column], stat)():.2f}" if len(longer) else "n/a"

    return {"conv_overlap_ok": by(True, "key_overlap"), "conv_overlap_stopped": by(False, "key_overlap"),
            "conv_corr_ok": by(True, "map_corr_median"), "conv_corr_stopped": by(False, "map_corr_median"),
            "conv_restart_share": f"{100 * np.mean(restarts):.0f}",
            "conv_no_restart": sum(not any(record["converged"]) for record in convergence),
            "conv_n_longer": len(longer), "conv_n_longer_converged": int(longer["converged_longer"].sum()),
            "conv_longer_corr": of_longer("map_corr_median", "median"),
            "conv_longer_corr_min": of_longer("map_corr_min", "min"),
            "conv_longer_overlap": of_longer("key_overlap", "median"),
            "conv_longer_seconds": f"{longer['seconds'].sum():.0f}"}


def convergence_check(networks: "FunctionalNetworks", X: Any, layers: Sequence[int] | None = None, *,
                      factor: int = 10, max_fits: int = 3, fraction: float = 0.2) -> "Any":
    """Would a longer FastICA run change the maps, or the key neurons drawn from them?

    FastICA is deterministic given its seed, so running the *selected* restart of a
    fit again from the same seed with ``factor * max_iter`` iterations continues the
    very run that produced the maps. Comparing the two says whether a run stopped by
    ``max_iter`` ("not converged") holds maps that mean anything: if they match the
    longer run as closely as two fits that converged would, the stop was a matter of
    the tolerance, not of the maps.

    Parameters
    ----------
    networks : FunctionalNetworks
        A fit with ``mode="layer"``.
    X : ActivationStore, path, array or mapping of arrays
        The input it was fitted on.
    layers : sequence of int, optional
        Layers to check. Default: up to ``max_fits`` layer-and-group fits whose
        selected restart did not converge, spread over depth.
    factor : int, default=10
        The longer run has ``factor * networks.max_iter`` iterations.
    max_fits : int, default=3
        Fits checked when ``layers`` is not given.
    fraction : float, default=0.2
        Share of channels counted as key neurons for :func:`~funcprune.agreement.top_overlap`.

    Returns
    -------
    pandas.DataFrame
        One row per fit: ``layer``, ``group``, ``status`` (of the fit), ``n_iter`` and
        ``n_iter_longer``, ``converged_longer``, ``map_corr_min`` and ``map_corr_median``
        (matched ``|corr|`` of the fit's maps with the longer run's), ``score_corr``
        (correlation of the channels' key-neuron scores), ``key_overlap`` and ``seconds``
        (of the longer run).
    """
    import pandas as pd

    from .scoring import key_neuron_scores

    check_is_fitted(networks)
    if networks.mode != "layer":
        raise ValueError(f"convergence_check needs a fit with mode='layer'; got mode={networks.mode!r}")
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"factor must be a positive integer; got {factor!r}")
    records = [r for r in networks.convergence_ if r["selected"] is not None]
    if layers is None:
        stopped = [r for r in records if r["status"] == "not_converged"]
        picks = np.unique(np.linspace(0, len(stopped) - 1, min(max_fits, len(stopped))).round().astype(int))
        records = [stopped[i] for i in picks] if stopped else []
    else:
        unknown = sorted(set(layers) - set(networks.maps_))
        if unknown:
            raise ValueError(f"layers {unknown} were not fitted; fitted: {sorted(networks.maps_)}")
        records = [r for r in records if r["key"] in set(layers)]
    source = _as_source(X, None)
    group_rows, _ = _split_groups(source.n_rows, source.doc_ids, networks.n_groups)
    rows = []
    for record in records:
        layer, group = record["key"], record["group"]
        block = networks._read_block(source, [layer], group_rows[group])
        zscore_time_in_place(block)
        white, _ = _whiten(networks._spatial_components(block, record["svd_seed"]))
        start = time.perf_counter()
        longer = _fastica_restart(white, record["ica_seeds"][record["selected"]],
                                  factor * networks.max_iter, networks.tol)
        seconds = time.perf_counter() - start
        maps = longer["sources"].T
        maps = (maps - maps.mean(axis=1, keepdims=True)) / maps.std(axis=1, keepdims=True)
        fitted = networks.maps_[layer][networks.map_groups_[layer] == group].astype(np.float64)
        _, corr = match_maps(fitted, maps)
        channels = {0: networks.voxel_channels_[layer]}
        width = int(channels[0].max()) + 1
        a = key_neuron_scores({0: fitted}, channels, width)[0]
        b = key_neuron_scores({0: maps}, channels, width)[0]
        rows.append({"layer": layer, "group": group, "status": record["status"],
                     "n_iter": record["n_iter"][record["selected"]], "n_iter_longer": longer["n_iter"],
                     "converged_longer": longer["converged"], "map_corr_min": float(corr.min()),
                     "map_corr_median": float(np.median(corr)),
                     "score_corr": float(np.corrcoef(a, b)[0, 1]), "key_overlap": top_overlap(a, b, fraction),
                     "seconds": seconds})
    columns = ["layer", "group", "status", "n_iter", "n_iter_longer", "converged_longer", "map_corr_min",
               "map_corr_median", "score_corr", "key_overlap", "seconds"]
    return pd.DataFrame(rows, columns=columns)
