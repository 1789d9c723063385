"""Stage 5: evaluate the dense model and every pruned model under one protocol, and compare them.

:func:`evaluate_run` loads the dense model once and rebuilds each pruned model listed in
``run_dir/pruned/index.json`` (written by :func:`funcprune.pipeline.prune_all`) from its
plan and biases (:func:`funcprune.pipeline.rebuild_pruned`, seconds per model), and
measures all of them the same way:

* **perplexity** on held-out text (the ``"evaluation"`` split of
  :mod:`funcprune.data`, disjoint from calibration; checked against the stage-1
  manifest), token level, at each requested window length (clamped to the model's
  maximum). The held-out articles are split by article into a ``validation`` part
  (design choices) and a ``test`` part (reported numbers; :func:`evaluation_parts`).
  The part's texts are joined and tokenized once; from the grid of non-overlapping
  windows of that stream, ``eval_max_tokens // seq_len`` windows are taken evenly
  spread over the whole stream (all of them when ``eval_max_tokens`` is ``None``: the
  literature's protocol). A window starts with the BOS token when the tokenizer puts
  one in front of a text. Every model sees exactly the same windows; their positions,
  the texts they cover, a checksum of their tokens and every window's NLL are
  recorded (the units of :mod:`funcprune.compare`). The standard error of the mean
  NLL is the spread of the per-window NLLs over ``sqrt(n_windows)``.
* **zero-shot accuracy** with lm-evaluation-harness (:func:`funcprune.tasks.run_zero_shot`):
  ``acc``, ``acc_norm`` and their standard errors per task, the means over tasks, each
  task's chance level and every item's correctness.
* **tiers**: ``full_ratios`` scores every model at the shortest window length and only
  the dense model and the models at ``full_ratios`` at every length and on the zero-shot
  tasks.
* **efficiency**: parameters (total, MLP, attention, embedding), forward FLOPs per token,
  and their ratios to the dense model.

Each model's result is cached in ``run_dir/results/parts/<key>.json`` together with a
fingerprint of the protocol and of the model (plan and bias digests) and a SHA-256 of
its content, so an interrupted evaluation continues where it stopped, a changed setting
re-evaluates and a damaged part is re-evaluated with a warning naming it. The combined
results are written atomically to ``run_dir/results/results.csv`` (one tidy *long*
table: one row per model, metric and setting), ``run_dir/results/results.json`` (every
setting, version, data id and checksum, the per-model records and a perplexity sanity
check, :func:`perplexity_sanity`) and ``run_dir/results/comparisons.csv`` (the paired
headline comparisons, :func:`funcprune.compare.headline_comparisons`).

The rest of the module reads that table: :func:`validate_results_table`,
:func:`aggregate_seeds` (mean and spread over random seeds), :func:`significant_differences`
(unpaired: which differences exceed their combined standard error; the paired tests of
:mod:`funcprune.compare` decide smaller ones), :func:`summary_table`,
:func:`efficiency_table`, the plots, and :func:`reference_numbers` (published numbers of
*other* models and protocols, for orientation only).

Used in the chapter :doc:`/executed/05_evaluate_benchmarks`.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
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

from ._io import ArtefactError, atomic_write_json, atomic_write_text, read_json
from .data import HUB_DATASETS, dataset_info, load_texts
from .evaluate import _max_positions, bos_token_id, count_parameters, flops_per_token, perplexity
from .provenance import environment_info
from .tasks import ALL_TASKS, TASKS, run_zero_shot

__all__ = [
    "DENSE_KEY",
    "METRICS",
    "RESULTS_FORMAT",
    "TABLE_COLUMNS",
    "EvaluationStream",
    "aggregate_seeds",
    "calibration_record",
    "efficiency_table",
    "evaluate_run",
    "evaluation_parts",
    "evaluation_stream",
    "heldout_windows",
    "perplexity_sanity",
    "load_results",
    "plot_accuracy",
    "plot_metric_vs_ratio",
    "plot_perplexity",
    "plot_task_bars",
    "reference_numbers",
    "select_windows",
    "significant_differences",
    "summary_table",
    "validate_results_table",
]

RESULTS_FORMAT = "funcprune-results/1"
PART_FORMAT = "funcprune-results-part/1"
#: Key (and method name) of the dense model's rows.
DENSE_KEY = "dense"
RESULTS_DIR = "results"
PARTS_DIR = "parts"

#: Columns of the results table, in order.
TABLE_COLUMNS: tuple[str, ...] = ("key", "method", "seed", "ratio_requested", "ratio_reached", "ratio_basis",
                                  "metric", "setting", "value", "stderr", "n")

#: Every metric of the table: what it is and what its ``setting`` and ``n`` mean.
METRICS: dict[str, str] = {
    "ppl": "token-level perplexity exp(nll); setting = requested window length; stderr by the delta "
           "method (ppl x stderr of nll); n = windows",
    "nll": "mean negative log-likelihood per scored token (nats); setting = requested window length; "
           "stderr = std of per-window NLLs / sqrt(windows); n = windows",
    "acc": "zero-shot accuracy (lm-eval); setting = task; stderr from the harness; n = items",
    "acc_norm": "length-normalised zero-shot accuracy (lm-eval); setting = task; stderr from the harness; "
                "n = items",
    "mean_acc": "mean of acc over the tasks; stderr = sqrt(sum of squared task stderrs) / tasks; n = items",
    "mean_preferred": "mean over tasks of each task's preferred metric (acc_norm for HellaSwag, ARC-c, "
                      "OBQA; acc otherwise), as the pruning literature reports; stderr as mean_acc",
    "params_total": "parameters (tied embeddings once)",
    "params_mlp": "MLP parameters (gate, up, down)",
    "params_attention": "attention parameters",
    "params_embedding": "embedding parameters",
    "flops_per_token": "forward FLOPs per token, 2 x matmul parameters (LM head included)",
    "params_total_rel": "params_total / dense params_total",
    "params_mlp_rel": "params_mlp / dense params_mlp",
    "flops_rel": "flops_per_token / dense flops_per_token",
}
_PROB_METRICS = ("acc", "acc_norm", "mean_acc", "mean_preferred")
_EFFICIENCY = ("params_total", "params_mlp", "params_attention", "params_embedding", "flops_per_token")
_RELATIVE = {"params_total_rel": "params_total", "params_mlp_rel": "params_mlp", "flops_rel": "flops_per_token"}
_LOWER_IS_BETTER = ("ppl", "nll")
_MEASURED = ("ppl", "nll", "acc", "acc_norm", "mean_acc", "mean_preferred")


# ----------------------------------------------------------------------------------
# Held-out text
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvaluationStream:
    """The held-out texts of a corpus, joined and tokenized once.

    Attributes
    ----------
    dataset : dict
        :func:`funcprune.data.dataset_info` of the evaluation split (name, file
        checksum, every text id).
    ids : ndarray of shape (n_tokens,), int64
        Token ids of the texts joined with ``"\\n\\n"``, without special tokens
        (a BOS token goes in front of every window instead, see ``bos_token_id``).
    text_index : ndarray of shape (n_tokens,), int64
        For each token, the index (into ``dataset["ids"]``) of the text it belongs
        to; ``-1`` when the tokenizer gives no character offsets.
    sha256 : str
        Checksum of ``ids`` (little-endian int64 bytes).
    bos_token_id : int or None
        The token put in front of every perplexity window: the tokenizer's BOS when
        it adds one to every text (:func:`funcprune.evaluate.bos_token_id`), else ``None``.
    part : str
        ``"test"``, ``"validation"`` or ``"all"`` (see :func:`evaluation_parts`).
    """

    dataset: dict[str, Any]
    ids: np.ndarray
    text_index: np.ndarray
    sha256: str
    bos_token_id: int | None = None
    part: str = "all"

    @property
    def n_tokens(self) -> int:
        """Tokens in the stream."""
        return int(self.ids.size)

    def text_ids(self, starts: Sequence[int], length: int) -> list[str]:
        """Ids of the texts that windows ``[s, s + length)`` touch, in stream order."""
        if not len(starts):
            return []
        idx = np.concatenate([self.text_index[s:s + length] for s in starts])
        if (idx < 0).any():
            return []
        ids = self.dataset["ids"]
        return [ids[i] for i in dict.fromkeys(idx.tolist())]


def _ids_sha256(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, dtype="<i8").tobytes()).hexdigest()


#: Parts of the held-out split: ``validation`` for design choices, ``test`` for the reported numbers.
EVAL_PARTS: tuple[str, ...] = ("test", "validation", "all")
#: Salt of the hash that assigns each held-out article to a part.
_PART_SALT = "funcprune-held-out-part/1:"


def evaluation_parts(texts: Sequence[Any]) -> dict[str, list[Any]]:
    """Split held-out articles into a validation and a test part, disjoint by article.

    Each article is ranked by the SHA-256 of a salted copy of its id; the first half of
    that order (rounded down) is ``validation``, the rest ``test``. The rule depends only
    on the ids, so the parts are the same on every machine and for every model; each
    part keeps the file order.

    Parameters
    ----------
    texts : sequence of Text
        The held-out articles (:func:`funcprune.data.load_texts` with ``"evaluation"``).

    Returns
    -------
    dict
        ``{"validation": [...], "test": [...], "all": [...]}``.

    >>> from funcprune.data import Text
    >>> parts = evaluation_parts([Text(id=str(i), title="", text="x") for i in range(10)])
    >>> len(parts["validation"]), len(parts["test"])
    (5, 5)
    """
    order = sorted(range(len(texts)), key=lambda i: hashlib.sha256((_PART_SALT + str(texts[i].id)).encode())
                   .hexdigest())
    validation = set(order[:len(texts) // 2])
    return {"validation": [t for i, t in enumerate(texts) if i in validation],
            "test": [t for i, t in enumerate(texts) if i not in validation], "all": list(texts)}


def evaluation_stream(tokenizer: Any, dataset: str = "wiki", part: str = "test") -> EvaluationStream:
    """Tokenize one part of the held-out (``"evaluation"``) split of a corpus once.

    Parameters
    ----------
    tokenizer : transformers tokenizer
        The dense model's tokenizer (pruned models share it).
    dataset : str, default="wiki"
        A key of :data:`funcprune.data.DATASETS`.
    part : {"test", "validation", "all"}, default="test"
        Which articles (:func:`evaluation_parts`): reports use ``"test"``; design
        choices are made on ``"validation"``. A corpus with its own validation split
        (``wikitext2``) uses its splits instead: ``"test"`` is its whole test split.

    Returns
    -------
    EvaluationStream
        ``dataset["ids"]`` lists the part's articles; ``dataset["part"]`` names it.

    Raises
    ------
    ValueError
        An unknown part, naming the accepted ones.
    """
    if part not in EVAL_PARTS:
        raise ValueError(f"unknown held-out part {part!r}; accepted: {list(EVAL_PARTS)}")
    if "validation" in getattr(HUB_DATASETS.get(dataset), "splits", {}):
        # a corpus with its own validation split (WikiText-2): test is its whole test split, the
        # literature's stream, so that perplexities compare with published ones
        split = "validation" if part == "validation" else "evaluation"
        texts = load_texts(dataset, split) + (load_texts(dataset, "validation") if part == "all" else [])
        rule = "the corpus's own splits: validation = its validation split, test = its whole test split"
    else:
        split = "evaluation"
        texts = evaluation_parts(load_texts(dataset, "evaluation"))[part]
        rule = "articles ranked by sha256(salt + id): first half validation, rest test"
    info = {**dataset_info(dataset, split, texts), "part": part, "part_rule": rule}
    joined = "\n\n".join(t.text for t in texts)
    text_index = None
    try:
        enc = tokenizer(joined, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = np.asarray([o[0] for o in enc["offset_mapping"]], dtype=np.int64)
        starts = np.cumsum([0] + [len(t.text) + 2 for t in texts[:-1]])
        text_index = np.searchsorted(starts, offsets, side="right") - 1
    except (NotImplementedError, TypeError, ValueError, KeyError):  # slow tokenizers: no offsets
        enc = tokenizer(joined, add_special_tokens=False, verbose=False)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    if text_index is None:
        text_index = np.full(ids.shape, -1, dtype=np.int64)
    return EvaluationStream(dataset=info, ids=ids, text_index=text_index.astype(np.int64),
                            sha256=_ids_sha256(ids), bos_token_id=bos_token_id(tokenizer), part=part)


def select_windows(n_tokens: int, seq_len: int, max_tokens: int | None, span: int | None = None) -> list[int]:
    """Start positions of the perplexity windows: a spread subset of the non-overlapping grid.

    A window takes ``span`` tokens of the stream (``seq_len``, or ``seq_len - 1`` when a
    BOS token is put in front of it). The stream holds ``W = n_tokens // span``
    non-overlapping windows (starts ``0, span, 2 span, ...``; the tail is dropped). With
    ``max_tokens=None`` all of them are used; otherwise ``n = min(W, max_tokens // seq_len)``
    of them, the ``floor(j W / n)``-th for ``j = 0 .. n-1``, evenly spread over the stream.

    Parameters
    ----------
    n_tokens : int
        Length of the token stream.
    seq_len : int
        Window length (already clamped to the model's maximum).
    max_tokens : int or None
        Token budget of this setting.
    span : int, optional
        Tokens of the stream per window; default ``seq_len``.

    Returns
    -------
    list of int
        Sorted start offsets, each a multiple of ``span``.

    Raises
    ------
    ValueError
        If not even one window fits the stream or the budget.
    """
    span = seq_len if span is None else int(span)
    grid = n_tokens // span
    n = grid if max_tokens is None else min(grid, int(max_tokens) // seq_len)
    if n < 1:
        raise ValueError(f"no perplexity window of {seq_len} tokens fits: the held-out stream has {n_tokens} "
                         f"tokens and eval_max_tokens is {max_tokens}; raise eval_max_tokens to at least "
                         f"{seq_len} or use a shorter window")
    return [(j * grid // n) * span for j in range(n)]


def heldout_windows(tokenizer: Any, dataset: str = "wiki", part: str = "validation", *, seq_len: int = 128,
                    n_windows: int = 32) -> torch.Tensor:
    """Held-out windows as the evaluation scores them, for analyses that need per-token losses.

    The windows :func:`evaluate_run` would score with a budget of ``n_windows * seq_len``
    tokens (:func:`select_windows` over the part's stream): each holds ``seq_len`` tokens,
    the first being the BOS token where the tokenizer puts one in front of a text. With the
    same ``seq_len`` and budget, the ``"test"`` windows are those of chapter 5.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    dataset : str, default="wiki"
        Corpus (see :func:`evaluation_stream`).
    part : {"validation", "test", "all"}, default="validation"
        Design choices use ``"validation"``; reported numbers ``"test"``.
    seq_len : int, default=128
    n_windows : int, default=32
        At most this many, spread evenly over the part (fewer if the part is shorter).

    Returns
    -------
    torch.LongTensor of shape (n, seq_len)
    """
    if n_windows < 1 or seq_len < 2:
        raise ValueError(f"need n_windows >= 1 and seq_len >= 2, got {n_windows} and {seq_len}")
    stream = evaluation_stream(tokenizer, dataset, part)
    bos = stream.bos_token_id
    span = seq_len - (bos is not None)
    starts = select_windows(stream.n_tokens, seq_len, n_windows * seq_len, span=span)
    rows = np.stack([np.asarray(stream.ids[s:s + span], dtype=np.int64) for s in starts])
    if bos is not None:
        rows = np.concatenate([np.full((len(rows), 1), bos, dtype=np.int64), rows], axis=1)
    return torch.from_numpy(rows)


# ----------------------------------------------------------------------------------
# Calibration text of the run, and the disjointness check
# ----------------------------------------------------------------------------------
def calibration_record(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Which texts the run used for calibration, from the stage-1 manifest.

    Also checks every pruning plan of ``run_dir/pruned/index.json`` that records
    calibration texts (statistics, bias compensation): their checksum must equal the
    checksum of the manifest's texts, else those models were calibrated on other
    texts and the record says so (``plans_unverified``).

    Returns
    -------
    dict or None
        ``dataset`` (name), ``split``, ``sha256`` (corpus file), ``ids``,
        ``plans_verified`` and ``plans_unverified`` (keys); ``None`` when the run has
        no stage-1 manifest.
    """
    run_dir = Path(run_dir)
    manifest_path = run_dir / "activations" / "manifest.json"
    if not manifest_path.exists():
        return None
    manifest = read_json(manifest_path)
    dataset = manifest.get("dataset") or {}
    ids = [str(i) for i in (dataset.get("ids") or manifest.get("text_ids") or [])]
    record: dict[str, Any] = {"dataset": dataset.get("name"), "split": dataset.get("split"),
                              "sha256": dataset.get("sha256"), "ids": ids, "manifest": str(manifest_path),
                              "plans_verified": [], "plans_unverified": []}
    index_path = run_dir / "pruned" / "index.json"
    if not index_path.exists():
        return record
    expected = None
    for entry in read_json(index_path).get("entries", []):
        plan_path = run_dir / entry.get("plan", "")
        if not plan_path.is_file():
            continue
        calib = (read_json(plan_path).get("settings") or {}).get("calibration")
        if not calib:
            continue
        if expected is None:
            expected = _manifest_texts_digest(run_dir)
        bucket = "plans_verified" if calib.get("sha256") == expected else "plans_unverified"
        record[bucket].append(entry["key"])
    return record


def _manifest_texts_digest(run_dir: Path) -> str | None:
    """Checksum of the stage-1 calibration texts, as :mod:`funcprune.pipeline` records it."""
    try:
        from .pipeline import _texts_digest, calibration_texts

        return _texts_digest([t.text for t in calibration_texts(run_dir)])
    except (ImportError, ValueError, FileNotFoundError):
        return None


def _check_disjoint(stream: EvaluationStream, calibration: dict[str, Any] | None) -> dict[str, Any]:
    """Raise if a held-out text (of either part) was used for calibration; return what was checked."""
    eval_name = stream.dataset["name"]
    held_out = [t.id for t in load_texts(eval_name, "evaluation")]
    if calibration is None:
        warnings.warn("the run has no stage-1 manifest (activations/manifest.json): the held-out texts "
                      "cannot be checked against the calibration texts", stacklevel=3)
        return {"checked": False, "reason": "no stage-1 manifest"}
    if calibration["plans_unverified"]:
        warnings.warn(f"pruned models {calibration['plans_unverified']} were calibrated on texts other than "
                      "the stage-1 manifest's: their disjointness from the held-out texts is not checked",
                      stacklevel=3)
    if calibration["dataset"] != eval_name:
        return {"checked": True, "overlap": [], "reason": f"different corpora ({calibration['dataset']!r} "
                f"calibration, {eval_name!r} evaluation)"}
    overlap = sorted(set(calibration["ids"]) & set(held_out))
    if overlap:
        raise ValueError(f"held-out text ids {overlap[:10]} (of {len(overlap)}) were used for calibration "
                         f"({calibration['manifest']}): perplexity would be measured on calibration text. "
                         f"Calibrate on the 'calibration' split and evaluate on the 'evaluation' split.")
    return {"checked": True, "overlap": [], "n_calibration_ids": len(calibration["ids"]),
            "n_evaluation_ids": len(stream.dataset["ids"]), "n_held_out_ids": len(held_out),
            "plans_unverified": calibration["plans_unverified"]}


# ----------------------------------------------------------------------------------
# Evaluating one model
# ----------------------------------------------------------------------------------
def _load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    from .models import MODELS, ensure_model

    path = str(ensure_model(model)) if model in MODELS else model
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _normalise_json(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _part_digest(part: Mapping[str, Any]) -> str:
    """SHA-256 of a part's content (every key but ``sha256``), as JSON with sorted keys."""
    body = {k: v for k, v in part.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _cached_part(path: Path, protocol_id: str, identity: Mapping[str, Any], tier: str) -> dict[str, Any] | None:
    """A finished part for this protocol, model and tier whose content matches its digest; else ``None``.

    A part that is not valid JSON or whose content no longer matches its digest is
    re-evaluated, with a warning naming it.
    """
    if not path.exists():
        return None
    try:
        cached = read_json(path)
    except ArtefactError as exc:
        warnings.warn(f"re-evaluating: {exc}", stacklevel=3)
        return None
    if not (cached.get("protocol_id") == protocol_id and cached.get("identity") == _normalise_json(identity)
            and cached.get("tier", "full") == tier):
        return None
    if cached.get("sha256") != _part_digest(cached):
        warnings.warn(f"re-evaluating {cached.get('key')!r}: {path} does not match its digest (edited, truncated "
                      "or from an older version)", stacklevel=3)
        return None
    return cached


def _load_dense(model_name: str, revision: str | None, base: Mapping[str, Any], dtype: Any,
                device: str) -> torch.nn.Module:
    """The dense model, checked against the revision the pruned models were planned on."""
    from .models import load_model

    lm, _ = load_model(model_name, dtype=dtype, device_map=None if device == "cpu" else device)
    found = lm.funcprune_source.get("revision")
    if revision and found and found != revision:
        raise ValueError(f"dense model {model_name!r} has revision {found!r}, but the pruned models "
                         f"were made from revision {revision!r} ({base.get('name')!r})")
    return lm


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
    max_pos = _max_positions(model)
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
            "window_starts": starts, "window_nll": res["window_nll"], "tokens_sha256": _ids_sha256(ids),
            "bos_token_id": stream.bos_token_id, "text_ids": stream.text_ids(starts, span),
        }
    return out


def _efficiency(model: torch.nn.Module) -> dict[str, int]:
    counts = count_parameters(model)
    return {"params_total": counts["total"], "params_mlp": counts["mlp"],
            "params_attention": counts["attention"], "params_embedding": counts["embedding"],
            "flops_per_token": flops_per_token(model)}


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _evaluate_model(model: torch.nn.Module, tokenizer: Any, stream: EvaluationStream, settings: dict[str, Any],
                    progress: bool) -> dict[str, Any]:
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
def _read_index(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "pruned" / "index.json"
    if not path.exists():
        return {"entries": []}
    index = read_json(path)
    keys = [e["key"] for e in index.get("entries", [])]
    if DENSE_KEY in keys or len(set(keys)) != len(keys):
        raise ValueError(f"{path}: keys must be unique and not {DENSE_KEY!r}, got {keys}")
    return index


def evaluate_run(
    run_dir: str | os.PathLike[str],
    *,
    model: str | None = None,
    eval_dataset: str = "wiki",
    eval_part: str = "test",
    ppl_seq_lens: Sequence[int] = (128, 2048),
    eval_max_tokens: int | None = 4096,
    zero_shot_tasks: Sequence[str] | None = ALL_TASKS,
    zero_shot_limit: int | None = None,
    batch_size: int = 8,
    ppl_batch_tokens: int = 2048,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    offline: bool = True,
    zero_shot_seed: int = 1234,
    full_ratios: Sequence[float] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Evaluate the dense model and every pruned checkpoint of a run under one protocol.

    Parameters
    ----------
    run_dir : str or path-like
        Run directory; pruned models are read from ``run_dir/pruned/index.json``
        (:func:`funcprune.pipeline.prune_all`), results written to ``run_dir/results``.
    model : str, optional
        The dense model (registry alias, local directory or hub id). Default: the
        index's ``base_model`` name, which only works for registry aliases and hub ids
        (a local directory is recorded by its base name): pass local paths. Its
        revision must match the one the pruned models were made from.
    eval_dataset : str, default="wiki"
        Corpus whose held-out (``"evaluation"``) split gives the perplexity text.
    eval_part : {"test", "validation", "all"}, default="test"
        Which held-out articles (:func:`evaluation_parts`, disjoint by article):
        reported results use ``"test"``; design choices are made on ``"validation"``.
    ppl_seq_lens : sequence of int, default=(128, 2048)
        Window lengths; each is clamped to the model's maximum (recorded).
    eval_max_tokens : int, None or sequence, default=4096
        Held-out tokens per perplexity setting (``eval_max_tokens // seq_len`` windows,
        spread over the stream); ``None``: every window of the stream. A sequence gives
        one budget per window length (e.g. ``[8192, 16384]``: 64 windows of 128 and 8
        of 2048 tokens).
    zero_shot_tasks : sequence of str or None, default=ALL_TASKS
        Tasks of :data:`funcprune.tasks.TASKS`; empty or ``None`` skips zero-shot.
    zero_shot_limit : int, optional
        First items per task (``None``: all).
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
    zero_shot_seed : int, default=1234
        The harness's seeds.
    full_ratios : sequence of float, optional
        A tiered protocol: the dense model and the pruned models at these ratios are
        scored at every window length and on the zero-shot tasks; the others only at the
        shortest window length (a screen). ``None``: every model gets everything.
    progress : bool, default=True
        Progress bars.

    Returns
    -------
    pandas.DataFrame
        The long results table (columns :data:`TABLE_COLUMNS`, metrics :data:`METRICS`),
        dense model first, validated by :func:`validate_results_table`.

    Raises
    ------
    ValueError
        A held-out text was used for calibration, a checkpoint was pruned from another
        model, the index is malformed, or a setting is out of range.
    """
    run_dir = Path(run_dir)
    seq_lens = [int(s) for s in ppl_seq_lens]
    if not seq_lens or any(s < 2 for s in seq_lens) or len(set(seq_lens)) != len(seq_lens):
        raise ValueError(f"ppl_seq_lens must be distinct ints >= 2, got {list(ppl_seq_lens)}")
    budgets = _token_budgets(seq_lens, eval_max_tokens)
    if full_ratios is not None:
        full_ratios = [float(r) for r in full_ratios]
    tasks = list(zero_shot_tasks or [])
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown zero-shot task(s) {unknown}; accepted: {list(ALL_TASKS)}")
    dtype_name = str(dtype).replace("torch.", "")
    index = _read_index(run_dir)
    base = index.get("base_model") or {}
    model_name = model or base.get("name")
    if not model_name:
        from .models import DEFAULT_MODEL

        model_name = DEFAULT_MODEL

    tokenizer = _load_tokenizer(model_name)
    stream = evaluation_stream(tokenizer, eval_dataset, eval_part)
    calibration = calibration_record(run_dir)
    disjoint = _check_disjoint(stream, calibration)

    harness_version = None
    if tasks:
        from importlib.metadata import version

        harness_version = version("lm_eval")
    protocol = {
        "eval_dataset": {k: stream.dataset[k] for k in ("name", "package", "package_version", "file", "sha256",
                                                         "split", "part", "part_rule", "n_texts", "n_words")},
        "eval_text_ids_sha256": hashlib.sha256("\n".join(stream.dataset["ids"]).encode()).hexdigest(),
        "eval_stream": {"n_tokens": stream.n_tokens, "sha256": stream.sha256, "joiner": "\\n\\n",
                        "add_special_tokens": False},
        "bos": {"token_id": stream.bos_token_id,
                "rule": "every window starts with the BOS token when the tokenizer puts one in front of a text; "
                        "a window then holds seq_len - 1 tokens of text, all scored (else seq_len tokens, the "
                        "last seq_len - 1 scored)"},
        "ppl_seq_lens": seq_lens, "eval_max_tokens": eval_max_tokens, "eval_budgets": budgets,
        "tiers": {"full_ratios": full_ratios,
                  "rule": "the dense model and models at full_ratios (all when None): every window length and "
                          "zero-shot; the others: the shortest window length only"},
        "window_selection": "evenly spread subset of the non-overlapping grid (select_windows)",
        "zero_shot": {"tasks": tasks, "limit": zero_shot_limit, "harness": "lm-eval",
                      "harness_version": harness_version, "offline": offline, "seed": zero_shot_seed,
                      "num_fewshot": 0},
        "dtype": dtype_name,
    }
    protocol_id = _fingerprint(protocol)
    settings = {"ppl_seq_lens": seq_lens, "eval_max_tokens": eval_max_tokens, "eval_budgets": budgets,
                "zero_shot_tasks": tasks, "zero_shot_limit": zero_shot_limit, "batch_size": batch_size,
                "ppl_batch_tokens": ppl_batch_tokens, "offline": offline, "zero_shot_seed": zero_shot_seed,
                "full_ratios": full_ratios}
    shortest = seq_lens.index(min(seq_lens))
    screen = {**settings, "ppl_seq_lens": [seq_lens[shortest]], "eval_budgets": [budgets[shortest]],
              "zero_shot_tasks": []}

    jobs: list[dict[str, Any]] = [{"key": DENSE_KEY, "method": DENSE_KEY, "seed": None, "ratio_requested": 0.0,
                                   "ratio_reached": 0.0, "ratio_basis": None, "path": None}]
    jobs += [dict(e) for e in index.get("entries", [])]
    parts_dir = run_dir / RESULTS_DIR / PARTS_DIR
    parts: dict[str, dict[str, Any]] = {}
    dense_revision = base.get("revision")
    dense_lm = None
    bar = tqdm(jobs, desc="evaluating", unit="model", disable=not progress)
    for job in bar:
        key = job["key"]
        bar.set_postfix_str(key)
        identity = ({"model": model_name, "revision": dense_revision} if key == DENSE_KEY else
                    {"plan_sha256": job.get("plan_sha256"),
                     "biases_sha256": (job.get("biases") or {}).get("sha256")})
        tier = "full" if (key == DENSE_KEY or full_ratios is None or any(
            math.isclose(float(job["ratio_requested"]), r) for r in full_ratios)) else "screen"
        part_path = parts_dir / f"{key}.json"
        cached = _cached_part(part_path, protocol_id, identity, tier)
        if cached is not None:
            parts[key] = cached
            continue
        start = time.perf_counter()
        if dense_lm is None:
            dense_lm = _load_dense(model_name, dense_revision, base, dtype, device)
        if key == DENSE_KEY:
            lm = dense_lm
        else:
            from .pipeline import rebuild_pruned

            lm = rebuild_pruned(run_dir, key, dense_lm)
        loaded = round(time.perf_counter() - start, 2)
        measured = _evaluate_model(lm, tokenizer, stream, settings if tier == "full" else screen, progress=False)
        measured["seconds"]["load"] = loaded
        measured["seconds"]["total"] = round(time.perf_counter() - start, 2)
        part = {"format": PART_FORMAT, "key": key, "protocol_id": protocol_id, "identity": identity, "tier": tier,
                "entry": {k: job.get(k) for k in ("method", "seed", "ratio_requested", "ratio_reached",
                                                  "ratio_basis", "allocation", "plan_sha256")},
                "model": {k: v for k, v in getattr(lm, "funcprune_source", {}).items()},
                **measured}
        if lm is not dense_lm:
            del lm
            _free_memory()
        part = _normalise_json(part)
        part["sha256"] = _part_digest(part)
        atomic_write_json(part_path, part)
        parts[key] = part
    bar.close()
    del dense_lm
    _free_memory()

    table = validate_results_table(_table_from_parts([parts[j["key"]] for j in jobs]))
    from .compare import headline_comparisons

    comparisons = headline_comparisons(parts)
    sanity = perplexity_sanity(parts[DENSE_KEY])
    if sanity["flagged"]:
        warnings.warn(sanity["message"], stacklevel=2)
    out_dir = run_dir / RESULTS_DIR
    atomic_write_text(out_dir / "results.csv", table.to_csv(index=False))
    atomic_write_text(out_dir / "comparisons.csv", comparisons.to_csv(index=False))
    atomic_write_json(out_dir / "results.json", {
        "format": RESULTS_FORMAT, "protocol": protocol, "protocol_id": protocol_id,
        "eval_text_ids": stream.dataset["ids"], "calibration": calibration, "disjointness": disjoint,
        "dense_model": {"name": model_name, **parts[DENSE_KEY]["model"]}, "base_model": base,
        "settings": {k: v for k, v in settings.items()}, "columns": list(TABLE_COLUMNS), "metrics": METRICS,
        "models": parts, "sanity": sanity, "environment": environment_info(),
    })
    return table


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
# The table
# ----------------------------------------------------------------------------------
def _rows_of_part(part: Mapping[str, Any], dense: Mapping[str, Any]) -> list[dict[str, Any]]:
    entry = part["entry"]
    common = {"key": part["key"], "method": entry["method"], "seed": entry.get("seed"),
              "ratio_requested": float(entry.get("ratio_requested") or 0.0),
              "ratio_reached": float(entry.get("ratio_reached") or 0.0), "ratio_basis": entry.get("ratio_basis")}
    rows: list[dict[str, Any]] = []

    def add(metric: str, setting: str, value: Any, stderr: Any = None, n: Any = None) -> None:
        rows.append({**common, "metric": metric, "setting": setting, "value": float(value),
                     "stderr": np.nan if stderr is None else float(stderr), "n": np.nan if n is None else int(n)})

    # JSON files sort their keys: order settings by window length and tasks as in ALL_TASKS
    for setting, p in sorted(part["perplexity"].items(), key=lambda kv: int(kv[0])):
        add("ppl", setting, p["ppl"], p["ppl_stderr"], p["n_windows"])
        add("nll", setting, p["nll"], p["nll_stderr"], p["n_windows"])
    zs = part.get("zero_shot")
    if zs:
        accs, prefs = [], []
        for task, t in sorted(zs["tasks"].items(), key=lambda kv: ALL_TASKS.index(kv[0])):
            add("acc", task, t["acc"], t["acc_stderr"], t["n"])
            if t.get("acc_norm") is not None:
                add("acc_norm", task, t["acc_norm"], t["acc_norm_stderr"], t["n"])
            pref_se = t["acc_norm_stderr"] if t["preferred_metric"] == "acc_norm" else t["acc_stderr"]
            accs.append((t["acc"], t["acc_stderr"], t["n"]))
            prefs.append((t["preferred"], pref_se, t["n"]))
        for metric, values in (("mean_acc", accs), ("mean_preferred", prefs)):
            k = len(values)
            add(metric, "", sum(v for v, _, _ in values) / k,
                math.sqrt(sum(se ** 2 for _, se, _ in values)) / k, sum(n for _, _, n in values))
    eff = part["efficiency"]
    for metric in _EFFICIENCY:
        add(metric, "", eff[metric])
    for metric, source in _RELATIVE.items():
        add(metric, "", eff[source] / dense["efficiency"][source])
    return rows


def _table_from_parts(parts: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    dense = next(p for p in parts if p["key"] == DENSE_KEY)
    rows = [r for p in parts for r in _rows_of_part(p, dense)]
    return _typed(pd.DataFrame(rows, columns=list(TABLE_COLUMNS)))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["seed"] = pd.array([None if pd.isna(s) else int(s) for s in df["seed"]], dtype="Int64")
    df["n"] = pd.array([None if pd.isna(s) else int(s) for s in df["n"]], dtype="Int64")
    for col in ("ratio_requested", "ratio_reached", "value", "stderr"):
        df[col] = df[col].astype(float)
    for col in ("key", "method", "metric"):
        df[col] = df[col].astype(str)
    df["setting"] = df["setting"].fillna("").astype(str)
    df["ratio_basis"] = df["ratio_basis"].astype(object).where(df["ratio_basis"].notna(), None)
    return df


def load_results(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Read ``run_dir/results/results.csv`` (written by :func:`evaluate_run`), validated."""
    path = Path(run_dir) / RESULTS_DIR / "results.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run evaluate_run (stage 5) for this run_dir first")
    df = pd.read_csv(path, dtype={"setting": str, "key": str, "method": str, "metric": str})
    return validate_results_table(_typed(df))


def validate_results_table(df: pd.DataFrame) -> pd.DataFrame:
    """Check a results table; return it unchanged or raise, listing every problem.

    Checks: the columns of :data:`TABLE_COLUMNS`; known metrics; no duplicated
    ``(key, metric, setting)``; exactly one dense model (key and method
    :data:`DENSE_KEY`, ratio 0); every model measured on the same ``(metric, setting)``
    pairs as the dense model (one protocol) or, in a tiered protocol, screened: the
    efficiency metrics and the perplexity at the shortest window only; finite values; accuracies in [0, 1];
    ``ppl >= 1`` and ``ppl == exp(nll)``; standard errors finite and ``>= 0`` or
    missing; ``n`` positive for measured metrics; ratios in [0, 1); the dense model's
    relative metrics equal 1.

    Raises
    ------
    ValueError
        Listing every problem found.
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"results must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in TABLE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"invalid results table: missing columns {missing}; expected {list(TABLE_COLUMNS)}")
    problems: list[str] = []
    if df.empty:
        raise ValueError("invalid results table: it has no rows")
    unknown = sorted(set(df["metric"]) - set(METRICS))
    if unknown:
        problems.append(f"unknown metrics {unknown}; accepted: {list(METRICS)}")
    dup = df.duplicated(["key", "metric", "setting"], keep=False)
    if dup.any():
        problems.append(f"duplicated (key, metric, setting): "
                        f"{df.loc[dup, ['key', 'metric', 'setting']].drop_duplicates().values.tolist()[:5]}")
    dense = df[df["key"] == DENSE_KEY]
    if dense.empty:
        problems.append(f"no dense model (key {DENSE_KEY!r})")
    else:
        if set(dense["method"]) != {DENSE_KEY}:
            problems.append(f"the dense rows have method {sorted(set(dense['method']))}, expected {DENSE_KEY!r}")
        if (dense["ratio_requested"] != 0).any() or (dense["ratio_reached"] != 0).any():
            problems.append("the dense model's ratios must be 0")
        rel = dense[dense["metric"].isin(list(_RELATIVE))]
        if not np.allclose(rel["value"].to_numpy(float), 1.0):
            problems.append("the dense model's relative metrics must equal 1")
    if ((df["method"] == DENSE_KEY) & (df["key"] != DENSE_KEY)).any():
        problems.append(f"method {DENSE_KEY!r} is used by a key other than {DENSE_KEY!r}")
    protocol = set(zip(dense["metric"], dense["setting"]))
    windows = [s for m, s in protocol if m == "ppl"]
    shortest = min(windows, key=int) if windows else None
    screen = {(m, s) for m, s in protocol if m not in _MEASURED} | {(m, shortest) for m in ("ppl", "nll")}
    for key, group in df.groupby("key", sort=False):
        pairs = set(zip(group["metric"], group["setting"]))
        if pairs != protocol and pairs != screen:
            extra, lacking = sorted(pairs - protocol)[:3], sorted(protocol - pairs)[:3]
            problems.append(f"{key}: not measured like the dense model (extra {extra}, missing {lacking}) nor "
                            f"screened like it (efficiency and perplexity at {shortest} only)")
    value = df["value"].to_numpy(float)
    stderr = df["stderr"].to_numpy(float)
    if not np.isfinite(value).all():
        problems.append(f"non-finite values for {df.loc[~np.isfinite(value), ['key', 'metric']].values.tolist()[:5]}")
    bad_se = ~np.isnan(stderr) & ~((stderr >= 0) & np.isfinite(stderr))
    if bad_se.any():
        problems.append(f"negative or infinite stderr for "
                        f"{df.loc[bad_se, ['key', 'metric', 'setting']].values.tolist()[:5]}")
    bad_prob = df["metric"].isin(_PROB_METRICS).to_numpy() & ~((value >= 0) & (value <= 1))
    if bad_prob.any():
        problems.append(f"accuracies outside [0, 1]: "
                        f"{df.loc[bad_prob, ['key', 'metric', 'setting']].values.tolist()[:5]}")
    ppl = df[df["metric"] == "ppl"].set_index(["key", "setting"])["value"]
    nll = df[df["metric"] == "nll"].set_index(["key", "setting"])["value"]
    if (ppl < 1).any():
        problems.append("perplexities below 1")
    joined = pd.concat([ppl.rename("ppl"), nll.rename("nll")], axis=1)
    mismatch = joined.dropna()
    mismatch = mismatch[~np.isclose(mismatch["ppl"], np.exp(mismatch["nll"]), rtol=1e-6)]
    if len(mismatch) or joined.isna().any().any():
        problems.append(f"ppl and nll disagree or lack a partner for {list(mismatch.index)[:5]}")
    measured = df["metric"].isin(_MEASURED)
    n = df["n"]
    bad_n = measured & (n.isna() | (n.fillna(0) < 1))
    if bad_n.any():
        problems.append(f"n missing or < 1 for {df.loc[bad_n, ['key', 'metric', 'setting']].values.tolist()[:5]}")
    for col in ("ratio_requested", "ratio_reached"):
        r = df[col].to_numpy(float)
        if not ((r >= 0) & (r < 1)).all():
            problems.append(f"{col} outside [0, 1)")
    eff = df["metric"].isin(_EFFICIENCY + tuple(_RELATIVE)).to_numpy()
    if (eff & ~(value > 0)).any():
        problems.append("efficiency metrics must be positive")
    if problems:
        raise ValueError("invalid results table:\n  " + "\n  ".join(problems))
    return df


# ----------------------------------------------------------------------------------
# Aggregation and significance
# ----------------------------------------------------------------------------------
_GROUP = ["method", "ratio_requested", "metric", "setting"]


def aggregate_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread over seeds (models of one method at one ratio).

    Parameters
    ----------
    df : pandas.DataFrame
        A results table (:func:`evaluate_run`, :func:`load_results`).

    Returns
    -------
    pandas.DataFrame
        One row per ``(method, ratio_requested, metric, setting)``: ``value`` (mean
        over seeds), ``value_std`` (standard deviation over seeds, ``ddof=1``; NaN for
        one model), ``stderr`` (``sqrt(mean(stderr_i^2) + value_std^2 / n_seeds)``: the
        measurement error is not averaged away, since every model is measured on the
        same items and windows; conservative), ``n_seeds``, ``ratio_reached`` (mean),
        ``n`` (items or windows per model) and ``keys``.
    """
    def agg(g: pd.DataFrame) -> pd.Series:
        k = len(g)
        std = float(g["value"].std(ddof=1)) if k > 1 else np.nan
        se2 = g["stderr"].to_numpy(float) ** 2
        meas = float(np.mean(se2)) if not np.isnan(se2).all() else np.nan
        if k > 1:
            stderr = math.sqrt((0.0 if np.isnan(meas) else meas) + std ** 2 / k)
        else:
            stderr = math.sqrt(meas) if not np.isnan(meas) else np.nan
        return pd.Series({"value": float(g["value"].mean()), "value_std": std, "stderr": stderr, "n_seeds": k,
                          "ratio_reached": float(g["ratio_reached"].mean()),
                          "n": g["n"].iloc[0], "keys": ",".join(g["key"])})

    order = list(dict.fromkeys(df["method"]))
    out = (df.groupby(_GROUP, sort=False, dropna=False)[["key", "value", "stderr", "ratio_reached", "n"]]
           .apply(agg).reset_index())
    out["n_seeds"] = out["n_seeds"].astype(int)
    out["method"] = pd.Categorical(out["method"], categories=order, ordered=True)
    out = out.sort_values(["ratio_requested", "method"], kind="stable").reset_index(drop=True)
    out["method"] = out["method"].astype(str)
    return out


def significant_differences(df: pd.DataFrame, baseline: str = DENSE_KEY, *,
                            metrics: Sequence[str] = ("nll", "mean_acc", "mean_preferred"),
                            n_se: float = 2.0) -> pd.DataFrame:
    """Which differences from a baseline exceed their combined standard error.

    Each method's value (mean over seeds) at each ratio is compared with the
    baseline's: the dense model (the same value at every ratio) or the mean of the
    baseline method's seeds at the same ratio (e.g. ``"random"``). The combined
    standard error is ``sqrt(se^2 + se_baseline^2)`` (unpaired, conservative: the
    models share items and windows), with each ``se`` from :func:`aggregate_seeds`;
    accuracies carry the harness's standard errors, NLLs the spread of the per-window
    NLLs. Perplexity is compared as NLL (its logarithm), where errors are symmetric.

    Parameters
    ----------
    df : pandas.DataFrame
        A results table.
    baseline : str, default="dense"
        ``"dense"`` or the name of a method in the table.
    metrics : sequence of str, default=("nll", "mean_acc", "mean_preferred")
        Metrics to compare (any with standard errors: also ``"acc"``, ``"acc_norm"``, ``"ppl"``).
    n_se : float, default=2.0
        A difference is flagged when ``|difference| > n_se * combined stderr``
        (2: about a 95% two-sided test for a normal error).

    Returns
    -------
    pandas.DataFrame
        Columns ``method``, ``ratio_requested``, ``metric``, ``setting``, ``value``,
        ``baseline_value``, ``difference`` (value - baseline), ``stderr`` (combined),
        ``z`` (difference / stderr), ``exceeds`` (bool; False when no stderr exists)
        and ``better`` (the method is better than the baseline: lower for NLL and
        perplexity, higher for accuracies).

    Raises
    ------
    ValueError
        Unknown baseline or metric, naming the accepted ones.
    """
    testable = [m for m in METRICS if m not in _EFFICIENCY and m not in _RELATIVE]
    bad = [m for m in metrics if m not in testable]
    if bad:
        raise ValueError(f"cannot test metrics {bad}; accepted: {testable}")
    if n_se <= 0:
        raise ValueError(f"n_se must be positive, got {n_se}")
    agg = aggregate_seeds(df[df["metric"].isin(list(metrics))])
    if baseline not in set(agg["method"]):
        raise ValueError(f"baseline {baseline!r} is not in the table; accepted: {sorted(set(agg['method']))}")
    base = agg[agg["method"] == baseline]
    if baseline == DENSE_KEY:
        merged = agg[agg["method"] != baseline].merge(base[["metric", "setting", "value", "stderr"]],
                                                      on=["metric", "setting"], suffixes=("", "_base"))
    else:
        merged = agg[~agg["method"].isin([baseline, DENSE_KEY])].merge(
            base[["ratio_requested", "metric", "setting", "value", "stderr"]],
            on=["ratio_requested", "metric", "setting"], suffixes=("", "_base"))
    se = np.sqrt(merged["stderr"].to_numpy(float) ** 2 + merged["stderr_base"].to_numpy(float) ** 2)
    diff = merged["value"].to_numpy(float) - merged["value_base"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, diff / se, np.nan)
    lower = merged["metric"].isin(_LOWER_IS_BETTER).to_numpy()
    out = pd.DataFrame({
        "method": merged["method"], "ratio_requested": merged["ratio_requested"], "metric": merged["metric"],
        "setting": merged["setting"], "value": merged["value"], "baseline_value": merged["value_base"],
        "difference": diff, "stderr": se, "z": z,
        "exceeds": np.nan_to_num(np.abs(z), nan=0.0) > n_se,
        "better": np.where(lower, diff < 0, diff > 0),
    })
    return out.reset_index(drop=True)


def _labels() -> dict[str, str]:
    try:
        from .pipeline import METHODS

        return {DENSE_KEY: "dense", **{name: m.label for name, m in METHODS.items()}}
    except ImportError:  # pragma: no cover
        return {DENSE_KEY: "dense"}


def summary_table(df: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """The main results, one row per method and ratio (means over seeds), one column per metric.

    Parameters
    ----------
    df : pandas.DataFrame
        A results table.
    metrics : sequence of str, optional
        Default: ``ppl`` at each window length, ``mean_acc``, ``mean_preferred`` and
        ``params_total_rel``.

    Returns
    -------
    pandas.DataFrame
        Index ``(method, ratio)``; columns like ``"ppl@128"``, ``"ppl@128 ±"`` (standard
        error), ``"mean_acc"``, ``"mean_acc ±"`` ...; ``"seeds"``.
    """
    agg = aggregate_seeds(df)
    if metrics is None:
        settings = [s for s in dict.fromkeys(agg.loc[agg["metric"] == "ppl", "setting"])]
        wanted = [("ppl", s) for s in settings] + [(m, "") for m in ("mean_acc", "mean_preferred", "params_total_rel")]
    else:
        wanted = [(m, s) for m in metrics for s in dict.fromkeys(agg.loc[agg["metric"] == m, "setting"])]
    labels = _labels()
    cols: dict[str, pd.Series] = {}
    idx = ["method", "ratio_requested"]
    for metric, setting in wanted:
        sub = agg[(agg["metric"] == metric) & (agg["setting"] == setting)]
        if sub.empty:
            continue
        name = metric + (f"@{setting}" if setting else "")
        cols[name] = sub.set_index(idx)["value"]
        if metric not in _EFFICIENCY and metric not in _RELATIVE:
            cols[f"{name} ±"] = sub.set_index(idx)["stderr"]
    seeds = agg.drop_duplicates(idx).set_index(idx)["n_seeds"]
    table = pd.DataFrame(cols).reindex(seeds.index)
    table["seeds"] = seeds
    table = table.reset_index()
    table["method"] = table["method"].map(lambda m: labels.get(m, m))
    return table.rename(columns={"ratio_requested": "ratio"}).set_index(["method", "ratio"])


def efficiency_table(df: pd.DataFrame) -> pd.DataFrame:
    """Parameters and FLOPs per method and ratio (seeds share them), absolute and relative to dense."""
    metrics = list(_EFFICIENCY) + list(_RELATIVE)
    agg = aggregate_seeds(df[df["metric"].isin(metrics)])
    table = agg.pivot_table(index=["method", "ratio_requested"], columns="metric", values="value", sort=False)
    table = table[[m for m in metrics if m in table.columns]].reset_index()
    labels = _labels()
    table["method"] = table["method"].map(lambda m: labels.get(m, m))
    table = table.rename(columns={"ratio_requested": "ratio"}).set_index(["method", "ratio"])
    table.columns.name = None
    return table


# ----------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------
def plot_metric_vs_ratio(df: pd.DataFrame, metric: str, setting: str = "", *, ax: Any = None,
                         band_method: str = "random", logy: bool = False, ylabel: str | None = None) -> Any:
    """One line per method against the requested ratio; the dense model as a horizontal line.

    Methods with several seeds (``band_method``, e.g. random) are drawn as their mean
    with a band of ± one standard deviation over seeds; the others with error bars of
    one standard error.

    Parameters
    ----------
    df : pandas.DataFrame
        A results table.
    metric, setting : str
        Which rows (e.g. ``"ppl", "128"`` or ``"mean_acc", ""``).
    ax : matplotlib Axes, optional
    band_method : str, default="random"
    logy : bool, default=False
    ylabel : str, optional

    Returns
    -------
    matplotlib.axes.Axes
    """
    import matplotlib.pyplot as plt

    agg = aggregate_seeds(df[(df["metric"] == metric) & (df["setting"] == setting)])
    if agg.empty:
        raise ValueError(f"no rows for metric {metric!r} and setting {setting!r}")
    ax = ax if ax is not None else plt.subplots(figsize=(6, 4))[1]
    labels = _labels()
    dense = agg[agg["method"] == DENSE_KEY]
    if not dense.empty:
        ax.axhline(float(dense["value"].iloc[0]), color="black", linestyle="--", linewidth=1, label="dense")
    for method, g in agg[agg["method"] != DENSE_KEY].groupby("method", sort=False):
        g = g.sort_values("ratio_requested")
        x, y = g["ratio_requested"].to_numpy(float), g["value"].to_numpy(float)
        label = labels.get(method, method)
        if method == band_method or (g["n_seeds"] > 1).any():
            k = int(g["n_seeds"].max())
            line, = ax.plot(x, y, marker="o", linestyle=":", label=f"{label} (mean of {k} seeds)" if k > 1 else label)
            std = np.nan_to_num(g["value_std"].to_numpy(float))
            ax.fill_between(x, y - std, y + std, color=line.get_color(), alpha=0.2, linewidth=0)
        else:
            err = g["stderr"].to_numpy(float)
            ax.errorbar(x, y, yerr=None if np.isnan(err).all() else np.nan_to_num(err), marker="o",
                        capsize=3, label=label)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("fraction of parameters removed (requested)")
    ax.set_ylabel(ylabel or (metric + (f" @ {setting}" if setting else "")))
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return ax


def plot_perplexity(df: pd.DataFrame, seq_len: int | str = 128, *, ax: Any = None) -> Any:
    """Perplexity (log scale) against the ratio at one window length; see :func:`plot_metric_vs_ratio`."""
    return plot_metric_vs_ratio(df, "ppl", str(seq_len), ax=ax, logy=True,
                                ylabel=f"perplexity, windows of {seq_len} tokens (log scale)")


def plot_accuracy(df: pd.DataFrame, metric: str = "mean_acc", *, ax: Any = None) -> Any:
    """Mean zero-shot accuracy against the ratio; see :func:`plot_metric_vs_ratio`."""
    if metric not in ("mean_acc", "mean_preferred"):
        raise ValueError(f"metric must be 'mean_acc' or 'mean_preferred', got {metric!r}")
    return plot_metric_vs_ratio(df, metric, "", ax=ax, ylabel=f"{metric} over tasks")


def plot_task_bars(df: pd.DataFrame, ratio: float, *, metric: str = "preferred", ax: Any = None) -> Any:
    """Per-task accuracy of every method at one ratio (dense included), with standard errors.

    Parameters
    ----------
    df : pandas.DataFrame
        A results table.
    ratio : float
        Requested ratio to show (the closest one in the table).
    metric : {"preferred", "acc", "acc_norm"}, default="preferred"
        ``"preferred"``: each task's literature metric (see :data:`funcprune.tasks.TASKS`).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
    """
    import matplotlib.pyplot as plt

    if metric not in ("preferred", "acc", "acc_norm"):
        raise ValueError(f"metric must be 'preferred', 'acc' or 'acc_norm', got {metric!r}")
    sub = df[df["metric"].isin(["acc", "acc_norm"])]
    if sub.empty:
        raise ValueError("the table has no zero-shot rows")
    ratios = sorted(set(sub.loc[sub["method"] != DENSE_KEY, "ratio_requested"]))
    if not ratios:
        raise ValueError("the table has no pruned model")
    chosen = min(ratios, key=lambda r: abs(r - ratio))
    if metric == "preferred":
        keep = sub.apply(lambda r: r["metric"] == TASKS[r["setting"]].preferred_metric, axis=1)
        sub = sub[keep]
    else:
        sub = sub[sub["metric"] == metric]
    sub = sub[(sub["method"] == DENSE_KEY) | (sub["ratio_requested"] == chosen)]
    agg = aggregate_seeds(sub)
    tasks = list(dict.fromkeys(agg["setting"]))
    methods = list(dict.fromkeys(agg["method"]))
    labels = _labels()
    ax = ax if ax is not None else plt.subplots(figsize=(max(6, 1.2 * len(tasks)), 4))[1]
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        g = agg[agg["method"] == method].set_index("setting").reindex(tasks)
        x = np.arange(len(tasks)) + (j - (len(methods) - 1) / 2) * width
        ax.bar(x, g["value"], width, yerr=np.nan_to_num(g["stderr"].to_numpy(float)), capsize=2,
               label=labels.get(method, method))
    names = [f"{t}\n({TASKS[t].preferred_metric})" if metric == "preferred" else t for t in tasks]
    ax.set_xticks(np.arange(len(tasks)), names, fontsize="small")
    ax.set_ylabel(f"{metric} (± 1 standard error)")
    ax.set_title(f"zero-shot accuracy at ratio {chosen:g}")
    ax.set_ylim(0, 1.3)  # room for the legend above the bars
    ax.legend(fontsize="small", ncol=min(4, len(methods)), loc="upper center")
    return ax


# ----------------------------------------------------------------------------------
# Published numbers (other models, other protocols)
# ----------------------------------------------------------------------------------
_REFERENCE_CSV = """\
source,model,method,run,removed,removed_basis,ppl_wikitext_word,ppl_wikitext2_128,arc_challenge,arc_easy,hellaswag,openbookqa,piqa,winogrande,boolq,mean_acc,mean_tasks,protocol
Liu et al. 2025 (authors' notebooks),Vicuna-7B-v1.5,fn,80 groups t=6.03,0.1984,total,16.72,,39.93,68.22,65.72,38.4,72.58,66.38,,58.54,6,lm-eval wikitext word perplexity; acc_norm for ARC-c/HellaSwag/OBQA; ARC/OBQA test splits; no BoolQ; no dense baseline
Liu et al. 2025 (authors' notebooks),Vicuna-7B-v1.5,fn-bias,80 groups + bias t=5.98,0.1916,total,15.85,,40.53,69.19,65.86,40.2,72.58,67.72,,59.35,6,as above
Liu et al. 2025 (authors' notebooks),Vicuna-7B-v1.5,fn,1 group (GPU) t=3.46,0.1932,total,18.94,,,,,,,,,,,as above; perplexity only
literature (no fine-tuning),LLaMA-7B,dense,,0.0,total,,12.62,,,,,,,,63.25,7,WikiText-2 token perplexity at 128 tokens; mean of 7 zero-shot tasks; as compiled in the project's method notes
literature (no fine-tuning),LLaMA-7B,flap,,0.2,total,,14.62,,,,,,,,62.08,7,as above
literature (no fine-tuning),LLaMA-7B,llm-pruner,,0.2,total,,19.09,,,,,,,,56.69,7,as above
literature (no fine-tuning),LLaMA-7B,wanda-sp,,0.2,total,,22.12,,,,,,,,63.35,7,as above
literature (no fine-tuning),LLaMA-7B,flap,,0.5,total,,31.8,,,,,,,,50.37,7,as above
literature (no fine-tuning),LLaMA-7B,llm-pruner,,0.5,total,,112.44,,,,,,,,42.13,7,as above
literature (no fine-tuning),LLaMA-7B,wanda-sp,,0.5,total,,366.0,,,,,,,,37.83,7,as above
"""


def reference_numbers() -> pd.DataFrame:
    """Published numbers: the authors' runs (Vicuna-7B-v1.5) and the structured-pruning literature (LLaMA-7B).

    These are **other models under other protocols** (WikiText-2, lm-eval's word
    perplexity, ARC test splits, 6 or 7 tasks); they orient the reader and cannot be
    compared number for number with this run. Accuracies are percentages, as
    published; ``removed`` is the fraction of all parameters removed.

    Returns
    -------
    pandas.DataFrame
        One row per published run: ``source``, ``model``, ``method``, ``run``, ``removed``,
        ``removed_basis``, ``ppl_wikitext_word`` (lm-eval ``wikitext`` word perplexity),
        ``ppl_wikitext2_128`` (token perplexity, 128-token windows), per-task accuracies
        (``acc_norm`` for ARC-c, HellaSwag, OpenBookQA), ``mean_acc`` over ``mean_tasks``
        tasks, and a ``protocol`` note.
    """
    df = pd.read_csv(io.StringIO(_REFERENCE_CSV))
    df["mean_tasks"] = df["mean_tasks"].astype("Int64")
    df["run"] = df["run"].fillna("")
    return df
