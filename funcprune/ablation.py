"""Choosing a functional-network criterion on validation text, never on the reported text.

:func:`criterion_sweep` prunes the dense model with the registered ``fn-flap`` method
(:class:`~funcprune.scoring.FnFlapScorer`) at one ratio for each weight of a grid (weight 0 is FLAP itself, so the grid contains
the baseline it must beat), applies FLAP's static bias compensation to every one of them
(the compensation is not what is being compared), and scores each pruned model on the
same validation windows. :func:`choose_weight` picks the weight with the lowest mean
validation NLL; the chosen criterion is then built at every ratio and compared with
FLAP on the separate test windows (paired, in :mod:`funcprune.compare`).

Used in the chapter :doc:`/executed/06_ablations`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .evaluate import perplexity
from .methods import Method, build_pruned, get_method, make_plan
from .plan import PruningPlan
from .scoring import ChannelStatistics

__all__ = ["build_fn_flap", "choose_weight", "compare_with_flap", "criterion_sweep", "describe_criterion",
           "fn_flap_method", "plot_comparison_to_flap", "window_nll"]


def window_nll(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 4) -> np.ndarray:
    """Mean NLL of each window (``(n_windows,)``, float64): the unit of the paired tests.

    Scored by :func:`funcprune.evaluate.perplexity`, as chapter 5 scores its windows
    (each window already holds its BOS token where the family uses one).
    """
    res = perplexity(model, None, windows.reshape(-1), seq_len=int(windows.shape[1]), batch_size=batch_size,
                     bos=None, progress=False)
    return np.asarray(res["window_nll"], dtype=np.float64)


def fn_flap_method(weight: float) -> Method:
    """The registered ``fn-flap`` method with another weight (recorded in its plans)."""
    return dataclasses.replace(get_method("fn-flap"), params={"weight": float(weight)})


def build_fn_flap(dense: nn.Module, stats: ChannelStatistics, networks: object, ratio: float, *,
                  weight: float, basis: Literal["total", "mlp"] = "total",
                  protected_layers: Sequence[int] | None = None, round_to: int = 1,
                  source: Mapping[str, Any] | None = None) -> tuple[nn.Module, PruningPlan]:
    """A pruned copy of ``dense`` under ``fn-flap`` at ``weight``, through the registered methods.

    :func:`funcprune.methods.make_plan` and :func:`funcprune.methods.build_pruned`, as for
    every method of chapter 4: FLAP's global selection over per-layer standardised scores and
    FLAP's compensation. The dense model is never modified. ``source`` is where ``dense``
    came from (``LoadedModel.source`` of :func:`funcprune.models.load_model`): the plan
    records its name and revision and the model is pruned against that revision.

    Returns
    -------
    (nn.Module, PruningPlan)
        The pruned model in eval mode and its plan (method ``"fn-flap"``).
    """
    method = fn_flap_method(weight)
    plan = make_plan(method, dense, ratio, networks=networks, stats=stats, basis=basis,
                     protected_layers=protected_layers, round_to=round_to, source=source)
    return build_pruned(method, dense, plan, stats=stats, revision=(source or {}).get("revision")), plan


def criterion_sweep(dense: nn.Module, stats: ChannelStatistics, networks: object, windows: torch.Tensor, *,
                    weights: Sequence[float], ratio: float, basis: Literal["total", "mlp"] = "total",
                    protected_layers: Sequence[int] | None = None, round_to: int = 1, batch_size: int = 4,
                    progress: bool = True, source: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Validation NLL of the FN-inside-FLAP criterion for each weight, at one ratio.

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
        The grid; include 0 (FLAP) so that the baseline is among the candidates.
    ratio, basis, protected_layers, round_to
        The budget, as in :func:`funcprune.plan.select_channels`.
    batch_size : int, default=4
        Windows per forward pass.
    progress : bool, default=True
        Progress bar.
    source : dict, optional
        Where ``dense`` came from (``LoadedModel.source``), as for :func:`build_fn_flap`.

    Returns
    -------
    pandas.DataFrame
        One row per weight: ``weight``, ``ratio``, ``ratio_reached``, ``nll`` (mean
        validation NLL), ``ppl``, ``nll_stderr`` (over windows) and ``delta_vs_flap``
        (mean paired NLL difference to weight 0 when 0 is in the grid, else NaN);
        ``attrs["window_nll"]`` maps each weight to its per-window NLLs.

    Raises
    ------
    ValueError
        An empty grid or a negative weight.
    """
    grid = [float(w) for w in dict.fromkeys(weights)]
    if not grid:
        raise ValueError("weights is empty: pass a grid such as [0, 0.5, 1, 2] (0 is FLAP)")
    per_window: dict[float, np.ndarray] = {}
    rows = []
    for w in tqdm(grid, desc=f"criterion sweep at {ratio:.0%}", unit="weight", disable=not progress):
        model, plan = build_fn_flap(dense, stats, networks, ratio, weight=w, basis=basis,
                                    protected_layers=protected_layers, round_to=round_to, source=source)
        nll = window_nll(model, windows, batch_size=batch_size)
        del model
        per_window[w] = nll
        rows.append({"weight": w, "ratio": ratio, "ratio_reached": plan.ratio_reached, "nll": float(nll.mean()),
                     "ppl": float(np.exp(nll.mean())),
                     "nll_stderr": float(nll.std(ddof=1) / np.sqrt(len(nll))) if len(nll) > 1 else float("nan")})
    table = pd.DataFrame(rows)
    base = per_window.get(0.0)
    table["delta_vs_flap"] = [float((per_window[w] - base).mean()) if base is not None else float("nan")
                              for w in grid]
    table.attrs["window_nll"] = per_window
    return table


def choose_weight(sweep: pd.DataFrame) -> float:
    """The positive weight with the lowest mean validation NLL: the best criterion that uses the networks.

    Weight 0 (FLAP) is the reference the sweep compares with, not a candidate; ties go
    to the smaller weight (closer to FLAP).

    Raises
    ------
    ValueError
        The sweep has no positive weight.
    """
    candidates = sweep[sweep["weight"] > 0]
    if candidates.empty:
        raise ValueError(f"the sweep has no positive weight (weights {list(sweep['weight'])}): add some, e.g. "
                         "[0, 0.5, 1, 2]")
    best = candidates.sort_values(["nll", "weight"], kind="stable").iloc[0]
    return float(best["weight"])


def compare_with_flap(dense: nn.Module, stats: ChannelStatistics, networks: object, windows: torch.Tensor, *,
                      weight: float, ratios: Sequence[float], basis: Literal["total", "mlp"] = "total",
                      protected_layers: Sequence[int] | None = None, round_to: int = 1, batch_size: int = 4,
                      n_boot: int = 10_000, progress: bool = True,
                      source: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The criterion at ``weight`` against FLAP at each ratio, paired on the same (test) windows.

    Both models come from :func:`build_fn_flap` (FLAP is weight 0, the same code path,
    with the same ``source``), so they differ only in the channels they keep.

    Returns
    -------
    pandas.DataFrame
        One row per ratio: ``ratio``, ``weight``, ``ppl`` and ``ppl_flap``, and the paired
        comparison of :func:`funcprune.compare.compare_windows` (``estimate`` = perplexity
        ratio to FLAP, ``ci_low``, ``ci_high``, ``p_value``, ``decided``, ``better``,
        ``n``); ``channels_changed`` is the share of FLAP's removed channels that the
        criterion keeps instead.
    """
    from .compare import compare_windows

    rows = []
    for ratio in tqdm(list(ratios), desc="criterion vs FLAP", unit="ratio", disable=not progress):
        results = {}
        for w in (0.0, float(weight)):
            if w in results:
                continue
            model, plan = build_fn_flap(dense, stats, networks, ratio, weight=w, basis=basis,
                                        protected_layers=protected_layers, round_to=round_to, source=source)
            results[w] = (window_nll(model, windows, batch_size=batch_size), plan)
            del model
        (flap_nll, flap_plan), (nll, plan) = results[0.0], results[float(weight)]
        removed = {i: set(flap_plan.removed(i)) for i in flap_plan.kept}
        changed = sum(len(removed[i] - set(plan.removed(i))) for i in removed)
        rows.append({"ratio": ratio, "weight": float(weight), "ppl": float(np.exp(nll.mean())),
                     "ppl_flap": float(np.exp(flap_nll.mean())),
                     "channels_changed": changed / max(1, sum(len(r) for r in removed.values())),
                     **compare_windows(nll, flap_nll, n_boot=n_boot)})
    return pd.DataFrame(rows)


def describe_criterion(sweep: pd.DataFrame, chosen: float, final: pd.DataFrame) -> list[str]:
    """Sentences on the weight choice and the test comparison with FLAP, true for any outcome.

    Parameters
    ----------
    sweep : pandas.DataFrame
        From :func:`criterion_sweep` (validation), weight 0 (FLAP) included.
    chosen : float
        From :func:`choose_weight`.
    final : pandas.DataFrame
        From :func:`compare_with_flap` (test).
    """
    row = sweep.loc[sweep["weight"] == chosen].iloc[0]
    flap_ppl = float(np.exp(row["nll"] - row["delta_vs_flap"]))
    side = "below" if row["ppl"] < flap_ppl else "above"
    sentences = [f"On validation text the best weight of the functional-network term was {chosen:g}, with perplexity "
                 f"{row['ppl']:.2f} at {row['ratio']:.0%} against FLAP's {flap_ppl:.2f} ({side} it); that "
                 "criterion is the one tested."]
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


def plot_comparison_to_flap(sweep: pd.DataFrame, final: pd.DataFrame | None = None) -> "object":
    """Perplexity ratio to FLAP with paired 95 % intervals: per weight (validation) and per ratio (test).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    from .compare import compare_windows

    panels = 2 if final is not None and len(final) else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.2), constrained_layout=True, squeeze=False)
    per_window = sweep.attrs["window_nll"]
    base = per_window[0.0]
    cmp = pd.DataFrame([compare_windows(per_window[w], base, n_boot=2000) if w else
                        {"estimate": 1.0, "ci_low": 1.0, "ci_high": 1.0} for w in sweep["weight"]])
    ax = axes[0, 0]
    ax.errorbar(sweep["weight"], cmp["estimate"], yerr=[cmp["estimate"] - cmp["ci_low"],
                                                         cmp["ci_high"] - cmp["estimate"]], fmt="o-", capsize=3)
    ax.axhline(1.0, color="grey", lw=1, ls="--", label="FLAP")
    ax.set(xlabel="weight of the functional-network term", ylabel="perplexity / FLAP's",
           title=f"validation, {sweep['ratio'].iloc[0]:.0%} removed")
    ax.legend()
    if panels == 2:
        ax = axes[0, 1]
        ax.errorbar(final["ratio"] * 100, final["estimate"], yerr=[final["estimate"] - final["ci_low"],
                                                                    final["ci_high"] - final["estimate"]],
                    fmt="o-", capsize=3, label=f"weight {final['weight'].iloc[0]:g}")
        ax.axhline(1.0, color="grey", lw=1, ls="--", label="FLAP")
        ax.set(xlabel="% of parameters removed", ylabel="perplexity / FLAP's", title="test")
        ax.legend()
    return fig
