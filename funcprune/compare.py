"""Paired comparisons of pruned models: on the windows and items they share, with intervals.

Every model of a run is scored on the same perplexity windows and the same zero-shot
items (:func:`funcprune.run.results.evaluate_run` records the per-window negative
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
* :func:`article_clusters` -- the article each window was cut from, for the ``cluster=``
  option that resamples the windows of one article together; ``seeds="resample"`` puts
  random pruning's seeds inside the interval (:mod:`funcprune.intervals`).

Why one module: the per-part readers, the paired tests and the tables and sentences built on
them share one record format and one set of options (``cluster``, ``seeds``); split, each table
would re-implement the reading and pooling of parts.

Used in the chapter :doc:`/executed/05_evaluate_benchmarks`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .intervals import cluster_bootstrap, hierarchical_bootstrap, task_mean_bootstrap

__all__ = [
    "HEADLINE_BASELINES",
    "HEADLINE_METHODS",
    "article_clusters",
    "compare_items",
    "compare_models",
    "compare_windows",
    "describe_evidence",
    "headline_comparisons",
    "method_groups",
    "item_correctness",
    "paired_bootstrap",
    "ranked_table",
    "recorded_window_nll",
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
                    n_boot: int = 10_000, seed: int = 0, alpha: float = 0.05,
                    cluster: Sequence[Any] | None = None) -> dict[str, Any]:
    """Perplexity of a model relative to a baseline on shared windows (paired bootstrap).

    Parameters
    ----------
    nll, nll_baseline : array of shape (n_windows,)
        Mean NLL per window (nats per token), the same windows in the same order.
    cluster : sequence of shape (n_windows,), optional
        A label per window (the article it was cut from, :func:`article_clusters`):
        windows of one article are resampled together
        (:func:`funcprune.intervals.cluster_bootstrap`). ``None``: windows are resampled
        one by one, as if independent.

    Returns
    -------
    dict
        ``estimate`` (perplexity ratio ``exp(mean NLL difference)``, below 1 when the
        model is better), ``ci_low``, ``ci_high`` (the interval on the ratio scale),
        ``p_value``, ``nll_difference`` (mean), ``se``, ``n``, ``decided``
        (``p_value < alpha``) and ``better`` (``"model"``, ``"baseline"`` or
        ``"undecided"``), ``n_clusters`` and ``interval`` (what was resampled).
    """
    a, b = np.asarray(nll, dtype=np.float64), np.asarray(nll_baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"the two models must share their windows: {a.shape} vs {b.shape} window NLLs")
    if cluster is None:
        r = {**paired_bootstrap(a - b, n_boot=n_boot, seed=seed, alpha=alpha), "n_clusters": a.size}
    else:
        r = cluster_bootstrap(a - b, cluster, n_boot=n_boot, seed=seed, alpha=alpha)
    return _window_result(r, alpha, "articles" if cluster is not None else "windows")


def _window_result(r: Mapping[str, Any], alpha: float, interval: str) -> dict[str, Any]:
    decided = r["p_value"] < alpha
    return {"estimate": math.exp(r["mean"]), "ci_low": math.exp(r["ci_low"]), "ci_high": math.exp(r["ci_high"]),
            "p_value": r["p_value"], "nll_difference": r["mean"], "se": r["se"], "n": r["n"],
            "decided": bool(decided), "better": _better(decided, r["mean"] < 0), "n_clusters": r["n_clusters"],
            "interval": interval}


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
def recorded_window_nll(part: Mapping[str, Any], setting: str) -> tuple[np.ndarray, str]:
    """Per-window NLLs a run recorded for one model at one window length, and the digest of the windows' tokens.

    (:func:`funcprune.evaluate.window_nll` measures them on a model.)
    """
    p = part["perplexity"].get(str(setting))
    if p is None:
        raise KeyError(f"{part.get('key')!r} has no perplexity at window length {setting!r}; "
                       f"it has {sorted(part['perplexity'])}")
    return np.asarray(p["window_nll"], dtype=np.float64), p["tokens_sha256"]


def article_clusters(parts: Mapping[str, Mapping[str, Any]], stream: Any = None) -> dict[str, list[str]]:
    """The article each perplexity window was cut from, per window setting: the ``cluster=`` of the comparisons.

    Read from a part's ``window_articles`` where the evaluation recorded it; otherwise
    computed from the recorded ``window_starts`` on ``stream`` (the held-out stream the
    run scored, :func:`funcprune.heldout.evaluation_stream`; its windows' tokens are
    checked against the recorded checksum). The windows themselves are not changed.

    Parameters
    ----------
    parts : dict
        Per-model records of a run (every model shares the windows; the first that has a
        setting gives its labels).
    stream : funcprune.heldout.EvaluationStream, optional

    Returns
    -------
    dict[str, list of str]
        Window setting (e.g. ``"128"``) -> the article id of each window, in order.

    Raises
    ------
    ValueError
        No recorded labels and no ``stream``, or a stream whose tokens are not those the
        run scored.
    """
    from .heldout import ids_sha256

    out: dict[str, list[str]] = {}
    for part in parts.values():
        for setting, rec in part["perplexity"].items():
            if setting in out:
                continue
            if rec.get("window_articles") is not None:
                out[setting] = list(rec["window_articles"])
                continue
            if stream is None:
                raise ValueError(f"{part.get('key')!r} records no window_articles at {setting!r}: pass stream= "
                                 f"(funcprune.heldout.evaluation_stream of the run's tokenizer, corpus and part)")
            span = int(rec["seq_len"]) - (rec.get("bos_token_id") is not None)
            starts = [int(s) for s in rec["window_starts"]]
            tokens = np.concatenate([stream.ids[s:s + span] for s in starts])
            if ids_sha256(tokens) != rec["tokens_sha256"]:
                raise ValueError(f"the stream's windows at {setting!r} are not the tokens the run scored "
                                 f"(checksum differs): pass the run's tokenizer, corpus and part")
            out[setting] = stream.window_articles(starts, span)
    return out


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
    arrays, digests = zip(*(recorded_window_nll(p, setting) for p in parts))
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
                   n_boot: int = 10_000, seed: int = 0, alpha: float = 0.05,
                   cluster: Mapping[str, Sequence[Any]] | Sequence[Any] | None = None,
                   seeds: str = "pool") -> dict[str, Any]:
    """Paired comparison of two groups of models of a run (one model each, or several seeds pooled).

    Parameters
    ----------
    model, baseline : sequence of dict
        Per-model records (``results.json["models"]`` values). Several records (seeds of
        one method) are pooled by averaging their window NLLs or item correctness.
    metric : str
        ``"ppl@<window>"`` (e.g. ``"ppl@128"``), ``"acc"`` or ``"acc_norm"`` (every item
        of every task both groups answered, pooled), ``"mean_acc"`` or ``"mean_preferred"``
        (the mean over tasks of the per-task accuracies, as the results tables show it;
        items resampled within tasks, :func:`funcprune.intervals.task_mean_bootstrap`;
        seeds pooled).
    cluster : dict or sequence, optional
        Article label per window (a dict: window setting -> labels, from
        :func:`article_clusters`): windows of one article are resampled together.
    seeds : {"pool", "resample"}, default="pool"
        ``"pool"``: seeds of a group are averaged before pairing, and the interval covers
        the windows only. ``"resample"``: every bootstrap draw resamples each group's
        seeds, then the windows (:func:`funcprune.intervals.hierarchical_bootstrap`), so
        the interval covers the draw of random channels too (perplexity only).

    Returns
    -------
    dict
        :func:`compare_windows` or :func:`compare_items`, plus ``metric``, ``value`` and
        ``baseline_value`` (pooled perplexities or accuracies).

    Raises
    ------
    ValueError
        An unknown metric or ``seeds``, models not scored on the same windows or items, or none shared.
    """
    if not model or not baseline:
        raise ValueError("both groups need at least one model")
    if seeds not in ("pool", "resample"):
        raise ValueError(f"unknown seeds {seeds!r}; accepted: 'pool', 'resample'")
    if metric.startswith("ppl@"):
        setting = metric[4:]
        a, b = _pooled_windows(model, setting), _pooled_windows(baseline, setting)
        _, da = recorded_window_nll(model[0], setting)
        _, db = recorded_window_nll(baseline[0], setting)
        if da != db:
            raise ValueError(f"{model[0]['key']!r} and {baseline[0]['key']!r} were not scored on the same windows")
        labels = cluster.get(setting) if isinstance(cluster, Mapping) else cluster
        if seeds == "resample" and max(len(model), len(baseline)) > 1:
            r = hierarchical_bootstrap(np.stack([recorded_window_nll(p, setting)[0] for p in model]),
                                       np.stack([recorded_window_nll(p, setting)[0] for p in baseline]),
                                       clusters=labels,
                                       n_boot=n_boot, seed=seed, alpha=alpha)
            result = _window_result(r, alpha, ("articles" if labels is not None else "windows") + " and seeds")
        else:
            result = compare_windows(a, b, n_boot=n_boot, seed=seed, alpha=alpha, cluster=labels)
        return {"metric": metric, "value": math.exp(a.mean()), "baseline_value": math.exp(b.mean()), **result}
    if metric in ("mean_acc", "mean_preferred"):
        ta, tb = _task_items(model, metric), _task_items(baseline, metric)
        if {t: v[0] for t, v in ta.items()} != {t: v[0] for t, v in tb.items()}:
            raise ValueError(f"{model[0]['key']!r} and {baseline[0]['key']!r} were not scored on the same tasks "
                             f"and items")
        r = task_mean_bootstrap({t: v[1] for t, v in ta.items()}, {t: v[1] for t, v in tb.items()},
                                n_boot=n_boot, seed=seed, alpha=alpha)
        decided = r["p_value"] < alpha
        return {"metric": metric, "value": r["value"], "baseline_value": r["baseline_value"], "estimate": r["mean"],
                "ci_low": r["ci_low"], "ci_high": r["ci_high"], "p_value": r["p_value"], "mcnemar_p": None,
                "se": r["se"], "n": r["n"], "n_tasks": r["n_tasks"], "per_task": r["per_task"],
                "decided": bool(decided), "better": _better(decided, r["mean"] > 0), "interval": "items within tasks"}
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
    raise ValueError(f"unknown metric {metric!r}; accepted: 'ppl@<window length>', 'acc', 'acc_norm', "
                     f"'mean_acc', 'mean_preferred'")


def _task_items(parts: Sequence[Mapping[str, Any]], metric: str) -> dict[str, tuple[list[Any], np.ndarray]]:
    """Task -> per-item correctness (seeds averaged) on each task's own metric: ``acc``, or its preferred one."""
    out: dict[str, tuple[list[Any], np.ndarray]] = {}
    first = (parts[0].get("zero_shot") or {}).get("tasks") or {}
    for task, t in first.items():
        name = t.get("preferred_metric", "acc") if metric == "mean_preferred" else "acc"
        per_model = [item_correctness(p, name).get(task) for p in parts]
        if any(m is None or m[0] != per_model[0][0] for m in per_model):
            raise ValueError(f"models {[p['key'] for p in parts]} were not all scored on the same {task} items")
        out[task] = (per_model[0][0], np.mean([m[1] for m in per_model], axis=0))
    if not out:
        raise ValueError(f"{parts[0]['key']!r} has no zero-shot items")
    return out


# ----------------------------------------------------------------------------------
# The run's headline comparisons and ranking
# ----------------------------------------------------------------------------------
def method_groups(parts: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, float], list[Mapping[str, Any]]]:
    """The pruned models of a run grouped by ``(method, ratio requested)`` (random's seeds together); dense left out."""
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for part in parts.values():
        entry = part["entry"]
        if entry["method"] == _DENSE:
            continue
        groups.setdefault((entry["method"], float(entry["ratio_requested"])), []).append(part)
    return groups


def _metrics_of(group: Sequence[Mapping[str, Any]]) -> list[str]:
    settings = set.intersection(*(set(p["perplexity"]) for p in group))
    metrics = [f"ppl@{s}" for s in sorted(settings, key=lambda s: (not str(s).isdigit(), int(s) if str(s).isdigit()
                                                                    else 0, str(s)))]
    if all(item_correctness(p) for p in group):
        metrics.append("acc")
    return metrics


def headline_comparisons(parts: Mapping[str, Mapping[str, Any]], *,
                         methods: Sequence[str] = HEADLINE_METHODS, baselines: Sequence[str] = HEADLINE_BASELINES,
                         n_boot: int = 10_000, seed: int = 0, alpha: float = 0.05,
                         cluster: Mapping[str, Sequence[Any]] | None = None, seeds: str = "pool",
                         zero_shot: Sequence[str] = ("acc",)) -> pd.DataFrame:
    """Every method against every baseline at every ratio, on every metric both were scored on.

    Seeded baselines (random) are pooled over their seeds (see :func:`compare_models`);
    ``seed_min`` and ``seed_max`` give the estimate against each seed alone, the spread a
    different draw of random channels would give. With ``seeds="resample"`` the seeds
    are resampled inside the perplexity interval as well. ``cluster`` (window setting ->
    article label per window, :func:`article_clusters`) resamples the windows of one
    article together. ``zero_shot`` lists the zero-shot metrics tested when both sides
    have items: ``"acc"`` (items of all tasks pooled), ``"acc_norm"``, ``"mean_acc"`` and
    ``"mean_preferred"`` (the tables' means over tasks). The comparisons are
    prespecified, so ``selected_on_test`` is False; :func:`funcprune.intervals.add_holm`
    adds Holm's correction over a family of rows.

    Returns
    -------
    pandas.DataFrame
        One row per (ratio, method, baseline, metric): ``ratio``, ``method``,
        ``baseline``, ``metric``, ``n`` (windows or items), ``value``,
        ``baseline_value``, ``estimate`` (perplexity ratio, or accuracy difference),
        ``ci_low``, ``ci_high``, ``p_value``, ``mcnemar_p``, ``decided``, ``better``,
        ``model_keys``, ``baseline_keys``, ``baseline_seeds``, ``seed_min``, ``seed_max``,
        ``interval`` (what the interval resamples), ``n_clusters`` and ``selected_on_test``.
    """
    groups = method_groups(parts)
    rows = []
    for (method, ratio), group in sorted(groups.items(), key=lambda kv: kv[0][1]):
        if method not in methods:
            continue
        for base in baselines:
            bgroup = groups.get((base, ratio))
            if not bgroup:
                continue
            shared = [m for m in _metrics_of(group) if m in _metrics_of(bgroup)]
            shared = [m for m in shared if m != "acc"] + ([*zero_shot] if "acc" in shared else [])
            for metric in shared:
                r = compare_models(group, bgroup, metric, n_boot=n_boot, seed=seed, alpha=alpha, cluster=cluster,
                                   seeds=seeds)
                singles = [compare_models(group, [b], metric, n_boot=200, seed=seed, alpha=alpha)["estimate"]
                           for b in bgroup] if len(bgroup) > 1 else [r["estimate"]]
                rows.append({"ratio": ratio, "method": method, "baseline": base, "metric": metric, "n": r["n"],
                             "value": r["value"], "baseline_value": r["baseline_value"], "estimate": r["estimate"],
                             "ci_low": r["ci_low"], "ci_high": r["ci_high"], "p_value": r["p_value"],
                             "mcnemar_p": r.get("mcnemar_p"), "decided": r["decided"], "better": r["better"],
                             "model_keys": ",".join(p["key"] for p in group),
                             "baseline_keys": ",".join(p["key"] for p in bgroup), "baseline_seeds": len(bgroup),
                             "seed_min": min(singles), "seed_max": max(singles),
                             "interval": r.get("interval", "items"), "n_clusters": r.get("n_clusters", r["n"]),
                             "selected_on_test": False})
    columns = ["ratio", "method", "baseline", "metric", "n", "value", "baseline_value", "estimate", "ci_low",
               "ci_high", "p_value", "mcnemar_p", "decided", "better", "model_keys", "baseline_keys",
               "baseline_seeds", "seed_min", "seed_max", "interval", "n_clusters", "selected_on_test"]
    return pd.DataFrame(rows, columns=columns)


def ranked_table(parts: Mapping[str, Mapping[str, Any]], metric: str, *, n_boot: int = 10_000, seed: int = 0,
                 alpha: float = 0.05, chosen: Mapping[float, str] | None = None,
                 cluster: Mapping[str, Sequence[Any]] | None = None, seeds: str = "pool") -> pd.DataFrame:
    """Methods ranked by perplexity at each ratio, each against the best with a paired interval.

    Parameters
    ----------
    parts : dict
        Per-model records of a run.
    metric : str
        ``"ppl@<window>"``; models without it are left out.
    chosen : dict, optional
        Ratio -> the method chosen as the reference on *other* text (validation). At
        those ratios every method is compared with it, and ``selected_on_test`` is
        False. Elsewhere the reference is the best on these windows: the windows that
        picked it also test it (selection on test), which favours it, and
        ``selected_on_test`` says so.
    cluster, seeds
        As :func:`compare_models`.

    Returns
    -------
    pandas.DataFrame
        One row per (ratio, method), best first: ``ratio``, ``rank``, ``method``,
        ``seeds``, ``ppl`` (seeds pooled), ``vs_best`` (perplexity ratio to the
        reference, 1 for the reference itself), ``ci_low``, ``ci_high``, ``p_value``,
        ``decided`` (the gap to the reference is decided by the paired test),
        ``reference`` (the method compared with) and ``selected_on_test``.
    """
    if not metric.startswith("ppl@"):
        raise ValueError(f"ranked_table ranks by perplexity: metric must be 'ppl@<window>', got {metric!r}")
    setting = metric[4:]
    rows = []
    by_ratio: dict[float, list[tuple[str, list[Mapping[str, Any]]]]] = {}
    for (method, ratio), group in method_groups(parts).items():
        if all(setting in p["perplexity"] for p in group):
            by_ratio.setdefault(ratio, []).append((method, group))
    for ratio in sorted(by_ratio):
        scored = sorted(((math.exp(_pooled_windows(g, setting).mean()), m, g) for m, g in by_ratio[ratio]),
                        key=lambda t: t[0])
        ref = (chosen or {}).get(ratio)
        if ref is not None and ref not in [m for _, m, _ in scored]:
            raise ValueError(f"the chosen method {ref!r} at {ratio} was not scored; scored: "
                             f"{sorted(m for _, m, _ in scored)}")
        reference = ref if ref is not None else scored[0][1]
        best = next(g for _, m, g in scored if m == reference)
        for rank, (ppl, method, group) in enumerate(scored, start=1):
            if method == reference:
                r = {"estimate": 1.0, "ci_low": 1.0, "ci_high": 1.0, "p_value": 1.0, "decided": False}
            else:
                r = compare_models(group, best, metric, n_boot=n_boot, seed=seed, alpha=alpha, cluster=cluster,
                                   seeds=seeds)
            rows.append({"ratio": ratio, "rank": rank, "method": method, "seeds": len(group), "ppl": ppl,
                         "vs_best": r["estimate"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                         "p_value": r["p_value"], "decided": r["decided"], "reference": reference,
                         "selected_on_test": ref is None})
    return pd.DataFrame(rows, columns=["ratio", "rank", "method", "seeds", "ppl", "vs_best", "ci_low", "ci_high",
                                       "p_value", "decided", "reference", "selected_on_test"])


# ----------------------------------------------------------------------------------
# Sentences
# ----------------------------------------------------------------------------------
def _pct(ratio: float) -> str:
    return f"{100 * ratio:g} %"


def _times(r: Mapping[str, Any]) -> str:
    return f"{r['estimate']:.2f}x (95 % CI {r['ci_low']:.2f}-{r['ci_high']:.2f}, {_p(r['p_value'])})"


def _p(p: float) -> str:
    """``"p = 0.18"`` or ``"p < 0.001"``: the relation is part of the string, never ``"p = < 0.001"``."""
    return f"p = {p:.2g}" if p >= 0.001 else "p < 0.001"


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
        reference = best.get("reference", best["method"])
        if len(g) > 1 and reference != best["method"]:  # the reference was chosen on other text
            sentence += (f"; against {name(reference)}, the method chosen on other text, its perplexity is "
                         f"{best['vs_best']:.2f}x (95 % CI {best['ci_low']:.2f}-{best['ci_high']:.2f}), "
                         f"{'decided' if best['decided'] else 'not decided'} by the paired test.")
        elif len(g) > 1:
            second = g.iloc[1]
            gap = (f"{name(second['method'])}'s is {second['vs_best']:.2f}x higher (95 % CI "
                   f"{second['ci_low']:.2f}-{second['ci_high']:.2f})")
            if second["decided"]:
                sentence += f"; the next best, {gap}, is worse by the paired test."
            else:
                sentence += f", but the paired test does not separate it from the next best: {gap}."
            if bool(second.get("selected_on_test", False)):
                sentence = (sentence[:-1] + " (the same windows picked the best and test it, which favours the "
                            "best: the gap may be overstated).")
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
