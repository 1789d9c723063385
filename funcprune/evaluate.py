"""Evaluation building blocks: perplexity, parameter counts, FLOPs and latency.

Everything here works on an in-memory causal LM (dense or pruned) on any device:
inputs are moved to the model's device, nothing is computed with gradients, and
sums of log-likelihoods are accumulated in float64.

* :func:`token_nll` -- the NLL of every token of given windows, by the same engine as
  :func:`perplexity` (the package's one NLL engine: lesions and sweeps score through it).
* :func:`perplexity` -- token-level perplexity over held-out text, cut into
  non-overlapping windows of ``seq_len`` tokens (the protocol of the pruning
  literature: WikiText-2 at 128 and 2048 tokens). When the model's tokenizer puts a
  BOS token in front of a text (:func:`bos_token_id`), every window starts with it,
  as lm-eval's rolling perplexity does: families trained that way score several
  times worse without it.
* :func:`count_parameters` -- total, embedding, MLP and attention parameters,
  found through :mod:`funcprune.adapters` (tied embeddings counted once).
* :func:`flops_per_token` -- forward FLOPs per token, ``2 x`` the parameters
  that take part in a matrix multiply, plus an optional attention term.
* :func:`measure_latency` -- prefill time, decode time per token and peak memory.
* :func:`max_logit_difference` -- the largest logit difference of two models on the same tokens (a rebuilt or
  reloaded model against the one it should equal), and :func:`greedy_continuation` -- a prompt's greedy
  continuation, the text a reader compares by eye.

Zero-shot task accuracy lives in :mod:`funcprune.tasks`.
Used in the chapters :doc:`/executed/04_structured_pruning` and :doc:`/executed/05_evaluate_benchmarks`.

Why one module: perplexity, parameter and FLOP counts and latency are the three measurements
chapter 5 takes of every model, each a few dozen lines sharing the input-device and position
rules; split, a reader would open three files to learn one protocol.
"""

from __future__ import annotations

import inspect
import math
import resource
import statistics
import sys
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .adapters import CANONICAL_ATTN, get_adapter
from .models import input_device

__all__ = ["bos_token_id", "count_parameters", "flops_per_token", "greedy_continuation", "max_logit_difference",
           "max_positions", "measure_latency", "perplexity", "token_nll", "window_nll"]

#: Config attributes that may hold a model's maximum sequence length.
_MAX_POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length")
_MLP_NAMES = ("mlp.gate", "mlp.up", "mlp.down")


def max_positions(model: nn.Module) -> int | None:
    """Longest sequence the model's config allows, or ``None`` if it sets none."""
    config = getattr(model, "config", None)
    for key in _MAX_POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def bos_token_id(tokenizer: Any) -> int | None:
    """The BOS token id a tokenizer puts in front of every text, or ``None`` if it adds none.

    Decided by encoding a short text with ``add_special_tokens=True``: Llama-2 and
    Mistral tokenizers start it with their BOS; GPT-2 and SmolLM2 tokenizers, whose
    ``bos_token`` exists but is never added, return ``None``.

    >>> bos_token_id(None) is None
    True
    """
    if tokenizer is None:
        return None
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("Hello", add_special_tokens=True)["input_ids"]
    return int(bos) if len(ids) and ids[0] == bos else None


def _to_token_ids(
    texts: str | Sequence[str] | Sequence[int] | torch.Tensor,
    tokenizer: Any,
    add_special_tokens: bool,
) -> tuple[torch.Tensor, bool]:
    """Return the evaluation data as one 1-D int64 tensor and whether it was tokenized here."""
    if isinstance(texts, torch.Tensor):
        if texts.ndim != 1 or texts.dtype.is_floating_point:
            raise ValueError(f"token ids must be a 1-D integer tensor, got shape "
                             f"{tuple(texts.shape)} and dtype {texts.dtype}")
        return texts.detach().to("cpu", torch.long), False
    if isinstance(texts, str):
        texts = [texts]
    items = list(texts)
    if not items:
        raise ValueError("texts is empty: pass at least one text or token id")
    if all(isinstance(t, int) for t in items):
        return torch.tensor(items, dtype=torch.long), False
    if not all(isinstance(t, str) for t in items):
        kinds = sorted({type(t).__name__ for t in items})
        raise TypeError(f"texts must be strings or token ids (ints), got a mix of {kinds}")
    if tokenizer is None:
        raise ValueError("a tokenizer is needed to score text; pass tokenizer= or token ids")
    joined = "\n\n".join(items)
    ids = tokenizer(joined, add_special_tokens=add_special_tokens, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long), True


def perplexity(
    model: nn.Module,
    tokenizer: Any,
    texts: str | Sequence[str] | Sequence[int] | torch.Tensor,
    *,
    seq_len: int = 128,
    max_tokens: int | None = None,
    batch_size: int = 4,
    stride: int | None = None,
    text_ids: Sequence[Any] | None = None,
    add_special_tokens: bool = True,
    bos: int | str | None = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Token-level perplexity of a causal LM over held-out text.

    The texts are joined with ``"\\n\\n"`` and tokenized once (or given as token
    ids), optionally truncated to ``max_tokens``, and cut into windows of
    ``seq_len`` tokens. A window that would cross the end of the data is
    dropped, never padded. Each window is scored independently: position ``i``
    predicts token ``i + 1`` inside the window. Without a BOS token a window holds
    ``L = seq_len`` tokens of the data and scores the last ``L - 1``; with one
    (``bos``), a window is the BOS token followed by ``L - 1`` tokens of the data,
    all of them scored (the first is predicted from the BOS token alone). Either
    way a window scores ``seq_len - 1`` tokens. The perplexity is ``exp`` of the
    mean negative log-likelihood over all scored tokens, accumulated in float64.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM returning ``logits`` of shape ``(batch, seq_len, vocab)``.
        It may live on any device; windows are moved there.
    tokenizer : transformers tokenizer or None
        Used only when ``texts`` are strings.
    texts : str, sequence of str, sequence of int or 1-D LongTensor
        Held-out text(s), or an already tokenized stream ``(n_tokens,)``.
    seq_len : int, default=128
        Window length in tokens. Longer than the model's
        ``config.max_position_embeddings`` is clamped to it, and the result says so.
    max_tokens : int, optional
        Use only the first ``max_tokens`` tokens of the data.
    batch_size : int, default=4
        Windows per forward pass. The logits of one batch take
        ``batch_size * seq_len * vocab * 4`` bytes: lower it at seq_len 2048.
    stride : int, optional
        Start-to-start distance between windows; ``None`` (default) means
        ``seq_len``: non-overlapping windows, the literature's protocol. With
        ``stride < seq_len`` windows overlap and each scores only the tokens that
        no earlier window scored (more context per token, lower perplexity).
    text_ids : sequence, optional
        Identifiers of the texts (e.g. article ids), recorded in the result.
    add_special_tokens : bool, default=True
        Passed to the tokenizer when no BOS token is put in front of the windows
        (with one, the text is tokenized without special tokens).
    bos : int, "auto" or None, default="auto"
        Token id put in front of every window. ``"auto"``: :func:`bos_token_id` of
        ``tokenizer`` (``None`` without a tokenizer). ``None``: no BOS token.
    progress : bool, default=True
        Show a tqdm bar over batches.

    Returns
    -------
    dict
        ``ppl``, ``nll`` (mean, nats per token), ``n_tokens`` (tokens scored),
        ``n_windows``, ``seq_len`` (used), ``seq_len_requested``,
        ``seq_len_clamped``, ``stride``, ``n_tokens_data`` (tokens available),
        ``n_tokens_dropped`` (tail not covered by a full window), ``tokenized``,
        ``window_nll`` (list, one mean NLL per window in order, nats per token:
        the units of a standard error or bootstrap over windows),
        ``window_tokens`` (tokens scored in each window), ``bos_token_id`` (the
        token in front of every window, or ``None``) and ``text_ids`` (when given).
        ``nll`` is the token-weighted mean of ``window_nll``.

    Raises
    ------
    ValueError
        If the data hold fewer than ``seq_len`` tokens, or an argument is out of range.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (one context and one target token), got {seq_len}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    seq_len_requested = int(seq_len)
    max_pos = max_positions(model)
    clamped = max_pos is not None and seq_len > max_pos
    if clamped:
        seq_len = int(max_pos)  # type: ignore[arg-type]
    bos_id = bos_token_id(tokenizer) if isinstance(bos, str) and bos == "auto" else bos
    if isinstance(bos_id, str) or (bos_id is not None and int(bos_id) < 0):
        raise ValueError(f"bos must be a token id, 'auto' or None, got {bos!r}")
    offset = 0 if bos_id is None else 1
    span = seq_len - offset  # tokens of the data per window
    stride = span if stride is None else int(stride)
    if not 1 <= stride <= span:
        raise ValueError(f"stride must be in [1, {span}] (tokens of the data per window), got {stride}")

    ids, tokenized = _to_token_ids(texts, tokenizer, add_special_tokens and bos_id is None)
    n_data = int(ids.numel())
    if max_tokens is not None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {max_tokens}")
        ids = ids[:max_tokens]
    n_avail = int(ids.numel())
    if n_avail < span:
        raise ValueError(f"only {n_avail} tokens of data, fewer than one window of {span} tokens "
                         f"(seq_len={seq_len}{', BOS included' if offset else ''})")

    starts = list(range(0, n_avail - span + 1, stride))
    # first position (inside its window) whose label is scored: tokens already
    # scored by the previous window are masked out when windows overlap
    first_scored = [1] + [max(1, offset + span - stride)] * (len(starts) - 1)
    prefix = torch.full((offset,), -1 if bos_id is None else int(bos_id), dtype=torch.long)

    device = input_device(model)
    was_training = model.training
    model.eval()
    nll_sum = 0.0
    n_scored = 0
    window_nll: list[float] = []  # mean NLL of each window's scored tokens
    window_tokens: list[int] = []
    try:
        with torch.inference_mode():
            for b in tqdm(range(0, len(starts), batch_size), desc=f"perplexity@{seq_len}",
                          disable=not progress, unit="batch"):
                batch_starts = starts[b:b + batch_size]
                windows = torch.stack([torch.cat([prefix, ids[s:s + span]]) for s in batch_starts])  # (B, L)
                labels = windows.clone()
                for row, first in enumerate(first_scored[b:b + batch_size]):
                    labels[row, :first] = -100
                nll_rows = _batch_nll(model, windows, labels, device)  # (B, L - 1), 0 where ignored
                row_sums = nll_rows.double().sum(dim=1).tolist()
                row_counts = (labels[:, 1:] != -100).sum(dim=1).tolist()
                window_nll += [s / c for s, c in zip(row_sums, row_counts)]
                window_tokens += [int(c) for c in row_counts]
                nll_sum += sum(row_sums)
                n_scored += sum(row_counts)
    finally:
        model.train(was_training)

    mean_nll = nll_sum / n_scored
    covered = starts[-1] + span
    result: dict[str, Any] = {
        "ppl": math.exp(mean_nll),
        "nll": mean_nll,
        "n_tokens": n_scored,
        "n_windows": len(starts),
        "seq_len": seq_len,
        "seq_len_requested": seq_len_requested,
        "seq_len_clamped": bool(clamped),
        "max_position_embeddings": max_pos,
        "stride": stride,
        "n_tokens_data": n_data,
        "n_tokens_used": n_avail,
        "n_tokens_dropped": n_avail - covered,
        "tokenized": tokenized,
        "window_nll": window_nll,
        "window_tokens": window_tokens,
        "bos_token_id": None if bos_id is None else int(bos_id),
    }
    if text_ids is not None:
        result["text_ids"] = list(text_ids)
    return result


def _batch_nll(model: nn.Module, windows: torch.Tensor, labels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The package's one NLL engine: float32 NLL ``(B, L - 1)`` of ``labels[:, 1:]`` given ``windows``.

    Windows and labels are moved to ``device`` (:func:`funcprune.models.input_device`: the
    embedding's device, right for models sharded over several devices); labels of
    ``-100`` are not scored and give 0.
    """
    windows, labels = windows.to(device), labels.to(device)
    logits = model(input_ids=windows, use_cache=False).logits  # (B, L, V)
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).reshape(windows.shape[0], -1)


def window_nll(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 4) -> np.ndarray:
    """Mean NLL of each window (``(n_windows,)``, float64): the unit of the paired tests.

    Scored by :func:`perplexity`, as chapter 5 scores its windows (each window already holds its BOS
    token where the family uses one).
    """
    res = perplexity(model, None, windows.reshape(-1), seq_len=int(windows.shape[1]), batch_size=batch_size,
                     bos=None, progress=False)
    return np.asarray(res["window_nll"], dtype=np.float64)


def token_nll(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 4) -> np.ndarray:
    """Negative log-likelihood of every predicted token of every window, by the engine of :func:`perplexity`.

    Parameters
    ----------
    model : nn.Module
        A causal LM returning ``logits``, on any device or sharded over several
        (windows go to :func:`funcprune.models.input_device`).
    windows : LongTensor of shape (n_windows, seq_len)
        Token ids; position ``i`` predicts token ``i + 1`` within its window (put the
        BOS token first where the family needs it).
    batch_size : int, default=4
        Windows per forward pass.

    Returns
    -------
    ndarray of shape (n_windows, seq_len - 1), float64
        NLL (nats) of tokens ``1 .. seq_len - 1`` of each window, computed in float32
        exactly as :func:`perplexity` computes them: the mean of a row is that window's
        ``window_nll`` when :func:`perplexity` scores the same windows with ``bos=None``.

    Raises
    ------
    ValueError
        ``windows`` not of shape ``(n, seq_len >= 2)``, or ``batch_size < 1``.
    """
    if windows.ndim != 2 or windows.shape[1] < 2 or windows.dtype.is_floating_point:
        raise ValueError(f"windows must be integer token ids of shape (n_windows, seq_len >= 2), got "
                         f"{tuple(windows.shape)} {windows.dtype}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = input_device(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, windows.shape[0], batch_size):
                ids = windows[start:start + batch_size].long()
                out.append(_batch_nll(model, ids, ids, device).double().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out)


def max_logit_difference(model: nn.Module, other: nn.Module, input_ids: torch.Tensor) -> float:
    """The largest absolute difference of two models' logits (in float32) on the same tokens.

    Zero (or rounding) when ``other`` is ``model`` rebuilt, exported and reloaded, or pruned another way that
    should give the same network.

    Parameters
    ----------
    model, other : nn.Module
        Causal LMs returning ``logits`` of the same vocabulary.
    input_ids : LongTensor of shape (batch, seq_len)
        On the models' input device.

    Returns
    -------
    float
    """
    with torch.inference_mode():
        logits = model(input_ids=input_ids).logits.float()
        return (logits - other(input_ids=input_ids).logits.float()).abs().max().item()


def greedy_continuation(model: nn.Module, tokenizer: Any, prompt: str, *, max_new_tokens: int = 30) -> str:
    """The text a model generates after ``prompt``, greedily (no sampling), without the prompt.

    Runs on one CPU thread for the duration (one token at a time: tiny operations, which extra threads only
    slow down on a busy CPU); the thread count is restored afterwards.

    Parameters
    ----------
    model : transformers causal LM
        On any device (the prompt goes to :func:`funcprune.models.input_device`).
    tokenizer : transformers tokenizer
        With a ``pad_token_id`` (:func:`funcprune.models.prepare_tokenizer`).
    prompt : str
    max_new_tokens : int, default=30

    Returns
    -------
    str
        The new tokens decoded, special tokens skipped.
    """
    inputs = tokenizer(prompt, return_tensors="pt").to(input_device(model))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
    finally:
        torch.set_num_threads(threads)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def _embedding_params(model: nn.Module) -> set[int]:
    """ids of the parameters of every ``nn.Embedding`` and of the output embedding."""
    found: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            found.update(id(p) for p in module.parameters())
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    if out is not None:
        found.update(id(p) for p in out.parameters())
    return found


def _module_params(model: nn.Module, names: Sequence[str]) -> set[int]:
    """ids of the parameters of the canonical modules ``names`` in every decoder layer."""
    adapter = get_adapter(model)
    found: set[int] = set()
    for layer in adapter.get_layers(model):
        for name in names:
            if adapter.modules.get(name) is None:
                continue
            found.update(id(p) for p in adapter.module(layer, name).parameters())
    return found


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Count a model's parameters by kind; shared (tied) tensors count once.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A model of a family known to :func:`funcprune.adapters.get_adapter`.

    Returns
    -------
    dict of str to int
        ``total``; ``embedding`` (every ``nn.Embedding``, position embeddings
        included, plus the LM head unless it is tied to the input embedding);
        ``mlp`` (gate/up/down projections, weights and biases); ``attention``
        (q/k/v/o or fused qkv projections); ``other`` (norms and anything else),
        so that ``embedding + mlp + attention + other == total``.
    """
    params = {id(p): p.numel() for p in model.parameters()}  # deduplicates tied tensors
    emb = _embedding_params(model)
    mlp = _module_params(model, _MLP_NAMES) - emb
    attn = _module_params(model, CANONICAL_ATTN) - emb - mlp
    counts = {
        "total": sum(params.values()),
        "embedding": sum(params[i] for i in emb if i in params),
        "mlp": sum(params[i] for i in mlp if i in params),
        "attention": sum(params[i] for i in attn if i in params),
    }
    counts["other"] = counts["total"] - counts["embedding"] - counts["mlp"] - counts["attention"]
    return counts


def flops_per_token(model: nn.Module, attention_context: int | None = None) -> int:
    """Approximate forward FLOPs per token.

    ``2 x`` the parameters of every matrix multiply: all weights except embedding
    look-ups, plus the LM head, counted even when it is tied to the input
    embedding (the lookup is free, the output projection is not). Norms and
    biases are included; they are negligible. This is the ``C = 2N`` rule of
    Kaplan et al. (2020) with the unembedding counted.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Dense or pruned; widths are read from the actual modules.
    attention_context : int, optional
        If given, add the attention-score term ``4 * n_layers * context * d_attn``
        (``QK^T`` and the weighted sum of ``V``, ``2 * context * d_attn`` FLOPs
        each, per layer). For the average over a causal window of ``L`` tokens
        pass ``L // 2``. ``d_attn`` is the output width of the query projection.

    Returns
    -------
    int
        FLOPs per token of one forward pass.
    """
    counts = count_parameters(model)
    flops = 2 * (counts["total"] - counts["embedding"])
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None:
        flops += 2 * out.weight.numel()
    if attention_context:
        adapter = get_adapter(model)
        for layer in adapter.get_layers(model):
            if adapter.modules.get("attn.q") is not None:
                d_attn = adapter.module(layer, "attn.q").weight.shape[0]
            else:  # fused qkv: q is the first third of a GPT-2 / NeoX projection
                w = adapter.module(layer, "attn.qkv").weight
                d_attn = (w.shape[1] if adapter.weight_layout == "conv1d" else w.shape[0]) // 3
            flops += 4 * int(attention_context) * int(d_attn)
    return int(flops)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_peak_bytes() -> int:
    """Process high-water resident set size (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def measure_latency(
    model: nn.Module,
    inputs: torch.Tensor | Sequence[int] | str | None = None,
    *,
    tokenizer: Any = None,
    prefill_len: int = 128,
    decode_steps: int = 32,
    batch_size: int = 1,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Time a prefill and a greedy decode with the KV cache; report the medians.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM supporting ``past_key_values``; any device.
    inputs : LongTensor ``(prefill_len,)`` or ``(batch, prefill_len)``, ids, str or None
        The prompt. ``None`` draws ``batch_size x prefill_len`` random token ids
        from ``seed`` (latency does not depend on the text). A string needs
        ``tokenizer``. Longer prompts are cut to ``prefill_len``.
    tokenizer : transformers tokenizer, optional
        Only for a string ``inputs``.
    prefill_len : int, default=128
        Prompt tokens processed in one forward pass.
    decode_steps : int, default=32
        Tokens generated one at a time after the prefill (greedy).
    batch_size : int, default=1
        Sequences per pass when ``inputs`` is ``None`` or 1-D.
    repeats : int, default=5
        Timed repetitions; medians are reported.
    warmup : int, default=1
        Untimed repetitions first (allocator, kernels, caches).
    seed : int, default=0
        Seed of the random prompt.

    Returns
    -------
    dict
        ``prefill_ms``, ``decode_ms_per_token`` (medians), their per-repeat lists,
        ``prefill_tokens_per_s``, ``decode_tokens_per_s``, ``peak_memory_bytes``
        and ``memory_kind``: ``"cuda_max_allocated"`` (peak allocated during the
        timed runs) or ``"cpu_peak_rss_delta"`` (growth of the process's
        high-water RSS, a lower bound: 0 when an earlier peak was higher), plus
        the settings, device, dtype and torch thread count.
    """
    if prefill_len < 1 or decode_steps < 0 or repeats < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(
            f"need prefill_len >= 1, decode_steps >= 0, repeats >= 1, warmup >= 0, batch_size >= 1; "
            f"got {prefill_len}, {decode_steps}, {repeats}, {warmup}, {batch_size}"
        )
    device = input_device(model)
    if inputs is None:
        vocab = int(model.config.vocab_size)
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, vocab, (batch_size, prefill_len), generator=gen)
    else:
        if isinstance(inputs, str):
            if tokenizer is None:
                raise ValueError("a string prompt needs tokenizer=")
            inputs = tokenizer(inputs, return_tensors="pt")["input_ids"][0]
        ids = torch.as_tensor(inputs, dtype=torch.long)
        if ids.ndim == 1:
            ids = ids.unsqueeze(0).expand(batch_size, -1)
        if ids.shape[1] < prefill_len:
            raise ValueError(f"prompt has {ids.shape[1]} tokens, fewer than prefill_len={prefill_len}")
        ids = ids[:, :prefill_len]
    ids = ids.contiguous().to(device)

    # transformers >= 5.2x names the KV cache ``cache``; older releases ``past_key_values``
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def one_run() -> tuple[float, float]:
        _sync(device)
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, **extra)
        _sync(device)
        t1 = time.perf_counter()
        past, tok = getattr(out, cache_kw), out.logits[:, -1:].argmax(-1)
        for _ in range(decode_steps):
            out = model(input_ids=tok, use_cache=True, **{cache_kw: past}, **extra)
            past, tok = getattr(out, cache_kw), out.logits[:, -1:].argmax(-1)
        _sync(device)
        t2 = time.perf_counter()
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3 / max(decode_steps, 1)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                one_run()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            else:
                base = _rss_peak_bytes()
            runs = [one_run() for _ in range(repeats)]
            if device.type == "cuda":
                peak, kind = torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
            else:
                peak, kind = _rss_peak_bytes() - base, "cpu_peak_rss_delta"
    finally:
        model.train(was_training)

    prefill = [r[0] for r in runs]
    decode = [r[1] for r in runs]
    prefill_ms = statistics.median(prefill)
    decode_ms = statistics.median(decode)
    return {
        "prefill_ms": prefill_ms,
        "decode_ms_per_token": decode_ms if decode_steps else None,
        "prefill_ms_runs": prefill,
        "decode_ms_per_token_runs": decode if decode_steps else [],
        "prefill_tokens_per_s": batch_size * prefill_len / (prefill_ms / 1e3),
        "decode_tokens_per_s": batch_size / (decode_ms / 1e3) if decode_steps else None,
        "peak_memory_bytes": int(peak),
        "memory_kind": kind,
        "memory_baseline_bytes": int(base),
        "prefill_len": prefill_len,
        "decode_steps": decode_steps,
        "batch_size": int(ids.shape[0]),
        "repeats": repeats,
        "warmup": warmup,
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
    }
