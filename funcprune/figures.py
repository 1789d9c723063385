"""Figures of stage 5: the results table drawn against the pruning ratio, and per task.

Every function takes the long results table (:func:`funcprune.run.results.load_results`) and
draws means over seeds (:func:`funcprune.tables.aggregate_seeds`) with their standard
errors: :func:`plot_metric_vs_ratio` (and its shortcuts :func:`plot_perplexity` and
:func:`plot_accuracy`), :func:`plot_task_bars`, and the answer's figure :func:`plot_relative_to`
(every method's perplexity relative to one baseline, with paired intervals). Beside a table cut to what a
reader needs, :func:`csv_download` puts the full one a click away. Chapter 4's plans are drawn by
:func:`plot_kept_widths` (every method, one panel per ratio) and :func:`plot_width_profiles` (one method's
plans under several allocations).

Two rules hold for every figure of the package: an axis without data is refused
(:func:`require_data` raises instead of drawing an empty panel), and legends sit outside
the data (:func:`legend_outside`), below the axes, where they read on a phone too.

Used in the chapters :doc:`/executed/04_structured_pruning` and :doc:`/executed/05_evaluate_benchmarks`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .tables import DENSE_KEY, aggregate_seeds, method_labels
from .tasks import TASKS

__all__ = ["CsvDownload", "EmptyAxisError", "csv_download", "legend_outside", "plot_accuracy", "plot_kept_widths",
           "plot_metric_vs_ratio", "plot_perplexity", "plot_perplexity_panels", "plot_relative_to", "plot_task_bars",
           "plot_width_profiles", "require_data"]


class EmptyAxisError(ValueError):
    """A figure would show an axis without data (or with only its reference line)."""


def _finite_points(artist: Any) -> int:
    """Finite data points of one line, collection, patch or image (0 for anything else)."""
    import matplotlib.collections as mcoll
    import matplotlib.image as mimage
    import matplotlib.lines as mlines
    import matplotlib.patches as mpatches

    if isinstance(artist, mlines.Line2D):
        x, y = (np.asarray(v, dtype=float) for v in artist.get_data())
        if len(x) == 2 and np.array_equal(x, [0, 1]) and artist.get_transform() is not artist.axes.transData:
            return 0  # axhline/axvline: a reference line, not data
        return int(np.sum(np.isfinite(x) & np.isfinite(y)))
    if isinstance(artist, mcoll.Collection):
        offsets = np.asarray(artist.get_offsets(), dtype=float)
        paths = artist.get_paths()
        n = int(np.isfinite(offsets).all(axis=-1).sum()) if offsets.size else 0
        return n if n > 1 or not paths else n + sum(int(np.isfinite(p.vertices).all(axis=1).sum()) for p in paths)
    if isinstance(artist, mpatches.Rectangle):
        return int(np.isfinite([artist.get_width(), artist.get_height()]).all() and artist.get_height() != 0)
    if isinstance(artist, mimage.AxesImage):
        return int(np.isfinite(np.asarray(artist.get_array(), dtype=float)).sum())
    return 0


def require_data(ax: Any, *, what: str = "this panel", min_series: int = 1) -> Any:
    """Refuse an axis that holds no data: raise instead of showing an empty panel.

    Reference lines (``axhline``, ``axvline``) do not count as data: a panel with only
    the dense model's line is empty.

    Parameters
    ----------
    ax : matplotlib Axes
    what : str
        Names the panel in the error.
    min_series : int, default=1
        Lines, collections, bars or images with finite data the axis must hold.

    Returns
    -------
    matplotlib.axes.Axes
        ``ax`` itself.

    Raises
    ------
    EmptyAxisError
        If fewer than ``min_series`` artists hold finite data.
    """
    artists = [*ax.lines, *ax.collections, *ax.patches, *ax.images]
    series = sum(_finite_points(a) > 0 for a in artists)
    if series < min_series:
        raise EmptyAxisError(f"{what} would hold {series} data series (at least {min_series} needed): "
                             f"not drawn; leave the panel out instead")
    return ax


def legend_outside(ax: Any, *, ncol: int = 2, **kwargs: Any) -> Any:
    """A legend below the axes, off the data (reads at phone width; ``bbox_inches="tight"`` keeps it)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    return ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol,
                     fontsize="small", frameon=False, **kwargs)


def plot_metric_vs_ratio(df: pd.DataFrame, metric: str, setting: str = "", *, ax: Any = None,
                         band_method: str = "random", logy: bool = False, ylabel: str | None = None) -> Any:
    """One line per method against the requested ratio; the dense model as a horizontal line.

    Methods with several seeds (``band_method``, e.g. random) are drawn as their pooled
    value (:func:`funcprune.tables.pooled_value`: the number the tables and the paired
    tests use) with a band spanning the seeds' values (always positive: it stays on a log
    axis); the others with error bars of one standard error. The legend sits below the
    axes; a panel with no pruned model raises :class:`EmptyAxisError`.

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

    rows = df[(df["metric"] == metric) & (df["setting"] == setting)]
    agg = aggregate_seeds(rows)
    if agg.empty:
        raise ValueError(f"no rows for metric {metric!r} and setting {setting!r}")
    if not (agg["method"] != DENSE_KEY).any():
        raise EmptyAxisError(f"no pruned model was scored on {metric} {setting}: a panel with only the dense "
                             f"line is not drawn")
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
            pooled = ", geometric" if metric == "ppl" else ""
            line, = ax.plot(x, y, marker="o", linestyle=":",
                            label=f"{label} (mean of {k} seeds){pooled}; band: their range" if k > 1 else label)
            seeds = rows[rows["method"] == method].groupby("ratio_requested")["value"]
            low, high = seeds.min().reindex(x).to_numpy(float), seeds.max().reindex(x).to_numpy(float)
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        else:
            err = g["stderr"].to_numpy(float)
            ax.errorbar(x, y, yerr=None if np.isnan(err).all() else np.nan_to_num(err), marker="o",
                        capsize=3, label=label)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("fraction of parameters removed (requested)")
    ax.set_ylabel(ylabel or (metric + (f" @ {setting}" if setting else "")))
    legend_outside(ax)
    ax.grid(alpha=0.3)
    return require_data(ax, what=f"the {metric} {setting} panel")


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


def plot_relative_to(relative: pd.DataFrame, *, baseline: str = "FLAP", ax: Any = None,
                     labels: dict[str, str] | None = None) -> Any:
    """Every method's perplexity relative to one baseline at each ratio, with paired 95 % intervals.

    Parameters
    ----------
    relative : pandas.DataFrame
        :func:`funcprune.claims.relative_to_baseline` (``ratio``, ``method``, ``estimate``,
        ``ci_low``, ``ci_high``, ``decided``).
    baseline : str, default="FLAP"
        The baseline's name, drawn as the line at 1.
    ax : matplotlib Axes, optional
    labels : dict, optional
        Display names of the methods (default: :func:`funcprune.tables.method_labels`).

    Returns
    -------
    matplotlib.axes.Axes
        Log y axis; filled markers where the paired test decides the difference from 1,
        open ones where it does not; the legend below the axes.
    """
    import matplotlib.pyplot as plt

    if relative.empty:
        raise EmptyAxisError(f"no method was compared with {baseline}: nothing to draw")
    labels = labels if labels is not None else method_labels()
    ax = ax if ax is not None else plt.subplots(figsize=(6.4, 4.6))[1]
    ratios = sorted(set(relative["ratio"]))
    methods = list(dict.fromkeys(relative["method"]))
    width = 0.7 / max(len(methods), 1)
    for j, method in enumerate(methods):
        g = relative[relative["method"] == method].set_index("ratio").reindex(ratios)
        x = np.arange(len(ratios)) + (j - (len(methods) - 1) / 2) * width
        y = g["estimate"].to_numpy(float)
        err = np.vstack([y - g["ci_low"].to_numpy(float), g["ci_high"].to_numpy(float) - y])
        bars = ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, label=labels.get(method, method))
        decided = g["decided"].fillna(False).to_numpy(bool)
        ax.plot(x[~decided], y[~decided], "o", mfc="white", mec=bars.lines[0].get_color())
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(ratios)), [f"{100 * r:g} %" for r in ratios])
    ax.set_xlabel("fraction of parameters removed")
    ax.set_ylabel(f"perplexity / {baseline}'s (log scale)")
    ax.set_title(f"Each method against {baseline} (dashed line = {baseline}); 95 % paired intervals\n"
                 "filled: the paired test decides; open: it does not", fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    legend_outside(ax, ncol=3)
    return require_data(ax, what=f"the comparison with {baseline}")


def plot_perplexity_panels(df: pd.DataFrame, windows: dict[int, str] | None = None) -> tuple[Any, list[int]]:
    """Perplexity against the ratio at every window length some pruned model was scored on, stacked.

    A window length only the dense model was scored on gets no panel (it would hold the
    dense line alone); it is returned, for the prose to say so.

    Parameters
    ----------
    df : pandas.DataFrame
        A results table.
    windows : dict, optional
        Title of each panel by window length (e.g. ``{128: "32 windows of 128 tokens"}``).

    Returns
    -------
    (matplotlib.figure.Figure or None, list of int)
        The figure (None when no length has a pruned model) and the lengths left out.
    """
    import matplotlib.pyplot as plt

    ppl = df[df["metric"] == "ppl"]
    lengths = sorted({int(s) for s in ppl["setting"]})
    drawn = [n for n in lengths if (ppl.loc[ppl["setting"] == str(n), "method"] != DENSE_KEY).any()]
    left_out = [n for n in lengths if n not in drawn]
    if not drawn:
        return None, left_out
    fig, axes = plt.subplots(len(drawn), 1, figsize=(6.4, 4.6 * len(drawn)), squeeze=False)
    for ax, n in zip(axes[:, 0], drawn):
        plot_perplexity(df, n, ax=ax)
        ax.set_title((windows or {}).get(n, f"windows of {n} tokens"))
    fig.tight_layout()
    return fig, left_out


def plot_kept_widths(index: pd.DataFrame, methods: Sequence[str], ratios: Sequence[float], *, basis: str,
                     colors: Mapping[str, str], labels: Mapping[str, str]) -> Any:
    """The MLP channels every layer keeps under each method, one panel per ratio (chapter 4).

    ``fn-bias`` has ``fn``'s plan: it is drawn in ``fn``'s colour, dashed; the random seeds are drawn thin.
    The protected layers are shaded.

    Parameters
    ----------
    index : pandas.DataFrame
        The index of stage 4 (:func:`funcprune.run.pipeline.prune_all`: ``method``, ``ratio_requested``,
        ``widths`` and ``protected_layers`` per model).
    methods : sequence of str
        The methods drawn, in the legend's order.
    ratios : sequence of float
        One panel each.
    basis : str
        What a ratio counts (``"total"`` or ``"mlp"``), for the titles.
    colors, labels : dict
        Colour and display name of each method.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    protected = index["protected_layers"].iloc[0]
    fig, axes = plt.subplots(1, len(ratios), figsize=(max(6.5, 4.2 * len(ratios)), 3.6), sharey=True, squeeze=False)
    for ax, ratio in zip(axes[0], ratios):
        for name in methods:
            rows = index[(index["method"] == name) & (index["ratio_requested"] == ratio)]
            color = colors["fn" if name == "fn-bias" else name]
            for k, row in enumerate(rows.itertuples()):
                ax.plot(row.widths, color=color, ls="--" if name == "fn-bias" else "-",
                        lw=0.8 if name == "random" else 1.6, alpha=0.7 if name == "random" else 1.0,
                        label=labels[name] if k == 0 else None)
        for layer in protected:
            ax.axvspan(layer - 0.5, layer + 0.5, color="0.9", zorder=0)
        ax.set_title(f"{100 * ratio:.0f}% of {basis} parameters removed")
        ax.set_xlabel("layer")
    axes[0][0].set_ylabel("MLP channels kept")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(names) if len(ratios) > 1 else 3, frameon=False)
    fig.tight_layout(rect=(0, 0.08 if len(ratios) > 1 else 0.14, 1, 1))
    return fig


def plot_width_profiles(widths: Mapping[str, Mapping[int, int]], *, color: str, title: str) -> Any:
    """One method's kept MLP channels per layer under several plans: the first solid, the others dashed.

    Parameters
    ----------
    widths : dict
        Legend label (e.g. the allocation) -> layer -> channels kept (``PruningPlan.pruned_widths``), in
        layer order.
    color, title : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for k, (name, kept) in enumerate(widths.items()):
        ax.plot(list(kept.values()), "-" if k == 0 else "--", color=color, label=f"{name}")
    ax.set(xlabel="layer", ylabel="MLP channels kept", title=title)
    ax.legend()
    fig.tight_layout()
    return fig


class CsvDownload:
    """A link that downloads a table as CSV, embedded in the page itself (a ``data:`` URI: no file to ship).

    Displayed in a notebook (and so in the book) as one line of HTML; its text names the rows and columns, so
    a reader knows what the full table holds before opening it.
    """

    def __init__(self, table: pd.DataFrame, filename: str, what: str) -> None:
        self.table, self.filename, self.what = table, filename, what

    def _repr_html_(self) -> str:
        import base64
        import html

        data = base64.b64encode(self.table.to_csv().encode("utf-8")).decode("ascii")
        rows, cols = self.table.shape
        return (f'<p class="funcprune-csv"><a download="{html.escape(self.filename)}" '
                f'href="data:text/csv;base64,{data}">Download {html.escape(self.what)} as CSV</a> '
                f"({rows:,} row{'s' if rows != 1 else ''}, {cols} column{'s' if cols != 1 else ''})</p>")

    def __repr__(self) -> str:
        return f"{self.what}: {self.filename} ({len(self.table)} rows)"


def csv_download(table: pd.DataFrame, filename: str, what: str) -> CsvDownload:
    """The full table behind a cut one, one click away (see :class:`CsvDownload`).

    Examples
    --------
    >>> link = csv_download(pd.DataFrame({"a": [1, 2]}), "t.csv", "the full table")
    >>> 'download="t.csv"' in link._repr_html_() and "(2 rows, 1 column)" in link._repr_html_()
    True
    """
    if not filename.endswith(".csv") or "/" in filename:
        raise ValueError(f"filename must be a bare name ending in .csv, got {filename!r}")
    return CsvDownload(table, filename, what)
