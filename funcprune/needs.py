"""What the faithful method needs: its perplexity at one budget as the settings of stages 1 and 2 change.

The faithful method (``fn``: channels ranked globally by ``max |z|``, no compensation) is
rebuilt from the same activation store with one setting changed at a time around a *base*
setting, and every variant is scored on the same windows and compared with the base, paired
window by window (:func:`funcprune.compare.compare_windows`). A one-at-a-time design: each
row answers "what does this one change do, all else as in the base", not how the changes
combine.

The axes (:data:`AXES`):

``n_components``
    Maps per layer and group (``k``; the authors use 128 for 2 x 11008 voxels).
``n_init``
    FastICA restarts, the sparsest converged one kept (the book's stage 2 uses 10).
``n_groups``
    Groups of calibration texts fitted separately (the authors union 80 groups of 40 texts);
    each group then has fewer tokens.
``max_tokens``
    Tokens per text, the first ones (the authors truncate to 1024).
``drop_first_token``
    Every text's first stored token left out of the fit (its activations are outliers in
    many models).
``voxels``
    ``"copies"``: the stored ``act`` and ``up`` copies, two voxels per channel (the paper);
    ``"product"``: one voxel per channel, the down projection's input ``act * up``.
``combine``
    How the scores of several fits (groups, seeds) are combined: ``"max"``, the authors' union
    (a channel is key if it is key in any fit); ``"min"``, stability selection (a channel
    ranks by its lowest score, so only channels that are key in every fit rank high).
``n_seeds``
    ICA fits with different seeds, combined by ``combine``.
``rule``
    ``"rank"``: the top channels by score, the requested ratio exactly (this book);
    ``"threshold"``: the authors' rule, every channel above the threshold that the ratio
    implies (:func:`funcprune.plan.threshold_for_ratio`).
``seed``
    The ICA seed of the fit (FastICA's start and the SVD's test matrix): how much the method's
    perplexity moves when nothing but the seed changes, the variation a reader would otherwise
    assume is inside FN's intervals (they are conditional on one fit).

The variants are fitted through :class:`~funcprune.store.StoreView`, so fewer tokens, no
first token or the product voxels need no second capture. Nothing here chooses a setting for
the reported results: the chapter runs the sweep on validation windows and says so (:func:`needs_facts`); a
setting adopted from it would have to be tested again on test text.

Used in the chapter :doc:`/executed/06_ablations`.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .compare import compare_windows
from .ica import FunctionalNetworks, ICAConvergenceWarning
from .methods import build_pruned, plan_from_scores
from .plan import PruningPlan, select_by_threshold, threshold_for_ratio
from .scoring import Scores, key_neuron_scores
from .store import ActivationStore, StoreView, text_positions

__all__ = ["AXES", "Setting", "check_grid", "converged_share", "describe_needs", "fit_setting", "needs_facts",
           "needs_sweep", "plot_needs", "setting_scores"]

#: The axes a sweep may vary, each with the values it accepts (a type, or the allowed strings).
AXES: dict[str, Any] = {
    "n_components": int, "n_init": int, "n_groups": int, "max_tokens": int, "drop_first_token": bool,
    "voxels": ("copies", "product"), "combine": ("max", "min"), "n_seeds": int, "rule": ("rank", "threshold"),
    "seed": int,
}
#: What each axis is called in tables and figures.
AXIS_LABELS = {"n_components": "k", "n_init": "restarts", "n_groups": "groups", "max_tokens": "tokens per text",
               "drop_first_token": "first token out", "voxels": "voxels", "combine": "combine",
               "n_seeds": "seeds", "rule": "rule", "seed": "ICA seed"}


@dataclass(frozen=True)
class Setting:
    """One setting of the faithful method's stages 1 and 2 (the fields are :data:`AXES`).

    ``max_tokens=None`` uses every stored token of each text; ``seed`` is the ICA seed of the
    first fit (fit ``s`` of ``n_seeds`` uses ``seed + s``).
    """

    n_components: int = 32
    n_init: int = 1
    n_groups: int = 1
    max_tokens: int | None = None
    drop_first_token: bool = False
    voxels: Literal["copies", "product"] = "copies"
    combine: Literal["max", "min"] = "max"
    n_seeds: int = 1
    rule: Literal["rank", "threshold"] = "rank"
    seed: int = 0

    def __post_init__(self) -> None:
        for name, accepted in AXES.items():
            value = getattr(self, name)
            if name == "max_tokens" and value is None:
                continue
            if isinstance(accepted, tuple):
                if value not in accepted:
                    raise ValueError(f"{name}={value!r} is not accepted; choose one of {list(accepted)}")
            elif accepted is bool:
                if not isinstance(value, bool):
                    raise ValueError(f"{name}={value!r} must be true or false")
            else:
                lowest = 0 if name == "seed" else 1  # a seed may be 0; counts and sizes are positive
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lowest:
                    raise ValueError(f"{name}={value!r} must be "
                                     + ("an integer >= 0" if lowest == 0 else "a positive integer"))

    @classmethod
    def of(cls, networks: FunctionalNetworks, **changes: Any) -> "Setting":
        """The setting ``networks`` (a stage-2 fit of every stored token and copy) was fitted with, then ``changes``.

        The seed is the fit's ``random_state`` when it was an integer, else the base seed it drew.
        """
        seed = networks.random_state if isinstance(networks.random_state, (int, np.integer)) else networks.seed_
        fields = {"n_components": int(networks.n_components), "n_init": int(networks.n_init),
                  "n_groups": int(networks.n_groups), "seed": int(seed), **changes}
        return cls(**fields)

    def changes(self, other: "Setting") -> dict[str, Any]:
        """The fields whose value differs from ``other``'s: ``{name: value in self}``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(other, f.name)}

    @property
    def fit_key(self) -> "Setting":
        """The setting with the fields that do not change the ICA fits (``rule``, ``combine``) at their defaults."""
        return dataclasses.replace(self, rule="rank", combine="max")


def _rows(store: ActivationStore, setting: Setting) -> np.ndarray | None:
    """Rows of ``store`` that the setting fits (``None``: every row)."""
    if setting.max_tokens is None and not setting.drop_first_token:
        return None
    if setting.drop_first_token and store.manifest.get("drop_first_token"):
        raise ValueError("drop_first_token: the store was captured without each text's first token already "
                         "(its manifest's drop_first_token is true); capture with drop_first_token: false to "
                         "compare the two")
    position = text_positions(store.doc_ids)
    keep = np.ones(position.size, dtype=bool)
    if setting.max_tokens is not None:
        keep &= position < setting.max_tokens + int(setting.drop_first_token)
    if setting.drop_first_token:
        keep &= position > 0
    return np.flatnonzero(keep)


def fit_setting(store: ActivationStore, setting: Setting, *, device: Literal["cpu", "cuda"] = "cpu",
                n_jobs: int = 1, progress: bool = False) -> list[FunctionalNetworks]:
    """The ICA fits of one setting: ``n_seeds`` fits of the chosen rows and voxels of ``store``.

    Parameters
    ----------
    store : ActivationStore
        The stage-1 store.
    setting : Setting
        What to fit.
    device : {"cpu", "cuda"}, default="cpu"
        Where the randomized SVD runs (:class:`~funcprune.ica.FunctionalNetworks`).
    n_jobs : int, default=1
        Parallel FastICA restarts.
    progress : bool, default=False
        Progress bar of each fit.

    Returns
    -------
    list of FunctionalNetworks
        One fit per seed, every layer of the store.
    """
    kinds = ("product",) if setting.voxels == "product" else None
    view = StoreView(store, rows=_rows(store, setting), kinds=kinds)
    with warnings.catch_warnings():
        # a sweep of few-restart fits would warn once per layer; each fit's convergence_ records it instead,
        # and needs_sweep reports the share that converged for every row
        warnings.simplefilter("ignore", ICAConvergenceWarning)
        return [FunctionalNetworks(setting.n_components, n_groups=setting.n_groups, n_init=setting.n_init,
                                   random_state=setting.seed + s, device=device, n_jobs=n_jobs,
                                   progress=progress).fit(view)
                for s in range(setting.n_seeds)]


def converged_share(fits: Sequence[FunctionalNetworks]) -> float:
    """Share of the layer-and-group fits whose selected FastICA restart converged (status ``"ok"``)."""
    records = [r for fn in fits for r in fn.convergence_]
    return sum(r["status"] == "ok" for r in records) / max(1, len(records))


def setting_scores(fits: Sequence[FunctionalNetworks], setting: Setting, widths: Mapping[int, int]) -> Scores:
    """Key-neuron scores of a setting: ``max |z|`` per fit and group, combined by ``setting.combine``.

    With ``combine="max"`` this is :func:`funcprune.scoring.key_neuron_scores` over every
    map of every fit (the authors' union); with ``"min"`` each channel keeps its lowest
    score over the fits and groups (stability selection).
    """
    per_fit: list[Scores] = []
    for fn in fits:
        for group in range(max(fn.n_groups_used_.values())):
            maps = {layer: z[fn.map_groups_[layer] == group] for layer, z in fn.maps_.items()}
            if any(z.shape[0] == 0 for z in maps.values()):
                continue  # a group discarded in some layer (every restart NaN) does not vote
            per_fit.append(key_neuron_scores(maps, fn.voxel_channels_, widths))
    if not per_fit:
        raise ValueError("no fit has maps in every layer; see the fits' convergence_")
    combine = np.maximum if setting.combine == "max" else np.minimum
    return {layer: combine.reduce([s[layer] for s in per_fit]) for layer in per_fit[0]}


def _plan(scores: Scores, dense: nn.Module, setting: Setting, ratio: float, *, basis: Literal["total", "mlp"],
          protected_layers: Sequence[int] | None, round_to: int,
          source: Mapping[str, Any] | None) -> PruningPlan:
    recorded = {"scorer": "functional_networks", "needs_setting": dataclasses.asdict(setting)}
    if setting.rule == "threshold":
        t = threshold_for_ratio(scores, dense, ratio, basis=basis, protected_layers=protected_layers)
        return select_by_threshold(scores, dense, t, basis=basis, protected_layers=protected_layers, method="fn",
                                   settings=recorded, source=source)
    return plan_from_scores("fn", scores, dense, ratio, basis=basis, protected_layers=protected_layers,
                            round_to=round_to, settings=recorded, source=source)


def _window_nll(model: nn.Module, windows: torch.Tensor, batch_size: int) -> np.ndarray:
    from .evaluate import window_nll  # the package's one scorer of windows

    return window_nll(model, windows, batch_size=batch_size)


def _label(changes: Mapping[str, Any]) -> str:
    return ", ".join(f"{AXIS_LABELS[k]} = {str(v).lower() if isinstance(v, bool) else v}"
                     for k, v in changes.items())


def _variants(base: Setting, grid: Mapping[str, Sequence[Any]]) -> list[tuple[str, str, Setting]]:
    """``(axis, label, setting)`` of the base and of each change the grid asks for, without repeats."""
    unknown = sorted(set(grid) - set(AXES))
    if unknown:
        raise ValueError(f"unknown sweep axes {unknown}; the axes are {list(AXES)}")
    out: list[tuple[str, str, Setting]] = [("base", "base", base)]
    for axis, values in grid.items():
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
            raise ValueError(f"needs_grid[{axis!r}] must be a list of values, got {values!r}")
        for value in values:
            changes = dict(value) if isinstance(value, Mapping) else {axis: value}
            unknown = sorted(set(changes) - set(AXES))
            if unknown:
                raise ValueError(f"needs_grid[{axis!r}]: unknown fields {unknown}; the axes are {list(AXES)}")
            setting = dataclasses.replace(base, **changes)
            if setting != base and all(s != setting for _, _, s in out):
                out.append((axis, _label(setting.changes(base)), setting))
    return out


def check_grid(grid: Mapping[str, Sequence[Any]], base: Setting) -> list[Setting]:
    """The settings a grid asks for, the base first, each validated (what preflight checks in seconds).

    Raises
    ------
    ValueError
        An unknown axis or field, a value the axis does not accept, or a grid entry that is
        not a list; the message names the accepted ones.
    """
    return [setting for _, _, setting in _variants(base, grid)]


def needs_sweep(dense: nn.Module, store: ActivationStore, windows: torch.Tensor, *, base: Setting,
                grid: Mapping[str, Sequence[Any]], ratio: float,
                fitted: Mapping[Setting, FunctionalNetworks] | None = None,
                basis: Literal["total", "mlp"] = "total", protected_layers: Sequence[int] | None = None,
                round_to: int = 1, batch_size: int = 4, device: Literal["cpu", "cuda"] = "cpu",
                n_jobs: int = 1, n_boot: int = 10_000, progress: bool = True,
                source: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Perplexity of the faithful method at one ratio for the base setting and each one-axis change.

    Parameters
    ----------
    dense : nn.Module
        The dense model (never modified).
    store : ActivationStore
        The stage-1 store every variant is fitted from.
    windows : LongTensor of shape (n_windows, seq_len)
        The windows every variant is scored on (validation text in the book).
    base : Setting
        The setting every variant changes one axis of.
    grid : dict[str, list]
        Values per axis (keys of :data:`AXES`); a value equal to the base's adds nothing. A
        value may be a mapping of several fields, for changes that only mean something
        together (``{"n_seeds": 2, "combine": "min"}``: stability selection over two seeds).
    ratio : float
        The budget, as in :func:`funcprune.plan.select_channels`.
    fitted : dict[Setting, FunctionalNetworks], optional
        Fits already made (the stage-2 networks under :meth:`Setting.of`), used instead of
        refitting (one-seed settings; ``rule`` and ``combine`` do not change a fit).
    basis, protected_layers, round_to
        The budget, as for every method of chapter 4.
    batch_size : int, default=4
        Windows per forward pass.
    device, n_jobs
        Of the ICA fits (:func:`fit_setting`); ``"cuda"`` runs the SVD on the GPU.
    n_boot : int, default=10000
        Bootstrap resamples of each paired comparison.
    progress : bool, default=True
        Progress bar over the variants.
    source : dict, optional
        Where ``dense`` came from (``LoadedModel.source``): plans record its revision.

    Returns
    -------
    pandas.DataFrame
        One row per variant, the base first: ``axis`` (``"base"`` for it), ``label``,
        ``changes`` (the fields that differ from the base), ``fit_seconds`` and ``new_fits`` (ICA
        fits this row needed; 0 when every fit it uses was made before), ``converged``
        (:func:`converged_share` of its fits), ``ratio_reached``,
        ``ppl``, the paired comparison with the base (``estimate`` = perplexity ratio,
        ``ci_low``, ``ci_high``, ``p_value``, ``better``; the base compares with itself) and
        ``channels_changed`` (share of the base's removed channels the variant keeps).
        ``attrs``: ``window_nll`` (label -> per-window NLLs), ``base`` (the base setting as a
        dict) and ``ratio``.

    Raises
    ------
    ValueError
        An unknown axis or value (naming the accepted ones), or a variant the store cannot
        serve (``drop_first_token`` on a store captured without first tokens).
    funcprune._io.ArtefactError
        A store file changed since stage 1 wrote it (its digest is checked first), naming it and the fix.
    """
    variants = _variants(base, grid)
    # every refit reads the store: compare its digests first (one read, seconds), not only its sizes
    ActivationStore(store.path, verify=True)
    widths = {layer: store.width(layer) for layer in store.layers}
    # one ICA fit per (setting, seed): a seed shared by two rows (the base and a two-seed row) is fitted once
    fits: dict[Setting, FunctionalNetworks] = {s.fit_key: fn for s, fn in (fitted or {}).items() if s.n_seeds == 1}
    rows, per_window, plans = [], {}, {}
    for axis, label, setting in tqdm(variants, desc=f"what the method needs, at {ratio:.0%}", unit="setting",
                                     disable=not progress):
        singles = [dataclasses.replace(setting.fit_key, n_seeds=1, seed=setting.seed + s)
                   for s in range(setting.n_seeds)]
        t0 = time.perf_counter()
        new = [single for single in singles if single not in fits]
        for single in new:
            fits[single] = fit_setting(store, single, device=device, n_jobs=n_jobs)[0]
        seconds = time.perf_counter() - t0 if new else 0.0
        plan = _plan(setting_scores([fits[single] for single in singles], setting, widths), dense, setting, ratio,
                     basis=basis, protected_layers=protected_layers, round_to=round_to, source=source)
        model = build_pruned("fn", dense, plan, revision=(source or {}).get("revision"))
        per_window[label] = _window_nll(model, windows, batch_size)
        del model
        plans[label] = plan
        rows.append({"axis": axis, "label": label, "changes": setting.changes(base), "fit_seconds": seconds,
                     "new_fits": len(new), "converged": converged_share([fits[single] for single in singles]),
                     "ratio_reached": plan.ratio_reached,
                     "ppl": float(np.exp(per_window[label].mean()))})
    base_nll, base_plan = per_window["base"], plans["base"]
    removed = {i: set(base_plan.removed(i)) for i in base_plan.kept}
    n_removed = max(1, sum(len(r) for r in removed.values()))
    for row in rows:
        plan = plans[row["label"]]
        row["channels_changed"] = sum(len(removed[i] - set(plan.removed(i))) for i in removed) / n_removed
        if row["axis"] == "base":
            row.update({"estimate": 1.0, "ci_low": 1.0, "ci_high": 1.0, "p_value": 1.0, "better": "base"})
        else:
            cmp = compare_windows(per_window[row["label"]], base_nll, n_boot=n_boot)
            row.update({k: cmp[k] for k in ("estimate", "ci_low", "ci_high", "p_value", "better")})
    table = pd.DataFrame(rows)
    table.attrs.update({"window_nll": per_window, "base": dataclasses.asdict(base), "ratio": float(ratio)})
    return table


def describe_needs(table: pd.DataFrame, references: Mapping[str, np.ndarray] | None = None) -> list[str]:
    """Sentences on a :func:`needs_sweep` table, true for any outcome.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`needs_sweep`.
    references : dict[str, ndarray], optional
        Window NLLs of other models on the same windows (e.g. ``{"FLAP": ...}`` at the same
        ratio), each compared with the base and with the best variant.
    """
    ratio = table.attrs["ratio"]
    base = table.iloc[0]
    variants = table.iloc[1:]
    fitted = table[table["new_fits"] > 0]
    out = [f"At {ratio:.0%} removed the base setting scores perplexity {base['ppl']:.2f} on these windows"
           + (f"; in the fits made here the selected FastICA restart converged in "
              f"{fitted['converged'].min():.0%} to {fitted['converged'].max():.0%} of the layer fits"
              if len(fitted) else "") + "."]
    if variants.empty:
        return out + ["The grid changes nothing, so there is nothing to compare."]
    same = variants[(variants["channels_changed"] == 0) & np.isclose(variants["estimate"], 1.0, rtol=0, atol=1e-12)]
    variants = variants.drop(index=same.index)
    if len(same):
        out.append(f"{', '.join(same['label'])} keep{'s' if len(same) == 1 else ''} exactly the base's channels: "
                   "the same model.")
    helped = variants[variants["better"] == "model"].sort_values("estimate")
    hurt = variants[variants["better"] == "baseline"].sort_values("estimate", ascending=False)
    undecided = variants[variants["better"] == "undecided"]

    def items(rows: pd.DataFrame) -> str:
        return "; ".join(f"{r['label']} ({r['estimate']:.3f} times, 95 % interval {r['ci_low']:.3f} to "
                         f"{r['ci_high']:.3f})" for _, r in rows.iterrows())

    if variants.empty:
        return out
    out.append(f"Of {len(variants)} other one-axis changes, {len(helped)} lowered the perplexity, decided by the paired "
               f"test" + (f": {items(helped)}" if len(helped) else "") + ".")
    out.append(f"{len(hurt)} raised it" + (f": {items(hurt)}" if len(hurt) else "") + ".")
    if len(undecided):
        out.append(f"{len(undecided)} cannot be told apart from the base on these windows: "
                   f"{', '.join(undecided['label'])}.")
    best = table.loc[table["ppl"].idxmin()]
    for name, nll in (references or {}).items():
        base_cmp = compare_windows(np.asarray(nll), table.attrs["window_nll"]["base"])
        best_cmp = compare_windows(np.asarray(nll), table.attrs["window_nll"][best["label"]])
        out.append(f"{name} at the same ratio scores {float(np.exp(np.mean(nll))):.2f}: "
                   f"{base_cmp['estimate']:.3f} times the base's perplexity and {best_cmp['estimate']:.3f} times "
                   f"that of the best setting here ({best['label']}), so "
                   + ("no single change here closes the gap to it." if best_cmp["better"] == "model" else
                      "the best single change here is not worse than it on these windows."))
    return out


def needs_facts(table: pd.DataFrame | None, references: Mapping[str, np.ndarray] | None = None, *, base: Setting,
                ratio: float, grid: Mapping[str, Sequence[Any]]) -> dict[str, str]:
    """What chapter 6 says of the sweep, by the name it glues each value under.

    ``table`` is :func:`needs_sweep`'s (``None``: not run, because ``grid`` is empty or the run holds no
    activations); ``references`` as for :func:`describe_needs`. Returns ``needs_fit_text``, ``needs_ratio``,
    ``needs_n_init`` (the base's restarts), ``needs_base`` and ``needs_sentences``.
    """
    if table is None:
        fit_text = "No setting was refitted."
        sentences = ["This run's profile sweeps no setting (needs_grid is empty; the sweep profile, params/sweep.yaml, "
                     "runs it)." if not grid else "The activations of stage 1 are not in this run directory (a bundle "
                     "holds none), so no setting can be refitted: run chapter 1 with the same run_dir to fill it."]
    else:
        fit_text = f"The refitted rows took {table['fit_seconds'].sum() / 60:.1f} minutes of ICA."
        sentences = describe_needs(table, references)
    return {"needs_fit_text": fit_text, "needs_ratio": f"{ratio:.0%}", "needs_n_init": str(base.n_init),
            "needs_base": f"k = {base.n_components}, {base.n_groups} group(s), every stored token, both voxel copies",
            "needs_sentences": " ".join(sentences)}


def plot_needs(table: pd.DataFrame, references: Mapping[str, np.ndarray] | None = None) -> Any:
    """Perplexity of each variant relative to the base, with paired 95 % intervals (log scale).

    ``references`` (window NLLs on the same windows) are drawn as vertical lines at their
    ratio to the base.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    variants = table.iloc[1:].iloc[::-1]
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * max(len(variants), 2) + 1.2), constrained_layout=True)
    y = np.arange(len(variants))
    colors = variants["better"].map({"model": "tab:green", "baseline": "tab:red"}).fillna("tab:grey")
    ax.errorbar(variants["estimate"], y, xerr=[variants["estimate"] - variants["ci_low"],
                                               variants["ci_high"] - variants["estimate"]],
                fmt="none", ecolor="black", capsize=3, lw=1)
    ax.scatter(variants["estimate"], y, c=list(colors), zorder=3)
    ax.axvline(1.0, color="grey", ls="--", lw=1, label="base")
    base_nll = table.attrs["window_nll"]["base"]
    for (name, nll), color in zip((references or {}).items(), ("tab:blue", "tab:purple", "tab:orange")):
        ax.axvline(float(np.exp(np.mean(np.asarray(nll) - base_nll))), color=color, ls=":", lw=1.5, label=name)
    ax.set_yticks(y, list(variants["label"]))
    ax.set_xscale("log")
    ax.set(xlabel="perplexity / the base setting's (paired, 95 % interval)",
           title=f"the faithful method at {table.attrs['ratio']:.0%} removed, one change at a time")
    ax.legend(loc="best", fontsize="small")
    return fig
