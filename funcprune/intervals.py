"""Intervals with every source of variation a reader assumes: articles, seeds, families of tests, task means.

:mod:`funcprune.compare` resamples held-out windows as if they were independent, pools a
seeded method's seeds before pairing and decides each comparison at its own level. This
module gives the resampling schemes and corrections that widen those intervals to what a
reader assumes they cover:

* :func:`cluster_bootstrap` -- windows cut from the same article are resampled together
  (a block bootstrap over articles): the mean paired difference over all windows, with a
  percentile interval and a two-sided p-value, like
  :func:`funcprune.compare.paired_bootstrap` but with the article as the unit.
* :func:`hierarchical_bootstrap` -- for a comparison against a seeded method (random
  pruning): in each bootstrap draw the seeds of each side are resampled with
  replacement and averaged window by window, then windows (or articles) are resampled.
  The interval then covers the choice of random channels as well as the choice of text;
  with ``S`` seeds it still understates the seed variance by about ``(S - 1) / S`` (the
  plain bootstrap's bias), which matters below 5 seeds.
* :func:`holm` and :func:`add_holm` -- Holm's step-down correction over a family of
  comparisons (columns ``p_holm``, ``decided_holm``).
* :func:`task_mean_bootstrap` -- a zero-shot comparison on the *mean over tasks of the
  per-task accuracies*, the number the tables show (``mean_acc``, ``mean_preferred``):
  items are resampled within each task, and the statistic weighs tasks equally.

Used by :mod:`funcprune.compare` (the ``cluster=`` and ``seeds=`` options) in the chapter
:doc:`/executed/05_evaluate_benchmarks`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["add_holm", "cluster_bootstrap", "hierarchical_bootstrap", "holm", "task_mean_bootstrap"]


def _check_settings(n_boot: int, alpha: float) -> None:
    if n_boot < 100 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 100 and 0 < alpha < 1, got {n_boot}, {alpha}")


def _cluster_codes(clusters: Sequence[Any] | np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Integer code of each window's cluster (``0 .. G - 1``) and the number of clusters ``G``."""
    labels = list(clusters)
    if len(labels) != n:
        raise ValueError(f"cluster labels must give one label per window: {len(labels)} labels for {n} windows")
    codes = {label: i for i, label in enumerate(dict.fromkeys(labels))}
    return np.asarray([codes[label] for label in labels], dtype=np.int64), len(codes)


def _summary(stats: np.ndarray, observed: float, alpha: float, n: int) -> dict[str, Any]:
    """Percentile interval, centred two-sided p-value and standard error of bootstrap statistics."""
    n_boot = stats.size
    if observed == 0.0:
        p = 1.0
    else:
        p = (1 + int(np.sum(np.abs(stats - observed) >= abs(observed) - 1e-15))) / (1 + n_boot)
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(observed), "ci_low": float(low), "ci_high": float(high), "p_value": float(min(1.0, p)),
            "se": float(stats.std(ddof=1)), "n": int(n)}


def _window_weights(rng: np.random.Generator, codes: np.ndarray | None, n: int, n_boot: int) -> np.ndarray:
    """Bootstrap weights of the windows, ``(n_boot, n)``: how often each window (its cluster) is drawn."""
    if codes is None:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    g = int(codes.max()) + 1
    counts = rng.multinomial(g, np.full(g, 1.0 / g), size=n_boot).astype(np.float64)
    return counts[:, codes]


def cluster_bootstrap(diff: Sequence[float] | np.ndarray, clusters: Sequence[Any] | np.ndarray, *,
                      n_boot: int = 10_000, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Mean paired difference over windows, resampling whole clusters (articles) of windows.

    Each bootstrap draw takes ``G`` clusters with replacement out of the ``G`` clusters
    and computes the mean difference over all windows of the drawn clusters (a cluster
    drawn twice counts twice): the ratio estimator, which weighs every window equally,
    as the observed mean does. With one window per cluster it is the ordinary paired
    bootstrap.

    Parameters
    ----------
    diff : array of shape (n,)
        One paired difference per window (model minus baseline).
    clusters : sequence of shape (n,)
        A label per window (e.g. the id of the article it was cut from); windows with the
        same label are resampled together.
    n_boot, seed, alpha
        As :func:`funcprune.compare.paired_bootstrap`.

    Returns
    -------
    dict
        ``mean``, ``ci_low``, ``ci_high`` (percentile interval), ``p_value`` (share of the
        draws at least as far from the observed mean as the observed mean is from 0:
        the bootstrap of the centred differences), ``se``, ``n`` (windows) and
        ``n_clusters``.

    Raises
    ------
    ValueError
        Fewer than two clusters, non-finite differences, labels of the wrong length or
        settings out of range.

    >>> r = cluster_bootstrap([0.1, 0.12, 0.2, 0.21, 0.15, 0.16], ["a", "a", "b", "b", "c", "c"], n_boot=500)
    >>> r["n_clusters"], round(r["mean"], 3)
    (3, 0.157)
    """
    d = np.asarray(diff, dtype=np.float64)
    if d.ndim != 1 or not np.isfinite(d).all():
        raise ValueError(f"paired differences must be a finite 1-D array, got shape {d.shape}")
    _check_settings(n_boot, alpha)
    codes, g = _cluster_codes(clusters, d.size)
    if g < 2:
        raise ValueError(f"need at least two clusters to resample, got {g} (labels {sorted(set(clusters))[:5]})")
    w = _window_weights(np.random.default_rng(seed), codes, d.size, n_boot)
    stats = (w @ d) / w.sum(axis=1)
    return {**_summary(stats, float(d.mean()), alpha, d.size), "n_clusters": g}


def hierarchical_bootstrap(model: np.ndarray, baseline: np.ndarray, *, clusters: Sequence[Any] | None = None,
                           n_boot: int = 10_000, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Mean paired difference of two groups of seeds, resampling seeds and then windows (or clusters).

    The estimate is the difference of the seeds' means, window by window, averaged over
    windows (the pooled comparison of :func:`funcprune.compare.compare_models`). Each
    bootstrap draw first resamples the ``S`` seeds of each side with replacement (a side
    with one seed keeps it), averages the drawn seeds window by window, and then
    resamples windows (or whole clusters of windows, ``clusters``) with the same draw
    for both sides, so the pairing by window is kept.

    Parameters
    ----------
    model, baseline : array of shape (n_seeds, n_windows) or (n_windows,)
        Per-window values (e.g. mean NLL) of each seed of each side, the same windows in
        the same order.
    clusters : sequence of shape (n_windows,), optional
        A label per window; windows with the same label are resampled together.
    n_boot, seed, alpha
        As :func:`funcprune.compare.paired_bootstrap`.

    Returns
    -------
    dict
        ``mean``, ``ci_low``, ``ci_high``, ``p_value``, ``se``, ``n`` (windows),
        ``n_clusters`` (``n`` without clusters), ``model_seeds`` and ``baseline_seeds``.

    Raises
    ------
    ValueError
        Different windows on the two sides, non-finite values or settings out of range.
    """
    a = np.atleast_2d(np.asarray(model, dtype=np.float64))
    b = np.atleast_2d(np.asarray(baseline, dtype=np.float64))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] < 2:
        raise ValueError(f"both sides need (seeds, windows) arrays over the same >= 2 windows, got {a.shape} "
                         f"and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("per-window values must be finite")
    _check_settings(n_boot, alpha)
    n = a.shape[1]
    codes, g = (None, n) if clusters is None else _cluster_codes(clusters, n)
    if g < 2:
        raise ValueError(f"need at least two clusters to resample, got {g}")
    rng = np.random.default_rng(seed)

    def seed_weights(k: int) -> np.ndarray:
        return rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(np.float64) / k

    pooled = seed_weights(a.shape[0]) @ a - seed_weights(b.shape[0]) @ b  # (n_boot, n): drawn seeds' means
    w = _window_weights(rng, codes, n, n_boot)
    stats = (w * pooled).sum(axis=1) / w.sum(axis=1)
    observed = float((a.mean(axis=0) - b.mean(axis=0)).mean())
    return {**_summary(stats, observed, alpha, n), "n_clusters": g, "model_seeds": int(a.shape[0]),
            "baseline_seeds": int(b.shape[0])}


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control over the given tests).

    Sorted ascending, the ``i``-th smallest of ``m`` p-values (``i`` from 1) is multiplied by
    ``m - i + 1``; the adjusted values are made non-decreasing in that order and capped
    at 1. A test is rejected at level ``alpha`` when its adjusted p-value is below
    ``alpha``, which is Holm's procedure. NaN p-values are left NaN and do not count
    towards ``m``.

    >>> holm([0.01, 0.04, 0.03, 0.005]).round(3).tolist()
    [0.03, 0.06, 0.06, 0.02]
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p-values must be a 1-D array, got shape {p.shape}")
    if ((p < 0) | (p > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {p[(p < 0) | (p > 1)][:5].tolist()}")
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = p[order] * (m - np.arange(m))
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def add_holm(table: pd.DataFrame, *, by: Sequence[str] | None = None, alpha: float = 0.05,
             p_column: str = "p_value") -> pd.DataFrame:
    """Add Holm-adjusted p-values (``p_holm``) and decisions (``decided_holm``) over families of rows.

    Parameters
    ----------
    table : pandas.DataFrame
        A table of tests with a p-value column (e.g.
        :func:`funcprune.compare.headline_comparisons`).
    by : sequence of str, optional
        Columns whose values define a family (e.g. ``["metric"]``: one family per
        metric); ``None``: the whole table is one family.
    alpha : float, default=0.05
        Family-wise level: ``decided_holm`` is ``p_holm < alpha``.
    p_column : str, default="p_value"

    Returns
    -------
    pandas.DataFrame
        A copy with ``p_holm``, ``decided_holm`` and ``family_size`` (tests in the row's family).

    Raises
    ------
    KeyError
        ``p_column`` or a ``by`` column is not in the table, naming the columns it has.
    """
    missing = [c for c in [p_column, *(by or [])] if c not in table.columns]
    if missing:
        raise KeyError(f"columns {missing} are not in the table; it has {list(table.columns)}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    out = table.copy()
    out["p_holm"] = np.nan
    out["family_size"] = 0
    groups = [(None, out)] if not by else out.groupby(list(by), sort=False, dropna=False)
    for _, g in groups:
        p = g[p_column].to_numpy(dtype=np.float64)
        out.loc[g.index, "p_holm"] = holm(p)
        out.loc[g.index, "family_size"] = int((~np.isnan(p)).sum())
    out["decided_holm"] = out["p_holm"] < alpha
    return out


def task_mean_bootstrap(model: Mapping[str, np.ndarray], baseline: Mapping[str, np.ndarray], *,
                        n_boot: int = 10_000, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Difference of the mean over tasks of per-task accuracies, resampling items within each task.

    The statistic is ``mean over tasks of (mean over the task's items of model minus
    baseline)``: the difference of the two models' ``mean_acc`` (or ``mean_preferred``)
    as the results tables show it, where every task weighs the same whatever its number
    of items. Each draw resamples every task's items with replacement (a stratified
    bootstrap), keeping the pairing by item.

    Parameters
    ----------
    model, baseline : dict[str, array of shape (n_items,)]
        Task -> per-item correctness in [0, 1], the same items in the same order on both
        sides.

    Returns
    -------
    dict
        ``mean`` (difference of the means over tasks), ``ci_low``, ``ci_high``,
        ``p_value``, ``se``, ``n`` (items), ``n_tasks``, ``value`` and
        ``baseline_value`` (the two means over tasks) and ``per_task`` (task -> the
        difference of its accuracies).

    Raises
    ------
    ValueError
        Different tasks or items on the two sides, a task with fewer than two items, or
        settings out of range.
    """
    if set(model) != set(baseline) or not model:
        raise ValueError(f"both sides need the same tasks, got {sorted(model)} and {sorted(baseline)}")
    _check_settings(n_boot, alpha)
    rng = np.random.default_rng(seed)
    tasks = sorted(model)
    stats = np.zeros(n_boot)
    per_task: dict[str, float] = {}
    n = 0
    for task in tasks:
        a, b = np.asarray(model[task], dtype=np.float64), np.asarray(baseline[task], dtype=np.float64)
        if a.shape != b.shape or a.ndim != 1 or a.size < 2:
            raise ValueError(f"task {task!r}: need the same >= 2 items on both sides, got {a.shape} and {b.shape}")
        d = a - b
        per_task[task] = float(d.mean())
        stats += _window_weights(rng, None, d.size, n_boot) @ d / d.size
        n += d.size
    stats /= len(tasks)
    observed = float(np.mean(list(per_task.values())))
    return {**_summary(stats, observed, alpha, n), "n_tasks": len(tasks),
            "value": float(np.mean([np.mean(model[t]) for t in tasks])),
            "baseline_value": float(np.mean([np.mean(baseline[t]) for t in tasks])), "per_task": per_task}
