"""Does the answer hold on another model? Runs on several models set side by side, from their bundles.

Every number of chapters 1 to 6 comes from one model. This module reads runs on other models,
each from its **bundle** (:mod:`funcprune.run.bundle`: the small artefacts of a run and where it came
from), next to this build's own run, and puts the same questions to each:

* the headline comparisons (the paper's method against FLAP, Wanda-sp and random) with their paired
  intervals, at **equal fractions of MLP parameters** removed (:data:`MATCH_TOL`), and of all
  parameters where the models reach the same fractions;
* how each gap splits into selection, allocation and compensation (:func:`funcprune.decompose.main_parts`)
  and what each compensation does to the paper's channels (:data:`COMPENSATION_PAIRS`);
* the functional networks themselves (sparsity, stability, key neurons) and the lesion verdict, from
  the summaries chapters 2, 4 and 6 record (:func:`funcprune.run.runview.record_summary`).

A bundle measured another way than this build (another protocol fingerprint or funcprune version) is
listed as **stale**, with the fix, and none of its numbers enters a table or a sentence. Sentences
(:func:`describe_across`) are computed by stated rules and tested on contrived runs. What is read of each
run, and how a bundle is found stale, is :mod:`funcprune.run.runview`.

Used in the chapter :doc:`/executed/07_across_models`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

from ..decompose import percent
from ..run.runview import FIX, RunView

__all__ = [
    "COMPENSATION_PAIRS",
    "OPEN_LICENCES",
    "across_answer",
    "HEADLINE",
    "MATCH_TOL",
    "compensation_across",
    "decomposition_across",
    "describe_across",
    "bias_effect_across",
    "headline_across",
    "licence_notes",
    "networks_across",
    "plot_across",
    "provenance_table",
]

#: Two models' ratios are at "equal fractions" when the fractions they remove differ by at most this.
MATCH_TOL = 0.01
#: The headline comparisons set side by side: (method, baseline).
HEADLINE: tuple[tuple[str, str], ...] = (("fn", "flap"), ("fn", "wanda-sp"), ("fn", "random"), ("fn-bias", "flap"))
#: What each compensation does to the paper's channels and to FLAP's: (with, without, what).
COMPENSATION_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("fn-bias", "fn", "FN, progressive bias (the authors')"),
    ("fn+static", "fn", "FN, static bias (FLAP's)"),
    ("fn+ls", "fn", "FN, least squares"),
    ("flap", "flap+none", "FLAP, its static bias"),
)


# ----------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------
def _fresh(views: Sequence[RunView]) -> list[RunView]:
    return [v for v in views if not v.stale]


def _matched(table: pd.DataFrame, column: str = "mlp_removed", tol: float = MATCH_TOL) -> pd.Series:
    """A fraction label per row: rows within ``tol`` of one another share the first one's value."""
    anchors: list[float] = []
    out = []
    for value in table[column]:
        anchor = next((a for a in anchors if abs(a - value) <= tol), None)
        if anchor is None:
            anchors.append(value)
            anchor = value
        out.append(round(anchor, 3))
    return pd.Series(out, index=table.index, dtype=float)


def headline_across(views: Sequence[RunView], pairs: Sequence[tuple[str, str]] = HEADLINE) -> pd.DataFrame:
    """The headline comparisons of every fresh run, on each run's shortest-window perplexity.

    Returns
    -------
    pandas.DataFrame
        ``model``, ``ratio`` (as the run asked), ``basis``, ``mlp_removed``, ``total_removed``,
        ``fraction`` (``mlp_removed`` matched across models within :data:`MATCH_TOL`), ``method``,
        ``baseline``, ``estimate`` (perplexity ratio), ``ci_low``, ``ci_high``, ``decided``, ``verdict``
        (``better``, ``worse`` or ``undecided``), ``interval``.
    """
    rows = []
    for view in _fresh(views):
        c = view.comparisons
        c = c[c["metric"] == view.metric]
        for method, baseline in pairs:
            for r in c[(c["method"] == method) & (c["baseline"] == baseline)].itertuples():
                key = view.key_of(method, float(r.ratio))
                if key is None:
                    continue
                entry = view.parts[key]["entry"]
                rows.append({"model": view.label, "ratio": float(r.ratio), "basis": entry.get("ratio_basis"),
                             **view.removed(key), "method": method, "baseline": baseline,
                             "estimate": float(r.estimate), "ci_low": float(r.ci_low), "ci_high": float(r.ci_high),
                             "decided": bool(r.decided), "verdict": _verdict(float(r.estimate), bool(r.decided)),
                             "interval": getattr(r, "interval", "windows")})
    columns = ["model", "ratio", "basis", "mlp_removed", "total_removed", "fraction", "method", "baseline",
               "estimate", "ci_low", "ci_high", "decided", "verdict", "interval"]
    table = pd.DataFrame(rows, columns=[c for c in columns if c != "fraction"])
    table.insert(5, "fraction", _matched(table) if len(table) else pd.Series(dtype=float))
    return table


def _verdict(estimate: float, decided: bool) -> str:
    return "undecided" if not decided else ("worse" if estimate > 1 else "better")


def decomposition_across(views: Sequence[RunView], *, n_boot: int = 10_000) -> pd.DataFrame:
    """Each fresh run's gaps (FN-FLAP, FN-random) and their main part (:func:`funcprune.decompose.main_parts`).

    Returns
    -------
    pandas.DataFrame
        ``model``, ``ratio``, ``mlp_removed``, ``gap``, ``gap_total``, ``gap_ci_low``, ``gap_ci_high``,
        ``gap_decided``, ``main`` (None: no decided main part in both orders).
    """
    from ..compare import article_clusters
    from ..decompose import decompose, main_parts, ridge_of, split_parts

    tables = []
    for view in _fresh(views):
        _, grid = split_parts(view.parts)
        table = decompose(view.parts, view.metric, ridge=ridge_of(grid), cluster=article_clusters(view.parts),
                          seeds="resample", n_boot=n_boot)
        mains = main_parts(table)
        if mains.empty:
            continue
        fn_keys = {r: view.key_of("fn", r) for r in mains["ratio"]}
        mains.insert(0, "model", view.label)
        mains.insert(2, "mlp_removed", [view.removed(fn_keys[r])["mlp_removed"] if fn_keys[r] else math.nan
                                        for r in mains["ratio"]])
        tables.append(mains)
    columns = ["model", "ratio", "mlp_removed", "gap", "gap_total", "gap_ci_low", "gap_ci_high", "gap_decided", "main"]
    return pd.concat(tables, ignore_index=True)[columns] if tables else pd.DataFrame(columns=columns)


def compensation_across(views: Sequence[RunView], *, n_boot: int = 10_000) -> pd.DataFrame:
    """What each compensation of :data:`COMPENSATION_PAIRS` does, per fresh run and ratio.

    Returns
    -------
    pandas.DataFrame
        ``model``, ``ratio``, ``mlp_removed``, ``what``, ``estimate`` (perplexity with over without,
        below 1 when the compensation helps), ``ci_low``, ``ci_high``, ``decided``, ``verdict``.
    """
    from ..compare import article_clusters
    from ..decompose import equal_footing, ridge_of, split_parts

    rows = []
    for view in _fresh(views):
        _, grid = split_parts(view.parts)
        table = equal_footing(view.parts, view.metric, ridge=ridge_of(grid), pairs=COMPENSATION_PAIRS,
                              cluster=article_clusters(view.parts), seeds="resample", n_boot=n_boot)
        for r in table.itertuples():
            key = view.key_of("fn", float(r.ratio))
            rows.append({"model": view.label, "ratio": float(r.ratio),
                         "mlp_removed": view.removed(key)["mlp_removed"] if key else math.nan,
                         "what": r.held_equal, "estimate": float(r.estimate), "ci_low": float(r.ci_low),
                         "ci_high": float(r.ci_high), "decided": bool(r.decided),
                         "verdict": _verdict(float(r.estimate), bool(r.decided))})
    return pd.DataFrame(rows, columns=["model", "ratio", "mlp_removed", "what", "estimate", "ci_low", "ci_high",
                                       "decided", "verdict"])


def networks_across(views: Sequence[RunView]) -> pd.DataFrame:
    """The networks and the lesion verdict of every fresh run, from the summaries chapters 2 and 6 recorded.

    Returns
    -------
    pandas.DataFrame
        One row per model: ``maps per layer``, ``median network (share of a layer)``, ``key neurons
        (share of prunable channels)``, ``split-half r``, ``another seed r``, ``lesion units``,
        ``lesion harm p``, ``lesion harm decided``; NaN where a chapter recorded nothing.
    """
    rows = []
    for view in _fresh(views):
        net, lesion = view.summaries.get("networks", {}), view.summaries.get("lesions", {})
        harm = lesion.get("harm") or {}
        rows.append({"model": view.label, "maps per layer": _num(net.get("maps_per_layer"), "{:.0f}"),
                     "median network (share of a layer)": _num(net.get("median_share"), "{:.1%}"),
                     "key neurons (share of prunable channels)": _num(net.get("key_share"), "{:.1%}"),
                     "split-half r": _num(net.get("split_half_median"), "{:.2f}"),
                     "another seed r": _num(net.get("seed_median"), "{:.2f}"),
                     "lesion units": _num(lesion.get("n_units"), "{:.0f}"), "lesion harm p": _num(harm.get("p"), "{:.2g}"),
                     "lesion harm decided": NOT_RECORDED if harm.get("significant") is None else
                     ("yes" if harm["significant"] else "no")})
    return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame()


#: What a table shows where a run recorded nothing (a bundle written before its chapter recorded a summary).
NOT_RECORDED = "not recorded"


def _num(value: Any, fmt: str) -> str:
    """``value`` formatted, or :data:`NOT_RECORDED` when it is missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_RECORDED
    if isinstance(value, bool):
        return "yes" if value else "no"
    return fmt.format(value)


def bias_effect_across(views: Sequence[RunView]) -> pd.DataFrame:
    """Chapter 4's measure of what FLAP's static bias does to each token, one row per fresh run (medians over the
    pruned layers of :func:`funcprune.compensation.bias_effect`; "not recorded" where the run recorded nothing)."""
    names = {"ratio": ("ratio", "{:g}"), "norm_after_mlp": ("norm after the MLP", "{}"),
             "cos_without": ("typical token: cosine without bias", "{:.2f}"),
             "cos_with": ("typical token: with bias", "{:.2f}"),
             "first_cos_without": ("first position: cosine without bias", "{:.2f}"),
             "first_cos_with": ("first position: with bias", "{:.2f}"),
             "first_bias_ratio": ("first position: bias / its own output", "{:,.1f}")}
    rows = [{"model": v.label, **{name: _num(v.summaries.get("compensation", {}).get(k), fmt)
                                  for k, (name, fmt) in names.items()}} for v in _fresh(views)]
    return pd.DataFrame(rows).set_index("model").T if rows else pd.DataFrame()


def provenance_table(views: Sequence[RunView]) -> pd.DataFrame:
    """Where every run came from (stale ones included, with why), one column per run."""
    rows = []
    for view in views:
        p = view.provenance
        model, machine = p.get("model") or {}, p.get("machine") or {}
        rows.append({"run": f"{view.label} ({view.origin})", "licence": model.get("license") or NOT_RECORDED,
                     "revision": model.get("revision") or NOT_RECORDED, "protocol": p.get("protocol") or NOT_RECORDED,
                     "funcprune": p.get("funcprune") or NOT_RECORDED, "commit": (p.get("commit") or NOT_RECORDED)[:12],
                     "evaluated": p.get("evaluated") or NOT_RECORDED,
                     "machine": " ".join(str(machine.get(k)).split("-with-")[0] for k in ("platform",) if machine.get(k))
                     + (f", {machine['cpus']} CPUs" if machine.get("cpus") else "") or NOT_RECORDED,
                     "status": "stale: " + "; ".join(view.stale) + f" ({FIX})" if view.stale else "current"})
    return pd.DataFrame(rows).set_index("run").T


# ----------------------------------------------------------------------------------
# Sentences and the figure
# ----------------------------------------------------------------------------------
def describe_across(headline: pd.DataFrame, decomposition: pd.DataFrame | None = None, *,
                    labels: Mapping[str, str] | None = None) -> list[str]:
    """Where the models agree and where they differ, by stated rules.

    Rules: two models are compared only at a matched fraction of MLP parameters (``fraction``); a
    comparison's answer on a model is ``better`` or ``worse`` only when its paired test decides it,
    else ``undecided``. The models **agree** on a comparison when every matched fraction gives every
    model the same answer; they **differ** where two models get opposite decided answers; otherwise
    the answer **holds on one model and is undecided on another**. A gap's main part is compared the
    same way at each model's decomposition ratio.

    Returns
    -------
    list of str
        One sentence per headline comparison present, one on fractions of all parameters, then one per
        decomposed gap; a single sentence when fewer than two models are present.
    """
    labels = dict(labels or {})
    name = lambda m: labels.get(m, m)  # noqa: E731
    models = list(dict.fromkeys(headline["model"])) if len(headline) else []
    if len(models) < 2:
        return ["Only one model has current results here, so nothing can be set side by side yet: "
                "make models builds the shipped ones, make bundle adds a run of yours."]
    out = []
    for (method, baseline), rows in headline.groupby(["method", "baseline"], sort=False):
        matched = rows.groupby("fraction").filter(lambda g: g["model"].nunique() > 1)
        what = f"{name(method)} against {name(baseline)}"
        if matched.empty:
            out.append(f"{what}: no two models were measured at the same fraction of MLP parameters.")
            continue
        at = []
        kinds = set()
        for fraction, g in matched.groupby("fraction"):
            answers = dict(zip(g["model"], g["verdict"]))
            decided = {a for a in answers.values() if a != "undecided"}
            kind = "agree" if len(set(answers.values())) == 1 else ("differ" if len(decided) > 1 else "partly")
            kinds.add(kind)
            at.append(f"at {percent(fraction)} of MLP parameters " + ", ".join(
                f"{r.estimate:.2f}x on {r.model} ({r.verdict})" for r in g.itertuples()))
        verdict = ("the models agree" if kinds == {"agree"} else
                   "the models differ" if "differ" in kinds else
                   "the answer holds on one model and is undecided on another")
        out.append(f"{what}: {verdict}; " + "; ".join(at) + ".")
    by_total = headline.assign(total=_matched(headline, "total_removed")).groupby("total")["model"].nunique()
    out.append("At equal fractions of all parameters: " + (
        f"{int((by_total > 1).sum())} fraction(s) hold more than one model (the total_removed column)."
        if (by_total > 1).any() else "no two models were measured at the same fraction of all parameters (their "
        "embeddings differ in size), so the models are compared at equal fractions of MLP parameters only."))
    if decomposition is not None and len(decomposition):
        for gap, rows in decomposition.groupby("gap", sort=False):
            method, baseline = gap.split("/")
            parts = [f"{r.main or 'no decided main part'} on {r.model} (at {percent(r.mlp_removed)} of MLP parameters)"
                     for r in rows.itertuples()]
            same = rows["main"].nunique(dropna=False) == 1 and rows["model"].nunique() > 1
            out.append(f"The gap between {name(method)} and {name(baseline)} is "
                       f"{'the same on every model: ' if same else 'made differently: '}" + "; ".join(parts) + ".")
    return out


def across_answer(headline: pd.DataFrame, reference: str, *, labels: Mapping[str, str] | None = None,
                  pairs: Sequence[tuple[str, str]] = (("fn", "flap"), ("fn", "random"))) -> str:
    """One line: whether the reference model's answer held on every other model.

    Rule: at the fractions of MLP parameters both models were measured at, the answer **held** on a
    model when each comparison of ``pairs`` gets the same verdict there as on the reference model
    (:func:`describe_across`'s verdicts); it **did not hold** when some comparison gets the opposite
    decided verdict; otherwise it **held in part** (decided on one model, undecided on the other).
    """
    labels = dict(labels or {})
    name = lambda m: labels.get(m, m)  # noqa: E731
    others = [m for m in dict.fromkeys(headline["model"]) if m != reference] if len(headline) else []
    if not others:
        return ("No second model has current results in this build (make models builds the shipped one), so "
                "whether the answer holds on another model is not measured here.")
    out = []
    for other in others:
        kinds, said = set(), []
        for method, baseline in pairs:
            rows = headline[(headline["method"] == method) & (headline["baseline"] == baseline)]
            ref = dict(zip(rows.loc[rows["model"] == reference, "fraction"], rows.loc[rows["model"] == reference, "verdict"]))
            oth = dict(zip(rows.loc[rows["model"] == other, "fraction"], rows.loc[rows["model"] == other, "verdict"]))
            common = sorted(set(ref) & set(oth))
            if not common:
                continue
            for f in common:
                decided = {ref[f], oth[f]} - {"undecided"}
                kinds.add("same" if ref[f] == oth[f] else "opposite" if len(decided) > 1 else "partly")
            said.append(f"{name(method)} against {name(baseline)} is {_tally([oth[f] for f in common])} of "
                        f"{len(common)} matched fractions on {other} (on {reference}: {_tally([ref[f] for f in common])})")
        if not said:
            out.append(f"{other} was measured at no fraction of MLP parameters that {reference} was.")
            continue
        verdict = "held" if kinds == {"same"} else "did not hold" if "opposite" in kinds else "held in part"
        out.append(f"On {other} the answer {verdict}: " + "; ".join(said) + ".")
    return " ".join(out)


def _tally(verdicts: Sequence[str]) -> str:
    """``["worse", "worse", "undecided"]`` -> ``"worse at 2, undecided at 1"``."""
    return ", ".join(f"{v} at {n}" for v, n in pd.Series(list(verdicts)).value_counts().items())


#: Licences under which weights may be shared as open source (anything else gets a note on the page).
OPEN_LICENCES = ("Apache-2.0", "MIT", "BSD-3-Clause", "BSD-2-Clause", "CC-BY-4.0", "OpenRAIL")


def licence_notes(views: Sequence[RunView]) -> list[str]:
    """A sentence for every model whose weights are not under an open licence (unrecorded licences included)."""
    out = []
    for view in views:
        licence = (view.provenance.get("model") or {}).get("license")
        if licence in OPEN_LICENCES:
            continue
        out.append(f"{view.label}'s weights are under {licence or 'a licence its run did not record'}: this book "
                   "shows numbers measured on them, never the weights, and nothing here redistributes them.")
    return out


def plot_across(headline: pd.DataFrame, *, labels: Mapping[str, str] | None = None) -> Any:
    """One panel per headline comparison: perplexity ratio (log axis, 95 % interval) against the fraction of
    MLP parameters removed, one line per model; filled markers where the paired test decides."""
    import matplotlib.pyplot as plt

    labels = dict(labels or {})
    pairs = list(dict.fromkeys(zip(headline["method"], headline["baseline"])))
    fig, axes = plt.subplots(len(pairs), 1, figsize=(6.4, 2.3 * len(pairs) + 0.6), sharex=True, squeeze=False)
    for ax, (method, baseline) in zip(axes[:, 0], pairs):
        rows = headline[(headline["method"] == method) & (headline["baseline"] == baseline)]
        for i, (model, g) in enumerate(rows.groupby("model", sort=False)):
            g = g.sort_values("mlp_removed")
            x = 100 * g["mlp_removed"].to_numpy()
            line, = ax.plot(x, g["estimate"], marker="none", lw=1.2, label=model)
            ax.errorbar(x, g["estimate"], yerr=[g["estimate"] - g["ci_low"], g["ci_high"] - g["estimate"]],
                        fmt="none", ecolor=line.get_color(), capsize=3)
            for xi, yi, decided in zip(x, g["estimate"], g["decided"]):
                ax.plot(xi, yi, "o", color=line.get_color(), mfc=line.get_color() if decided else "white", ms=6)
        ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_ylabel("perplexity ratio")
        ax.set_title(f"{labels.get(method, method)} / {labels.get(baseline, baseline)}", fontsize=10)
    axes[-1, 0].set_xlabel("MLP parameters removed (%)")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=max(1, len(names)), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig
