"""Choosing a functional-network criterion on validation text, never on the reported text.

Two designs put the networks inside FLAP, both registered methods with FLAP's global
selection and static bias compensation (:class:`~funcprune.scoring.FnFlapScorer`):

* ``fn-flap``: FLAP's standardised score plus ``weight`` times the standardised log
  ``max |z|`` (weight 0 is FLAP itself);
* ``fn-protect``: FLAP's score with every key neuron (``max |z| > protect``) ranked
  before any other channel, the paper's idea of preserving the networks with FLAP's
  ranking for the rest.

:func:`criterion_sweep` builds one pruned model per candidate of both grids at one ratio,
plus FLAP, and scores each on the same validation windows; :func:`choose_criterion`
picks the candidate with the lowest mean validation NLL; :func:`compare_with_flap` then
builds it at every ratio and compares it with FLAP on the separate test windows (paired,
in :mod:`funcprune.compare`), and :func:`versus_strongest_part` with the strongest baseline variant chapter 5
scored on the same windows.

Used in the chapter :doc:`/executed/06_ablations`.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .evaluate import window_nll  # re-exported: chapter 6 imports it from here
from .methods import Method, build_pruned, get_method, make_plan
from .plan import PruningPlan
from .scoring import ChannelStatistics, FunctionalNetworkScorer, flap_scores, is_key

__all__ = ["FLAP", "build_fn_flap", "candidate_nll", "choose_criterion", "compare_with_flap", "criterion_label",
           "criterion_method", "criterion_sweep", "describe_agreement", "describe_criterion", "plot_agreement",
           "plot_comparison_to_flap", "score_agreement", "versus_part", "versus_strongest_part",
           "window_nll"]

#: Label of the reference candidate: FLAP itself (weight 0, nothing protected).
FLAP = "FLAP"


def criterion_method(weight: float = 0.0, protect: float | None = None) -> Method:
    """The registered ``fn-flap`` (``protect=None``) or ``fn-protect`` method with these parameters.

    The parameters are recorded in every plan's ``scorer_settings``.
    """
    name = "fn-flap" if protect is None else "fn-protect"
    params = {"weight": float(weight), **({} if protect is None else {"protect": float(protect)})}
    return get_method(name).with_params(**params)


def criterion_label(weight: float = 0.0, protect: float | None = None) -> str:
    """Short name of a candidate: ``"FLAP"``, ``"w = 0.5"``, ``"|z| > 3 kept"`` or both.

    >>> criterion_label(0.0), criterion_label(0.5), criterion_label(0.0, 3.0), criterion_label(1.0, 4.0)
    ('FLAP', 'w = 0.5', '|z| > 3 kept', 'w = 1, |z| > 4 kept')
    """
    parts = ([f"w = {weight:g}"] if weight else []) + ([f"|z| > {protect:g} kept"] if protect is not None else [])
    return ", ".join(parts) or FLAP


def _protect_value(value: Any) -> float | None:
    """``None`` for a table's missing protect threshold (NaN or None), else the float."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def build_fn_flap(dense: nn.Module, stats: ChannelStatistics, networks: object, ratio: float, *,
                  weight: float, protect: float | None = None, basis: Literal["total", "mlp"] = "total",
                  protected_layers: Sequence[int] | None = None, round_to: int = 1,
                  source: Mapping[str, Any] | None = None) -> tuple[nn.Module, PruningPlan]:
    """A pruned copy of ``dense`` under one candidate criterion, through the registered methods.

    :func:`funcprune.methods.make_plan` and :func:`funcprune.methods.build_pruned`, as for
    every method of chapter 4: FLAP's global selection over per-layer standardised scores and
    FLAP's compensation (:func:`criterion_method` names the method). The dense model is never
    modified. ``source`` is where ``dense`` came from (``LoadedModel.source`` of
    :func:`funcprune.models.load_model`): the plan records its name and revision and the model
    is pruned against that revision.

    Returns
    -------
    (nn.Module, PruningPlan)
        The pruned model in eval mode and its plan (method ``"fn-flap"`` or ``"fn-protect"``).
    """
    method = criterion_method(weight, protect)
    plan = make_plan(method, dense, ratio, networks=networks, stats=stats, basis=basis,
                     protected_layers=protected_layers, round_to=round_to, source=source)
    return build_pruned(method, dense, plan, stats=stats, revision=(source or {}).get("revision")), plan


def candidate_nll(dense: nn.Module, stats: ChannelStatistics, networks: object, windows: torch.Tensor, ratio: float,
                  *, weight: float = 0.0, protect: float | None = None, basis: Literal["total", "mlp"] = "total",
                  protected_layers: Sequence[int] | None = None, round_to: int = 1, batch_size: int = 4,
                  source: Mapping[str, Any] | None = None) -> tuple[np.ndarray, PruningPlan]:
    """Per-window NLL (:func:`window_nll`) of one candidate's pruned model (:func:`build_fn_flap`; FLAP itself at
    the defaults), and its plan; the model is dropped once scored."""
    model, plan = build_fn_flap(dense, stats, networks, ratio, weight=weight, protect=protect, basis=basis,
                                protected_layers=protected_layers, round_to=round_to, source=source)
    nll = window_nll(model, windows, batch_size=batch_size)
    del model
    return nll, plan


def criterion_sweep(dense: nn.Module, stats: ChannelStatistics, networks: object, windows: torch.Tensor, *,
                    weights: Sequence[float], ratio: float, protect: Sequence[float] = (),
                    basis: Literal["total", "mlp"] = "total", protected_layers: Sequence[int] | None = None,
                    round_to: int = 1, batch_size: int = 4, progress: bool = True,
                    source: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Validation NLL of every candidate criterion at one ratio: each weight, each protect threshold.

    Parameters
    ----------
    dense : nn.Module
        The dense model.
    stats : ChannelStatistics
        Its activation statistics on the calibration text.
    networks : FunctionalNetworks
        Fitted in stage 2.
    windows : LongTensor of shape (n_windows, seq_len)
        Validation windows (never the windows that are reported).
    weights : sequence of float
        ``fn-flap`` weights; include 0 (FLAP) so that the baseline is among the rows.
    ratio, basis, protected_layers, round_to
        The budget, as in :func:`funcprune.plan.select_channels`.
    protect : sequence of float, default=()
        ``fn-protect`` thresholds: FLAP with the key neurons at ``|z| >`` each kept first.
    batch_size : int, default=4
        Windows per forward pass.
    progress : bool, default=True
        Progress bar.
    source : dict, optional
        Where ``dense`` came from (``LoadedModel.source``), as for :func:`build_fn_flap`.

    Returns
    -------
    pandas.DataFrame
        One row per candidate, weights first: ``label`` (:func:`criterion_label`), ``weight``,
        ``protect`` (NaN for none), ``ratio``, ``ratio_reached``, ``nll`` (mean validation NLL),
        ``ppl``, ``nll_stderr`` (over windows) and ``delta_vs_flap`` (mean paired NLL difference
        to FLAP when weight 0 is in the grid, else NaN); ``attrs["window_nll"]`` maps each label
        to its per-window NLLs.

    Raises
    ------
    ValueError
        An empty grid, a negative weight or a threshold that is not a positive number.
    """
    candidates = ([(float(w), None) for w in dict.fromkeys(weights)]
                  + [(0.0, float(t)) for t in dict.fromkeys(protect)])
    if not candidates:
        raise ValueError("weights is empty and no protect threshold is given: pass a grid such as "
                         "weights=[0, 0.5, 1, 2] (0 is FLAP) and protect=[3.0]")
    per_window: dict[str, np.ndarray] = {}
    rows = []
    for w, t in tqdm(candidates, desc=f"criterion sweep at {ratio:.0%}", unit="criterion", disable=not progress):
        nll, plan = candidate_nll(dense, stats, networks, windows, ratio, weight=w, protect=t, basis=basis,
                                  protected_layers=protected_layers, round_to=round_to, batch_size=batch_size,
                                  source=source)
        label = criterion_label(w, t)
        per_window[label] = nll
        rows.append({"label": label, "weight": w, "protect": float("nan") if t is None else t, "ratio": ratio,
                     "ratio_reached": plan.ratio_reached, "nll": float(nll.mean()), "ppl": float(np.exp(nll.mean())),
                     "nll_stderr": float(nll.std(ddof=1) / np.sqrt(len(nll))) if len(nll) > 1 else float("nan")})
    table = pd.DataFrame(rows)
    base = per_window.get(FLAP)
    table["delta_vs_flap"] = [float((per_window[label] - base).mean()) if base is not None else float("nan")
                              for label in table["label"]]
    table.attrs["window_nll"] = per_window
    return table


def choose_criterion(sweep: pd.DataFrame) -> dict[str, Any]:
    """The candidate that uses the networks with the lowest mean validation NLL.

    FLAP (weight 0, nothing protected) is the reference the sweep compares with, not a
    candidate; ties go to the smaller weight (closer to FLAP), then to the earlier row.

    Returns
    -------
    dict
        ``{"weight": float, "protect": float or None}``: the keyword arguments of
        :func:`build_fn_flap` and :func:`compare_with_flap`.

    Raises
    ------
    ValueError
        The sweep has no candidate but FLAP.
    """
    candidates = sweep[sweep["label"] != FLAP]
    if candidates.empty:
        raise ValueError(f"the sweep has no candidate that uses the networks (rows {list(sweep['label'])}): add a "
                         "positive weight, e.g. [0, 0.5, 1, 2], or a protect threshold, e.g. [3.0]")
    best = candidates.sort_values(["nll", "weight"], kind="stable").iloc[0]
    return {"weight": float(best["weight"]), "protect": _protect_value(best["protect"])}


def compare_with_flap(dense: nn.Module, stats: ChannelStatistics, networks: object, windows: torch.Tensor, *,
                      weight: float, ratios: Sequence[float], protect: float | None = None,
                      basis: Literal["total", "mlp"] = "total", protected_layers: Sequence[int] | None = None,
                      round_to: int = 1, batch_size: int = 4, n_boot: int = 10_000, progress: bool = True,
                      source: Mapping[str, Any] | None = None,
                      scored: Mapping[float, tuple[np.ndarray, Mapping[int, Sequence[int]]]] | None = None
                      ) -> pd.DataFrame:
    """One candidate criterion against FLAP at each ratio, paired on the same (test) windows.

    Both models come from :func:`build_fn_flap` (FLAP is weight 0 with nothing protected,
    the same code path, with the same ``source``), so they differ only in the channels they
    keep. ``scored`` gives, by ratio, FLAP's per-window NLL already measured on ``windows`` and
    the channels its plan kept (chapter 5's records, :func:`funcprune.run.results.recorded_nll`):
    where FLAP's plan here keeps the same channels, its model is that one (the same static bias
    from the same statistics) and is not built and scored again.

    Returns
    -------
    pandas.DataFrame
        One row per ratio: ``ratio``, ``label``, ``weight``, ``protect``, ``ppl`` and
        ``ppl_flap``, and the paired comparison of :func:`funcprune.compare.compare_windows`
        (``estimate`` = perplexity ratio to FLAP, ``ci_low``, ``ci_high``, ``p_value``,
        ``decided``, ``better``, ``n``); ``channels_changed`` is the share of FLAP's removed
        channels that the criterion keeps instead.
    """
    from .compare import compare_windows

    chosen = (float(weight), _protect_value(protect))
    rows = []
    for ratio in tqdm(list(ratios), desc="criterion vs FLAP", unit="ratio", disable=not progress):
        results = {}
        for w, t in ((0.0, None), chosen):
            if (w, t) in results:
                continue
            if (w, t) == (0.0, None) and float(ratio) in (scored or {}):
                nll, kept = scored[float(ratio)]  # type: ignore[index]
                plan = make_plan(criterion_method(w, t), dense, ratio, networks=networks, stats=stats, basis=basis,
                                 protected_layers=protected_layers, round_to=round_to, source=source)
                if plan.kept == {int(i): list(c) for i, c in kept.items()}:
                    results[(w, t)] = (np.asarray(nll, dtype=np.float64), plan)
                    continue
            results[(w, t)] = candidate_nll(dense, stats, networks, windows, ratio, weight=w, protect=t, basis=basis,
                                            protected_layers=protected_layers, round_to=round_to,
                                            batch_size=batch_size, source=source)
        (flap_nll, flap_plan), (nll, plan) = results[(0.0, None)], results[chosen]
        removed = {i: set(flap_plan.removed(i)) for i in flap_plan.kept}
        changed = sum(len(removed[i] - set(plan.removed(i))) for i in removed)
        rows.append({"ratio": ratio, "label": criterion_label(*chosen), "weight": chosen[0],
                     "protect": float("nan") if chosen[1] is None else chosen[1], "ppl": float(np.exp(nll.mean())),
                     "ppl_flap": float(np.exp(flap_nll.mean())),
                     "channels_changed": changed / max(1, sum(len(r) for r in removed.values())),
                     **compare_windows(nll, flap_nll, n_boot=n_boot), "window_nll": nll.tolist()})
    return pd.DataFrame(rows)


def versus_part(final: pd.DataFrame, parts: Mapping[str, Mapping[str, Any]], baseline: str, *, tokenizer: Any,
                windows: torch.Tensor, setting: str, n_boot: int = 10_000) -> pd.DataFrame:
    """The chosen criterion (:func:`compare_with_flap`'s rows) against a model chapter 5 scored on the same windows,
    such as the strongest baseline variant chosen on validation text (:func:`funcprune.run.grid.read_choices`).

    Parameters
    ----------
    final : pandas.DataFrame
        :func:`compare_with_flap`'s table (with its ``window_nll``).
    parts : dict
        The run's per-model records (``results.json["models"]``).
    baseline : str
        The method to compare with (seeds pooled).
    tokenizer, windows, setting
        The test windows ``final`` was scored on, checked against the records' (:func:`funcprune.run.grid.check_same_windows`).

    Returns
    -------
    pandas.DataFrame
        One row per ratio where ``baseline`` was scored: ``ratio``, ``baseline``, ``ppl``, ``ppl_baseline`` and
        :func:`funcprune.compare.compare_windows`'s columns.
    """
    from .compare import _pooled_windows, compare_windows, method_groups
    from .decompose import check_same_windows

    groups = method_groups(parts)
    rows = []
    for r in final.itertuples():
        group = groups.get((get_method(baseline).name, float(r.ratio)))
        if not group:
            continue
        check_same_windows(tokenizer, windows, group[0], setting)
        nll, base = np.asarray(r.window_nll, dtype=np.float64), _pooled_windows(group, setting)
        rows.append({"ratio": float(r.ratio), "baseline": get_method(baseline).name, "ppl": float(np.exp(nll.mean())),
                     "ppl_baseline": float(np.exp(base.mean())), **compare_windows(nll, base, n_boot=n_boot)})
    return pd.DataFrame(rows)


def versus_strongest_part(final: pd.DataFrame, parts: Mapping[str, Mapping[str, Any]],
                          choices: Mapping[str, Any] | None, *, tokenizer: Any, windows: torch.Tensor, setting: str,
                          label: str, n_boot: int = 10_000) -> pd.DataFrame | None:
    """The chosen criterion (``final``, named ``label`` in a ``model`` column) against the strongest baseline
    variant stage 4 chose (``choices``: :func:`funcprune.run.grid.read_choices`), by :func:`versus_part`.

    ``None`` when nothing was chosen, the variant was not scored at the choice's first ratio, or chapter 5
    scored it on other windows than ``windows`` (``tokenizer`` and ``setting`` as for :func:`versus_part`).
    """
    from .decompose import keys_at, windows_match

    if not choices:
        return None
    strongest = choices["strongest_baseline"]
    shared = keys_at(parts, [strongest], float(choices["ratios"][0]))
    if not shared or not windows_match(tokenizer, windows, parts[shared[0]], setting):
        return None
    return versus_part(final, parts, strongest, tokenizer=tokenizer, windows=windows, setting=setting,
                       n_boot=n_boot).assign(model=label)


def describe_criterion(sweep: pd.DataFrame, chosen: Mapping[str, Any], final: pd.DataFrame) -> list[str]:
    """Sentences on the choice among candidates and the test comparison with FLAP, true for any outcome.

    Parameters
    ----------
    sweep : pandas.DataFrame
        From :func:`criterion_sweep` (validation), FLAP included.
    chosen : dict
        From :func:`choose_criterion` (``weight`` and ``protect``).
    final : pandas.DataFrame
        From :func:`compare_with_flap` (test).
    """
    weight, protect = float(chosen["weight"]), _protect_value(chosen.get("protect"))
    row = sweep.loc[sweep["label"] == criterion_label(weight, protect)].iloc[0]
    flap_ppl = float(np.exp(row["nll"] - row["delta_vs_flap"]))
    side = "below" if row["ppl"] < flap_ppl else "above"
    what = " and ".join(([f"the functional-network term at weight {weight:g}"] if weight else [])
                        + ([f"every key neuron with max |z| > {protect:g} kept first"] if protect is not None else []))
    n_candidates = int((sweep["label"] != FLAP).sum())
    sentences = [f"On validation text the best of {n_candidates} candidate criteria was FLAP's score with {what}, "
                 f"with perplexity {row['ppl']:.2f} at {row['ratio']:.0%} against FLAP's {flap_ppl:.2f} ({side} "
                 "it); that criterion is the one tested."]
    for _, r in final.iterrows():
        verdict = {"model": "better than FLAP", "baseline": "worse than FLAP",
                   "undecided": "not distinguishable from FLAP"}[r["better"]]
        sentences.append(f"At {r['ratio']:.0%} on the test windows its perplexity is {r['estimate']:.3f} times "
                         f"FLAP's (95 % interval {r['ci_low']:.3f} to {r['ci_high']:.3f}, paired bootstrap p = "
                         f"{r['p_value']:.3g} over {int(r['n'])} windows): {verdict}; it keeps "
                         f"{r['channels_changed']:.0%} of the channels FLAP removes.")
    wins = int((final["better"] == "model").sum())
    if len(final) and wins == len(final):
        sentences.append("The goal is met on this model: better than FLAP at every ratio, decided by the paired "
                         "test.")
    else:
        worst = final.loc[final["estimate"].idxmax()] if len(final) else None
        trail = (f"; at its worst ({worst['ratio']:.0%}) its perplexity is {worst['estimate']:.3f} times FLAP's"
                 if worst is not None and worst["estimate"] > 1 else "")
        sentences.append(f"The goal (better than FLAP at every ratio, decided by the paired test) is not met on this "
                         f"model: decided better at {wins} of {len(final)} ratios{trail}.")
    return sentences


def score_agreement(dense: nn.Module, stats: ChannelStatistics, networks: object, ratio: float, *,
                    threshold: float = 3.0, basis: Literal["total", "mlp"] = "total",
                    protected_layers: Sequence[int] | None = None, round_to: int = 1) -> pd.DataFrame:
    """How FLAP's choice and the networks' key neurons relate, layer by layer: the "why" of the comparison.

    For every prunable layer with fitted networks (the plan's protected layers lose nothing
    under any criterion): the Spearman rank correlation between FLAP's fluctuation score and
    the key-neuron score ``max |z|``, and how often FLAP's global plan at ``ratio`` removes key
    neurons (``max |z| > threshold``, :func:`funcprune.scoring.is_key`) and the other channels. If FLAP
    already keeps the key neurons, a criterion that protects them changes little; if it removes
    them as often as any channel and a criterion that keeps them loses to FLAP, the networks'
    channels are not the ones the loss depends on.

    Returns
    -------
    pandas.DataFrame
        One row per prunable fitted layer: ``layer``, ``rho`` (Spearman), ``channels``, ``key`` (key
        neurons), ``pruned`` (channels FLAP removes), ``key_pruned`` (key neurons among them)
        and ``key_share_pruned`` / ``other_share_pruned`` (the fraction of each group FLAP
        removes; NaN for an empty group). ``attrs`` holds ``ratio`` and ``threshold``.
    """
    from scipy.stats import spearmanr

    flap = flap_scores(dense, stats, standardize=True)
    key = FunctionalNetworkScorer(networks)(dense)
    plan = make_plan("flap", dense, ratio, stats=stats, basis=basis, protected_layers=protected_layers,
                     round_to=round_to)  # the registered FLAP: its global selection of these scores
    rows = []
    for layer in sorted(set(key) & set(flap) - set(plan.protected_layers)):
        key_here = is_key(key[layer], threshold)
        removed = np.zeros(len(key_here), dtype=bool)
        removed[np.asarray(plan.removed(layer), dtype=np.int64)] = True
        constant = np.ptp(flap[layer]) == 0 or np.ptp(key[layer]) == 0
        rows.append({"layer": layer,
                     "rho": float("nan") if constant else float(spearmanr(flap[layer], key[layer]).statistic),
                     "channels": len(key_here), "key": int(key_here.sum()), "pruned": int(removed.sum()),
                     "key_pruned": int((removed & key_here).sum()),
                     "key_share_pruned": float(removed[key_here].mean()) if key_here.any() else float("nan"),
                     "other_share_pruned": float(removed[~key_here].mean()) if (~key_here).any() else float("nan")})
    table = pd.DataFrame(rows)
    table.attrs.update(ratio=float(ratio), threshold=float(threshold))
    return table


def describe_agreement(table: pd.DataFrame) -> list[str]:
    """Sentences on :func:`score_agreement`'s table, true for any run.

    >>> t = pd.DataFrame({"layer": [3, 4], "rho": [0.5, 0.7], "channels": [10, 10], "key": [2, 3],
    ...                   "pruned": [4, 2], "key_pruned": [0, 1]})
    >>> t.attrs.update(ratio=0.2, threshold=3.0)
    >>> describe_agreement(t)[1]
    "At 20% FLAP removes 20% of the 5 key neurons (|z| > 3; 25% of these layers' channels) and 33% of the other channels: it removes key neurons less often than the other channels (0.60 times as often)."
    """
    if not len(table):
        return ["No prunable layer has fitted networks, so FLAP's choice cannot be compared with the key neurons."]
    rho = table["rho"].dropna()
    ratio, threshold = table.attrs.get("ratio", float("nan")), table.attrs.get("threshold", float("nan"))
    first = (f"Across the {len(table)} prunable layers with networks, the rank correlation between FLAP's score and max |z| "
             + (f"has median {rho.median():.2f} (from {rho.min():.2f} to {rho.max():.2f}): "
                + ("the two scores largely agree on which channels matter" if rho.median() >= 0.5 else
                   "the networks rank channels partly as FLAP does" if rho.median() >= 0.2 else
                   "the networks rank channels nearly independently of FLAP" if rho.median() > -0.2 else
                   "the networks rank channels largely in FLAP's reverse order")
                + "." if len(rho) else "is undefined (a constant score)."))
    key, other = int(table["key"].sum()), int((table["channels"] - table["key"]).sum())
    key_rate = table["key_pruned"].sum() / key if key else float("nan")
    other_rate = (table["pruned"] - table["key_pruned"]).sum() / other if other else float("nan")
    if not key:
        return [first, f"No channel has |z| > {threshold:g}, so there are no key neurons to protect."]
    if other_rate == 0:
        compare = "every channel it removes is a key neuron" if key_rate > 0 else "it removes none of these channels"
    else:
        times = key_rate / other_rate
        compare = ("it removes key neurons " + ("less often than" if times < 0.9 else "more often than" if times > 1.1
                                                else "about as often as") + f" the other channels ({times:.2f} times as often)")
    return [first, f"At {ratio:.0%} FLAP removes {key_rate:.0%} of the {key} key neurons (|z| > {threshold:g}; "
                   f"{key / (key + other):.0%} of these layers' channels) and {other_rate:.0%} of the other channels: "
                   f"{compare}."]


def plot_comparison_to_flap(sweep: pd.DataFrame, final: pd.DataFrame | None = None) -> "object":
    """Perplexity ratio to FLAP with paired 95 % intervals: per candidate (validation) and per ratio (test).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    from .compare import compare_windows

    panels = 2 if final is not None and len(final) else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.4), constrained_layout=True, squeeze=False)
    per_window = sweep.attrs["window_nll"]
    base = per_window[FLAP]
    labels = list(sweep["label"])
    cmp = pd.DataFrame([compare_windows(per_window[label], base, n_boot=2000) if label != FLAP else
                        {"estimate": 1.0, "ci_low": 1.0, "ci_high": 1.0} for label in labels])
    ax = axes[0, 0]
    ax.errorbar(range(len(labels)), cmp["estimate"], yerr=[cmp["estimate"] - cmp["ci_low"],
                                                           cmp["ci_high"] - cmp["estimate"]], fmt="o", capsize=3)
    ax.axhline(1.0, color="grey", lw=1, ls="--", label="FLAP")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set(xlabel="candidate criterion", ylabel="perplexity / FLAP's",
           title=f"validation, {sweep['ratio'].iloc[0]:.0%} removed")
    ax.legend()
    if panels == 2:
        ax = axes[0, 1]
        ax.errorbar(final["ratio"] * 100, final["estimate"], yerr=[final["estimate"] - final["ci_low"],
                                                                    final["ci_high"] - final["estimate"]],
                    fmt="o-", capsize=3, label=final["label"].iloc[0])
        ax.axhline(1.0, color="grey", lw=1, ls="--", label="FLAP")
        ax.set(xlabel="% of parameters removed", ylabel="perplexity / FLAP's", title="test")
        ax.legend()
    return fig


def plot_agreement(table: pd.DataFrame) -> "object":
    """Per layer: the rank correlation of FLAP's score with ``max |z|``, and the share of each group FLAP removes.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), constrained_layout=True)
    ax = axes[0]
    ax.bar(table["layer"], table["rho"], color="tab:purple")
    ax.axhline(0.0, color="grey", lw=1)
    ax.set(xlabel="layer", ylabel="Spearman rho", ylim=(-1, 1), title="FLAP's score vs max |z|")
    ax = axes[1]
    ax.plot(table["layer"], table["key_share_pruned"], "o-", label=f"key neurons (|z| > {table.attrs['threshold']:g})")
    ax.plot(table["layer"], table["other_share_pruned"], "s--", label="other channels")
    ax.set(xlabel="layer", ylabel="share removed by FLAP", ylim=(-0.05, 1.05),
           title=f"FLAP at {table.attrs['ratio']:.0%} removed")
    ax.legend()
    return fig
