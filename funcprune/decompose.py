"""Why a method wins or loses: a perplexity gap taken apart into selection, allocation and compensation.

A pruning method is three choices (:mod:`funcprune.methods`): **which channels** a layer keeps (the
criterion), **how many** each layer keeps (the allocation) and **how the removed ones are compensated**.
Two methods differ in up to all three, so the gap between them mixes three effects. This module walks
from one method to the other changing one axis at a time, through grid points that are ordinary
methods (``"fn+static"``: FN's channels and widths with FLAP's static bias; ``"fn@flap+static"``: FN's
score inside FLAP's widths; ``"random@fn"``: random channels inside FN's widths), built by stage 4 and
scored by stage 5 on the same windows as every other model. Each step is a paired comparison of two
models of the run (:func:`funcprune.compare.compare_models`), so the steps' perplexity factors multiply
exactly to the whole gap, and each says whether the paired test decides it.

The order of the steps matters when the axes interact (FLAP's bias may help FN's channels less than
FLAP's), so every gap is walked in two orders (:data:`PATHS`); a part is only called the cause when both
orders agree. Sentences (:func:`describe_decomposition`, :func:`decomposition_facts`) are computed from the
table by stated rules and tested on contrived runs.

The grid points themselves are chosen and built in stage 4 (:mod:`funcprune.run.grid`).

Used in the chapter :doc:`/executed/05_evaluate_benchmarks`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

from .compare import compare_models, method_groups

__all__ = [
    "PATHS",
    "check_same_windows",
    "windows_match",
    "PAIRS",
    "decomposition_methods",
    "decompose",
    "ridge_of",
    "split_parts",
    "describe_decomposition",
    "decomposition_facts",
    "main_parts",
    "gap_sentences",
    "keys_at",
    "describe_versus",
    "versus_strongest",
    "equal_footing",
    "plot_decomposition",
    "percent",
]

#: For each gap ``(method, baseline)``, two walks from ``method`` to ``baseline``, one axis a step:
#: ``(axis, from, to)``. Names are grid points (:func:`funcprune.methods.get_method`).
PATHS: dict[tuple[str, str], dict[str, list[tuple[str, str, str]]]] = {
    ("fn", "flap"): {
        "compensation first": [("compensation", "fn", "fn+static"),
                               ("allocation", "fn+static", "fn@flap+static"),
                               ("selection", "fn@flap+static", "flap")],
        "selection first": [("selection", "fn", "flap@fn+none"),
                            ("allocation", "flap@fn+none", "flap+none"),
                            ("compensation", "flap+none", "flap")],
    },
    ("fn", "random"): {
        "allocation first": [("allocation", "fn", "fn@uniform"),
                             ("selection", "fn@uniform", "random")],
        "selection first": [("selection", "fn", "random@fn"),
                            ("allocation", "random@fn", "random")],
    },
}

#: Comparisons at equal footing: ``(model, baseline, what is held equal)``.
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("fn", "flap+none", "no compensation for either"),
    ("fn+static", "flap", "static bias for both"),
    ("fn-bias", "flap+progressive", "progressive bias for both"),
    ("fn+ls", "flap+ls", "least squares for both"),
    ("fn@flap+static", "flap", "FLAP's widths and bias: selection only"),
    ("fn", "flap@fn+none", "FN's widths, no compensation: selection only"),
    ("fn", "random@fn", "FN's widths: selection only, against random channels"),
    ("fn+ls", "fn", "FN with and without least squares"),
    ("flap+ls", "flap", "FLAP with least squares against FLAP's bias"),
    ("wanda-sp+ls", "wanda-sp", "Wanda-sp with and without least squares"),
    ("fn+progressive-ls", "fn+ls", "FN: least squares on the pruned network against on the dense one"),
    ("flap+progressive-ls", "flap+ls", "FLAP: least squares on the pruned network against on the dense one"),
)


#: Grid points that cost several forward passes each to build (progressive compensation): built only when asked
#: (``extended=True``; the ``sweep`` profile), their pairs then appear in :func:`equal_footing`.
EXPENSIVE: tuple[str, ...] = ("flap+progressive", "fn+progressive-ls", "flap+progressive-ls")


def decomposition_methods(ridge: float | None = None, *, extended: bool = True) -> list[str]:
    """The grid points the decomposition needs beyond the headline methods, in build order.

    ``ridge`` names the least-squares variants' relative ridge (``"fn+ls0.1"``); ``None`` keeps
    the default (``"fn+ls"``). ``extended=False`` leaves out :data:`EXPENSIVE` points.
    """
    names: list[str] = []
    for paths in PATHS.values():
        for steps in paths.values():
            for _, a, b in steps:
                names += [a, b]
    for a, b, _ in PAIRS:
        names += [a, b]
    return [_with_ridge(n, ridge) for n in dict.fromkeys(names) if extended or n not in EXPENSIVE]


def windows_match(tokenizer: Any, windows: Any, part: Mapping[str, Any], setting: str) -> bool:
    """Whether ``windows`` (with their BOS where the tokenizer uses one) are the windows ``part`` was scored on."""
    from .compare import recorded_window_nll
    from .evaluate import bos_token_id
    from .heldout import ids_sha256

    if str(setting) not in part["perplexity"]:
        return False
    digest = recorded_window_nll(part, setting)[1]
    body = windows[:, 1:] if bos_token_id(tokenizer) is not None else windows
    return ids_sha256(body.reshape(-1).numpy()) == digest


def check_same_windows(tokenizer: Any, windows: Any, part: Mapping[str, Any], setting: str) -> None:
    """Raise unless :func:`windows_match`.

    Raises
    ------
    ValueError
        Other windows, naming the model and how to build the right ones.
    """
    if not windows_match(tokenizer, windows, part, setting):
        raise ValueError(f"the test windows are not those {part['key']!r} was scored on: build them with "
                         "heldout_windows(..., 'test') with chapter 5's window length and budget")


def split_parts(parts: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's models split in two: the dense model and the registered methods (the headline tables), and
    the grid points built for the decomposition (``"fn@flap+static"`` ...)."""
    from .methods import METHODS

    headline, grid = {}, {}
    for key, part in parts.items():
        method = part["entry"]["method"]
        (headline if method in METHODS or method == "dense" else grid)[key] = part
    return headline, grid


def keys_at(parts: Mapping[str, Mapping[str, Any]], methods: Sequence[str], ratio: float) -> list[str]:
    """The keys of ``methods``' models at ``ratio`` in the run, in the order given (a seeded method: its first
    seed); methods the run lacks are left out."""
    out = []
    for method in methods:
        found = sorted((p["entry"].get("seed") or 0, key) for key, p in parts.items()
                       if p["entry"]["method"] == method and abs(float(p["entry"]["ratio_requested"]) - ratio) < 1e-9)
        if found:
            out.append(found[0][1])
    return out


def ridge_of(parts: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The relative ridge of the run's least-squares grid points (``None`` when there are none).

    Raises
    ------
    ValueError
        When they were built with different ridges (two stage-4 runs mixed in one run directory).
    """
    from .methods import get_method

    methods = [get_method(p["entry"]["method"]) for p in parts.values() if p["entry"]["method"] != "dense"]
    ridges = {float(m.compensation_params["ridge"]) for m in methods if m.compensation and m.compensation.refits}
    if len(ridges) > 1:
        raise ValueError(f"the run holds least-squares models with ridges {sorted(ridges)}; rebuild stage 4 "
                         "(make book NOCACHE=1) so that one ridge, chosen on validation text, is used")
    return ridges.pop() if ridges else None


def _with_ridge(name: str, ridge: float | None) -> str:
    return f"{name}{ridge:g}" if ridge is not None and name.endswith(("+ls", "+progressive-ls")) else name


def _registered(name: str) -> str:
    """The name a grid point is stored under (``"fn+progressive"`` is ``fn-bias``)."""
    from .methods import get_method

    return get_method(name).name


def _compare(groups: Mapping[tuple[str, float], Sequence[Mapping[str, Any]]], a: str, b: str, ratio: float,
             metric: str, **kwargs: Any) -> dict[str, Any] | None:
    ga, gb = groups.get((_registered(a), ratio)), groups.get((_registered(b), ratio))
    if not ga or not gb:
        return None
    return compare_models(ga, gb, metric, **kwargs)


def decompose(parts: Mapping[str, Mapping[str, Any]], metric: str = "ppl@128", *, ridge: float | None = None,
              cluster: Mapping[str, Sequence[Any]] | None = None, seeds: str = "pool", n_boot: int = 10_000,
              alpha: float = 0.05) -> pd.DataFrame:
    """Every gap of :data:`PATHS` taken apart, at every ratio where all of a path's models were scored.

    Parameters
    ----------
    parts : dict
        Per-model records of a run (``results.json["models"]``).
    metric : str, default="ppl@128"
        A perplexity metric (``"ppl@<window>"``).
    ridge : float, optional
        The relative ridge of the run's least-squares variants (as in :func:`decomposition_methods`).
    cluster, seeds, n_boot, alpha
        As in :func:`funcprune.compare.compare_models`.

    Returns
    -------
    pandas.DataFrame
        One row per (ratio, gap, order, step): ``ratio``, ``gap`` (``"fn/flap"``), ``order``, ``step``
        (1, 2, ...), ``axis`` (selection, allocation or compensation), ``from``, ``to``, ``factor``
        (perplexity of ``from`` over ``to``: the part of the gap this step accounts for; the factors
        of one order multiply to ``gap_total``), ``ci_low``, ``ci_high``, ``p_value``, ``decided``,
        ``gap_total`` and ``interval`` (what the interval resamples). Paths with a model missing are
        left out.
    """
    groups = method_groups(parts)
    ratios = sorted({r for _, r in groups})
    rows = []
    for (method, baseline), paths in PATHS.items():
        for ratio in ratios:
            total = _compare(groups, method, baseline, ratio, metric, cluster=cluster, seeds=seeds,
                             n_boot=n_boot, alpha=alpha)
            if total is None:
                continue
            for order, steps in paths.items():
                results = [_compare(groups, _with_ridge(a, ridge), _with_ridge(b, ridge), ratio, metric,
                                    cluster=cluster, seeds=seeds, n_boot=n_boot, alpha=alpha) for _, a, b in steps]
                if any(r is None for r in results):
                    continue
                for k, ((axis, a, b), r) in enumerate(zip(steps, results), start=1):
                    rows.append({"ratio": ratio, "gap": f"{method}/{baseline}", "order": order, "step": k,
                                 "axis": axis, "from": a, "to": b, "factor": r["estimate"], "ci_low": r["ci_low"],
                                 "ci_high": r["ci_high"], "p_value": r["p_value"], "decided": bool(r["decided"]),
                                 "gap_total": total["estimate"], "gap_ci_low": total["ci_low"],
                                 "gap_ci_high": total["ci_high"], "gap_decided": bool(total["decided"]),
                                 "interval": r.get("interval", "windows")})
    return pd.DataFrame(rows, columns=["ratio", "gap", "order", "step", "axis", "from", "to", "factor", "ci_low",
                                       "ci_high", "p_value", "decided", "gap_total", "gap_ci_low", "gap_ci_high",
                                       "gap_decided", "interval"])


def equal_footing(parts: Mapping[str, Mapping[str, Any]], metric: str = "ppl@128", *, ridge: float | None = None,
                  pairs: Sequence[tuple[str, str, str]] = PAIRS,
                  cluster: Mapping[str, Sequence[Any]] | None = None, seeds: str = "pool", n_boot: int = 10_000,
                  alpha: float = 0.05) -> pd.DataFrame:
    """The comparisons of ``pairs`` (default :data:`PAIRS`) at every ratio where both models were scored.

    Returns
    -------
    pandas.DataFrame
        ``ratio``, ``model``, ``baseline``, ``held_equal``, ``value``, ``baseline_value``, ``estimate``
        (perplexity ratio, below 1 when ``model`` is better), ``ci_low``, ``ci_high``, ``p_value``,
        ``decided``, ``better``.
    """
    groups = method_groups(parts)
    rows = []
    for ratio in sorted({r for _, r in groups}):
        for a, b, held in pairs:
            a, b = _with_ridge(a, ridge), _with_ridge(b, ridge)
            r = _compare(groups, a, b, ratio, metric, cluster=cluster, seeds=seeds, n_boot=n_boot, alpha=alpha)
            if r is None:
                continue
            rows.append({"ratio": ratio, "model": a, "baseline": b, "held_equal": held, "value": r["value"],
                         "baseline_value": r["baseline_value"], "estimate": r["estimate"], "ci_low": r["ci_low"],
                         "ci_high": r["ci_high"], "p_value": r["p_value"], "decided": bool(r["decided"]),
                         "better": r["better"]})
    return pd.DataFrame(rows, columns=["ratio", "model", "baseline", "held_equal", "value", "baseline_value",
                                       "estimate", "ci_low", "ci_high", "p_value", "decided", "better"])


def _share(factor: float, total: float) -> float:
    """The share of ``log(total)`` that ``log(factor)`` is (signed); NaN when the gap is 1."""
    return math.log(factor) / math.log(total) if total > 0 and abs(math.log(total)) > 1e-12 else float("nan")


def percent(ratio: float) -> str:
    """A fraction as a whole percentage for sentences: ``percent(0.169) == "17 %"``."""
    return f"{100 * ratio:.0f} %"


def _main_of(rows: pd.DataFrame) -> str | None:
    """The axis that is the decided main part of one gap at one ratio in every order walked, else None."""
    mains = []
    for _, steps in rows.groupby("order", sort=False):
        shares = {s.axis: _share(s.factor, s.gap_total) for s in steps.itertuples()}
        top = max(shares, key=lambda a: shares[a] if not math.isnan(shares[a]) else -math.inf)
        mains.append(top if bool(steps.loc[steps["axis"] == top, "decided"].iloc[0]) else None)
    return mains[0] if mains and all(m is not None and m == mains[0] for m in mains) else None


def main_parts(table: pd.DataFrame) -> pd.DataFrame:
    """One row per gap and ratio of :func:`decompose`'s table: the whole gap and its main part.

    The rule (as in :func:`describe_decomposition`): an axis is the **main part** of a gap only when,
    in every order walked, it is the step with the largest share of the log gap, and the paired test
    decides that step; otherwise ``main`` is None.

    Returns
    -------
    pandas.DataFrame
        ``ratio``, ``gap``, ``gap_total``, ``gap_ci_low``, ``gap_ci_high``, ``gap_decided``, ``main``.
    """
    columns = ["ratio", "gap", "gap_total", "gap_ci_low", "gap_ci_high", "gap_decided", "main"]
    rows = [{**{c: first[c] for c in columns[:-1]}, "main": _main_of(group)}
            for (_, _), group in table.groupby(["ratio", "gap"], sort=False) for first in [group.iloc[0]]]
    return pd.DataFrame(rows, columns=columns)


def describe_decomposition(table: pd.DataFrame, *, labels: Mapping[str, str] | None = None) -> list[str]:
    """Sentences on what each gap consists of, computed from :func:`decompose`'s table.

    Rules: a step *accounts for* a factor of the gap with its interval; it is called decided only when
    its paired test decides it (``decided``); an axis is named **the main part** of a gap only by
    :func:`main_parts`' rule. Otherwise the sentence says the parts depend on the order.

    Returns
    -------
    list of str
        One sentence per gap and ratio (in table order), then one per gap on the main part; empty for
        an empty table.
    """
    labels = dict(labels or {})
    name = lambda m: labels.get(m, m)  # noqa: E731
    out: list[str] = []
    if table.empty:
        return out
    for (ratio, gap), rows in table.groupby(["ratio", "gap"], sort=False):
        method, baseline = gap.split("/")
        first = rows.iloc[0]
        relation = "higher" if first["gap_total"] > 1 else "lower"
        verdict = "decided" if first["gap_decided"] else "not decided by the paired test"
        parts = []
        for order, steps in rows.groupby("order", sort=False):
            described = ", ".join(
                f"{s.axis} {s.factor:.2f}x ({s.ci_low:.2f}-{s.ci_high:.2f}{'' if s.decided else ', undecided'})"
                for s in steps.itertuples())
            parts.append(f"{order}: {described}")
        out.append(f"At {percent(ratio)}, {name(method)}'s perplexity is {first['gap_total']:.2f} times "
                   f"{name(baseline)}'s ({first['gap_ci_low']:.2f}-{first['gap_ci_high']:.2f}, {relation}, "
                   f"{verdict}); the factors of each step, in the two orders walked: " + "; ".join(parts) + ".")
        main = _main_of(rows)
        if main is not None:
            out.append(f"At {percent(ratio)}, the {main} is the main part of the gap between {name(method)} and "
                       f"{name(baseline)} in both orders, and the paired test decides it.")
        else:
            out.append(f"At {percent(ratio)}, no single axis is the decided main part of the gap between "
                       f"{name(method)} and {name(baseline)} in both orders: the parts depend on the order, or the "
                       f"largest is not decided.")
    return out


def gap_sentences(table: pd.DataFrame, ratio: float, gap: str = "fn/flap", *,
                  labels: Mapping[str, str] | None = None) -> str:
    """:func:`describe_decomposition`'s two sentences for one gap at one ratio (the introduction's "why"), or a
    sentence saying the run did not take that gap apart there."""
    rows = table[(table["gap"] == gap) & (table["ratio"].sub(ratio).abs() < 1e-9)] if len(table) else table
    if rows.empty:
        method, baseline = gap.split("/")
        return (f"This run did not take the gap between {method} and {baseline} apart at {percent(ratio)} (no grid "
                "points there).")
    return " ".join(describe_decomposition(rows, labels=labels))


def decomposition_facts(table: pd.DataFrame, ratio: float, *, ridge: float | None,
                        labels: Mapping[str, str] | None = None) -> dict[str, str]:
    """What chapter 5 says of the decomposition, by the name it glues each value under.

    Returns
    -------
    dict
        ``decomp_answer`` (:func:`gap_sentences` at ``ratio``), ``ls_ridge`` (the least-squares ridge, or
        ``"(not built in this run)"``) and ``decomp_text`` (:func:`describe_decomposition`, or a sentence saying
        the run built no grid points).
    """
    sentences = describe_decomposition(table, labels=labels)
    return {"decomp_answer": gap_sentences(table, ratio, labels=labels),
            "ls_ridge": "(not built in this run)" if ridge is None else f"{ridge:g}",
            "decomp_text": " ".join(sentences) if sentences else
            "This run built no grid points (the profile's decompose_ratios is empty), so the gap is not taken apart "
            "here."}


#: The paper's method and its variants held to the strongest baseline (``"+ls"`` takes the run's ridge).
CHALLENGERS: tuple[str, ...] = ("fn", "fn-bias", "fn+ls")


def versus_strongest(parts: Mapping[str, Mapping[str, Any]], strongest: str, metric: str = "ppl@128", *,
                     ridge: float | None = None, challengers: Sequence[str] = CHALLENGERS,
                     **kwargs: Any) -> pd.DataFrame:
    """Each challenger against the strongest baseline variant (chosen on validation text), on the test windows.

    A table of :func:`equal_footing`'s columns; ``kwargs`` as there (``cluster``, ``seeds``, ``n_boot``).
    """
    pairs = [(c, strongest, "the strongest baseline variant on validation text") for c in challengers]
    return equal_footing(parts, metric, ridge=ridge, pairs=pairs, **kwargs)


def describe_versus(table: pd.DataFrame, *, labels: Mapping[str, str] | None = None) -> list[str]:
    """One sentence per row of :func:`versus_strongest` or :func:`equal_footing`: the ratio with its interval,
    "lower" or "higher" only when the paired test decides it, else "cannot be told apart"."""
    labels = dict(labels or {})
    out = []
    for r in table.itertuples():
        a, b = labels.get(r.model, r.model), labels.get(r.baseline, r.baseline)
        span = f"{r.estimate:.2f} times ({r.ci_low:.2f}-{r.ci_high:.2f})"
        if r.decided:
            verdict = "lower: the paired test decides it" if r.estimate < 1 else "higher: the paired test decides it"
            out.append(f"At {percent(r.ratio)}, {a}'s perplexity is {span} {b}'s, {verdict}.")
        else:
            out.append(f"At {percent(r.ratio)}, {a}'s perplexity is {span} {b}'s: the paired test cannot tell them "
                       "apart.")
    return out


def plot_decomposition(table: pd.DataFrame, *, labels: Mapping[str, str] | None = None, ax: Any = None) -> Any:
    """A forest plot: each step's perplexity factor with its interval, one block per gap, ratio and order.

    Factors above 1: the step's change lowers the perplexity (it closes that much of the gap).
    """
    import matplotlib.pyplot as plt

    if table.empty:
        raise ValueError("nothing to plot: the decomposition table is empty (no path had all its models scored)")
    labels = dict(labels or {})
    blocks = list(table.groupby(["gap", "ratio", "order"], sort=False))
    n_rows = len(table)
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 0.32 * (n_rows + 2 * len(blocks)) + 1.0))
    colors = {"selection": "#1b9e77", "allocation": "#d95f02", "compensation": "#7570b3"}
    y, ticks, names = 0.0, [], []
    for (gap, ratio, order), rows in blocks:
        method, baseline = gap.split("/")
        for s in rows.itertuples():
            ax.errorbar(s.factor, y, xerr=[[s.factor - s.ci_low], [s.ci_high - s.factor]], fmt="o",
                        color=colors.get(s.axis, "k"), mfc=colors.get(s.axis, "k") if s.decided else "white",
                        capsize=3)
            ticks.append(y)
            names.append(f"{s.axis}: {labels.get(s.to, s.to)}")
            y += 1
        ax.text(1.0, y - 0.35, f"{labels.get(method, method)} / {labels.get(baseline, baseline)} at "
                f"{percent(ratio)}, {order} (gap {rows['gap_total'].iloc[0]:.2f}x)", fontsize=8,
                transform=ax.get_yaxis_transform(), ha="right", va="bottom")
        y += 1.2
    ax.axvline(1.0, color="grey", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_yticks(ticks, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("perplexity factor of the step (from / to; filled: decided)")
    return ax
