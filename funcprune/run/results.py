"""Stage 5: evaluate the dense model and every pruned model under one protocol.

:func:`evaluate_run` loads the dense model once and rebuilds each pruned model listed in
the run's index (``pruned/index.json``, written by :func:`funcprune.run.pipeline.prune_all`)
from its plan and biases (:func:`funcprune.run.pipeline.rebuild_pruned`, seconds per model),
and measures all of them the same way:

* **perplexity** on held-out text (:mod:`funcprune.heldout`: the ``"evaluation"`` split of
  :mod:`funcprune.data`, disjoint from calibration, checked against the stage-1
  manifest), token level, at each requested window length (clamped to the model's
  maximum), on the ``test`` part of the held-out articles. From the grid of
  non-overlapping windows of the part's token stream, ``eval_max_tokens // seq_len``
  windows are taken evenly spread over the whole stream (all of them when
  ``eval_max_tokens`` is ``None``: the literature's protocol). Every model sees exactly
  the same windows; their positions, the texts they cover, a checksum of their tokens
  and every window's NLL are recorded (the units of :mod:`funcprune.compare`). The
  standard error of the mean NLL is the spread of the per-window NLLs over
  ``sqrt(n_windows)``.
* **zero-shot accuracy** with lm-evaluation-harness (:func:`funcprune.tasks.run_zero_shot`):
  ``acc``, ``acc_norm`` and their standard errors per task, the means over tasks, each
  task's chance level and every item's correctness.
* **tiers**: ``full_ratios`` scores every model at the shortest window length and only
  the dense model and the models at ``full_ratios`` at every length and on the zero-shot
  tasks.
* **efficiency**: parameters (total, MLP, attention, embedding), forward FLOPs per token,
  and their ratios to the dense model.

Each model's result is cached in ``results/parts/<key>.json`` together with a
fingerprint of the protocol and of the model (plan and bias digests) and a SHA-256 of
its content, so an interrupted evaluation continues where it stopped, a changed setting
re-evaluates and a damaged part is re-evaluated with a warning naming it. The combined
results are written atomically to ``results/results.csv`` (one tidy *long* table, see
:mod:`funcprune.tables`), ``results/results.json`` (every setting, version, data id and
checksum, the per-model records and a perplexity sanity check, :func:`perplexity_sanity`)
and ``results/comparisons.csv`` (the paired headline comparisons,
:func:`funcprune.compare.headline_comparisons`); :class:`funcprune.run.rundir.RunDir` names
every path.

:func:`load_results` reads the table back, checked against ``results.json``; its rows are summarised
by :mod:`funcprune.tables` (validation, seeds, significance, summaries) and drawn by :mod:`funcprune.figures`;
:mod:`funcprune.reference` holds published numbers
of *other* models and protocols, for orientation only.

Why one module: the writer of ``results.csv`` and ``results.json`` and the reader that checks one against the
other share one record format; split, a change to the record would have two places to miss.

Used in the chapter :doc:`/executed/05_evaluate_benchmarks`.
"""

from __future__ import annotations

import gc
import hashlib
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .._io import ArtefactError, atomic_write_json, atomic_write_text, json_round_trip, json_sha256, read_json
from .artefacts import load_part, save_part
from .calibration import calibration_record
from ..compare import article_clusters, headline_comparisons, method_groups, recorded_window_nll
from ..decompose import windows_match
from ..intervals import add_holm
from ..evaluate import count_parameters, flops_per_token, max_positions, perplexity
from ..heldout import EvaluationStream, check_disjoint, evaluation_stream, ids_sha256, select_windows
from ..model_assets import DEFAULT_MODEL, MODELS, ensure_model
from ..models import LoadedModel, load_model, prepare_tokenizer
from .pipeline import rebuild_pruned
from ..plan import PruningPlan
from ..provenance import environment_info
from .rundir import RunDir
from ..tables import DENSE_KEY, METRICS, TABLE_COLUMNS, table_from_parts, typed_table, validate_results_table
from ..tasks import ALL_TASKS, TASKS, run_zero_shot

__all__ = [
    "PART_FORMAT",
    "PPL_SANITY_FACTOR",
    "RESULTS_FORMAT",
    "EvaluationProtocol",
    "evaluate_run",
    "load_results",
    "perplexity_sanity",
    "recorded_nll",
]

RESULTS_FORMAT = "funcprune-results/1"
PART_FORMAT = "funcprune-results-part/1"


# ----------------------------------------------------------------------------------
# Evaluating one model
# ----------------------------------------------------------------------------------
def _load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    path = str(ensure_model(model)) if model in MODELS else model
    return prepare_tokenizer(AutoTokenizer.from_pretrained(path))


def _part_digest(part: Mapping[str, Any]) -> str:
    """SHA-256 of a part's content (every key but ``sha256``), as JSON with sorted keys."""
    return json_sha256({k: v for k, v in part.items() if k != "sha256"}, default=str)


def _load_dense(model_name: str, revision: str | None, base: Mapping[str, Any], dtype: Any,
                device: str) -> LoadedModel:
    """The dense model's record, checked against the revision the pruned models were planned on."""
    loaded = load_model(model_name, dtype=dtype, device_map=None if device == "cpu" else device)
    found = loaded.source.get("revision")
    if revision and found != revision:
        raise ValueError(f"dense model {model_name!r} has revision {found!r}, but the pruned models "
                         f"were made from revision {revision!r} ({base.get('name')!r})")
    return loaded


def _fingerprint(obj: Any) -> str:
    return json_sha256(obj, default=str)[:16]


def _token_budgets(seq_lens: Sequence[int], eval_max_tokens: Any) -> list[int | None]:
    """One held-out token budget per window length (an int or ``None`` applies to all)."""
    if eval_max_tokens is None or isinstance(eval_max_tokens, (int, np.integer)):
        budgets = [eval_max_tokens] * len(seq_lens)
    else:
        budgets = list(eval_max_tokens)
        if len(budgets) != len(seq_lens):
            raise ValueError(f"eval_max_tokens lists {len(budgets)} budgets for {len(seq_lens)} window lengths "
                             f"{list(seq_lens)}: give one int (or None) or one per window length")
    for b in budgets:
        if b is not None and (isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 2):
            raise ValueError(f"eval_max_tokens must be ints >= 2 or None, got {eval_max_tokens!r}")
    return [None if b is None else int(b) for b in budgets]


def _perplexities(model: torch.nn.Module, stream: EvaluationStream, seq_lens: Sequence[int],
                  max_tokens: Sequence[int | None], batch_tokens: int, progress: bool) -> dict[str, dict[str, Any]]:
    """Perplexity of ``model`` at each window length on the selected windows of ``stream``."""
    max_pos = max_positions(model)
    out: dict[str, dict[str, Any]] = {}
    for requested, budget in zip(seq_lens, max_tokens):
        length = int(min(requested, max_pos)) if max_pos else int(requested)
        span = length - (stream.bos_token_id is not None)
        starts = select_windows(stream.n_tokens, length, budget, span=span)
        ids = np.concatenate([stream.ids[s:s + span] for s in starts])
        res = perplexity(model, None, torch.from_numpy(ids), seq_len=length, bos=stream.bos_token_id,
                         batch_size=max(1, batch_tokens // length), progress=progress)
        window_nll = np.asarray(res["window_nll"], dtype=np.float64)
        stderr = float(window_nll.std(ddof=1) / math.sqrt(len(window_nll))) if len(window_nll) > 1 else None
        out[str(int(requested))] = {
            "ppl": res["ppl"], "nll": res["nll"], "nll_stderr": stderr,
            "ppl_stderr": res["ppl"] * stderr if stderr is not None else None,
            "seq_len_requested": int(requested), "seq_len": length, "seq_len_clamped": length != requested,
            "n_windows": res["n_windows"], "n_tokens_scored": res["n_tokens"], "n_tokens_used": int(ids.size),
            "window_starts": starts, "window_nll": res["window_nll"], "tokens_sha256": ids_sha256(ids),
            "bos_token_id": stream.bos_token_id, "text_ids": stream.text_ids(starts, span),
            "window_articles": stream.window_articles(starts, span),
        }
    return out


def _efficiency(model: torch.nn.Module) -> dict[str, int]:
    counts = count_parameters(model)
    return {"params_total": counts["total"], "params_mlp": counts["mlp"],
            "params_attention": counts["attention"], "params_embedding": counts["embedding"],
            "flops_per_token": flops_per_token(model)}


def _registered(method: str) -> bool:
    """A registered method (``fn``, ``flap`` ...), not a grid point of the decomposition (``fn@flap+static``)."""
    from ..methods import METHODS

    return method in METHODS


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _evaluate_model(lm: LoadedModel, tokenizer: Any, stream: EvaluationStream, settings: dict[str, Any],
                    progress: bool) -> dict[str, Any]:
    """Perplexities, zero-shot accuracies, efficiency and timings of one model (``lm.model``)."""
    model = lm.model
    timings: dict[str, float] = {}
    start = time.perf_counter()
    ppl = _perplexities(model, stream, settings["ppl_seq_lens"], settings["eval_budgets"],
                        settings["ppl_batch_tokens"], progress)
    timings["perplexity"] = round(time.perf_counter() - start, 2)
    zero_shot = None
    if settings["zero_shot_tasks"]:
        start = time.perf_counter()
        zero_shot = run_zero_shot(model, tokenizer, settings["zero_shot_tasks"], limit=settings["zero_shot_limit"],
                                  batch_size=settings["batch_size"], offline=settings["offline"],
                                  seed=settings["zero_shot_seed"], progress=progress)
        timings["zero_shot"] = round(time.perf_counter() - start, 2)
    return {"perplexity": ppl, "zero_shot": zero_shot, "efficiency": _efficiency(model), "seconds": timings}




# ----------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvaluationProtocol:
    """What every model of a run is measured on, and how: the settings two evaluations must share to compare.

    Parameters
    ----------
    eval_dataset : str, default="wiki"
        Corpus whose held-out (``"evaluation"``) split gives the perplexity text.
    eval_part : {"test", "validation", "all"}, default="test"
        Which held-out articles (:func:`funcprune.heldout.evaluation_parts`, disjoint by article):
        reported results use ``"test"``; design choices are made on ``"validation"``.
    ppl_seq_lens : sequence of int, default=(128, 2048)
        Window lengths, distinct, each at least 2; each is clamped to the model's maximum (recorded).
    eval_max_tokens : int, None or sequence, default=4096
        Held-out tokens per perplexity setting (``eval_max_tokens // seq_len`` windows,
        spread over the stream); ``None``: every window of the stream. A sequence gives
        one budget per window length (e.g. ``[8192, 16384]``: 64 windows of 128 and 8
        of 2048 tokens).
    zero_shot_tasks : sequence of str or None, default=ALL_TASKS
        Tasks of :data:`funcprune.tasks.TASKS`; empty or ``None`` skips zero-shot.
    zero_shot_limit : int, optional
        First items per task (``None``: all).
    zero_shot_seed : int, default=1234
        The harness's seeds.
    full_ratios : sequence of float, optional
        A tiered protocol: the dense model and the pruned models at these ratios are
        scored at every window length and on the zero-shot tasks; the others only at the
        shortest window length (a screen). ``None``: every model gets everything.

    Raises
    ------
    ValueError
        A window length or budget out of range, or an unknown task (the accepted ones are listed).
    """

    eval_dataset: str = "wiki"
    eval_part: str = "test"
    ppl_seq_lens: Sequence[int] = (128, 2048)
    eval_max_tokens: Any = 4096
    zero_shot_tasks: Sequence[str] | None = ALL_TASKS
    zero_shot_limit: int | None = None
    zero_shot_seed: int = 1234
    full_ratios: Sequence[float] | None = None

    def __post_init__(self) -> None:
        seq_lens = [int(s) for s in self.ppl_seq_lens]
        if not seq_lens or any(s < 2 for s in seq_lens) or len(set(seq_lens)) != len(seq_lens):
            raise ValueError(f"ppl_seq_lens must be distinct ints >= 2, got {list(self.ppl_seq_lens)}")
        tasks = list(self.zero_shot_tasks or [])
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown zero-shot task(s) {unknown}; accepted: {list(ALL_TASKS)}")
        object.__setattr__(self, "ppl_seq_lens", seq_lens)
        object.__setattr__(self, "zero_shot_tasks", tasks)
        if self.full_ratios is not None:
            object.__setattr__(self, "full_ratios", [float(r) for r in self.full_ratios])
        _token_budgets(seq_lens, self.eval_max_tokens)  # checked now, not after the model is loaded

    @property
    def budgets(self) -> list[int | None]:
        """One held-out token budget per window length."""
        return _token_budgets(self.ppl_seq_lens, self.eval_max_tokens)


def _protocol(stream: EvaluationStream, p: EvaluationProtocol, offline: bool, dtype_name: str) -> dict[str, Any]:
    """The protocol's record in ``results.json``: its fingerprint keys every cached part."""
    seq_lens, budgets, tasks, full_ratios = p.ppl_seq_lens, p.budgets, p.zero_shot_tasks, p.full_ratios
    harness_version = None
    if tasks:
        from importlib.metadata import version

        harness_version = version("lm_eval")
    return {
        "eval_dataset": {k: stream.dataset[k] for k in ("name", "package", "package_version", "file", "sha256",
                                                         "split", "part", "part_rule", "n_texts", "n_words")},
        "eval_text_ids_sha256": hashlib.sha256("\n".join(stream.dataset["ids"]).encode()).hexdigest(),
        "eval_stream": {"n_tokens": stream.n_tokens, "sha256": stream.sha256, "joiner": "\\n\\n",
                        "add_special_tokens": False},
        "bos": {"token_id": stream.bos_token_id,
                "rule": "every window starts with the BOS token when the tokenizer puts one in front of a text; "
                        "a window then holds seq_len - 1 tokens of text, all scored (else seq_len tokens, the "
                        "last seq_len - 1 scored)"},
        "ppl_seq_lens": seq_lens, "eval_max_tokens": p.eval_max_tokens, "eval_budgets": budgets,
        "tiers": {"full_ratios": full_ratios,
                  "rule": "the dense model and registered methods' models at full_ratios (all when None): every "
                          "window length and zero-shot; the others (grid points of the decomposition included): the "
                          "shortest window length only"},
        "window_selection": "evenly spread subset of the non-overlapping grid (select_windows)",
        "zero_shot": {"tasks": tasks, "limit": p.zero_shot_limit, "harness": "lm-eval",
                      "harness_version": harness_version, "offline": offline, "seed": p.zero_shot_seed,
                      "num_fewshot": 0},
        "dtype": dtype_name,
    }


def _evaluate_part(start: float, run: RunDir, job: Mapping[str, Any], dense: LoadedModel, tokenizer: Any,
                   stream: EvaluationStream, settings: dict[str, Any], stamp: Mapping[str, Any]) -> dict[str, Any]:
    """Score one model of the run (the dense one, or a pruned one rebuilt from its plan) and write its part.

    ``start`` is when loading began (the dense model may have been loaded for this part); ``stamp`` holds the
    ``protocol_id``, ``identity`` and ``tier`` the part is cached under.
    """
    key = job["key"]
    lm = dense if key == DENSE_KEY else rebuild_pruned(run, key, dense.model, source=dense.source)
    loaded = round(time.perf_counter() - start, 2)
    measured = _evaluate_model(lm, tokenizer, stream, settings, progress=False)
    measured["seconds"]["load"] = loaded
    measured["seconds"]["total"] = round(time.perf_counter() - start, 2)
    part = {"format": PART_FORMAT, "key": key, **stamp,
            "entry": {k: job.get(k) for k in ("method", "seed", "ratio_requested", "ratio_reached",
                                              "ratio_basis", "allocation", "plan_sha256")},
            "model": dict(lm.source), **measured}
    if lm is not dense:
        del lm
        _free_memory()
    part = json_round_trip(part, default=str)
    part["sha256"] = _part_digest(part)  # results.json and the bundles carry the part with its own digest
    save_part(run.part_path(key), part, stamp)
    return part


def evaluate_run(
    run_dir: str | os.PathLike[str],
    protocol: EvaluationProtocol | None = None,
    *,
    model: str | None = None,
    batch_size: int = 8,
    ppl_batch_tokens: int = 2048,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    offline: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """Evaluate the dense model and every pruned checkpoint of a run under one protocol.

    Parameters
    ----------
    run_dir : str or path-like
        Run directory; pruned models are read from ``run_dir/pruned/index.json``
        (:func:`funcprune.run.pipeline.prune_all`), results written to ``run_dir/results``.
    model : str, optional
        The dense model (registry alias, local directory or hub id). Default: the
        index's ``base_model`` name, which only works for registry aliases and hub ids
        (a local directory is recorded by its base name): pass local paths. Its
        revision must match the one the pruned models were made from.
    protocol : EvaluationProtocol, optional
        What every model is measured on and how (default :class:`EvaluationProtocol`'s defaults); with
        ``dtype`` and ``offline`` it makes the protocol fingerprint that keys every cached part.
    batch_size : int, default=8
        Harness batch size (on a CPU, 4 wastes the least padding).
    ppl_batch_tokens : int, default=2048
        Tokens per perplexity forward pass (``ppl_batch_tokens // seq_len`` windows, at least 1).
    dtype : str or torch.dtype, default="float32"
        Weight dtype of every model.
    device : str, default="cpu"
        Where every model runs (``"cuda"`` on a GPU).
    offline : bool, default=True
        Zero-shot data from the offline copies (see :mod:`funcprune.tasks`).
    progress : bool, default=True
        Progress bars.

    Returns
    -------
    pandas.DataFrame
        The long results table (columns :data:`funcprune.tables.TABLE_COLUMNS`, metrics
        :data:`funcprune.tables.METRICS`), dense model first, validated by
        :func:`funcprune.tables.validate_results_table`.

    Raises
    ------
    ValueError
        A held-out text was used for calibration, a checkpoint was pruned from another
        model, the index is malformed, or a setting is out of range.
    """
    run = RunDir(run_dir)
    p = EvaluationProtocol() if protocol is None else protocol
    seq_lens, budgets, tasks, full_ratios = p.ppl_seq_lens, p.budgets, p.zero_shot_tasks, p.full_ratios
    dtype_name = str(dtype).replace("torch.", "")
    index = run.index()
    base = index.get("base_model") or {}
    model_name = model or base.get("name") or DEFAULT_MODEL

    tokenizer = _load_tokenizer(model_name)
    stream = evaluation_stream(tokenizer, p.eval_dataset, p.eval_part)
    calibration = calibration_record(run)
    disjoint = check_disjoint(stream, calibration)

    record = _protocol(stream, p, offline, dtype_name)
    protocol_id = _fingerprint(record)
    settings = {"ppl_seq_lens": seq_lens, "eval_max_tokens": p.eval_max_tokens, "eval_budgets": budgets,
                "zero_shot_tasks": tasks, "zero_shot_limit": p.zero_shot_limit, "batch_size": batch_size,
                "ppl_batch_tokens": ppl_batch_tokens, "offline": offline, "zero_shot_seed": p.zero_shot_seed,
                "full_ratios": full_ratios}
    shortest = seq_lens.index(min(seq_lens))
    screen = {**settings, "ppl_seq_lens": [seq_lens[shortest]], "eval_budgets": [budgets[shortest]],
              "zero_shot_tasks": []}

    jobs: list[dict[str, Any]] = [{"key": DENSE_KEY, "method": DENSE_KEY, "seed": None, "ratio_requested": 0.0,
                                   "ratio_reached": 0.0, "ratio_basis": None, "path": None}]
    jobs += [dict(e) for e in index.get("entries", [])]
    parts: dict[str, dict[str, Any]] = {}
    dense_revision = base.get("revision")
    dense: LoadedModel | None = None
    bar = tqdm(jobs, desc="evaluating", unit="model", disable=not progress)
    for job in bar:
        key = job["key"]
        bar.set_postfix_str(key)
        identity = ({"model": model_name, "revision": dense_revision} if key == DENSE_KEY else
                    {"plan_sha256": job.get("plan_sha256"),
                     "biases_sha256": (job.get("biases") or {}).get("sha256")})
        tier = "full" if (key == DENSE_KEY or (_registered(job["method"]) and (full_ratios is None or any(
            math.isclose(float(job["ratio_requested"]), r) for r in full_ratios)))) else "screen"
        stamp = {"protocol_id": protocol_id, "identity": identity, "tier": tier}  # what the part is made from
        cached = load_part(run.part_path(key), stamp)
        if cached is not None:
            parts[key] = cached
            continue
        start = time.perf_counter()
        if dense is None:
            dense = _load_dense(model_name, dense_revision, base, dtype, device)
        part = _evaluate_part(start, run, job, dense, tokenizer, stream, settings if tier == "full" else screen,
                              stamp)
        parts[key] = part
    bar.close()
    del dense
    _free_memory()

    table = validate_results_table(table_from_parts([parts[j["key"]] for j in jobs]))
    # every source of variation a reader assumes: windows of one article resampled together, random's seeds
    # resampled inside the interval, zero-shot tested on the per-task means the tables show, Holm per metric
    comparisons = add_holm(headline_comparisons(parts, cluster=article_clusters(parts), seeds="resample",
                                                zero_shot=("mean_acc", "mean_preferred")), by=["metric"])
    sanity = perplexity_sanity(parts[DENSE_KEY])
    if sanity["flagged"]:
        warnings.warn(sanity["message"], stacklevel=2)
    atomic_write_text(run.results_csv, table.to_csv(index=False))
    atomic_write_text(run.comparisons_csv, comparisons.to_csv(index=False))
    atomic_write_json(run.results_json, {
        "format": RESULTS_FORMAT, "protocol": record, "protocol_id": protocol_id,
        "eval_text_ids": stream.dataset["ids"], "calibration": calibration, "disjointness": disjoint,
        "dense_model": {"name": model_name, **parts[DENSE_KEY]["model"]}, "base_model": base,
        "settings": {k: v for k, v in settings.items()}, "columns": list(TABLE_COLUMNS), "metrics": METRICS,
        "models": parts, "sanity": sanity, "environment": environment_info(),
    })
    return table


def recorded_nll(run_dir: str | os.PathLike[str], method: str, tokenizer: Any, windows: Any,
                 setting: str) -> dict[float, tuple[np.ndarray, dict[int, list[int]]]]:
    """A method's per-window NLL that stage 5 recorded on ``windows``, and the channels its plan kept, by ratio.

    What :func:`funcprune.ablation.compare_with_flap` takes as ``scored`` (``method="flap"``);
    empty where the method was scored on other windows, at another window length, or not at
    all. A seeded method gives its first seed's model.
    """
    run = RunDir(run_dir)
    out = {}
    for (name, ratio), group in method_groups(run.results_record()["models"]).items():
        part = group[0]
        if name == method and str(setting) in part["perplexity"] and windows_match(tokenizer, windows, part, setting):
            out[ratio] = (recorded_window_nll(part, setting)[0], PruningPlan.load(run.plan_path(part["key"])).kept)
    return out


#: A dense PPL at the shortest window above this multiple of the PPL at the longest is flagged.
PPL_SANITY_FACTOR = 4.0


def perplexity_sanity(dense_part: Mapping[str, Any], factor: float = PPL_SANITY_FACTOR) -> dict[str, Any]:
    """Flag a dense model whose perplexity at the shortest window is ``factor`` times that at the longest.

    Longer windows give more context, so perplexity falls with the window, but by a
    factor well under 4 for a working protocol (SmolLM2-135M: about 1.5 from 128 to
    2048 tokens). A larger factor means the short windows lack something the model
    needs, typically the BOS token of a family trained with it.

    Parameters
    ----------
    dense_part : dict
        The dense model's record (``results.json["models"]["dense"]``).
    factor : float, default=4.0

    Returns
    -------
    dict
        ``flagged`` (bool), ``ratio`` (short over long; ``None`` with one window length),
        ``short``, ``long`` (window lengths), ``factor`` and ``message``.
    """
    ppl = {int(p["seq_len"]): float(p["ppl"]) for p in dense_part["perplexity"].values()}
    if len(ppl) < 2:
        return {"flagged": False, "ratio": None, "short": None, "long": None, "factor": factor,
                "message": "one window length: nothing to compare"}
    short, long = min(ppl), max(ppl)
    ratio = ppl[short] / ppl[long]
    flagged = ratio > factor
    message = (f"dense perplexity at {short} tokens ({ppl[short]:.4g}) is {ratio:.2f}x that at {long} tokens "
               f"({ppl[long]:.4g})")
    if flagged:
        message += (f", more than {factor:g}x: short windows lack something the model needs (a BOS token its "
                    "family expects?); check the protocol record before reading the perplexities")
    return {"flagged": bool(flagged), "ratio": ratio, "short": short, "long": long, "factor": factor,
            "message": message}


# ----------------------------------------------------------------------------------
# Reading the results table back
# ----------------------------------------------------------------------------------
_RESULTS_FIX = "delete it and re-run stage 5 (evaluate_run writes it again from its cached parts in seconds)"


def load_results(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Read ``run_dir/results/results.csv`` (written by :func:`funcprune.run.results.evaluate_run`), checked.

    The table is compared with the record it was derived from, ``results/results.json``
    (every model's measurements): a table cut short (at a model boundary or inside a
    model) or edited is named as such before :func:`validate_results_table` checks it.
    Costs one read of ``results.json`` (a few MB on the default run).

    Raises
    ------
    FileNotFoundError
        Stage 5 has not run for this run directory.
    funcprune._io.ArtefactError
        The CSV cannot be parsed, or holds other rows or values than ``results.json``
        records, naming the file and the fix.
    ValueError
        The table fails :func:`validate_results_table`.
    """
    run = RunDir(run_dir)
    path = run.results_csv
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run evaluate_run (stage 5) for this run_dir first")
    try:
        df = typed_table(pd.read_csv(path, dtype={"setting": str, "key": str, "method": str, "metric": str}))
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as err:  # pandas' parser errors are ValueErrors
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise ArtefactError(path, f"cannot be read as the results table ({type(err).__name__}: {first}): "
                                  "cut short or overwritten", _RESULTS_FIX) from None
    if run.results_json.exists():
        _check_against_record(df, path, read_json(run.results_json, fix=_RESULTS_FIX).get("models") or {})
    return validate_results_table(df)


def _check_against_record(df: pd.DataFrame, path: Path, models: Mapping[str, Any]) -> None:
    """Refuse a table whose rows or values differ from the one its record (``results.json["models"]``) gives."""
    if not models or DENSE_KEY not in models:
        return
    expected = table_from_parts(list(models.values()))
    index = ["key", "metric", "setting"]
    have, want = df.set_index(index)["value"], expected.set_index(index)["value"]
    if have.index.has_duplicates:  # validate_results_table names the duplicated rows
        return
    lacking = want.index.difference(have.index)
    if len(lacking):
        keys = list(dict.fromkeys(expected["key"]))
        missing = [k for k in keys if k not in set(df["key"])]
        cut = [k for k in keys if k not in missing and k in set(lacking.get_level_values("key"))]
        where = "; ".join(part for part in (f"models {missing} are missing" if missing else "",
                                            f"{cut} lack rows (cut inside a model)" if cut else "") if part)
        raise ArtefactError(path, f"holds {len(df)} rows of {df['key'].nunique()} models where results.json, which "
                                  f"it was derived from, records {len(expected)} rows of {len(keys)}: {where}; the "
                                  "file was cut short (an interrupted copy or a full disk)", _RESULTS_FIX)
    extra = have.index.difference(want.index)
    common = have.index.intersection(want.index)
    a, b = have.loc[common].to_numpy(float), want.loc[common].to_numpy(float)
    changed = [common[i] for i in np.flatnonzero(~np.isclose(a, b, rtol=1e-12, atol=0, equal_nan=True))]
    if len(extra) or changed:
        shown = [list(x) for x in [*extra[:3], *changed[:3]]]
        raise ArtefactError(path, f"differs from results.json, which it was derived from ({len(extra)} rows it does "
                                  f"not record, {len(changed)} values changed, e.g. {shown}): the file was edited or "
                                  "belongs to another run", _RESULTS_FIX)
