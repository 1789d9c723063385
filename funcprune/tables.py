"""The results table of stage 5: its columns and metrics, validation, seeds, significance and summaries.

:func:`funcprune.run.results.evaluate_run` writes one tidy *long* table
(``results/results.csv``): one row per model, metric and setting, with the columns
:data:`TABLE_COLUMNS` and the metrics :data:`METRICS` (:func:`funcprune.run.results.load_results` reads it back
from a run). This module checks and summarises it: :func:`validate_results_table`, :func:`aggregate_seeds` (mean and
spread over random seeds), :func:`significant_differences` (unpaired: which differences
exceed their combined standard error; the paired tests of :mod:`funcprune.compare`
decide smaller ones), :func:`summary_table` and :func:`efficiency_table`; :func:`table_contents`,
:func:`timing_table` and :func:`evaluation_facts` say what a run evaluated and how long it took;
:func:`with_interval` writes a table's interval bounds as one column.
:mod:`funcprune.figures` draws it.

Used in the chapter :doc:`/executed/05_evaluate_benchmarks`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .tasks import ALL_TASKS

__all__ = [
    "DENSE_KEY",
    "METRICS",
    "TABLE_COLUMNS",
    "aggregate_seeds",
    "efficiency_table",
    "evaluation_facts",
    "method_labels",
    "pooled_value",
    "significant_differences",
    "summary_table",
    "table_contents",
    "table_from_parts",
    "timing_table",
    "typed_table",
    "validate_results_table",
    "with_interval",
]

#: Key (and method) of the dense model in the results; no pruned model may use it.
DENSE_KEY = "dense"

#: Columns of the results table, in order.
TABLE_COLUMNS: tuple[str, ...] = ("key", "method", "seed", "ratio_requested", "ratio_reached", "ratio_basis",
                                  "metric", "setting", "value", "stderr", "n")

#: Every metric of the table: what it is and what its ``setting`` and ``n`` mean.
METRICS: dict[str, str] = {
    "ppl": "token-level perplexity exp(nll); setting = requested window length; stderr by the delta "
           "method (ppl x stderr of nll); n = windows",
    "nll": "mean negative log-likelihood per scored token (nats); setting = requested window length; "
           "stderr = std of per-window NLLs / sqrt(windows); n = windows",
    "acc": "zero-shot accuracy (lm-eval); setting = task; stderr from the harness; n = items",
    "acc_norm": "length-normalised zero-shot accuracy (lm-eval); setting = task; stderr from the harness; "
                "n = items",
    "mean_acc": "mean of acc over the tasks; stderr = sqrt(sum of squared task stderrs) / tasks; n = items",
    "mean_preferred": "mean over tasks of each task's preferred metric (acc_norm for HellaSwag, ARC-c, "
                      "OBQA; acc otherwise), as the pruning literature reports; stderr as mean_acc",
    "params_total": "parameters (tied embeddings once)",
    "params_mlp": "MLP parameters (gate, up, down)",
    "params_attention": "attention parameters",
    "params_embedding": "embedding parameters",
    "flops_per_token": "forward FLOPs per token, 2 x matmul parameters (LM head included)",
    "params_total_rel": "params_total / dense params_total",
    "params_mlp_rel": "params_mlp / dense params_mlp",
    "flops_rel": "flops_per_token / dense flops_per_token",
}
_PROB_METRICS = ("acc", "acc_norm", "mean_acc", "mean_preferred")
_EFFICIENCY = ("params_total", "params_mlp", "params_attention", "params_embedding", "flops_per_token")
_RELATIVE = {"params_total_rel": "params_total", "params_mlp_rel": "params_mlp", "flops_rel": "flops_per_token"}
_LOWER_IS_BETTER = ("ppl", "nll")
_MEASURED = ("ppl", "nll", "acc", "acc_norm", "mean_acc", "mean_preferred")


# ----------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------
def _rows_of_part(part: Mapping[str, Any], dense: Mapping[str, Any]) -> list[dict[str, Any]]:
    entry = part["entry"]
    common = {"key": part["key"], "method": entry["method"], "seed": entry.get("seed"),
              "ratio_requested": float(entry.get("ratio_requested") or 0.0),
              "ratio_reached": float(entry.get("ratio_reached") or 0.0), "ratio_basis": entry.get("ratio_basis")}
    rows: list[dict[str, Any]] = []

    def add(metric: str, setting: str, value: Any, stderr: Any = None, n: Any = None) -> None:
        rows.append({**common, "metric": metric, "setting": setting, "value": float(value),
                     "stderr": np.nan if stderr is None else float(stderr), "n": np.nan if n is None else int(n)})

    # JSON files sort their keys: order settings by window length and tasks as in ALL_TASKS
    for setting, p in sorted(part["perplexity"].items(), key=lambda kv: int(kv[0])):
        add("ppl", setting, p["ppl"], p["ppl_stderr"], p["n_windows"])
        add("nll", setting, p["nll"], p["nll_stderr"], p["n_windows"])
    zs = part.get("zero_shot")
    if zs:
        accs, prefs = [], []
        for task, t in sorted(zs["tasks"].items(), key=lambda kv: ALL_TASKS.index(kv[0])):
            add("acc", task, t["acc"], t["acc_stderr"], t["n"])
            if t.get("acc_norm") is not None:
                add("acc_norm", task, t["acc_norm"], t["acc_norm_stderr"], t["n"])
            pref_se = t["acc_norm_stderr"] if t["preferred_metric"] == "acc_norm" else t["acc_stderr"]
            accs.append((t["acc"], t["acc_stderr"], t["n"]))
            prefs.append((t["preferred"], pref_se, t["n"]))
        for metric, values in (("mean_acc", accs), ("mean_preferred", prefs)):
            k = len(values)
            add(metric, "", sum(v for v, _, _ in values) / k,
                math.sqrt(sum(se ** 2 for _, se, _ in values)) / k, sum(n for _, _, n in values))
    eff = part["efficiency"]
    for metric in _EFFICIENCY:
        add(metric, "", eff[metric])
    for metric, source in _RELATIVE.items():
        add(metric, "", eff[source] / dense["efficiency"][source])
    return rows


def table_from_parts(parts: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The long results table of the models' records (``results.json["models"]`` values), dense included.

    Rows follow the parts, then each part's window lengths (ascending), tasks (in
    :data:`funcprune.tasks.ALL_TASKS` order), means and efficiency metrics.
    """
    dense = next(p for p in parts if p["key"] == DENSE_KEY)
    rows = [r for p in parts for r in _rows_of_part(p, dense)]
    return typed_table(pd.DataFrame(rows, columns=list(TABLE_COLUMNS)))


def typed_table(df: pd.DataFrame) -> pd.DataFrame:
    """The results table with its columns' types (nullable integer seeds and counts, float values, str keys)."""
    df = df.copy()
    df["seed"] = pd.array([None if pd.isna(s) else int(s) for s in df["seed"]], dtype="Int64")
    df["n"] = pd.array([None if pd.isna(s) else int(s) for s in df["n"]], dtype="Int64")
    for col in ("ratio_requested", "ratio_reached", "value", "stderr"):
        df[col] = df[col].astype(float)
    for col in ("key", "method", "metric"):
        df[col] = df[col].astype(str)
    df["setting"] = df["setting"].fillna("").astype(str)
    df["ratio_basis"] = df["ratio_basis"].astype(object).where(df["ratio_basis"].notna(), None)
    return df


def validate_results_table(df: pd.DataFrame) -> pd.DataFrame:
    """Check a results table; return it unchanged or raise, listing every problem.

    Checks: the columns of :data:`TABLE_COLUMNS`; known metrics; no duplicated
    ``(key, metric, setting)``; exactly one dense model (key and method
    :data:`DENSE_KEY`, ratio 0); every model measured on the same ``(metric, setting)``
    pairs as the dense model (one protocol) or, in a tiered protocol, screened: the
    efficiency metrics and the perplexity at the shortest window only; finite values; accuracies in [0, 1];
    ``ppl >= 1`` and ``ppl == exp(nll)``; standard errors finite and ``>= 0`` or
    missing; ``n`` positive for measured metrics; ratios in [0, 1); the dense model's
    relative metrics equal 1.

    Raises
    ------
    ValueError
        Listing every problem found.
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"results must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in TABLE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"invalid results table: missing columns {missing}; expected {list(TABLE_COLUMNS)}")
    problems: list[str] = []
    if df.empty:
        raise ValueError("invalid results table: it has no rows")
    unknown = sorted(set(df["metric"]) - set(METRICS))
    if unknown:
        problems.append(f"unknown metrics {unknown}; accepted: {list(METRICS)}")
    dup = df.duplicated(["key", "metric", "setting"], keep=False)
    if dup.any():
        problems.append(f"duplicated (key, metric, setting): "
                        f"{df.loc[dup, ['key', 'metric', 'setting']].drop_duplicates().values.tolist()[:5]}")
    dense = df[df["key"] == DENSE_KEY]
    if dense.empty:
        problems.append(f"no dense model (key {DENSE_KEY!r})")
    else:
        if set(dense["method"]) != {DENSE_KEY}:
            problems.append(f"the dense rows have method {sorted(set(dense['method']))}, expected {DENSE_KEY!r}")
        if (dense["ratio_requested"] != 0).any() or (dense["ratio_reached"] != 0).any():
            problems.append("the dense model's ratios must be 0")
        rel = dense[dense["metric"].isin(list(_RELATIVE))]
        if not np.allclose(rel["value"].to_numpy(float), 1.0):
            problems.append("the dense model's relative metrics must equal 1")
    if ((df["method"] == DENSE_KEY) & (df["key"] != DENSE_KEY)).any():
        problems.append(f"method {DENSE_KEY!r} is used by a key other than {DENSE_KEY!r}")
    protocol = set(zip(dense["metric"], dense["setting"]))
    windows = [s for m, s in protocol if m == "ppl"]
    shortest = min(windows, key=int) if windows else None
    screen = {(m, s) for m, s in protocol if m not in _MEASURED} | {(m, shortest) for m in ("ppl", "nll")}
    for key, group in df.groupby("key", sort=False):
        pairs = set(zip(group["metric"], group["setting"]))
        if pairs != protocol and pairs != screen:
            extra, lacking = sorted(pairs - protocol)[:3], sorted(protocol - pairs)[:3]
            problems.append(f"{key}: not measured like the dense model (extra {extra}, missing {lacking}) nor "
                            f"screened like it (efficiency and perplexity at {shortest} only)")
    value = df["value"].to_numpy(float)
    stderr = df["stderr"].to_numpy(float)
    if not np.isfinite(value).all():
        problems.append(f"non-finite values for {df.loc[~np.isfinite(value), ['key', 'metric']].values.tolist()[:5]}")
    bad_se = ~np.isnan(stderr) & ~((stderr >= 0) & np.isfinite(stderr))
    if bad_se.any():
        problems.append(f"negative or infinite stderr for "
                        f"{df.loc[bad_se, ['key', 'metric', 'setting']].values.tolist()[:5]}")
    bad_prob = df["metric"].isin(_PROB_METRICS).to_numpy() & ~((value >= 0) & (value <= 1))
    if bad_prob.any():
        problems.append(f"accuracies outside [0, 1]: "
                        f"{df.loc[bad_prob, ['key', 'metric', 'setting']].values.tolist()[:5]}")
    ppl = df[df["metric"] == "ppl"].set_index(["key", "setting"])["value"]
    nll = df[df["metric"] == "nll"].set_index(["key", "setting"])["value"]
    if (ppl < 1).any():
        problems.append("perplexities below 1")
    joined = pd.concat([ppl.rename("ppl"), nll.rename("nll")], axis=1)
    mismatch = joined.dropna()
    mismatch = mismatch[~np.isclose(mismatch["ppl"], np.exp(mismatch["nll"]), rtol=1e-6)]
    if len(mismatch) or joined.isna().any().any():
        problems.append(f"ppl and nll disagree or lack a partner for {list(mismatch.index)[:5]}")
    measured = df["metric"].isin(_MEASURED)
    n = df["n"]
    bad_n = measured & (n.isna() | (n.fillna(0) < 1))
    if bad_n.any():
        problems.append(f"n missing or < 1 for {df.loc[bad_n, ['key', 'metric', 'setting']].values.tolist()[:5]}")
    for col in ("ratio_requested", "ratio_reached"):
        r = df[col].to_numpy(float)
        if not ((r >= 0) & (r < 1)).all():
            problems.append(f"{col} outside [0, 1)")
    eff = df["metric"].isin(_EFFICIENCY + tuple(_RELATIVE)).to_numpy()
    if (eff & ~(value > 0)).any():
        problems.append("efficiency metrics must be positive")
    if problems:
        raise ValueError("invalid results table:\n  " + "\n  ".join(problems))
    return df


# ----------------------------------------------------------------------------------
# Aggregation and significance
# ----------------------------------------------------------------------------------
_GROUP = ["method", "ratio_requested", "metric", "setting"]


def pooled_value(metric: str, values: Sequence[float] | np.ndarray) -> float:
    """The one value of several seeds of a method: the mean, except perplexity's geometric mean.

    Perplexity is pooled as the perplexity of the seeds' mean NLL (``exp(mean(log ppl))``), the
    number the paired comparisons report (:func:`funcprune.compare.ranked_table` averages the
    seeds' window NLLs); an arithmetic mean of perplexities would be a second, larger number
    for the same models.

    Examples
    --------
    >>> round(pooled_value("ppl", [10.0, 1000.0]), 6), pooled_value("nll", [1.0, 2.0])
    (100.0, 1.5)
    """
    arr = np.asarray(values, dtype=float)
    if metric == "ppl":
        return float(np.exp(np.mean(np.log(arr))))
    return float(np.mean(arr))


def aggregate_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread over seeds (models of one method at one ratio).

    Parameters
    ----------
    df : pandas.DataFrame
        A results table (:func:`funcprune.run.results.evaluate_run`, :func:`funcprune.run.results.load_results`).

    Returns
    -------
    pandas.DataFrame
        One row per ``(method, ratio_requested, metric, setting)``: ``value``
        (:func:`pooled_value` over seeds: the mean, for perplexity the geometric mean), ``value_std`` (standard deviation over seeds, ``ddof=1``; NaN for
        one model), ``stderr`` (``sqrt(mean(stderr_i^2) + value_std^2 / n_seeds)``: the
        measurement error is not averaged away, since every model is measured on the
        same items and windows; conservative), ``n_seeds``, ``ratio_reached`` (mean),
        ``n`` (items or windows per model) and ``keys``.
    """
    def agg(g: pd.DataFrame) -> pd.Series:
        k = len(g)
        std = float(g["value"].std(ddof=1)) if k > 1 else np.nan
        se2 = g["stderr"].to_numpy(float) ** 2
        meas = float(np.mean(se2)) if not np.isnan(se2).all() else np.nan
        if k > 1:
            stderr = math.sqrt((0.0 if np.isnan(meas) else meas) + std ** 2 / k)
        else:
            stderr = math.sqrt(meas) if not np.isnan(meas) else np.nan
        return pd.Series({"value": pooled_value(g["metric"].iloc[0], g["value"].to_numpy(float)),
                          "value_std": std, "stderr": stderr, "n_seeds": k,
                          "ratio_reached": float(g["ratio_reached"].mean()),
                          "n": g["n"].iloc[0], "keys": ",".join(g["key"])})

    order = list(dict.fromkeys(df["method"]))
    out = (df.groupby(_GROUP, sort=False, dropna=False)[["key", "metric", "value", "stderr", "ratio_reached", "n"]]
           .apply(agg).reset_index())
    out["n_seeds"] = out["n_seeds"].astype(int)
    out["method"] = pd.Categorical(out["method"], categories=order, ordered=True)
    out = out.sort_values(["ratio_requested", "method"], kind="stable").reset_index(drop=True)
    out["method"] = out["method"].astype(str)
    return out


def significant_differences(df: pd.DataFrame, baseline: str = DENSE_KEY, *,
                            metrics: Sequence[str] = ("nll", "mean_acc", "mean_preferred"),
                            n_se: float = 2.0) -> pd.DataFrame:
    """Which differences from a baseline exceed their combined standard error.

    Each method's value (mean over seeds) at each ratio is compared with the
    baseline's: the dense model (the same value at every ratio) or the mean of the
    baseline method's seeds at the same ratio (e.g. ``"random"``). The combined
    standard error is ``sqrt(se^2 + se_baseline^2)`` (unpaired, conservative: the
    models share items and windows), with each ``se`` from :func:`aggregate_seeds`;
    accuracies carry the harness's standard errors, NLLs the spread of the per-window
    NLLs. Perplexity is compared as NLL (its logarithm), where errors are symmetric.

    Parameters
    ----------
    df : pandas.DataFrame
        A results table.
    baseline : str, default="dense"
        ``"dense"`` or the name of a method in the table.
    metrics : sequence of str, default=("nll", "mean_acc", "mean_preferred")
        Metrics to compare (any with standard errors: also ``"acc"``, ``"acc_norm"``, ``"ppl"``).
    n_se : float, default=2.0
        A difference is flagged when ``|difference| > n_se * combined stderr``
        (2: about a 95% two-sided test for a normal error).

    Returns
    -------
    pandas.DataFrame
        Columns ``method``, ``ratio_requested``, ``metric``, ``setting``, ``value``,
        ``baseline_value``, ``difference`` (value - baseline), ``stderr`` (combined),
        ``z`` (difference / stderr), ``exceeds`` (bool; False when no stderr exists)
        and ``better`` (the method is better than the baseline: lower for NLL and
        perplexity, higher for accuracies).

    Raises
    ------
    ValueError
        Unknown baseline or metric, naming the accepted ones.
    """
    testable = [m for m in METRICS if m not in _EFFICIENCY and m not in _RELATIVE]
    bad = [m for m in metrics if m not in testable]
    if bad:
        raise ValueError(f"cannot test metrics {bad}; accepted: {testable}")
    if n_se <= 0:
        raise ValueError(f"n_se must be positive, got {n_se}")
    agg = aggregate_seeds(df[df["metric"].isin(list(metrics))])
    if baseline not in set(agg["method"]):
        raise ValueError(f"baseline {baseline!r} is not in the table; accepted: {sorted(set(agg['method']))}")
    base = agg[agg["method"] == baseline]
    if baseline == DENSE_KEY:
        merged = agg[agg["method"] != baseline].merge(base[["metric", "setting", "value", "stderr"]],
                                                      on=["metric", "setting"], suffixes=("", "_base"))
    else:
        merged = agg[~agg["method"].isin([baseline, DENSE_KEY])].merge(
            base[["ratio_requested", "metric", "setting", "value", "stderr"]],
            on=["ratio_requested", "metric", "setting"], suffixes=("", "_base"))
    se = np.sqrt(merged["stderr"].to_numpy(float) ** 2 + merged["stderr_base"].to_numpy(float) ** 2)
    diff = merged["value"].to_numpy(float) - merged["value_base"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, diff / se, np.nan)
    lower = merged["metric"].isin(_LOWER_IS_BETTER).to_numpy()
    out = pd.DataFrame({
        "method": merged["method"], "ratio_requested": merged["ratio_requested"], "metric": merged["metric"],
        "setting": merged["setting"], "value": merged["value"], "baseline_value": merged["value_base"],
        "difference": diff, "stderr": se, "z": z,
        "exceeds": np.nan_to_num(np.abs(z), nan=0.0) > n_se,
        "better": np.where(lower, diff < 0, diff > 0),
    })
    return out.reset_index(drop=True)


def method_labels(names: Sequence[str] = ()) -> dict[str, str]:
    """Names for tables and figures: ``"dense"``, each registered method's label (:data:`funcprune.methods.METHODS`)
    and the label of every grid point in ``names`` (``"fn@flap+static"``: "FN (FLAP's widths, static bias)")."""
    from .methods import METHODS, get_method  # the methods pull in torch and the scorers; only labels are needed

    return {DENSE_KEY: "dense", **{name: m.label for name, m in METHODS.items()},
            **{name: get_method(name).label for name in names if name not in METHODS and name != DENSE_KEY}}


def summary_table(df: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """The main results, one row per method and ratio (means over seeds), one column per metric.

    Parameters
    ----------
    df : pandas.DataFrame
        A results table.
    metrics : sequence of str, optional
        Default: ``ppl`` at each window length, ``mean_acc``, ``mean_preferred`` and
        ``params_total_rel``.

    Returns
    -------
    pandas.DataFrame
        Index ``(method, ratio)``; columns like ``"ppl@128"``, ``"ppl@128 ±"`` (standard
        error), ``"mean_acc"``, ``"mean_acc ±"`` ...; ``"seeds"``.
    """
    agg = aggregate_seeds(df)
    if metrics is None:
        settings = [s for s in dict.fromkeys(agg.loc[agg["metric"] == "ppl", "setting"])]
        wanted = [("ppl", s) for s in settings] + [(m, "") for m in ("mean_acc", "mean_preferred", "params_total_rel")]
    else:
        wanted = [(m, s) for m in metrics for s in dict.fromkeys(agg.loc[agg["metric"] == m, "setting"])]
    labels = method_labels()
    cols: dict[str, pd.Series] = {}
    idx = ["method", "ratio_requested"]
    for metric, setting in wanted:
        sub = agg[(agg["metric"] == metric) & (agg["setting"] == setting)]
        if sub.empty:
            continue
        name = metric + (f"@{setting}" if setting else "")
        cols[name] = sub.set_index(idx)["value"]
        if metric not in _EFFICIENCY and metric not in _RELATIVE:
            cols[f"{name} ±"] = sub.set_index(idx)["stderr"]
    seeds = agg.drop_duplicates(idx).set_index(idx)["n_seeds"]
    table = pd.DataFrame(cols).reindex(seeds.index)
    table["seeds"] = seeds
    table = table.reset_index()
    table["method"] = table["method"].map(lambda m: labels.get(m, m))
    return table.rename(columns={"ratio_requested": "ratio"}).set_index(["method", "ratio"])


def efficiency_table(df: pd.DataFrame) -> pd.DataFrame:
    """Parameters and FLOPs per method and ratio (seeds share them), absolute and relative to dense."""
    metrics = list(_EFFICIENCY) + list(_RELATIVE)
    agg = aggregate_seeds(df[df["metric"].isin(metrics)])
    table = agg.pivot_table(index=["method", "ratio_requested"], columns="metric", values="value", sort=False)
    table = table[[m for m in metrics if m in table.columns]].reset_index()
    labels = method_labels()
    table["method"] = table["method"].map(lambda m: labels.get(m, m))
    table = table.rename(columns={"ratio_requested": "ratio"}).set_index(["method", "ratio"])
    table.columns.name = None
    return table


# ----------------------------------------------------------------------------------
# What a run evaluated
# ----------------------------------------------------------------------------------
def table_contents(df: pd.DataFrame) -> tuple[list[str], list[float], bool]:
    """The pruning methods of a results table (in order of appearance), their ratios (sorted), and whether any
    zero-shot task was scored."""
    methods = [m for m in dict.fromkeys(df["method"]) if m != DENSE_KEY]
    ratios = sorted(set(df.loc[df["method"] != DENSE_KEY, "ratio_requested"]))
    return methods, ratios, bool((df["metric"] == "acc").any())


def timing_table(parts: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per model of a run (``results.json["models"]``): method, seed, ratio, tier (``"full"`` unless
    recorded) and the seconds of each part of its evaluation (``"<part> s"``)."""
    return pd.DataFrame({key: {"method": p["entry"]["method"], "seed": p["entry"]["seed"],
                               "ratio": p["entry"]["ratio_requested"], "tier": p.get("tier", "full"),
                               **{f"{k} s": v for k, v in p["seconds"].items()}}
                         for key, p in parts.items()}).T


def evaluation_facts(parts: Mapping[str, Mapping[str, Any]], methods: Sequence[str],
                     ratios: Sequence[float]) -> dict[str, Any]:
    """What chapter 5 says of the models it evaluated, by the name it glues each value under.

    Returns
    -------
    dict
        ``n_models`` (the dense one included), ``n_pruned``, ``n_methods``, ``ratios`` (``"0.1, 0.2"``),
        ``stage_minutes`` (every model's seconds, in minutes, one decimal) and ``per_model_seconds`` (median).
    """
    seconds = [p["seconds"]["total"] for p in parts.values()]
    return {"n_models": len(parts), "n_pruned": len(parts) - 1, "n_methods": len(methods),
            "ratios": ", ".join(f"{r:g}" for r in ratios), "stage_minutes": f"{sum(seconds) / 60:.1f}",
            "per_model_seconds": f"{np.median(seconds):.0f}"}


def with_interval(df: pd.DataFrame, low: str = "ci_low", high: str = "ci_high") -> pd.DataFrame:
    """``df`` with an ``interval`` column, its ``low`` and ``high`` columns as text: ``"0.91-1.05"``.

    Examples
    --------
    >>> with_interval(pd.DataFrame({"ci_low": [0.912], "ci_high": [1.0449]}))["interval"].tolist()
    ['0.91-1.04']
    >>> gaps = pd.DataFrame({"gap_ci_low": [1.5], "gap_ci_high": [2.0]})
    >>> with_interval(gaps, "gap_ci_low", "gap_ci_high")["interval"].tolist()
    ['1.50-2.00']
    """
    return df.assign(interval=[f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(df[low], df[high])])
