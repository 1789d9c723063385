"""Chapter 4's checks of what stage 4 stored: each method under both allocations, and rebuild against build.

:func:`allocation_check` scores every method's stored model and the same method under the other
allocation (planned and built in memory) on one slice of validation text; :func:`allocation_facts`
and :func:`quick_check_card` say what the chapter and the exported model's card report of it;
:func:`rebuild_differences` compares each stored model with its plan applied in memory (zero when the
run rebuilds what it built). The stored models come from a ``stored`` callable, such as
``functools.partial(funcprune.run.pipeline.rebuild_pruned, run_dir, dense=dense, source=source)``.

Used in the chapter :doc:`/executed/04_structured_pruning`.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

from torch import nn

from ..methods import build_pruned, get_method, make_plan, method_key, resolve_allocation
from ..prune import CalibrationData
from ..scoring import ChannelStatistics

__all__ = ["OWN_ALLOCATION_ONLY", "allocation_check", "allocation_facts", "quick_check_card", "rebuild_differences"]

#: Methods :func:`allocation_check` measures under their own allocation only: ``fn-bias`` has ``fn``'s plan, and
#: a second progressive compensation would cost minutes to say nothing new about the allocation.
OWN_ALLOCATION_ONLY: tuple[str, ...] = ("fn-bias",)


def allocation_check(methods: Sequence[str], dense: nn.Module, ratio: float, ids: Any, *,
                     stored: Callable[[str], Any], allocation: str | None = "per-method", seed: int = 0,
                     bos: int | None = None, networks: Any = None, stats: ChannelStatistics | None = None,
                     calibration: CalibrationData | None = None, basis: Literal["total", "mlp"] = "total",
                     round_to: int = 1, seq_len: int = 128, batch_size: int = 4,
                     own_only: Sequence[str] = OWN_ALLOCATION_ONLY) -> Any:
    """Perplexity of every method at one ratio under both allocations, and of the dense model: a quick check.

    The allocation a method was stored with (:func:`~funcprune.methods.resolve_allocation` of ``allocation``) is the stored model;
    the other is planned (:func:`~funcprune.methods.make_plan`) and built (:func:`~funcprune.methods.build_pruned`) here, in memory. Every model scores
    the same tokens (:func:`funcprune.evaluate.perplexity`, windows of ``seq_len`` tokens).

    Parameters
    ----------
    methods : sequence of str
        Methods of the run (seeded ones: the model of ``seed``).
    dense : nn.Module
        The dense model (left untouched).
    ratio : float
        The ratio of the stored models checked.
    ids : 1-D LongTensor
        The token ids scored (validation text in the book: design choices never see the test text).
    stored : callable
        ``key -> LoadedModel``: the model stage 4 stored under :func:`~funcprune.methods.method_key` (e.g.
        ``functools.partial(funcprune.run.pipeline.rebuild_pruned, run_dir, dense=dense, source=source)``).
    allocation : str, default="per-method"
        The run's allocation setting (which of the two is the stored one).
    seed : int, default=0
        Seed of the seeded methods, their stored model's and their plan's here.
    bos : int, optional
        Put first in every window (:func:`funcprune.evaluate.bos_token_id` of the tokenizer).
    networks, stats, calibration, basis, round_to
        As for :func:`~funcprune.methods.make_plan` and :func:`~funcprune.methods.build_pruned`.
    seq_len, batch_size : int
        Windows of the perplexity.
    own_only : sequence of str, default=OWN_ALLOCATION_ONLY
        Methods measured under their own allocation only.

    Returns
    -------
    pandas.DataFrame
        Index ``method`` (``"dense"`` first, then ``methods``), columns ``allocation`` ``"-"`` (the dense model),
        ``"global"`` and ``"uniform"``; NaN where a model was not built. ``attrs["tokens"]``: tokens scored.
    """
    import pandas as pd

    from ..evaluate import perplexity

    def ppl(model: nn.Module) -> float:
        return perplexity(model, None, ids, seq_len=seq_len, batch_size=batch_size, bos=bos, progress=False)["ppl"]

    values = {("dense", "-"): ppl(dense)}
    for name in methods:
        key = method_key(name, ratio, seed if get_method(name).seeded else None)
        for alloc in ("global", "uniform"):
            if alloc == resolve_allocation(name, allocation)[0]:
                pruned = stored(key).model
            elif name in own_only:
                continue
            else:
                plan = make_plan(name, dense, ratio, networks=networks, stats=stats, seed=seed, basis=basis,
                                 allocation=alloc, round_to=round_to)
                pruned = build_pruned(name, dense, plan, calibration=calibration, stats=stats)
            values[(name, alloc)] = ppl(pruned)
            del pruned
    table = pd.Series(values).unstack().reindex(index=["dense"] + list(methods), columns=["-", "global", "uniform"])
    table.index.name, table.columns.name = "method", "allocation"
    table.attrs["tokens"] = len(ids)
    return table


def _stored_value(table: Any, method: str, allocation: str | None) -> float:
    """The perplexity of ``method``'s stored model in :func:`allocation_check`'s table."""
    return float(table.loc[method, resolve_allocation(method, allocation)[0]])


def allocation_facts(table: Any, method: str, allocation: str | None = "per-method") -> dict[str, str]:
    """What chapter 4 says of :func:`allocation_check`'s table, by the name it glues each value under.

    Returns
    -------
    dict
        ``quick_dense``, ``quick_fn_global`` and ``quick_fn_uniform`` (``method``'s perplexity under each
        allocation; two decimals), ``quick_fn_better`` (the allocation with the lower one on this slice) and
        ``quick_fn_bias`` (``fn-bias``'s stored model, or ``"not run"``).
    """
    glob, uniform = table.loc[method, "global"], table.loc[method, "uniform"]
    bias = _stored_value(table, "fn-bias", allocation) if "fn-bias" in table.index else float("nan")
    return {"quick_dense": f"{table.loc['dense', '-']:.2f}", "quick_fn_global": f"{glob:.2f}",
            "quick_fn_uniform": f"{uniform:.2f}", "quick_fn_better": "global" if glob < uniform else "uniform",
            "quick_fn_bias": f"{bias:.2f}" if bias == bias else "not run"}


def quick_check_card(table: Any, method: str, *, allocation: str | None = "per-method", base_model: str,
                     license: str | None, n_texts: int, dataset: str, max_tokens: int) -> Any:
    """The model card of ``method``'s stored model, with the perplexities of :func:`allocation_check`.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`allocation_check`'s table.
    method : str
        The exported method (its stored allocation's perplexity is the card's).
    allocation : str, default="per-method"
        The run's allocation setting.
    base_model, license : str
        The dense model's name and licence.
    n_texts, dataset, max_tokens
        The calibration texts of stage 1: how many, of which corpus, truncated to how many tokens.

    Returns
    -------
    funcprune.hf_export.ModelCard
    """
    from ..hf_export import ModelCard

    return ModelCard(
        base_model=base_model, license=license,
        calibration=f"{n_texts} texts of the {dataset!r} corpus, at most {max_tokens} tokens each (stage 1)",
        dense_ppl=float(table.loc["dense", "-"]), pruned_ppl=_stored_value(table, method, allocation),
        ppl_protocol=f"The quick check of chapter 4: {table.attrs['tokens']} tokens of the validation part of the "
                     "held-out text, windows of 128 tokens. Chapter 5 of the funcprune book reports the test split.")


def rebuild_differences(methods: Sequence[str], dense: nn.Module, ratio: float, input_ids: Any, *,
                        stored: Callable[[str], Any], seed: int = 0, calibration: CalibrationData | None = None,
                        stats: ChannelStatistics | None = None,
                        revision: str | None = None) -> dict[str, dict[str, Any]]:
    """Each stored model against its plan applied in memory: the largest logit difference (zero when equal).

    Parameters
    ----------
    methods, dense, ratio
        As for :func:`allocation_check`.
    input_ids : LongTensor of shape (batch, seq_len)
        The tokens both models read (on the dense model's input device).
    stored : callable
        ``key -> LoadedModel`` with the stored ``model`` and ``plan``, as for :func:`allocation_check`.
    seed, calibration, stats, revision
        As for :func:`~funcprune.methods.build_pruned` (``revision``: the dense model's, which the stored plans record).

    Returns
    -------
    dict
        Key (:func:`~funcprune.methods.method_key`) -> ``{"check": "rebuilt vs pruned in memory", "max |logit difference|": float}``.
    """
    from ..evaluate import max_logit_difference

    rows = {}
    for name in methods:
        key = method_key(name, ratio, seed if get_method(name).seeded else None)
        record = stored(key)
        in_memory = build_pruned(name, dense, record.plan, calibration=calibration, stats=stats, revision=revision)
        rows[key] = {"check": "rebuilt vs pruned in memory",
                     "max |logit difference|": max_logit_difference(in_memory, record.model, input_ids)}
        del in_memory, record
    return rows
