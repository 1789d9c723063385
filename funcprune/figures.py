"""Figures of stage 5: the results table drawn against the pruning ratio, and per task.

Every function takes the long results table (:func:`funcprune.tables.load_results`) and
draws means over seeds (:func:`funcprune.tables.aggregate_seeds`) with their standard
errors: :func:`plot_metric_vs_ratio` (and its shortcuts :func:`plot_perplexity` and
:func:`plot_accuracy`) and :func:`plot_task_bars`.

Used in the chapter :doc:`/executed/05_evaluate_benchmarks`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .rundir import DENSE_KEY
from .tables import aggregate_seeds, method_labels
from .tasks import TASKS

__all__ = ["plot_accuracy", "plot_metric_vs_ratio", "plot_perplexity", "plot_task_bars"]


def plot_metric_vs_ratio(df: pd.DataFrame, metric: str, setting: str = "", *, ax: Any = None,
                         band_method: str = "random", logy: bool = False, ylabel: str | None = None) -> Any:
    """One line per method against the requested ratio; the dense model as a horizontal line.

    Methods with several seeds (``band_method``, e.g. random) are drawn as their mean
    with a band of ± one standard deviation over seeds; the others with error bars of
    one standard error.

    Parameters
    ----------
    df : pandas.DataFrame
        A results table.
    metric, setting : str
        Which rows (e.g. ``"ppl", "128"`` or ``"mean_acc", ""``).
    ax : matplotlib Axes, optional
    band_method : str, default="random"
    logy : bool, default=False
    ylabel : str, optional

    Returns
    -------
    matplotlib.axes.Axes
    """
    import matplotlib.pyplot as plt

    agg = aggregate_seeds(df[(df["metric"] == metric) & (df["setting"] == setting)])
    if agg.empty:
        raise ValueError(f"no rows for metric {metric!r} and setting {setting!r}")
    ax = ax if ax is not None else plt.subplots(figsize=(6, 4))[1]
    labels = method_labels()
    dense = agg[agg["method"] == DENSE_KEY]
    if not dense.empty:
        ax.axhline(float(dense["value"].iloc[0]), color="black", linestyle="--", linewidth=1, label="dense")
    for method, g in agg[agg["method"] != DENSE_KEY].groupby("method", sort=False):
        g = g.sort_values("ratio_requested")
        x, y = g["ratio_requested"].to_numpy(float), g["value"].to_numpy(float)
        label = labels.get(method, method)
        if method == band_method or (g["n_seeds"] > 1).any():
            k = int(g["n_seeds"].max())
            line, = ax.plot(x, y, marker="o", linestyle=":", label=f"{label} (mean of {k} seeds)" if k > 1 else label)
            std = np.nan_to_num(g["value_std"].to_numpy(float))
            ax.fill_between(x, y - std, y + std, color=line.get_color(), alpha=0.2, linewidth=0)
        else:
            err = g["stderr"].to_numpy(float)
            ax.errorbar(x, y, yerr=None if np.isnan(err).all() else np.nan_to_num(err), marker="o",
                        capsize=3, label=label)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("fraction of parameters removed (requested)")
    ax.set_ylabel(ylabel or (metric + (f" @ {setting}" if setting else "")))
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return ax


def plot_perplexity(df: pd.DataFrame, seq_len: int | str = 128, *, ax: Any = None) -> Any:
    """Perplexity (log scale) against the ratio at one window length; see :func:`plot_metric_vs_ratio`."""
    return plot_metric_vs_ratio(df, "ppl", str(seq_len), ax=ax, logy=True,
                                ylabel=f"perplexity, windows of {seq_len} tokens (log scale)")


def plot_accuracy(df: pd.DataFrame, metric: str = "mean_acc", *, ax: Any = None) -> Any:
    """Mean zero-shot accuracy against the ratio; see :func:`plot_metric_vs_ratio`."""
    if metric not in ("mean_acc", "mean_preferred"):
        raise ValueError(f"metric must be 'mean_acc' or 'mean_preferred', got {metric!r}")
    return plot_metric_vs_ratio(df, metric, "", ax=ax, ylabel=f"{metric} over tasks")


def plot_task_bars(df: pd.DataFrame, ratio: float, *, metric: str = "preferred", ax: Any = None) -> Any:
    """Per-task accuracy of every method at one ratio (dense included), with standard errors.

    Parameters
    ----------
    df : pandas.DataFrame
        A results table.
    ratio : float
        Requested ratio to show (the closest one in the table).
    metric : {"preferred", "acc", "acc_norm"}, default="preferred"
        ``"preferred"``: each task's literature metric (see :data:`funcprune.tasks.TASKS`).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
    """
    import matplotlib.pyplot as plt

    if metric not in ("preferred", "acc", "acc_norm"):
        raise ValueError(f"metric must be 'preferred', 'acc' or 'acc_norm', got {metric!r}")
    sub = df[df["metric"].isin(["acc", "acc_norm"])]
    if sub.empty:
        raise ValueError("the table has no zero-shot rows")
    ratios = sorted(set(sub.loc[sub["method"] != DENSE_KEY, "ratio_requested"]))
    if not ratios:
        raise ValueError("the table has no pruned model")
    chosen = min(ratios, key=lambda r: abs(r - ratio))
    if metric == "preferred":
        keep = sub.apply(lambda r: r["metric"] == TASKS[r["setting"]].preferred_metric, axis=1)
        sub = sub[keep]
    else:
        sub = sub[sub["metric"] == metric]
    sub = sub[(sub["method"] == DENSE_KEY) | (sub["ratio_requested"] == chosen)]
    agg = aggregate_seeds(sub)
    tasks = list(dict.fromkeys(agg["setting"]))
    methods = list(dict.fromkeys(agg["method"]))
    labels = method_labels()
    ax = ax if ax is not None else plt.subplots(figsize=(max(6, 1.2 * len(tasks)), 4))[1]
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        g = agg[agg["method"] == method].set_index("setting").reindex(tasks)
        x = np.arange(len(tasks)) + (j - (len(methods) - 1) / 2) * width
        ax.bar(x, g["value"], width, yerr=np.nan_to_num(g["stderr"].to_numpy(float)), capsize=2,
               label=labels.get(method, method))
    names = [f"{t}\n({TASKS[t].preferred_metric})" if metric == "preferred" else t for t in tasks]
    ax.set_xticks(np.arange(len(tasks)), names, fontsize="small")
    ax.set_ylabel(f"{metric} (± 1 standard error)")
    ax.set_title(f"zero-shot accuracy at ratio {chosen:g}")
    ax.set_ylim(0, 1.3)  # room for the legend above the bars
    ax.legend(fontsize="small", ncol=min(4, len(methods)), loc="upper center")
    return ax
