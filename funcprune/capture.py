"""Stage 1: hooked capture of every MLP channel's activity.

Each intermediate MLP channel of a decoder layer is a "voxel" and each token a
"time point", as in fMRI. Following the authors' code, a channel has two voxel copies:
the activation output ``act(gate x)`` (``"act"``) and the up projection ``up x``
(``"up"``); the product that feeds the down projection (``"product"``) can be
captured too. For non-gated families (GPT-2, GPT-NeoX) ``"up"`` is the
pre-activation and ``"act"`` its activation.

:class:`MLPRecorder` is a context manager that registers forward hooks and
removes exactly its own hooks in ``finally``. :func:`capture_activations` runs
batches of texts through the model, up to the last recorded layer only (the LM
head is never run), and hands the rows of every layer, as soon as the hook has
copied them, to an :class:`~funcprune.store.ActivationWriter`, so memory holds one
layer's record, not a whole batch.

Used in the chapter :doc:`/executed/01_capture_activations`.
"""

from __future__ import annotations

import functools
import os
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .adapters import ArchitectureAdapter, get_adapter, layer_widths
from .models import describe_model, input_device
from .provenance import environment_info
from .store import ActivationStore, ActivationWriter, all_finite, check_storage_dtype, split_layers

__all__ = ["KINDS", "MLPRecorder", "StopForward", "all_finite", "capture_activations", "rows_finite",
           "stop_after_layer", "stop_at_input", "tokenize_batches"]

#: Voxel kinds that can be captured per channel.
KINDS = ("act", "up", "product")
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def _check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds or len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds {list(kinds)} invalid; choose distinct values from {list(KINDS)}")
    return tuple(kinds)


class MLPRecorder:
    """Context manager recording the MLP intermediate activations of chosen layers.

    Like a hook point of TransformerLens: entering registers one forward hook per
    ``(layer, kind)``, leaving removes exactly those hooks (also on an error). Every
    forward pass then records, for each of them, the rows of the positions where
    :attr:`mask` is true as a fresh contiguous CPU tensor.

    Parameters
    ----------
    model : nn.Module
        A causal LM with a registered :class:`~funcprune.adapters.ArchitectureAdapter`.
    kinds : sequence of {"act", "up", "product"}, default=("act", "up")
        Voxel copies to record per channel.
    layers : sequence of int, optional
        Layers to record (default: all).
    stop_early : bool, default=False
        End every forward pass right after the last recorded layer by raising
        :class:`StopForward` there: the layers after it, the final norm and the LM head
        (its vocabulary is large) are not run; ``benchmarks/bench_capture.py`` measured
        the stopped pass of SmolLM2-135M on a 2-core CPU at 0.80-0.84 of the whole one.
        Run the model with :meth:`forward`, which catches it.
    dtype : {"float32", "float16"}, default="float32"
        dtype of the recorded rows (converted in the copy to the CPU).
    adapter : ArchitectureAdapter, optional
        The model's adapter (default: :func:`~funcprune.adapters.get_adapter`).
    on_record : callable, optional
        Called as ``on_record(key, rows)`` as soon as a record exists, while the
        forward pass goes on; the record is then not kept in :attr:`records`, so memory
        holds one record instead of a whole pass (capture streams each layer to disk
        this way: a pass of Vicuna-7B at batch size 8 is 23 GB).

    Attributes
    ----------
    records : dict[(int, str), torch.Tensor]
        ``(layer, kind) -> (n_rows, width)`` CPU tensor of the last forward pass: the
        positions where :attr:`mask` is true, row-major, or all ``batch * seq``
        positions when it is ``None`` (empty with ``on_record``).
    mask : torch.Tensor or None
        ``(batch, seq)`` bool tensor of the positions that are time points; set it
        before each forward pass. The recorder keeps a copy, so editing the tensor in
        place afterwards changes nothing: assign it again.

    Examples
    --------
    >>> with MLPRecorder(model, kinds=("act", "up")) as rec:  # doctest: +SKIP
    ...     rec.mask = attention_mask.bool()
    ...     model(input_ids, attention_mask=attention_mask)
    ...     act0 = rec.records[(0, "act")]
    """

    def __init__(self, model: nn.Module, kinds: Sequence[str] = ("act", "up"), layers: Sequence[int] | None = None,
                 *, stop_early: bool = False, dtype: str = "float32", adapter: ArchitectureAdapter | None = None,
                 on_record: Callable[[tuple[int, str], torch.Tensor], None] | None = None) -> None:
        self.model = model
        self.adapter = adapter or get_adapter(model)
        self.kinds = _check_kinds(kinds)
        self.layers = split_layers(layers, len(self.adapter.get_layers(model)))
        self.stop_early = stop_early
        check_storage_dtype(dtype)
        self.dtype = _TORCH_DTYPES[dtype]
        self.on_record = on_record
        self.records: dict[tuple[int, str], torch.Tensor] = {}
        self._mask: torch.Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def mask(self) -> torch.Tensor | None:
        return self._mask

    @mask.setter
    def mask(self, mask: torch.Tensor | None) -> None:
        if mask is not None and mask.ndim != 2:
            raise ValueError(f"mask must have shape (batch, seq), got {tuple(mask.shape)}")
        self._mask = None if mask is None else mask.detach().to("cpu", torch.bool, copy=True)

    def _record(self, key: tuple[int, str], value: torch.Tensor) -> None:
        value = value.detach()
        if self._mask is None:
            rows = value.reshape(-1, value.shape[-1]).to("cpu", self.dtype, copy=True)
        else:
            value = value.reshape(-1, *value.shape[-2:])  # (batch, seq, width)
            if tuple(self._mask.shape) != tuple(value.shape[:2]):
                raise ValueError(f"mask of shape {tuple(self._mask.shape)} does not match the (batch, seq) "
                                 f"shape {tuple(value.shape[:2])} of the recorded activations")
            rows = value[self._mask.to(value.device)].to("cpu", self.dtype)  # boolean indexing copies already
        if self.on_record is None:
            self.records[key] = rows
        else:
            self.on_record(key, rows)

    def __enter__(self) -> "MLPRecorder":
        layers = self.adapter.get_layers(self.model)
        seen: set[int] = set()
        try:
            for i in self.layers:
                for kind in self.kinds:
                    key = (i, kind)
                    if kind == "product":
                        module = self.adapter.module(layers[i], "mlp.down")
                        hook = module.register_forward_pre_hook(
                            lambda _m, args, key=key: self._record(key, args[0]))
                    else:
                        module = self.adapter.module(layers[i], "mlp.act" if kind == "act" else "mlp.up")
                        if id(module) in seen:
                            raise RuntimeError(f"module for {kind!r} of layer {i} is shared with another "
                                               "layer; recording it would mix layers")
                        hook = module.register_forward_hook(
                            lambda _m, _args, out, key=key: self._record(key, out))
                    seen.add(id(module))
                    self._handles.append(hook)
            if self.stop_early:
                self._handles.append(layers[max(self.layers)].register_forward_hook(_stop))
        except BaseException:
            self._remove()
            raise
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the model on ``args``/``kwargs`` and record; ``None`` if stopped early."""
        try:
            return self.model(*args, **kwargs)
        except StopForward:
            return None

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc: Any) -> None:
        self._remove()
        self.records = {}
        self.mask = None


class StopForward(Exception):
    """Ends a forward pass after the last layer an :class:`MLPRecorder` needs (``stop_early``)."""


def _stop(_module: nn.Module, _args: Any, _output: Any) -> None:
    raise StopForward


@contextmanager
def stop_after_layer(model: nn.Module, layer: int, adapter: ArchitectureAdapter | None = None) -> Iterator[None]:
    """Within the context, every forward pass of ``model`` ends after decoder ``layer``.

    The pass raises :class:`StopForward` there (catch it); hooks of earlier modules
    have run. :class:`MLPRecorder` does this with ``stop_early``; alone it gives the
    plain baseline of the same work (``benchmarks/bench_capture.py``).
    """
    handle = (adapter or get_adapter(model)).get_layers(model)[layer].register_forward_hook(_stop)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def stop_at_input(module: nn.Module) -> Iterator[None]:
    """Within the context, every forward pass raises :class:`StopForward` when it reaches ``module``.

    Pre-hooks registered on ``module`` before (an :class:`MLPRecorder`'s record of its input) have run.
    """
    def stop(_module: nn.Module, _args: Any) -> None:
        raise StopForward

    handle = module.register_forward_pre_hook(stop)
    try:
        yield
    finally:
        handle.remove()


def tokenize_batches(tokenizer: Any, texts: Sequence[str], *, batch_size: int, max_tokens: int,
                     first_text: int = 0) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Tokenise texts one by one (truncated to ``max_tokens``) and pad them in batches.

    Padding is on the right, so every real token keeps the position it has when the
    text runs alone and, under a causal mask, never attends to padding.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    texts : sequence of str
    batch_size, max_tokens : int
        Texts per batch; truncation length per text.
    first_text : int, default=0
        Skip the texts before this index (a resumed capture continues there).

    Yields
    ------
    indices : list of int
        Positions in ``texts`` of the batch's texts (empty texts are skipped).
    batch : dict
        ``input_ids`` and ``attention_mask`` of shape ``(batch, seq)``.
    """
    encoded = {i: tokenizer(texts[i], truncation=True, max_length=max_tokens, add_special_tokens=True)["input_ids"]
               for i in range(first_text, len(texts))}
    kept = [i for i, ids in encoded.items() if len(ids) > 0]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(kept), batch_size):
        idx = kept[start:start + batch_size]
        length = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), length), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, :len(encoded[i])] = 1
        yield idx, {"input_ids": ids, "attention_mask": mask}


def rows_finite(rows: torch.Tensor) -> bool:
    """Whether a block of rows holds no NaN and no inf, decided exactly in one fast pass.

    A row's sum is finite only if every value in it is (IEEE arithmetic never turns
    a NaN or an inf back into a finite number), so one vectorised pass of row sums
    clears almost every block; a block with a non-finite row sum (a non-finite value,
    or a sum that overflowed) is decided bit by bit by :func:`all_finite`. Called in
    the capture hook, it reads rows that the copy has just brought into the cache.

    Examples
    --------
    >>> rows_finite(torch.tensor([[60000.0, 60000.0], [1.0, 2.0]], dtype=torch.float16))
    True
    >>> rows_finite(torch.tensor([[1.0, float("nan")]]))
    False
    """
    if rows.numel() == 0 or bool(torch.isfinite(rows.sum(dim=-1)).all()):
        return True
    return all_finite(rows.detach().cpu().numpy())


def _write_finite(writer: ActivationWriter, where: str, weights: str, key: tuple[int, str],
                  rows: torch.Tensor) -> None:
    """Write a record to the store (uncommitted), refusing non-finite activations and naming ``where``.

    ``weights`` is the weights' dtype: only a half-precision model is told to try float32 (its
    activations can overflow); a float32 model's weights were checked when it was loaded, so its
    non-finite activations point at the inputs or the model code.
    """
    if not rows_finite(rows):
        fix = ("its weights are " + weights + ", whose range activations can overflow: load the model with "
               "`model_dtype: float32`" if weights in ("float16", "bfloat16") else
               f"the weights ({weights}) are finite if the model came from funcprune.load_model, which checks "
               "them: check the texts of this batch and the model's code, or load it with `model_dtype: float32`")
        raise ValueError(f"non-finite activations in layer {key[0]} ({key[1]}), {where}; {fix}")
    writer.write(key, rows.numpy())


def _empty_texts(texts: Sequence[str], kept: set[int], text_ids: Sequence[str]) -> list[int]:
    """Texts that tokenised to nothing (they give no time points), each named once in a warning."""
    empty = sorted(set(range(len(texts))) - kept)
    if empty:
        shown = [text_ids[i] for i in empty[:10]]
        warnings.warn(f"{len(empty)} calibration text(s) tokenised to zero tokens and give no time points: ids "
                      f"{shown}{' ...' if len(empty) > 10 else ''} (recorded as skipped_empty_texts in the store's "
                      "manifest); remove them from the calibration set to silence this, or choose other texts",
                      stacklevel=4)
    return empty


@torch.inference_mode()
def capture_activations(model: nn.Module, tokenizer: Any, texts: Sequence[str], out_dir: str | os.PathLike[str],
                        *, text_ids: Sequence[str] | None = None, dataset: Mapping[str, Any] | None = None,
                        batch_size: int = 4, max_tokens: int = 512, drop_first_token: bool = False,
                        kinds: Sequence[str] = ("act", "up"), dtype: str = "float32",
                        layers: Sequence[int] | None = None, overwrite: bool = False,
                        progress: bool = True, source: Mapping[str, Any] | None = None) -> ActivationStore:
    """Run texts through ``model`` and stream every MLP channel's activity to disk.

    Parameters
    ----------
    model : nn.Module
        Causal LM (any device or ``device_map``); left in eval mode.
    tokenizer : transformers tokenizer
        Its pad token is used for padding (right side).
    texts : sequence of str
        Calibration texts; each becomes up to ``max_tokens`` time points.
    out_dir : str or path-like
        Store directory (see :mod:`funcprune.store`). An incomplete store of the same
        run is resumed at its first uncommitted text, with this call's ``batch_size``
        (the rows written are those of an uninterrupted run); one of a different run
        is refused unless ``overwrite``. A complete store of the same run is verified
        (every file's digest) and returned.
    text_ids : sequence of str, optional
        Identifiers of the texts for the manifest (default: their positions).
    dataset : Mapping, optional
        Provenance of the texts (see :func:`funcprune.data.dataset_info`).
    batch_size : int, default=4
        Texts per forward pass.
    max_tokens : int, default=512
        Truncation length per text.
    drop_first_token : bool, default=False
        Drop each text's first token (BOS, or the attention-sink token) from the time points.
    kinds : sequence of {"act", "up", "product"}, default=("act", "up")
        Voxel copies per channel, in column order.
    dtype : {"float32", "float16"}, default="float32"
        Storage dtype.
    layers : sequence of int, optional
        Layers to capture (default: all).
    overwrite : bool, default=False
        Replace an existing store from a different run.
    progress : bool, default=True
        Show a progress bar over batches.
    source : Mapping, optional
        Where ``model`` came from (``LoadedModel.source`` of :func:`funcprune.models.load_model`):
        its name and revision go into the manifest and decide whether a store is resumed.
        Without it the manifest records only what the model tells (no revision).

    Returns
    -------
    ActivationStore
        The completed store.

    Raises
    ------
    ValueError
        For an empty text list, texts that are all empty, a bad dtype or kind, or
        non-finite activations (naming the layer and batch).
    """
    if len(texts) == 0:
        raise ValueError("the calibration set is empty: pass at least one text")
    if text_ids is not None and len(text_ids) != len(texts):
        raise ValueError(f"{len(text_ids)} text ids for {len(texts)} texts")
    if batch_size < 1 or max_tokens < 1:
        raise ValueError(f"batch_size ({batch_size}) and max_tokens ({max_tokens}) must be >= 1")
    check_storage_dtype(dtype)
    adapter = get_adapter(model)
    widths = layer_widths(model)
    batches = list(tokenize_batches(tokenizer, texts, batch_size=batch_size, max_tokens=max_tokens))
    if not batches:
        raise ValueError("every calibration text tokenised to zero tokens")
    kept = {i for idx, _ in batches for i in idx}  # of every text, before a resume skips the committed ones
    recorder = MLPRecorder(model, kinds=kinds, layers=layers, stop_early=True, dtype=dtype, adapter=adapter)
    identity = {
        "model": {k: v for k, v in describe_model(model, source).items() if k in ("name", "revision", "model_type")},
        "dataset": dict(dataset or {}),
        "text_ids": [str(t) for t in (text_ids if text_ids is not None else range(len(texts)))],
        "dtype": dtype,
        "kinds": list(recorder.kinds),
        "layers": recorder.layers,
        "widths": {str(i): widths[i] for i in recorder.layers},
        "max_tokens": max_tokens,
        "drop_first_token": drop_first_token,
    }
    skipped = _empty_texts(texts, kept, identity["text_ids"])
    writer = ActivationWriter(out_dir, identity, overwrite=overwrite)
    if writer.complete:
        return ActivationStore(out_dir)
    if writer.texts_done:  # resume at the first text not committed, whatever batch size wrote the rest
        batches = list(tokenize_batches(tokenizer, texts, batch_size=batch_size, max_tokens=max_tokens,
                                        first_text=writer.texts_done))
    sizes = writer.extra.setdefault("batch_sizes", [])
    if not sizes or sizes[-1] != batch_size:
        sizes.append(batch_size)
    device = input_device(model)
    weights = str(next(model.parameters()).dtype).replace("torch.", "")
    done = writer.batches_done
    was_training = model.training
    model.eval()
    try:
        with recorder, tqdm(total=done + len(batches), initial=done, desc="capturing activations", unit="batch",
                            disable=not progress) as bar:
            for b, (idx, batch) in enumerate(batches, start=done):
                mask = batch["attention_mask"].bool()
                if drop_first_token:
                    mask[:, 0] = False
                recorder.mask = mask
                where = f"batch {b} (texts {[identity['text_ids'][j] for j in idx]})"
                recorder.on_record = functools.partial(_write_finite, writer, where, weights)
                recorder.forward(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
                doc = np.repeat(np.asarray(idx, dtype=np.int32), mask.sum(dim=1).numpy())
                writer.commit(batch["input_ids"][mask].numpy(), doc, texts_done=idx[-1] + 1)
                bar.update(1)
    finally:
        model.train(was_training)
    return writer.finish(n_tokens=writer.rows, skipped_empty_texts=skipped, environment=environment_info())
