"""Claims computed from a run, each by a rule stated here: the sentences a summary may make.

A summary or an introduction says "stable", "sparse", "necessary", "grows with depth" or
"better than FLAP" only when the run's numbers pass the rule of that word; otherwise it
says what was measured instead. Every rule is a module constant, printed in the sentence's
parenthesis, and tested on contrived inputs (``tests/test_claims.py``):

* **stable** (:func:`stability_claim`): the median split-half matched map correlation is at
  least :data:`STABLE_R`; "partly reproducible" from :data:`PARTLY_R`; otherwise "not
  reproducible across halves of the text".
* **sparse** (:func:`sparsity_claim`): the median network holds at most :data:`SPARSE_SHARE`
  of its layer's channels.
* **necessary** (:func:`necessity_claim`): the lesion test (one-sided Wilcoxon over networks,
  :func:`funcprune.lesion.lesion_verdict`) decides at level :data:`ALPHA`.
* **a trend with depth** (:func:`depth_trend`): Spearman's rank correlation over layers
  decides at level :data:`ALPHA`; otherwise "no trend the test decides".
* **better / worse** (:func:`comparison_claim`): only when the paired test decides it
  (``decided``); otherwise "cannot be told apart on this run".

* **precise enough for a figure** (:func:`zero_shot_facts`): the dense model's mean zero-shot
  accuracy has a standard error of at most :data:`PRECISE_SE`; otherwise zero-shot is a table only.

The answer on page one is made here too: :func:`relative_to_baseline` (every method's
perplexity relative to one baseline with paired intervals, at each ratio),
:func:`plain_answer` (the plain-words answer, with what the run did not measure: :func:`not_measured`),
:func:`headline_facts` (the numbers beside it) and :func:`rank_deficient_sentence`. The ``*_facts`` functions
return a chapter's values by the names the chapter glues them under (:func:`lesion_facts` and
:func:`versus_facts`: chapter 6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["ALPHA", "PARTLY_R", "PRECISE_SE", "SPARSE_SHARE", "STABLE_R", "Claim", "activity_depth_sentence",
           "comparison_claim", "depth_trend", "headline_facts", "lesion_facts", "necessity_claim",
           "network_claims_sentence", "not_measured", "plain_answer", "rank_deficient_sentence",
           "relative_to_baseline", "sparsity_claim", "stability_claim", "tier_sentence", "versus_facts",
           "zero_shot_facts"]

#: Median split-half map correlation at or above which the networks are called stable.
STABLE_R = 0.8
#: Median split-half map correlation at or above which they are called partly reproducible.
PARTLY_R = 0.5
#: Largest median share of a layer's channels in one network for the networks to be called sparse.
SPARSE_SHARE = 0.1
#: Level of every test a claim rests on.
ALPHA = 0.05
#: Largest standard error of the dense model's mean zero-shot accuracy at which accuracies are drawn as a figure.
PRECISE_SE = 0.02


@dataclass(frozen=True)
class Claim:
    """One computed claim.

    Attributes
    ----------
    holds : bool or None
        Whether the word the rule guards may be used (None: nothing to decide from).
    text : str
        The sentence or phrase to print, with the number and the rule that decided it.
    """

    holds: bool | None
    text: str

    def __str__(self) -> str:
        return self.text


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def stability_claim(split_half_median: float, *, stable: float = STABLE_R, partly: float = PARTLY_R) -> Claim:
    """"stable" only at a median split-half map correlation of at least ``stable``.

    Examples
    --------
    >>> stability_claim(0.48).text
    'not reproducible across halves of the calibration text (median matched map correlation 0.48; stable would need at least 0.8)'
    >>> stability_claim(0.85).holds
    True
    """
    if not math.isfinite(split_half_median):
        return Claim(None, "of unmeasured stability (no split-half fit in this run)")
    r = f"median matched map correlation {split_half_median:.2f}"
    if split_half_median >= stable:
        return Claim(True, f"stable across halves of the calibration text ({r}, at least {stable:g})")
    if split_half_median >= partly:
        return Claim(False, f"only partly reproducible across halves of the calibration text ({r}; stable would "
                            f"need at least {stable:g})")
    return Claim(False, f"not reproducible across halves of the calibration text ({r}; stable would need at "
                        f"least {stable:g})")


def sparsity_claim(median_channels: float, width: int, *, sparse: float = SPARSE_SHARE) -> Claim:
    """"sparse" only when the median network holds at most ``sparse`` of its layer's channels.

    Examples
    --------
    >>> sparsity_claim(96, 1536).text
    'sparse (the median network holds 96 of 1536 channels, 6 %; sparse means at most 10 %)'
    """
    if width <= 0 or not math.isfinite(median_channels):
        return Claim(None, "of unmeasured size")
    share = median_channels / width
    said = f"the median network holds {median_channels:.0f} of {width} channels, {100 * share:.0f} %"
    if share <= sparse:
        return Claim(True, f"sparse ({said}; sparse means at most {100 * sparse:g} %)")
    return Claim(False, f"not sparse ({said}; sparse would mean at most {100 * sparse:g} %)")


def necessity_claim(p_value: float, n_networks: int, *, alpha: float = ALPHA) -> Claim:
    """"necessary" only when the lesion test decides that lesions hurt more than random ones.

    Examples
    --------
    >>> necessity_claim(0.18, 9).holds
    False
    """
    if n_networks == 0 or not math.isfinite(p_value):
        return Claim(None, "not tested for necessity (no network lesioned)")
    if p_value < alpha:
        return Claim(True, f"necessary: lesioning them hurts more than lesioning as many random channels "
                           f"({n_networks} networks, one-sided Wilcoxon {_p(p_value)})")
    return Claim(False, f"not shown to be necessary: lesioning them did not hurt more than lesioning as many "
                        f"random channels ({n_networks} networks, one-sided Wilcoxon {_p(p_value)}, level {alpha:g})")


def network_claims_sentence(split_half_median: float, median_channels: float, width: int) -> str:
    """The introduction's sentence on this run's networks: sparsity and stability, each by its rule.

    Examples
    --------
    >>> network_claims_sentence(0.48, 96, 1536)[:60]
    'On this run the networks are sparse (the median network hold'
    """
    return (f"On this run the networks are {sparsity_claim(median_channels, width)} and "
            f"{stability_claim(split_half_median)}.")


def depth_trend(layers: Sequence[float], values: Sequence[float], *, what: str, rising: str = "rises",
                falling: str = "falls", alpha: float = ALPHA) -> Claim:
    """A trend with depth only when Spearman's rank correlation over layers decides it.

    Parameters
    ----------
    layers, values : sequence of float
        One value per layer (NaN values are dropped).
    what : str
        The quantity, e.g. ``"the spread of activity"``.
    rising, falling : str
        Verbs for a decided positive or negative trend.
    alpha : float
        Level of the test.

    Examples
    --------
    >>> depth_trend(range(10), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], what="x").text
    'x rises with depth (Spearman rho = 1.00 over 10 layers, p < 0.001)'
    >>> depth_trend(range(6), [1, 3, 2, 1, 3, 2], what="x").holds
    False
    """
    from scipy.stats import spearmanr

    x, y = np.asarray(list(layers), float), np.asarray(list(values), float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 4 or np.ptp(y) == 0:
        return Claim(None, f"{what} has too few layers or no variation to test a trend with depth")
    rho, p = spearmanr(x, y)
    stats = f"Spearman rho = {rho:.2f} over {len(x)} layers, {_p(float(p))}"
    if p < alpha:
        return Claim(True, f"{what} {rising if rho > 0 else falling} with depth ({stats})")
    return Claim(False, f"{what} shows no trend with depth that the test decides ({stats}, level {alpha:g})")


def activity_depth_sentence(summary: pd.DataFrame) -> str:
    """Chapter 1's summary sentence: spread and tails of activity against depth, each tested.

    Parameters
    ----------
    summary : pandas.DataFrame
        :func:`funcprune.explore.layer_summary` (``layer``, ``std``, ``kurtosis``; kinds averaged).
    """
    per_layer = summary.groupby("layer")[["std", "kurtosis"]].mean()
    spread = depth_trend(per_layer.index, per_layer["std"], what="The spread of activity (std)")
    tails = depth_trend(per_layer.index, per_layer["kurtosis"], what="the tails (mean excess kurtosis)",
                        rising="grow heavier", falling="grow lighter")
    return f"{spread.text}; {tails.text}."


def comparison_claim(row: Mapping[str, Any], *, method: str, baseline: str) -> Claim:
    """"better" or "worse" only when the paired test decides it.

    Parameters
    ----------
    row : mapping
        ``estimate`` (perplexity ratio, below 1: ``method`` better), ``ci_low``, ``ci_high``,
        ``decided``.

    Examples
    --------
    >>> comparison_claim({"estimate": 0.98, "ci_low": 0.95, "ci_high": 1.01, "decided": False},
    ...                  method="A", baseline="B").text
    "A cannot be told apart from B on this run (0.98 times B's perplexity, 95 % interval 0.95 to 1.01)"
    """
    times = (f"{row['estimate']:.2f} times {baseline}'s perplexity, 95 % interval {row['ci_low']:.2f} to "
             f"{row['ci_high']:.2f}")
    if not bool(row["decided"]):
        return Claim(None, f"{method} cannot be told apart from {baseline} on this run ({times})")
    word = "better than" if row["estimate"] < 1 else "worse than"
    return Claim(row["estimate"] < 1, f"{method} is {word} {baseline} ({times}, decided by the paired test)")


def tier_sentence(full_ratios: Sequence[float] | None) -> str:
    """Which models get the longer windows and the zero-shot tasks; right for ``None``, ``[]`` and a list.

    Examples
    --------
    >>> tier_sentence([])
    'only the dense model gets the longer windows and the zero-shot tasks'
    >>> tier_sentence([0.2])
    'the dense model and the models at ratio 0.2 also get the longer windows and the zero-shot tasks'
    """
    if full_ratios is None:
        return "every model gets the longer windows and the zero-shot tasks"
    if not full_ratios:
        return "only the dense model gets the longer windows and the zero-shot tasks"
    listed = ", ".join(f"{r:g}" for r in full_ratios)
    return (f"the dense model and the models at ratio{'s' if len(full_ratios) > 1 else ''} {listed} also get the "
            f"longer windows and the zero-shot tasks")


def rank_deficient_sentence(n_rank_deficient: int, n_fits: int) -> str:
    """Chapter 2's sentence on fits whose ``n_components`` exceeded the data's rank; right when 0.

    Examples
    --------
    >>> rank_deficient_sentence(0, 30)
    'In every one of the 30 fits, n_components was below the numerical rank of the activations.'
    """
    if n_rank_deficient == 0:
        return f"In every one of the {n_fits} fits, n_components was below the numerical rank of the activations."
    fits = "fit" if n_rank_deficient == 1 else "fits"
    return (f"In {n_rank_deficient} of the {n_fits} {fits}, n_components exceeded the numerical rank of the "
            f"group's activations, so some maps there are noise; the warnings printed above name them (lower "
            f"n_components or n_groups to fix it).")


# ----------------------------------------------------------------------------------
# The answer on page one
# ----------------------------------------------------------------------------------
def relative_to_baseline(parts: Mapping[str, Mapping[str, Any]], metric: str, *, baseline: str = "flap",
                         n_boot: int = 2000, seed: int = 0, alpha: float = ALPHA) -> pd.DataFrame:
    """Every method's perplexity relative to one baseline at each ratio, paired, with intervals.

    Seeded methods (random) are pooled over their seeds as in
    :func:`funcprune.compare.compare_models`, the one definition the tables use too.

    Parameters
    ----------
    parts : dict
        Per-model records of a run (``results.json["models"]``).
    metric : str
        ``"ppl@<window>"``.
    baseline : str, default="flap"

    Returns
    -------
    pandas.DataFrame
        One row per (ratio, method other than the baseline): ``ratio``, ``method``,
        ``estimate``, ``ci_low``, ``ci_high``, ``p_value``, ``decided``, ``n``.
    """
    from .compare import compare_models

    setting = metric.removeprefix("ppl@")
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for part in parts.values():
        entry = part["entry"]
        if entry["method"] != "dense" and setting in part["perplexity"]:
            groups.setdefault((entry["method"], float(entry["ratio_requested"])), []).append(part)
    rows = []
    for (method, ratio), group in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        base = groups.get((baseline, ratio))
        if method == baseline or not base:
            continue
        r = compare_models(group, base, metric, n_boot=n_boot, seed=seed, alpha=alpha)
        rows.append({"ratio": ratio, "method": method, "estimate": r["estimate"], "ci_low": r["ci_low"],
                     "ci_high": r["ci_high"], "p_value": r["p_value"], "decided": r["decided"], "n": r["n"]})
    return pd.DataFrame(rows, columns=["ratio", "method", "estimate", "ci_low", "ci_high", "p_value", "decided", "n"])


def _pcts(ratios: Sequence[float]) -> str:
    names = [f"{100 * r:g}" for r in ratios]
    return (", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]) + " %"


def _against(rows: pd.DataFrame, label: str) -> tuple[str, int]:
    """One clause: the method against one baseline over every ratio, and how many the test decided."""
    verdicts = ["better" if r.decided and r.estimate < 1 else "worse" if r.decided else "undecided"
                for r in rows.itertuples()]
    span = (f"{rows['estimate'].min():.2f} to {rows['estimate'].max():.2f} times" if len(rows) > 1
            else f"{rows['estimate'].iloc[0]:.2f} times")
    decided = sum(v != "undecided" for v in verdicts)
    if len(set(verdicts)) == 1 and verdicts[0] != "undecided":
        where = "at every ratio" if len(rows) > 1 else f"at {_pcts(rows['ratio'].tolist())}"
        return f"{verdicts[0]} than {label} {where} ({span} its perplexity)", decided
    if set(verdicts) == {"undecided"}:
        return f"not distinguishable from {label} ({span} its perplexity, no difference decided)", decided
    each = "; ".join(f"{v if v == 'undecided' else v + ' than ' + label} at {100 * r.ratio:g} %"
                     for v, r in zip(verdicts, rows.itertuples()))
    return f"mixed against {label} ({each}; {span} its perplexity)", decided


def plain_answer(comparisons: pd.DataFrame, *, dense_ppl: float, metric: str, method: str = "fn",
                 labels: Mapping[str, str] | None = None, not_measured: Sequence[str] = ()) -> str:
    """The answer in plain words: how the paper's method does against each baseline on this run.

    Parameters
    ----------
    comparisons : pandas.DataFrame
        :func:`funcprune.compare.headline_comparisons` (``ratio``, ``method``, ``baseline``,
        ``metric``, ``estimate``, ``decided``).
    dense_ppl : float
        The dense model's perplexity at ``metric``.
    metric : str
        ``"ppl@<window>"``: the perplexity the answer is stated in.
    method : str, default="fn"
        The paper's method.
    labels : dict, optional
        Display names.
    not_measured : sequence of str
        What this run did not measure (one phrase each).

    Returns
    -------
    str
        A few sentences; "better" and "worse" only where the paired test decides.
    """
    labels = dict(labels or {})
    name = lambda m: labels.get(m, m)  # noqa: E731
    rows = comparisons[(comparisons["method"] == method) & (comparisons["metric"] == metric)]
    if rows.empty:
        return f"This run compared no {name(method)} model on {metric}: there is no answer to give."
    ratios = sorted(set(rows["ratio"]))
    clauses, decided, total = [], 0, 0
    for base in dict.fromkeys(rows["baseline"]):
        sub = rows[rows["baseline"] == base].sort_values("ratio")
        clause, n = _against(sub, name(base))
        clauses.append(clause)
        decided, total = decided + n, total + len(sub)
    window = metric.removeprefix("ppl@")
    text = (f"With {_pcts(ratios)} of the parameters removed, {name(method)} is "
            + (", ".join(clauses[:-1]) + " and " + clauses[-1] if len(clauses) > 1 else clauses[0])
            + f". The paired test decides {decided} of these {total} comparisons. The dense model's perplexity is "
              f"{dense_ppl:.1f} on the same held-out windows of {window} tokens.")
    if not_measured:
        text += " Not measured by this run: " + "; ".join(not_measured) + "."
    return text


def not_measured(full_ratios: Sequence[float] | None, zero_shot_limit: int | None) -> list[str]:
    """What a run of this book does not measure, one phrase each (for :func:`plain_answer`)."""
    return ["WikiText-2 perplexity (offline text: not comparable with published numbers)", "the paper's 7B model",
            "zero-shot accuracy of the pruned models" if not full_ratios else
            f"zero-shot accuracy beyond {zero_shot_limit} items per task", "speed on a GPU"]


def headline_facts(comparisons: pd.DataFrame, ranked: pd.DataFrame, dense: Mapping[str, Any], *, ratio: float,
                   metric: str, methods: Sequence[str], labels: Mapping[str, str],
                   not_measured: Sequence[str] = ()) -> dict[str, Any]:
    """The headline of chapter 5 at one ratio, by the name the chapter glues each value under.

    Parameters
    ----------
    comparisons : pandas.DataFrame
        :func:`funcprune.compare.headline_comparisons`.
    ranked : pandas.DataFrame
        :func:`funcprune.compare.ranked_table` on ``metric``.
    dense : dict
        The dense model's record (its per-window NLLs at ``metric``'s window length).
    ratio : float
        The ratio of the detailed comparisons.
    metric : str
        ``"ppl@<window>"``.
    methods : sequence of str
        The run's methods: the paper's is ``fn``, else ``fn-bias``.
    labels : dict
        Display names.
    not_measured : sequence of str
        For :func:`plain_answer`.

    Returns
    -------
    dict
        ``h_flap``, ``h_random`` and ``h_wanda_sp`` (the paper's method against each baseline: the perplexity
        ratio with its interval and whether the paired test decides it, or ``"not in this run"``), ``h_ratio``,
        ``h_best`` (the best method there), ``h_metric``, ``h_dense`` (the dense model's perplexity) and
        ``answer_text`` (:func:`plain_answer`).
    """
    method = next((m for m in ("fn", "fn-bias") if m in methods), None)
    out: dict[str, Any] = {}
    for base in ("flap", "random", "wanda-sp"):
        rows = comparisons[(comparisons["ratio"] == ratio) & (comparisons["method"] == method)
                           & (comparisons["baseline"] == base) & (comparisons["metric"] == metric)]
        r = rows.iloc[0] if method and len(rows) else None
        out[f"h_{base.replace('-', '_')}"] = "not in this run" if r is None else \
            (f"{r['estimate']:.2f}x (95 % CI {r['ci_low']:.2f}-{r['ci_high']:.2f}, "
             f"{'decided' if r['decided'] else 'not decided'} by the paired test)")
    best = ranked[(ranked["ratio"] == ratio) & (ranked["rank"] == 1)]
    dense_ppl = math.exp(np.mean(dense["perplexity"][metric.removeprefix("ppl@")]["window_nll"]))
    return out | {"h_ratio": f"{100 * ratio:g}", "h_best": labels.get(best["method"].iloc[0]) if len(best) else "-",
                  "h_metric": metric, "h_dense": f"{dense_ppl:.1f}",
                  "answer_text": plain_answer(comparisons, dense_ppl=dense_ppl, metric=metric, labels=labels,
                                              not_measured=not_measured)}


def zero_shot_facts(zero_shot: Mapping[str, Any] | None, mean_acc_stderr: float | None,
                    limit: int | None) -> dict[str, Any]:
    """What chapter 5 says of the zero-shot tasks, by the name it glues each value under (``"-"`` for every value
    when ``zero_shot`` is ``None``: no task was run).

    Parameters
    ----------
    zero_shot : dict or None
        The dense model's zero-shot record (:func:`funcprune.tasks.run_zero_shot`).
    mean_acc_stderr : float or None
        The standard error of its mean accuracy.
    limit : int or None
        Items scored per task (``None``: every item).

    Returns
    -------
    dict
        ``n_tasks``, ``zs_limit_text``, ``zs_items``, ``harness_version``, ``dense_mean_acc_se`` and
        ``zs_verdict`` (precise enough for a figure, by :data:`PRECISE_SE`, or not).
    """
    names = ("n_tasks", "zs_limit_text", "zs_items", "harness_version", "dense_mean_acc_se", "zs_verdict")
    if zero_shot is None or mean_acc_stderr is None:
        return dict.fromkeys(names, "-")
    verdict = ("That is precise enough for the accuracy figure below." if mean_acc_stderr <= PRECISE_SE else
               f"That is above {PRECISE_SE:g}, too imprecise to draw accuracies as findings: zero-shot is shown below "
               "as a table with standard errors and chance levels, and no figure (raise zero_shot_limit for more "
               "items).")
    return dict(zip(names, (len(zero_shot["tasks"]),
                            f"the first {limit} items of each task" if limit else "every item of each task",
                            sum(t["n"] for t in zero_shot["tasks"].values()), zero_shot["harness"]["version"],
                            f"{mean_acc_stderr:.3f}", verdict)))


def lesion_facts(verdict: Mapping[str, Any], scope: Sequence[str]) -> dict[str, str]:
    """What chapter 6 says of the lesion test, by the name it glues each value under.

    Parameters
    ----------
    verdict : dict
        :func:`funcprune.lesion.lesion_verdict` (its two ``sentences`` and ``n_networks``).
    scope : sequence of str
        :func:`funcprune.lesion.lesion_scope`'s sentences.
    """
    return {"lesion_harm": verdict["sentences"][0], "lesion_specificity": verdict["sentences"][1],
            "lesion_n": str(verdict["n_networks"]), "lesion_scope": " ".join(scope)}


def versus_facts(versus: pd.DataFrame | None, strongest: str | None) -> dict[str, str]:
    """What chapter 6 says of :func:`funcprune.ablation.versus_strongest_part`, by the name it glues each value under.

    Returns
    -------
    dict
        ``strongest_label6`` (the variant's display name) and ``versus_strongest_text`` (one sentence per ratio,
        :func:`funcprune.decompose.describe_versus`, or why nothing was measured).
    """
    from .decompose import describe_versus
    from .tables import method_labels

    if strongest is None:
        return {"strongest_label6": "not chosen in this run",
                "versus_strongest_text": "not measured in this run (no grid points)."}
    names = method_labels([strongest])
    if versus is None:
        return {"strongest_label6": names[strongest],
                "versus_strongest_text": "not measured here: chapter 5 scored that variant on other windows than this "
                                         "chapter's test windows (set test_windows x seq_len to chapter 5's first "
                                         "window budget)."}
    return {"strongest_label6": names[strongest],
            "versus_strongest_text": " ".join(describe_versus(versus, labels=names)) or
            "the strongest variant was not scored at the ratios of this chapter."}
