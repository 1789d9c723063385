"""The held-out text of stage 5: one token stream per corpus part, its windows, and the disjointness check.

The ``"evaluation"`` split of :mod:`funcprune.data` is disjoint from calibration; its
articles are split by article into a ``validation`` part (design choices) and a ``test``
part (reported numbers; :func:`evaluation_parts`). A part's texts are joined and
tokenized once (:func:`evaluation_stream`); perplexity windows are an evenly spread
subset of the non-overlapping grid of that stream (:func:`select_windows`), each starting
with the BOS token where the tokenizer puts one in front of a text. :func:`heldout_windows`
gives those windows to analyses that need per-token losses (chapter 6), and
:func:`check_disjoint` refuses a stream whose texts were used for calibration.
:meth:`EvaluationStream.window_articles` names the article each window was cut from (the
unit of the cluster bootstrap of :mod:`funcprune.compare`). :func:`literature_perplexity`
scores a second, labelled setting: the literature's protocol (FLAP's and Wanda's code),
consecutive windows of the stream tokenised once, with no BOS per window
(:func:`literature_windows`). :func:`window_table` and :func:`protocol_facts` read back from a run's
results what was scored: the windows of each length, the stream, the BOS rule and the disjointness check.

Used by :func:`funcprune.run.results.evaluate_run` (chapter :doc:`/executed/05_evaluate_benchmarks`) and
in the chapter :doc:`/executed/06_ablations`.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .data import HUB_DATASETS, dataset_info, load_texts
from .evaluate import bos_token_id, token_nll

__all__ = [
    "EVAL_PARTS",
    "EvaluationStream",
    "check_disjoint",
    "evaluation_parts",
    "evaluation_stream",
    "heldout_windows",
    "ids_sha256",
    "LITERATURE_RULE",
    "literature_perplexity",
    "literature_windows",
    "protocol_facts",
    "select_windows",
    "window_table",
]


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

    def window_articles(self, starts: Sequence[int], length: int) -> list[str]:
        """The article of each window ``[s, s + length)``: the text that holds most of its tokens.

        The cluster label of :func:`funcprune.compare.article_clusters` (windows of one
        article are resampled together). A window that straddles two articles goes to
        the one it has more tokens of (the earlier one on a tie).

        Raises
        ------
        ValueError
            The tokenizer gave no character offsets, so tokens have no article.
        """
        ids = self.dataset["ids"]
        out = []
        for s in starts:
            idx = self.text_index[int(s):int(s) + int(length)]
            if idx.size == 0 or (idx < 0).any():
                raise ValueError("the stream records no article per token (the tokenizer gave no character "
                                 "offsets): windows cannot be grouped by article")
            values, counts = np.unique(idx, return_counts=True)
            out.append(ids[int(values[np.argmax(counts)])])
        return out


def ids_sha256(ids: np.ndarray) -> str:
    """SHA-256 of token ids as little-endian int64 bytes (:attr:`EvaluationStream.sha256`, a window's checksum)."""
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
                            sha256=ids_sha256(ids), bos_token_id=bos_token_id(tokenizer), part=part)


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

    The windows :func:`funcprune.run.results.evaluate_run` would score with a budget of ``n_windows * seq_len``
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



def check_disjoint(stream: EvaluationStream, calibration: dict[str, Any] | None) -> dict[str, Any]:
    """Raise if a held-out text (of either part) was used for calibration; return what was checked.

    Parameters
    ----------
    stream : EvaluationStream
        The held-out stream to be scored (its corpus is checked, both parts).
    calibration : dict or None
        :func:`funcprune.run.calibration.calibration_record` of the run; ``None`` (no stage-1
        manifest) warns and checks nothing.

    Returns
    -------
    dict
        ``checked`` and what was compared (``overlap``, counts of ids, ``plans_unverified``),
        or the ``reason`` nothing was.

    Raises
    ------
    ValueError
        A held-out text id is among the calibration ids of the same corpus.
    """
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



#: What the literature setting is, in one sentence (recorded beside its numbers).
LITERATURE_RULE = ("the held-out part tokenised once (a BOS token first where the tokenizer adds one to a text) and "
                   "cut into consecutive windows of seq_len tokens from its start, with no BOS per window; each "
                   "window scores its last seq_len - 1 tokens; perplexity = exp(mean of the windows' mean NLL), "
                   "as FLAP's and Wanda's evaluation code computes it")


def literature_windows(stream: EvaluationStream, seq_len: int = 128,
                       max_tokens: int | None = None) -> tuple[torch.Tensor, list[int]]:
    """Windows of the literature's perplexity protocol: consecutive cuts of the stream, no BOS per window.

    FLAP's and Wanda's evaluation code tokenise the joined test texts once (the
    tokenizer's special tokens included, so one BOS at the very start for families that
    use one) and cut ``n_tokens // seq_len`` consecutive windows from the start. This
    gives those windows of ``stream``; with ``max_tokens`` (the book's budget) an evenly
    spread subset of the same grid (:func:`select_windows`).

    Parameters
    ----------
    stream : EvaluationStream
    seq_len : int, default=128
    max_tokens : int, optional
        ``None``: every window (the literature's protocol).

    Returns
    -------
    windows : LongTensor of shape (n, seq_len)
    starts : list of int
        Each window's start in the stream *with* the leading BOS (if any) counted.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    ids = stream.ids if stream.bos_token_id is None else np.concatenate([[stream.bos_token_id], stream.ids])
    starts = select_windows(ids.size, seq_len, max_tokens)
    rows = np.stack([np.asarray(ids[s:s + seq_len], dtype=np.int64) for s in starts])
    return torch.from_numpy(rows), starts


def literature_perplexity(model: Any, stream: EvaluationStream, *, seq_len: int = 128,
                          max_tokens: int | None = None, batch_size: int = 4) -> dict[str, Any]:
    """Perplexity under the literature's protocol (:func:`literature_windows`), as a second labelled setting.

    The book's own windows put a BOS token in front of every window where the tokenizer
    uses one (:func:`funcprune.run.results.evaluate_run`); FLAP's and Wanda's code does not.
    This scores ``model`` their way, so ratios can be set beside published tables in
    spirit (the corpus still differs from theirs).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Any device, sharded or not (scored by :func:`funcprune.evaluate.token_nll`).
    stream : EvaluationStream
    seq_len : int, default=128
    max_tokens : int, optional
        ``None``: every window.
    batch_size : int, default=4

    Returns
    -------
    dict
        Shaped like a perplexity record of a results part: ``ppl``, ``nll``,
        ``nll_stderr``, ``seq_len``, ``n_windows``, ``n_tokens_scored``,
        ``window_starts``, ``window_nll``, ``tokens_sha256`` (of the windows' tokens),
        ``bos_token_id`` (None: no BOS per window), ``window_articles``, plus
        ``protocol`` (``"literature"``) and ``rule``.
    """
    windows, starts = literature_windows(stream, seq_len, max_tokens)
    nll = token_nll(model, windows, batch_size=batch_size)  # (n, seq_len - 1)
    window_nll = nll.mean(axis=1)
    mean = float(window_nll.mean())
    shift = int(stream.bos_token_id is not None)  # window starts in the stream without the leading BOS
    articles = stream.window_articles([max(0, s - shift) for s in starts], seq_len) if (
        stream.text_index >= 0).all() else None
    return {"ppl": math.exp(mean), "nll": mean,
            "nll_stderr": float(window_nll.std(ddof=1) / math.sqrt(window_nll.size)) if window_nll.size > 1 else None,
            "seq_len": int(seq_len), "n_windows": int(window_nll.size), "n_tokens_scored": int(nll.size),
            "window_starts": starts, "window_nll": window_nll.tolist(), "tokens_sha256": ids_sha256(windows.numpy()),
            "bos_token_id": None, "window_articles": articles, "protocol": "literature", "rule": LITERATURE_RULE}


def window_table(settings: Sequence[Mapping[str, Any]], parts: Mapping[str, Mapping[str, Any]]) -> Any:
    """The windows of each perplexity setting a run scored, and whether every model read the same ones.

    Parameters
    ----------
    settings : sequence of dict
        The dense model's perplexity records (``results.json["models"]["dense"]["perplexity"]`` values), one per
        window length.
    parts : dict
        Every model's record, for how many were scored at each length and on which tokens.

    Returns
    -------
    pandas.DataFrame
        Index ``window requested``; ``window used``, ``windows``, ``tokens scored``, ``texts touched``,
        ``tokens sha256`` (first 16 hex digits), ``models`` and ``same windows for every model``.
    """
    import pandas as pd

    rows = []
    for p in settings:
        setting = str(p["seq_len_requested"])
        scored = [q["perplexity"][setting] for q in parts.values() if setting in q["perplexity"]]
        rows.append({"window requested": p["seq_len_requested"], "window used": p["seq_len"],
                     "windows": p["n_windows"], "tokens scored": p["n_tokens_scored"],
                     "texts touched": len(p["text_ids"]), "tokens sha256": p["tokens_sha256"][:16],
                     "models": len(scored),
                     "same windows for every model": len({q["tokens_sha256"] for q in scored}) == 1})
    return pd.DataFrame(rows).set_index("window requested")


def protocol_facts(record: Mapping[str, Any], settings: Sequence[Mapping[str, Any]], *, dataset: str,
                   eval_max_tokens: int | None | Sequence[int | None], ppl_seq_lens: Sequence[int]) -> dict[str, Any]:
    """What chapter 5 says of its held-out text and windows, by the name it glues each value under.

    Parameters
    ----------
    record : dict
        The run's results record (``results.json``: ``protocol``, ``calibration``, ``disjointness``,
        ``eval_text_ids``, ``sanity``).
    settings : sequence of dict
        The dense model's perplexity records, one per window length (as for :func:`window_table`).
    dataset : str
        The held-out corpus (its ``"evaluation"`` split is counted).
    eval_max_tokens, ppl_seq_lens
        The tokens budgeted per window length (one for all, or one each; ``None``: every window) and the lengths.

    Returns
    -------
    dict
        ``eval_corpus``, ``eval_sha``, ``n_eval_texts``, ``n_held_out_texts``, ``eval_part``, ``bos_text``,
        ``sanity_text``, ``stream_tokens``, ``windows_text``, ``eval_max_tokens``, ``n_calibration_texts``,
        ``n_overlap`` (held-out texts also used for calibration: 0 for a valid run) and ``disjoint_checked``.
    """
    protocol = record["protocol"]
    calibration = record["calibration"] or {"ids": []}
    eval_ids = record["eval_text_ids"]
    bos = protocol["bos"]["token_id"]
    budgets = eval_max_tokens if isinstance(eval_max_tokens, list) else [eval_max_tokens] * len(ppl_seq_lens)
    windows = " and ".join(f"{p['n_windows']} window{'s' if p['n_windows'] != 1 else ''} of {p['seq_len']} tokens"
                           for p in settings)
    return {"eval_corpus": protocol["eval_dataset"]["name"], "eval_sha": protocol["eval_dataset"]["sha256"][:16],
            "n_eval_texts": len(eval_ids), "n_held_out_texts": len(load_texts(dataset, "evaluation")),
            "eval_part": protocol["eval_dataset"]["part"],
            "bos_text": "no BOS token (this tokenizer adds none)" if bos is None else f"the BOS token (id {bos}) first",
            "sanity_text": record["sanity"]["message"], "stream_tokens": f"{protocol['eval_stream']['n_tokens']:,}",
            "windows_text": windows,
            "eval_max_tokens": " and ".join("every" if b is None else f"{b:,}" for b in budgets),
            "n_calibration_texts": len(calibration["ids"]), "n_overlap": len(set(calibration["ids"]) & set(eval_ids)),
            "disjoint_checked": "checked" if record["disjointness"].get("checked") else "could not be checked"}
