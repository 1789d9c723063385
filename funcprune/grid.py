"""Stage 4 for the decomposition: the grid points between methods, and the choices made on validation text.

Chapter 5 takes the gap between two methods apart (:mod:`funcprune.decompose`) through grid points such as
``"fn@flap+static"`` (:func:`funcprune.methods.variant`). This module builds them through
:func:`funcprune.pipeline.prune_all` (plans, stored compensation, index: stage 5 then scores them on the test
windows like any other model) after two choices made on **validation** windows, never the test windows:

* the relative ridge of least-squares reconstruction (:func:`choose_ridge`, tried on FLAP's plan);
* the **strongest baseline variant** (:func:`choose_baseline`): the bar the paper's method is held to.

Both choices, with their tables, are recorded in ``pruned/decomposition.json`` (:func:`read_choices`).

Used in the chapter :doc:`/executed/04_structured_pruning`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ._io import atomic_write_json, read_json
from .decompose import _with_ridge, decomposition_methods

__all__ = [
    "BASELINE_CANDIDATES",
    "RIDGE_GRID",
    "build_grid_points",
    "choose_baseline",
    "choose_ridge",
    "read_choices",
]

#: Baseline variants the strongest baseline is chosen from on validation text (item "the bar moves"): each
#: baseline criterion with its authors' allocation and compensation, with least squares, and Wanda-sp inside
#: FLAP's widths with FLAP's bias.
BASELINE_CANDIDATES: tuple[str, ...] = ("flap", "flap+ls", "flap+none", "wanda-sp", "wanda-sp+ls",
                                        "wanda-sp@flap+static")

#: Relative ridge strengths tried for least-squares compensation (:func:`choose_ridge`).
RIDGE_GRID: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)


def choose_ridge(dense: Any, plan: Any, moments: Any, windows: Any, *, grid: Sequence[float] = RIDGE_GRID,
                 revision: str | None = None) -> tuple[pd.DataFrame, float]:
    """The relative ridge of least-squares compensation with the lowest perplexity on validation windows.

    Each candidate refits the down projections of ``plan`` (a plan of the run, e.g. FLAP's at the sweep
    ratio) with :class:`funcprune.compensation.LeastSquaresCompensation` and scores the windows; the
    lowest mean NLL wins (ties: the larger ridge, the one nearer the static bias).

    Parameters
    ----------
    dense : nn.Module
        The dense model (left untouched).
    plan : PruningPlan
    moments : funcprune.compensation.DownMoments
        The dense model's down-projection moments on the calibration texts.
    windows : torch.Tensor of shape (n_windows, seq_len)
        Validation windows (never the test windows the book reports on).
    grid : sequence of float, default=RIDGE_GRID
    revision : str, optional
        The dense model's revision, when the plan records one.

    Returns
    -------
    (table, ridge) : tuple
        ``table``: ``ridge``, ``ppl`` and ``chosen`` per candidate; ``ridge``: the chosen value.

    Raises
    ------
    ValueError
        An empty grid or a negative value.
    """
    import copy

    from .ablation import window_nll
    from .compensation import LeastSquaresCompensation
    from .prune import prune

    grid = [float(r) for r in grid]
    if not grid or any(not r >= 0 for r in grid):
        raise ValueError(f"ridge grid {grid!r} must hold at least one value >= 0")
    nll = []
    for ridge in grid:
        model = prune(copy.deepcopy(dense), plan, revision=revision,
                      bias_compensation=LeastSquaresCompensation(moments, ridge), progress=False)
        nll.append(float(window_nll(model, windows).mean()))
        del model
    best = min(range(len(grid)), key=lambda i: (nll[i], -grid[i]))
    table = pd.DataFrame({"ridge": grid, "ppl": np.exp(nll), "chosen": [i == best for i in range(len(grid))]})
    return table, grid[best]


def choose_baseline(dense: Any, windows: Any, ratio: float, *, stats: Any, moments: Any, ridge: float,
                    candidates: Sequence[str] = BASELINE_CANDIDATES, source: Mapping[str, Any] | None = None,
                    known: Mapping[str, float] | None = None, **selection: Any) -> tuple[pd.DataFrame, str]:
    """The strongest baseline variant on validation windows: the bar the paper's method is held to.

    Parameters
    ----------
    dense : nn.Module
    windows : torch.Tensor
        Validation windows (never the test windows).
    ratio : float
    stats, moments
        The dense model's statistics and down-projection moments.
    ridge : float
        Relative ridge of the least-squares candidates.
    candidates : sequence of str, default=BASELINE_CANDIDATES
        Grid points (``"+ls"`` takes ``ridge``).
    known : dict, optional
        Validation perplexities already measured, by name (skipped here).
    selection
        ``basis``, ``protected_layers``, ``round_to``.

    Returns
    -------
    (table, name) : tuple
        ``table``: ``method``, ``label``, ``ppl`` and ``chosen``; ``name``: the lowest validation perplexity.
    """
    from .ablation import window_nll
    from .methods import build_pruned, get_method, make_plan

    revision = (source or {}).get("revision")
    rows = []
    for name in dict.fromkeys(_with_ridge(c, ridge) for c in candidates):
        if known and name in known:
            ppl = float(known[name])
        else:
            plan = make_plan(name, dense, ratio, stats=stats, source=source, **selection)
            model = build_pruned(name, dense, plan, stats=stats, moments=moments, revision=revision)
            ppl = float(np.exp(window_nll(model, windows).mean()))
            del model
        rows.append({"method": get_method(name).name, "label": get_method(name).label, "ppl": ppl})
    table = pd.DataFrame(rows)
    best = str(table.loc[table["ppl"].idxmin(), "method"])
    table["chosen"] = table["method"] == best
    return table, best


def build_grid_points(model: Any, run_dir: Any, ratios: Sequence[float], seeds: Sequence[int], *,
                      eval_dataset: str = "wiki", seq_len: int = 128, n_windows: int = 32,
                      ridge_ratio: float | None = None, grid: Sequence[float] = RIDGE_GRID, tokenizer: Any = None,
                      source: Mapping[str, Any] | None = None, progress: bool = False,
                      **prune_kwargs: Any) -> dict[str, Any]:
    """Stage 4 for the decomposition: choose the least-squares ridge on validation text, then plan, build and
    store every grid point :func:`decomposition_methods` names, at ``ratios``, through
    :func:`funcprune.pipeline.prune_all` (so stage 5 scores them on the test windows like every other model).

    Parameters
    ----------
    model : nn.Module
        The dense model (with ``tokenizer`` and ``source``).
    run_dir : str or path-like
        The run directory of stages 1-3.
    ratios : sequence of float
        Ratios of the decomposition (at least one).
    seeds : sequence of int
        Seeds of the random grid points.
    eval_dataset, seq_len, n_windows
        The validation windows the ridge is chosen on (:func:`funcprune.heldout.heldout_windows`,
        ``"validation"`` part: never the test windows).
    ridge_ratio : float, optional
        Ratio of the FLAP plan the ridge is chosen with (default the middle of ``ratios``).
    grid : sequence of float, default=RIDGE_GRID
    prune_kwargs
        ``basis``, ``protected_layers``, ``round_to``, ``batch_size``, ``max_tokens`` as in stage 4.

    Returns
    -------
    dict
        ``ridge`` (chosen), ``ridge_table`` (:func:`choose_ridge`), ``methods`` (the grid points built) and
        ``rows`` (:func:`funcprune.pipeline.prune_all`'s table).
    """
    from .calibration import calibration_statistics, calibration_texts
    from .compensation import down_input_moments
    from .heldout import heldout_windows
    from .methods import make_plan
    from .pipeline import prune_all
    from .rundir import RunDir

    if not ratios:
        raise ValueError("the decomposition needs at least one ratio")
    run = RunDir(run_dir)
    texts = [t.text for t in calibration_texts(run)]
    batch_size, max_tokens = prune_kwargs.get("batch_size", 4), prune_kwargs.get("max_tokens", 512)
    selection = {k: prune_kwargs[k] for k in ("basis", "protected_layers", "round_to") if k in prune_kwargs}
    stats = calibration_statistics(run, model, tokenizer, texts, batch_size=batch_size, max_tokens=max_tokens,
                                   progress=progress, source=source)
    moments = down_input_moments(model, tokenizer, texts, batch_size=batch_size, max_tokens=max_tokens,
                                 progress=progress)
    chosen_ratio = float(sorted(ratios)[len(ratios) // 2] if ridge_ratio is None else ridge_ratio)
    plan = make_plan("flap", model, chosen_ratio, stats=stats, source=source, **selection)
    validation = heldout_windows(tokenizer, eval_dataset, "validation", seq_len=seq_len, n_windows=n_windows)
    table, ridge = choose_ridge(model, plan, moments, validation, grid=grid,
                                revision=(source or {}).get("revision"))
    table.insert(0, "ratio", chosen_ratio)
    baselines, strongest = choose_baseline(
        model, validation, chosen_ratio, stats=stats, moments=moments, ridge=ridge, source=source,
        known={_with_ridge("flap+ls", ridge): float(table.loc[table["chosen"], "ppl"].iloc[0])}, **selection)
    methods = list(dict.fromkeys(decomposition_methods(ridge) + [strongest]))
    rows = prune_all(model, run_dir, methods, ratios, seeds, texts=texts, tokenizer=tokenizer, moments=moments,
                     progress=progress, source=source, **prune_kwargs)
    record = {"ridge": ridge, "ridge_ratio": chosen_ratio, "ridge_table": table.to_dict("records"),
              "strongest_baseline": strongest, "baseline_table": baselines.to_dict("records"),
              "validation_windows": {"dataset": eval_dataset, "seq_len": seq_len, "n_windows": int(len(validation))},
              "methods": methods, "ratios": [float(r) for r in ratios]}
    atomic_write_json(run.decomposition_record, record)
    return {**record, "ridge_table": table, "baseline_table": baselines, "rows": rows}


def read_choices(run_dir: Any) -> dict[str, Any] | None:
    """What stage 4 chose on validation text for the decomposition (``None`` when it built no grid points)."""
    from .rundir import RunDir

    path = RunDir(run_dir).decomposition_record
    return read_json(path) if path.exists() else None
