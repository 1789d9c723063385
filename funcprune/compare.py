"""Paired comparisons of pruned models: on the windows and items they share, with intervals.

Every model of a run is scored on the same perplexity windows and the same zero-shot
items (:func:`funcprune.results.evaluate_run` records the per-window negative
log-likelihoods and the per-item correctness). Two models are therefore compared
*pairwise*: the difference is taken window by window (item by item), which removes the
variation between windows that both models share and detects far smaller differences
than an unpaired test.

* :func:`compare_windows` -- the paired bootstrap over windows of the mean NLL
  difference: the perplexity ratio ``exp(mean difference)`` with a percentile interval
  and a two-sided p-value (bootstrap of the centred differences). Every window scores
  the same number of tokens, so the mean of the window means is the token mean.
* :func:`compare_items` -- the paired bootstrap over items of the accuracy difference,
  and McNemar's exact test when both sides are single models.
* :func:`compare_models` -- either comparison for two groups of models of a run
  (several seeds of one method are pooled by averaging their window NLLs, or their item
  correctness, before pairing: the comparison is with the *average* random model, and
  the interval covers the sampling of windows or items, not the choice of random
  channels; :func:`headline_comparisons` reports the seeds' spread beside it).
* :func:`headline_comparisons` -- the comparisons the book reports: ``fn`` and
  ``fn-bias`` against ``flap``, ``wanda-sp`` and ``random`` at every ratio.
* :func:`ranked_table` -- methods ranked by perplexity at each ratio, each with its
  paired interval against the best.
* :func:`describe_evidence` -- sentences computed from those tables, true for any run.

Used in the chapter :doc:`/executed/05_evaluate_benchmarks`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "HEADLINE_BASELINES",
    "HEADLINE_METHODS",
    "compare_items",
    "compare_models",
    "compare_windows",
    "describe_evidence",
    "headline_comparisons",
    "item_correctness",
    "paired_bootstrap",
    "ranked_table",
    "window_nll",
]

#: The paper's methods, compared with each baseline.
HEADLINE_METHODS: tuple[str, ...] = ("fn", "fn-bias")
#: The baselines of the headline comparisons.
HEADLINE_BASELINES: tuple[str, ...] = ("flap", "wanda-sp", "random")
_DENSE = "dense"


# ----------------------------------------------------------------------------------
# The paired tests
# ----------------------------------------------------------------------------------
def paired_bootstrap(diff: Sequence[float] | np.ndarray, *, n_boot: int = 10_000, seed: int = 0,
                     alpha: float = 0.05) -> dict[str, float]:
    """Mean of paired differences with a percentile bootstrap interval and a two-sided p-value.

    Parameters
    ----------
    diff : array of shape (n,)
        One difference per shared window or item (model minus baseline).
    n_boot : int, default=10000
        Bootstrap resamples (of the ``n`` pairs, with replacement).
    seed : int, default=0
        Seed of the resampling (the result is reproducible).
    alpha : float, default=0.05
        ``1 - alpha`` is the coverage of the interval.

    Returns
    -------
    dict
        ``mean``, ``ci_low``, ``ci_high`` (percentiles of the resampled means),
        ``p_value`` (share of resampled means of the centred differences at least as
        far from 0 as the observed mean, ``(1 + count) / (1 + n_boot)``; 1 when the
        mean is 0), ``se`` (bootstrap standard error) and ``n``.

    Raises
    ------
    ValueError
        Fewer than two pairs, non-finite differences, or settings out of range.

    >>> r = paired_bootstrap([0.1, 0.2, 0.15, 0.12, 0.18], n_boot=2000)
    >>> bool(r["ci_low"] > 0 and r["p_value"] < 0.05)
    True
    """
    d = np.asarray(diff, dtype=np.float64)
    if d.ndim != 1 or d.size < 2:
        raise ValueError(f"need at least two paired differences, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("paired differences must be finite")
    if n_boot < 100 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 100 and 0 < alpha < 1, got {n_boot}, {alpha}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    means = d[idx].mean(axis=1)
    observed = float(d.mean())
    centred = (d - observed)[idx].mean(axis=1)
    if observed == 0.0:
        p = 1.0
    else:
        p = (1 + int(np.sum(np.abs(centred) >= abs(observed) - 1e-15))) / (1 + n_boot)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"mean": observed, "ci_low": float(low), "ci_high": float(high), "p_value": float(min(1.0, p)),
            "se": float(means.std(ddof=1)), "n": int(d.size)}


def compare_windows(nll: Sequence[float] | np.ndarray, nll_baseline: Sequence[float] | np.ndarray, *,
                    n_boot: int = 10_000, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Perplexity of a model relative to a baseline on shared windows (paired bootstrap).

    Parameters
    ----------
    nll, nll_baseline : array of shape (n_windows,)
        Mean NLL per window (nats per token), the same windows in the same order.

    Returns
    -------
    dict
        ``estimate`` (perplexity ratio ``exp(mean NLL difference)``, below 1 when the
        model is better), ``ci_low``, ``ci_high`` (the interval on the ratio scale),
        ``p_value``, ``nll_difference`` (mean), ``se``, ``n``, ``decided``
        (``p_value < alpha``) and ``better`` (``"model"``, ``"baseline"`` or
        ``"undecided"``).
    """
    a, b = np.asarray(nll, dtype=np.float64), np.asarray(nll_baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"the two models must share their windows: {a.shape} vs {b.shape} window NLLs")
    r = paired_bootstrap(a - b, n_boot=n_boot, seed=seed, alpha=alpha)
    decided = r["p_value"] < alpha
    return {"estimate": math.exp(r["mean"]), "ci_low": math.exp(r["ci_low"]), "ci_high": math.exp(r["ci_high"]),
            "p_value": r["p_value"], "nll_difference": r["mean"], "se": r["se"], "n": r["n"],
            "decided": bool(decided), "better": _better(decided, r["mean"] < 0)}


def compare_items(correct: Sequence[float] | np.ndarray, correct_baseline: Sequence[float] | np.ndarray, *,
                  n_boot: int = 10_000, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Accuracy of a model minus a baseline's on shared items (paired bootstrap; McNemar).

    Parameters
    ----------
    correct, correct_baseline : array of shape (n_items,)
        Per-item correctness in [0, 1] (1/0 for one model; the mean over seeds for a
        pooled group), the same items in the same order.

    Returns
    -------
    dict
        ``estimate`` (accuracy difference), ``ci_low``, ``ci_high``, ``p_value``
        (bootstrap), ``mcnemar_p`` (exact, on the discordant items; ``None`` unless
        both sides are 0/1), ``discordant`` (model right and baseline wrong, the
        reverse), ``n``, ``decided`` and ``better``.
    """
    a, b = np.asarray(correct, dtype=np.float64), np.asarray(correct_baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"the two models must share their items: {a.shape} vs {b.shape}")
    r = paired_bootstrap(a - b, n_boot=n_boot, seed=seed, alpha=alpha)
    binary = bool(np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all())
    mcnemar = None
    discordant = None
    if binary:
        from scipy.stats import binomtest

        wins, losses = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
        discordant = [wins, losses]
        mcnemar = float(binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0
    decided = r["p_value"] < alpha
    return {"estimate": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "p_value": r["p_value"],
            "mcnemar_p": mcnemar, "discordant": discordant, "se": r["se"], "n": r["n"], "decided": bool(decided),
            "better": _better(decided, r["mean"] > 0)}


def _better(decided: bool, model_better: bool) -> str:
    if not decided:
        return "undecided"
    return "model" if model_better else "baseline"


# ----------------------------------------------------------------------------------
# Reading the per-window and per-item records of a run
# ----------------------------------------------------------------------------------
def window_nll(part: Mapping[str, Any], setting: str) -> tuple[np.ndarray, str]:
    """Per-window NLLs of one model at one window length, and the digest of the windows' tokens."""
    p = part["perplexity"].get(str(setting))
    if p is None:
        raise KeyError(f"{part.get('key')!r} has no perplexity at window length {setting!r}; "
                       f"it has {sorted(part['perplexity'])}")
    return np.asarray(p["window_nll"], dtype=np.float64), p["tokens_sha256"]


def item_correctness(part: Mapping[str, Any], metric: str = "acc") -> dict[str, tuple[list[Any], np.ndarray]]:
    """Per-task item ids and 0/1 correctness of one model (empty when it has no zero-shot items)."""
    zs = part.get("zero_shot") or {}
    out: dict[str, tuple[list[Any], np.ndarray]] = {}
    for task, t in (zs.get("tasks") or {}).items():
        items = t.get("items") or {}
        values = items.get(metric)
        if values is None:
            continue
        out[task] = (list(items["doc_id"]), np.frombuffer(values.encode(), dtype=np.uint8) - ord("0"))
    return out


def _pooled_windows(parts: Sequence[Mapping[str, Any]], setting: str) -> np.ndarray:
    arrays, digests = zip(*(window_nll(p, setting) for p in parts))
    if len(set(digests)) != 1 or len({a.shape for a in arrays}) != 1:
        raise ValueError(f"models {[p['key'] for p in parts]} were not scored on the same windows at {setting}")
    return np.mean(arrays, axis=0)


def _pooled_items(parts: Sequence[Mapping[str, Any]], metric: str) -> tuple[list[tuple[str, Any]], np.ndarray]:
    per_model = [item_correctness(p, metric) for p in parts]
    tasks = sorted(set.intersection(*(set(m) for m in per_model))) if per_model else []
    keys: list[tuple[str, Any]] = []
    values = []
    for task in tasks:
        ids = per_model[0][task][0]
        if any(m[task][0] != ids for m in per_model):
            raise ValueError(f"models {[p['key'] for p in parts]} were not scored on the same {task} items")
        keys += [(task, i) for i in ids]
        values.append(np.mean([m[task][1] for m in per_model], axis=0))
    return keys, (np.concatenate(values) if values else np.zeros(0))


def compare_models(model: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]], metric: str, *,
                   n_boot: int = 10_000, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Paired comparison of two groups of models of a run (one model each, or several seeds pooled).

    Parameters
    ----------
    model, baseline : sequence of dict
        Per-model records (``results.json["models"]`` values). Several records (seeds of
        one method) are pooled by averaging their window NLLs or item correctness.
    metric : str
        ``"ppl@<window>"`` (e.g. ``"ppl@128"``), ``"acc"`` or ``"acc_norm"`` (every item
        of every task both groups answered, pooled).

    Returns
    -------
    dict
        :func:`compare_windows` or :func:`compare_items`, plus ``metric``, ``value`` and
        ``baseline_value`` (pooled perplexities or accuracies).

    Raises
    ------
    ValueError
        An unknown metric, models not scored on the same windows or items, or none shared.
    """
    if not model or not baseline:
        raise ValueError("both groups need at least one model")
    if metric.startswith("ppl@"):
        setting = metric[4:]
        a, b = _pooled_windows(model, setting), _pooled_windows(baseline, setting)
        _, da = window_nll(model[0], setting)
        _, db = window_nll(baseline[0], setting)
        if da != db:
            raise ValueError(f"{model[0]['key']!r} and {baseline[0]['key']!r} were not scored on the same windows")
        result = compare_windows(a, b, n_boot=n_boot, seed=seed, alpha=alpha)
        return {"metric": metric, "value": math.exp(a.mean()), "baseline_value": math.exp(b.mean()), **result}
    if metric in ("acc", "acc_norm"):
        ka, a = _pooled_items(model, metric)
        kb, b = _pooled_items(baseline, metric)
        shared = sorted(set(ka) & set(kb), key=str)
        if len(shared) < 2:
            raise ValueError(f"{model[0]['key']!r} and {baseline[0]['key']!r} share fewer than two scored items")
        ia, ib = {k: i for i, k in enumerate(ka)}, {k: i for i, k in enumerate(kb)}
        a = a[[ia[k] for k in shared]]
        b = b[[ib[k] for k in shared]]
        result = compare_items(a, b, n_boot=n_boot, seed=seed, alpha=alpha)
        return {"metric": metric, "value": float(a.mean()), "baseline_value": float(b.mean()), **result}
    raise ValueError(f"unknown metric {metric!r}; accepted: 'ppl@<window length>', 'acc', 'acc_norm'")


# ----------------------------------------------------------------------------------
# The run's headline comparisons and ranking
# ----------------------------------------------------------------------------------
def _groups(parts: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, float], list[Mapping[str, Any]]]:
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for part in parts.values():
        entry = part["entry"]
        if entry["method"] == _DENSE:
            continue
        groups.setdefault((entry["method"], float(entry["ratio_requested"])), []).append(part)
    return groups


def _metrics_of(group: Sequence[Mapping[str, Any]]) -> list[str]:
    settings = set.intersection(*(set(p["perplexity"]) for p in group))
    metrics = [f"ppl@{s}" for s in sorted(settings, key=int)]
    if all(item_correctness(p) for p in group):
        metrics.append("acc")
    return metrics


def headline_comparisons(parts: Mapping[str, Mapping[str, Any]], *,
                         methods: Sequence[str] = HEADLINE_METHODS, baselines: Sequence[str] = HEADLINE_BASELINES,
                         n_boot: int = 10_000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Every method against every baseline at every ratio, on every metric both were scored on.

    Seeded baselines (random) are pooled over their seeds (see :func:`compare_models`);
    ``seed_min`` and ``seed_max`` give the estimate against each seed alone, the spread a
    different draw of random channels would give.

    Returns
    -------
    pandas.DataFrame
        One row per (ratio, method, baseline, metric): ``ratio``, ``method``,
        ``baseline``, ``metric``, ``n`` (windows or items), ``value``,
        ``baseline_value``, ``estimate`` (perplexity ratio, or accuracy difference),
        ``ci_low``, ``ci_high``, ``p_value``, ``mcnemar_p``, ``decided``, ``better``,
        ``model_keys``, ``baseline_keys``, ``baseline_seeds``, ``seed_min``, ``seed_max``.
    """
    groups = _groups(parts)
    rows = []
    for (method, ratio), group in sorted(groups.items(), key=lambda kv: kv[0][1]):
        if method not in methods:
            continue
        for base in baselines:
            bgroup = groups.get((base, ratio))
            if not bgroup:
                continue
            shared = [m for m in _metrics_of(group) if m in _metrics_of(bgroup)]
            for metric in shared:
                r = compare_models(group, bgroup, metric, n_boot=n_boot, seed=seed, alpha=alpha)
                singles = [compare_models(group, [b], metric, n_boot=200, seed=seed, alpha=alpha)["estimate"]
                           for b in bgroup] if len(bgroup) > 1 else [r["estimate"]]
                rows.append({"ratio": ratio, "method": method, "baseline": base, "metric": metric, "n": r["n"],
                             "value": r["value"], "baseline_value": r["baseline_value"], "estimate": r["estimate"],
                             "ci_low": r["ci_low"], "ci_high": r["ci_high"], "p_value": r["p_value"],
                             "mcnemar_p": r.get("mcnemar_p"), "decided": r["decided"], "better": r["better"],
                             "model_keys": ",".join(p["key"] for p in group),
                             "baseline_keys": ",".join(p["key"] for p in bgroup), "baseline_seeds": len(bgroup),
                             "seed_min": min(singles), "seed_max": max(singles)})
    columns = ["ratio", "method", "baseline", "metric", "n", "value", "baseline_value", "estimate", "ci_low",
               "ci_high", "p_value", "mcnemar_p", "decided", "better", "model_keys", "baseline_keys",
               "baseline_seeds", "seed_min", "seed_max"]
    return pd.DataFrame(rows, columns=columns)


def ranked_table(parts: Mapping[str, Mapping[str, Any]], metric: str, *, n_boot: int = 10_000, seed: int = 0,
                 alpha: float = 0.05) -> pd.DataFrame:
    """Methods ranked by perplexity at each ratio, each against the best with a paired interval.

    Parameters
    ----------
    parts : dict
        Per-model records of a run.
    metric : str
        ``"ppl@<window>"``; models without it are left out.

    Returns
    -------
    pandas.DataFrame
        One row per (ratio, method), best first: ``ratio``, ``rank``, ``method``,
        ``seeds``, ``ppl`` (seeds pooled), ``vs_best`` (perplexity ratio to the best,
        1 for the best itself), ``ci_low``, ``ci_high``, ``p_value`` and
        ``decided`` (the gap to the best is decided by the paired test).
    """
    if not metric.startswith("ppl@"):
        raise ValueError(f"ranked_table ranks by perplexity: metric must be 'ppl@<window>', got {metric!r}")
    setting = metric[4:]
    rows = []
    by_ratio: dict[float, list[tuple[str, list[Mapping[str, Any]]]]] = {}
    for (method, ratio), group in _groups(parts).items():
        if all(setting in p["perplexity"] for p in group):
            by_ratio.setdefault(ratio, []).append((method, group))
    for ratio in sorted(by_ratio):
        scored = sorted(((math.exp(_pooled_windows(g, setting).mean()), m, g) for m, g in by_ratio[ratio]),
                        key=lambda t: t[0])
        best = scored[0][2]
        for rank, (ppl, method, group) in enumerate(scored, start=1):
            if rank == 1:
                r = {"estimate": 1.0, "ci_low": 1.0, "ci_high": 1.0, "p_value": 1.0, "decided": False}
            else:
                r = compare_models(group, best, metric, n_boot=n_boot, seed=seed, alpha=alpha)
            rows.append({"ratio": ratio, "rank": rank, "method": method, "seeds": len(group), "ppl": ppl,
                         "vs_best": r["estimate"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                         "p_value": r["p_value"], "decided": r["decided"]})
    return pd.DataFrame(rows, columns=["ratio", "rank", "method", "seeds", "ppl", "vs_best", "ci_low", "ci_high",
                                       "p_value", "decided"])


# ----------------------------------------------------------------------------------
# Sentences
# ----------------------------------------------------------------------------------
def _pct(ratio: float) -> str:
    return f"{100 * ratio:g} %"


def _times(r: Mapping[str, Any]) -> str:
    return f"{r['estimate']:.2f}x (95 % CI {r['ci_low']:.2f}-{r['ci_high']:.2f}, p = {_p(r['p_value'])})"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else "< 0.001"


def describe_evidence(comparisons: pd.DataFrame, ranked: pd.DataFrame, *,
                      labels: Mapping[str, str] | None = None, alpha: float = 0.05) -> list[str]:
    """Sentences that state what the paired comparisons of a run show; true for any run.

    Parameters
    ----------
    comparisons : pandas.DataFrame
        :func:`headline_comparisons`.
    ranked : pandas.DataFrame
        :func:`ranked_table` for the perplexity the sentences rank by.
    labels : dict, optional
        Display names of the methods (default: their keys).
    alpha : float, default=0.05
        The level the comparisons were decided at.

    Returns
    -------
    list of str
        Per ratio: the best method (and whether the paired test separates it from the
        runner-up); per headline method and ratio, its perplexity as a multiple of each
        baseline's with the interval, and which way the test decides; a final count of
        decided comparisons. Empty tables give one sentence saying nothing was compared.
    """
    labels = dict(labels or {})
    name = lambda m: labels.get(m, m)  # noqa: E731
    out: list[str] = []
    if ranked.empty and comparisons.empty:
        return ["No pruned models were compared in this run."]
    for ratio, g in ranked.groupby("ratio", sort=True):
        g = g.sort_values("rank")
        best = g.iloc[0]
        sentence = f"At {_pct(ratio)}, {name(best['method'])} has the lowest perplexity ({best['ppl']:.4g})"
        if len(g) > 1:
            second = g.iloc[1]
            gap = (f"{name(second['method'])}'s is {second['vs_best']:.2f}x higher (95 % CI "
                   f"{second['ci_low']:.2f}-{second['ci_high']:.2f})")
            if second["decided"]:
                sentence += f"; the next best, {gap}, is worse by the paired test."
            else:
                sentence += f", but the paired test does not separate it from the next best: {gap}."
        else:
            sentence += "."
        out.append(sentence)
    ppl = comparisons[comparisons["metric"].str.startswith("ppl@")]
    for (ratio, method, metric), g in ppl.groupby(["ratio", "method", "metric"], sort=True):
        parts = []
        for _, r in g.iterrows():
            pooled = f", pooled over {r['baseline_seeds']} seeds" if r["baseline_seeds"] > 1 else ""
            verdict = {"model": "better", "baseline": "worse", "undecided": "not decided"}[r["better"]]
            parts.append(f"{_times(r)} {name(r['baseline'])}'s{pooled} ({verdict})")
        out.append(f"At {_pct(ratio)}, {name(method)}'s {metric} is " + "; ".join(parts) + ".")
    if not comparisons.empty:
        decided = comparisons[comparisons["decided"]]
        wins = int((decided["better"] == "model").sum())
        out.append(f"Of {len(comparisons)} headline comparisons, the paired test (level {alpha:g}) decides "
                   f"{len(decided)}: {wins} in favour of the functional-network method and "
                   f"{len(decided) - wins} against it; {len(comparisons) - len(decided)} remain undecided.")
    return out
