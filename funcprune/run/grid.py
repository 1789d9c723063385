"""Stage 4 for the decomposition: the grid points between methods, and the choices made on validation text.

Chapter 5 takes the gap between two methods apart (:mod:`funcprune.decompose`) through grid points such as
``"fn@flap+static"`` (:func:`funcprune.methods.variant`). This module builds them through
:func:`funcprune.run.pipeline.prune_all` (plans, stored compensation, index: stage 5 then scores them on the test
windows like any other model) after two choices made on **validation** windows, never the test windows:

* the relative ridge of least-squares reconstruction (:func:`choose_ridge`, tried on FLAP's plan);
* the **strongest baseline variant** (:func:`choose_baseline`): the bar the paper's method is held to.

Both choices, with their tables, are recorded in ``pruned/decomposition.json`` (:func:`read_choices`).

**The baselines with their authors' calibration** (:func:`native_arm`): FLAP's code measures its statistics on
1,024 windows of 128 tokens of WikiText-2 train, Wanda's on 128 windows of 128 tokens of C4, each window drawn at a
random position of the tokenised stream; the book's shared calibration is the stage-1 texts. This arm rebuilds FLAP
and Wanda-sp from windows cut the same way from the offline corpora's calibration splits (disjoint from the
held-out text) and scores them on chapter 5's test windows, beside their shared-calibration models.

**The literature's perplexity protocol** (:func:`literature_table`): some of the run's models rebuilt and scored
the way FLAP's and Wanda's evaluation code does (:func:`funcprune.heldout.literature_perplexity`: consecutive
windows, no BOS per window), beside the book's windows, so that readers can set the ratios beside published tables.

Used in the chapters :doc:`/executed/04_structured_pruning` and :doc:`/executed/05_evaluate_benchmarks`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .._io import atomic_write_json, read_json
from ..decompose import _with_ridge, check_same_windows, decomposition_methods

__all__ = [
    "BASELINE_CANDIDATES",
    "QUICK_CANDIDATES",
    "QUICK_RIDGE_GRID",
    "RIDGE_GRID",
    "build_grid_points",
    "choose_baseline",
    "choose_ridge",
    "describe_native",
    "describe_literature",
    "literature_table",
    "native_arm",
    "native_text",
    "native_windows",
    "read_choices",
    "ridge_sentence",
]

#: Baseline variants the strongest baseline is chosen from on validation text (item "the bar moves"): each
#: baseline criterion with its authors' allocation and compensation, with least squares, and Wanda-sp inside
#: FLAP's widths with FLAP's bias.
BASELINE_CANDIDATES: tuple[str, ...] = ("flap", "flap+ls", "flap+none", "wanda-sp", "wanda-sp+ls",
                                        "wanda-sp@flap+static")
#: The candidates of a quick run (the default profile): each baseline criterion with its authors' compensation and
#: with least squares.
QUICK_CANDIDATES: tuple[str, ...] = ("flap", "flap+ls", "wanda-sp", "wanda-sp+ls")

#: Relative ridge strengths tried for least-squares compensation (:func:`choose_ridge`).
RIDGE_GRID: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
#: The ridges of a quick run.
QUICK_RIDGE_GRID: tuple[float, ...] = (0.1, 1.0, 10.0)


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

    from ..evaluate import window_nll
    from ..compensation import LeastSquaresCompensation
    from ..prune import prune

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


def ridge_sentence(table: pd.DataFrame) -> str:
    """What the ridge choice says, from :func:`choose_ridge`'s table: the chosen value, its validation perplexity,
    and a warning when it lies at an end of the grid (the best value may lie beyond what was tried)."""
    chosen = table.loc[table["chosen"]].iloc[0]
    ridges = sorted(table["ridge"])
    text = (f"The relative ridge {chosen['ridge']:g} gave the lowest validation perplexity ({chosen['ppl']:.2f}; "
            f"tried: {', '.join(f'{r:g}' for r in ridges)}).")
    if len(ridges) > 1 and chosen["ridge"] in (ridges[0], ridges[-1]):
        side = "largest" if chosen["ridge"] == ridges[-1] else "smallest"
        text += (f" It is the {side} value tried, so a value beyond the grid may do better: pass a wider grid "
                 "to funcprune.run.grid.build_grid_points to look.")
    return text


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
    from ..evaluate import window_nll
    from ..methods import build_pruned, get_method, make_plan

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
                      ridge_ratio: float | None = None, grid: Sequence[float] | None = None, tokenizer: Any = None,
                      source: Mapping[str, Any] | None = None, progress: bool = False, extended: bool = True,
                      **prune_kwargs: Any) -> dict[str, Any]:
    """Stage 4 for the decomposition: choose the least-squares ridge on validation text, then plan, build and
    store every grid point :func:`decomposition_methods` names, at ``ratios``, through
    :func:`funcprune.run.pipeline.prune_all` (so stage 5 scores them on the test windows like every other model).

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
    grid : sequence of float, optional
        Ridges tried (default :data:`RIDGE_GRID`, or :data:`QUICK_RIDGE_GRID` when not ``extended``).
    extended : bool, default=True
        Also build the expensive grid points (:data:`funcprune.decompose.EXPENSIVE`: FLAP with the progressive
        bias, and FN and FLAP with the progressive least-squares refit, each running the calibration texts through
        the network about three times), and choose the strongest
        baseline among all of :data:`BASELINE_CANDIDATES` (else :data:`QUICK_CANDIDATES`).
    prune_kwargs
        ``basis``, ``protected_layers``, ``round_to``, ``batch_size``, ``max_tokens`` as in stage 4.

    Returns
    -------
    dict
        ``ridge`` (chosen), ``ridge_table`` (:func:`choose_ridge`), ``methods`` (the grid points built) and
        ``rows`` (:func:`funcprune.run.pipeline.prune_all`'s table).
    """
    from .calibration import calibration_statistics, calibration_texts
    from ..compensation import down_input_moments
    from ..heldout import heldout_windows
    from ..methods import make_plan
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
    grid = (RIDGE_GRID if extended else QUICK_RIDGE_GRID) if grid is None else grid
    table, ridge = choose_ridge(model, plan, moments, validation, grid=grid,
                                revision=(source or {}).get("revision"))
    table.insert(0, "ratio", chosen_ratio)
    baselines, strongest = choose_baseline(
        model, validation, chosen_ratio, stats=stats, moments=moments, ridge=ridge, source=source,
        candidates=BASELINE_CANDIDATES if extended else QUICK_CANDIDATES,
        known={_with_ridge("flap+ls", ridge): float(table.loc[table["chosen"], "ppl"].iloc[0])}, **selection)
    methods = list(dict.fromkeys(decomposition_methods(ridge, extended=extended) + [strongest]))
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


def native_windows(tokenizer: Any, dataset: str, n_windows: int, *, seq_len: int = 128, seed: int = 0) -> Any:
    """Windows of ``seq_len`` tokens at random positions of a corpus's calibration split, as FLAP's and Wanda's
    loaders draw them (the split's texts joined by blank lines and tokenised once, no BOS per window).

    Parameters
    ----------
    tokenizer : transformers tokenizer
    dataset : str
        An offline corpus (``"wiki"``, ``"c4"``) or a hub one when online.
    n_windows : int
        Windows to draw (with replacement of positions, as their code does), ``>= 1``.
    seq_len : int, default=128
    seed : int, default=0

    Returns
    -------
    torch.LongTensor of shape (n_windows, seq_len)

    Raises
    ------
    ValueError
        ``n_windows < 1`` or a calibration split shorter than one window.
    """
    import torch

    from ..data import load_texts

    if n_windows < 1:
        raise ValueError(f"n_windows {n_windows!r} must be >= 1")
    ids: list[int] = []
    for text in load_texts(dataset, "calibration"):
        ids += tokenizer(text.text + "\n\n", add_special_tokens=False)["input_ids"]
    if len(ids) <= seq_len:
        raise ValueError(f"the calibration split of {dataset!r} holds {len(ids)} tokens: fewer than one window of "
                         f"{seq_len}")
    starts = np.random.default_rng(seed).integers(0, len(ids) - seq_len, size=n_windows)
    stream = torch.tensor(ids, dtype=torch.long)
    return torch.stack([stream[s:s + seq_len] for s in starts])


#: The calibration each baseline's own code uses: (corpus, windows of 128 tokens).
NATIVE_CALIBRATION: dict[str, tuple[str, int]] = {"flap": ("wiki", 1024), "wanda-sp": ("c4", 128)}


def native_arm(dense: Any, tokenizer: Any, parts: Mapping[str, Mapping[str, Any]], ratios: Sequence[float], *,
               test_windows: Any, setting: str = "128", n_windows: Mapping[str, int] | None = None,
               corpora: Mapping[str, str] | None = None, source: Mapping[str, Any] | None = None,
               batch_size: int = 4, **selection: Any) -> pd.DataFrame:
    """FLAP and Wanda-sp rebuilt from their authors' kind of calibration, scored on the run's test windows.

    Parameters
    ----------
    dense : nn.Module
    tokenizer : transformers tokenizer
    parts : dict
        The run's per-model records (``results.json["models"]``): the shared-calibration models to pair with.
    ratios : sequence of float
    test_windows : torch.Tensor of shape (n, seq_len)
        Chapter 5's test windows (:func:`funcprune.heldout.heldout_windows` with the same length and budget);
        checked against the records' token digest.
    setting : str, default="128"
        The window setting of ``parts`` they are.
    n_windows : dict, optional
        Windows per method (default :data:`NATIVE_CALIBRATION`'s: 1,024 for FLAP, 128 for Wanda-sp).
    corpora : dict, optional
        Corpus per method (default :data:`NATIVE_CALIBRATION`'s).
    source, batch_size, selection
        As in stage 4 (``basis``, ``protected_layers``, ``round_to``).

    Returns
    -------
    pandas.DataFrame
        One row per (method, ratio): ``method``, ``ratio``, ``corpus``, ``windows``, ``tokens``, ``ppl_native``,
        ``ppl_shared`` and the paired comparison of native against shared (``estimate``, ``ci_low``, ``ci_high``,
        ``p_value``, ``decided``).

    Raises
    ------
    ValueError
        Test windows that are not the records' windows.
    """
    from ..evaluate import window_nll
    from ..compare import compare_windows, method_groups, recorded_window_nll
    from ..methods import build_pruned, make_plan
    from ..scoring import channel_statistics

    counts = {m: c for m, (_, c) in NATIVE_CALIBRATION.items()} | dict(n_windows or {})
    corpus_of = {m: d for m, (d, _) in NATIVE_CALIBRATION.items()} | dict(corpora or {})
    groups = method_groups(parts)
    revision = (source or {}).get("revision")
    rows = []
    for method in ("flap", "wanda-sp"):
        present = [r for r in ratios if (method, float(r)) in groups]
        if not present or not counts.get(method):
            continue
        windows = native_windows(tokenizer, corpus_of[method], int(counts[method]))
        stats = channel_statistics(dense, tokenizer, [], windows=windows, batch_size=batch_size, progress=False)
        for ratio in present:
            shared = groups[(method, float(ratio))][0]
            shared_nll = recorded_window_nll(shared, setting)[0]
            check_same_windows(tokenizer, test_windows, shared, setting)
            plan = make_plan(method, dense, float(ratio), stats=stats, source=source, **selection)
            model = build_pruned(method, dense, plan, stats=stats, revision=revision)
            nll = window_nll(model, test_windows)
            del model
            r = compare_windows(nll, shared_nll)
            row = {"method": method, "ratio": float(ratio), "corpus": corpus_of[method],
                   "windows": int(windows.shape[0]), "tokens": int(windows.numel()),
                   "ppl_native": float(np.exp(nll.mean())), "ppl_shared": float(np.exp(shared_nll.mean())),
                   "estimate": r["estimate"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                   "p_value": r["p_value"], "decided": bool(r["decided"])}
            fn = groups.get(("fn", float(ratio)))
            if fn:  # does the paper's method's standing against this baseline change with its calibration?
                fn_nll = recorded_window_nll(fn[0], setting)[0]
                shared_cmp, native_cmp = compare_windows(fn_nll, shared_nll), compare_windows(fn_nll, nll)
                row |= {"fn_vs_shared": shared_cmp["estimate"], "fn_vs_shared_better": shared_cmp["better"],
                        "fn_vs_native": native_cmp["estimate"], "fn_vs_native_ci_low": native_cmp["ci_low"],
                        "fn_vs_native_ci_high": native_cmp["ci_high"], "fn_vs_native_better": native_cmp["better"]}
            rows.append(row)
    return pd.DataFrame(rows)


def describe_native(table: pd.DataFrame, *, labels: Mapping[str, str] | None = None) -> list[str]:
    """Sentences on the baselines with their authors' calibration: each against its shared-calibration model
    (a difference called only when the paired test decides it), and whether the paper's method's standing against
    it changes (the verdict of the paired test, "model", "baseline" or "undecided", compared)."""
    labels = dict(labels or {})
    out = []
    for r in table.to_dict("records"):
        name = labels.get(r["method"], r["method"])
        change = (f"{'lower' if r['estimate'] < 1 else 'higher'}, decided by the paired test" if r["decided"]
                  else "not decided by the paired test")
        theirs = NATIVE_CALIBRATION.get(r["method"], ("", r["windows"]))[1]
        fewer = "" if theirs == r["windows"] else f"; its authors' code takes {theirs:,} windows"
        text = (f"At {100 * r['ratio']:.0f} %, {name} calibrated as its authors do ({r['windows']:,} windows of "
                f"{r['tokens'] // r['windows']} tokens of {r['corpus']}, {r['tokens']:,} tokens{fewer}) has "
                f"{r['estimate']:.2f} times the perplexity of {name} with the book's calibration "
                f"({r['ci_low']:.2f}-{r['ci_high']:.2f}; {change}).")
        if "fn_vs_native" in r and r["fn_vs_native"] == r["fn_vs_native"]:
            same = r["fn_vs_native_better"] == r["fn_vs_shared_better"]
            text += (f" FN's perplexity is {r['fn_vs_native']:.2f} times that of this {name} "
                     f"({r['fn_vs_native_ci_low']:.2f}-{r['fn_vs_native_ci_high']:.2f}): "
                     + ("the ranking between them does not change." if same else
                        "the paired verdict between them changes with the baseline's calibration."))
        out.append(text)
    return out


def native_text(table: pd.DataFrame | None, *, labels: Mapping[str, str] | None = None) -> str:
    """:func:`describe_native`'s sentences as one text, or why there are none (``table`` ``None``: the profile
    does not run the arm)."""
    if table is None:
        return "This profile does not run them (native_flap_windows and native_wanda_windows are 0)."
    sentences = describe_native(table, labels=labels)
    return " ".join(sentences) or "Neither baseline was in this run at the ratios asked for."


def literature_table(dense: Any, tokenizer: Any, run_dir: Any, keys: Sequence[str], *, eval_dataset: str = "wiki",
                     seq_len: int = 128, max_tokens: int | None = 4096, source: Mapping[str, Any] | None = None,
                     baseline: str | None = None, batch_size: int = 4) -> pd.DataFrame:
    """The dense model and some of the run's pruned models under the literature's perplexity protocol.

    Parameters
    ----------
    dense : nn.Module
    tokenizer : transformers tokenizer
    run_dir : str or path-like
        The run (models are rebuilt from its plans: :func:`funcprune.run.pipeline.rebuild_pruned`).
    keys : sequence of str
        Keys of the run's index (``"fn_r0.20"``); the dense model is always scored first.
    eval_dataset, seq_len, max_tokens
        The held-out **test** part of ``eval_dataset``, windows of ``seq_len`` tokens, at most ``max_tokens``
        tokens (an evenly spread subset of the consecutive windows; ``None``: all of them).
    baseline : str, optional
        A key the others are compared with, paired on the same windows.

    Returns
    -------
    pandas.DataFrame
        One row per model: ``key``, ``ppl`` (literature protocol), ``windows``, ``tokens``; with ``baseline``
        also ``estimate``, ``ci_low``, ``ci_high`` and ``decided`` against it. ``attrs["rule"]`` states the protocol.
    """
    from ..compare import compare_windows
    from ..heldout import LITERATURE_RULE, evaluation_stream, literature_perplexity
    from .pipeline import rebuild_pruned

    stream = evaluation_stream(tokenizer, eval_dataset, "test")
    records = {"dense": literature_perplexity(dense, stream, seq_len=seq_len, max_tokens=max_tokens,
                                              batch_size=batch_size)}
    for key in keys:
        model = rebuild_pruned(run_dir, key, dense, source=source).model
        records[key] = literature_perplexity(model, stream, seq_len=seq_len, max_tokens=max_tokens,
                                             batch_size=batch_size)
        del model
    rows = []
    for key, rec in records.items():
        row = {"key": key, "ppl": rec["ppl"], "windows": rec["n_windows"], "tokens": rec["n_tokens_scored"]}
        if baseline is not None and baseline in records and key != baseline:
            r = compare_windows(rec["window_nll"], records[baseline]["window_nll"])
            row |= {"estimate": r["estimate"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                    "decided": bool(r["decided"])}
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["rule"] = LITERATURE_RULE
    return table


def describe_literature(table: pd.DataFrame, *, labels: Mapping[str, str] | None = None,
                        book_column: str = "ppl (book's windows)") -> str:
    """Sentences on :func:`literature_table`'s rows: each model against the baseline under the literature's
    protocol (a difference called only when decided), and whether the protocol changed the numbers at all (it does
    not for a tokenizer that puts no BOS token in front of a text, when the same windows are drawn)."""
    labels = dict(labels or {})
    parts = []
    if "estimate" in table:
        for r in table.dropna(subset=["estimate"]).to_dict("records"):
            verdict = "decided by the paired test" if r["decided"] else "not decided by the paired test"
            parts.append(f"{labels.get(r['method'], r['method'])}: {r['estimate']:.2f} times the baseline's "
                         f"perplexity ({r['ci_low']:.2f}-{r['ci_high']:.2f}, {verdict}).")
    if book_column in table and np.allclose(table["ppl"], table[book_column], rtol=1e-9, atol=0):
        parts.append("Every perplexity equals the book's own: this tokenizer puts no BOS token in front of a text, "
                     "so both protocols cut the same windows here; they differ for BOS-dependent families.")
    elif book_column in table:
        ratio = (table["ppl"] / table[book_column]).to_numpy()
        parts.append(f"The literature's protocol gives {ratio.min():.2f} to {ratio.max():.2f} times the book's "
                     "perplexities on these models.")
    return " ".join(parts) or "No model was scored under the literature's protocol."
