"""Choosing a functional-network criterion on validation text, never on the reported text.

:func:`criterion_sweep` prunes the dense model with :class:`~funcprune.scoring.FnFlapScorer`
at one ratio for each weight of a grid (weight 0 is FLAP itself, so the grid contains
the baseline it must beat), applies FLAP's static bias compensation to every one of them
(the compensation is not what is being compared), and scores each pruned model on the
same validation windows. :func:`choose_weight` picks the weight with the lowest mean
validation NLL; the chosen criterion is then built at every ratio and compared with
FLAP on the separate test windows (paired, in :mod:`funcprune.compare`).

Used in the chapter :doc:`/executed/06_ablations`.
"""

from __future__ import annotations

import copy
from typing import Literal, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .lesion import token_nll
from .plan import PruningPlan, select_channels
from .prune import prune
from .scoring import ChannelStatistics, FnFlapScorer

__all__ = ["build_fn_flap", "choose_weight", "criterion_sweep", "window_nll"]


def window_nll(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 4) -> np.ndarray:
    """Mean NLL of each window (``(n_windows,)``, float64): the unit of the paired tests."""
    return token_nll(model, windows, batch_size=batch_size).mean(axis=1)


def build_fn_flap(dense: nn.Module, stats: ChannelStatistics, networks: object, ratio: float, *,
                  weight: float, basis: Literal["total", "mlp"] = "total",
                  protected_layers: Sequence[int] | None = None,
                  round_to: int = 1) -> tuple[nn.Module, PruningPlan]:
    """A pruned copy of ``dense`` under the FN-inside-FLAP criterion, with FLAP's compensation.

    Selection is global over per-layer standardised scores, as FLAP's; the dense model
    is never modified.

    Returns
    -------
    (nn.Module, PruningPlan)
        The pruned model in eval mode and its plan (method ``"fn-flap"``).
    """
    scorer = FnFlapScorer(networks, weight=weight)
    plan = select_channels(scorer(dense, stats), dense, ratio=ratio, basis=basis, allocation="global",
                           protected_layers=protected_layers, round_to=round_to, method="fn-flap",
                           settings={"scorer": scorer.name, "scorer_settings": scorer.settings,
                                     "bias_compensation": "static"})
    model = copy.deepcopy(dense)
    prune(model, plan, bias_compensation=stats)
    return model.eval(), plan


def criterion_sweep(dense: nn.Module, stats: ChannelStatistics, networks: object, windows: torch.Tensor, *,
                    weights: Sequence[float], ratio: float, basis: Literal["total", "mlp"] = "total",
                    protected_layers: Sequence[int] | None = None, round_to: int = 1, batch_size: int = 4,
                    progress: bool = True) -> pd.DataFrame:
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
                                    protected_layers=protected_layers, round_to=round_to)
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
    """The weight with the lowest mean validation NLL; ties go to the smaller weight (closer to FLAP)."""
    if sweep.empty:
        raise ValueError("the sweep is empty")
    best = sweep.sort_values(["nll", "weight"], kind="stable").iloc[0]
    return float(best["weight"])
