"""Stage 1: hooked capture of every MLP channel's activity.

Each intermediate MLP channel of a decoder layer is a "voxel" and each token a
"time point", as in fMRI. Following the seed, a channel has two voxel copies:
the activation output ``act(gate x)`` (``"act"``) and the up projection ``up x``
(``"up"``); the product that feeds the down projection (``"product"``) can be
captured too. For non-gated families (GPT-2, GPT-NeoX) ``"up"`` is the
pre-activation and ``"act"`` its activation.

:class:`MLPRecorder` is a context manager that registers forward hooks and
removes exactly its own hooks in ``finally``. :func:`capture_activations` runs
batches of texts through the model and streams the rows of every layer to an
:class:`~funcprune.store.ActivationWriter`, so memory is bounded by one batch.

Used in the chapter :doc:`/executed/01_capture_activations`.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .adapters import ArchitectureAdapter, get_adapter, layer_widths
from .models import describe_model
from .provenance import environment_info
from .store import ActivationStore, ActivationWriter, check_dtype, split_layers

__all__ = ["KINDS", "MLPRecorder", "capture_activations", "tokenize_batches"]

#: Voxel kinds that can be captured per channel.
KINDS = ("act", "up", "product")
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def _check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds or len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds {list(kinds)} invalid; choose distinct values from {list(KINDS)}")
    return tuple(kinds)


class MLPRecorder:
    """Context manager recording MLP intermediate activations of chosen layers.

    Parameters
    ----------
    model : nn.Module
        A causal LM with a registered :class:`~funcprune.adapters.ArchitectureAdapter`.
    kinds : sequence of {"act", "up", "product"}, default=("act", "up")
        Voxel copies to record per channel.
    layers : sequence of int, optional
        Layers to record (default: all).
    dtype : {"float32", "float16"}, default="float32"
        dtype of the recorded tensors (moved to the CPU and detached).

    Attributes
    ----------
    records : dict[(int, str), torch.Tensor]
        ``(layer, kind) -> (n_rows, width)`` tensor of the last forward pass. When
        :attr:`mask` is set (a ``(batch, seq)`` bool tensor), only the positions where
        it is true are kept, row-major, otherwise all ``batch * seq`` positions.

    Examples
    --------
    >>> with MLPRecorder(model, kinds=("act", "up")) as rec:  # doctest: +SKIP
    ...     model(input_ids)
    ...     act0 = rec.records[(0, "act")]
    """

    def __init__(self, model: nn.Module, kinds: Sequence[str] = ("act", "up"),
                 layers: Sequence[int] | None = None, dtype: str = "float32",
                 adapter: ArchitectureAdapter | None = None) -> None:
        self.model = model
        self.adapter = adapter or get_adapter(model)
        self.kinds = _check_kinds(kinds)
        check_dtype(dtype)
        self.dtype = _TORCH_DTYPES[dtype]
        self.layers = split_layers(layers, len(self.adapter.get_layers(model)))
        self.records: dict[tuple[int, str], torch.Tensor] = {}
        self.mask: torch.Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _store(self, key: tuple[int, str], value: torch.Tensor) -> None:
        value = value.detach()
        if self.mask is not None:
            value = value[self.mask.to(value.device)]
        else:
            value = value.reshape(-1, value.shape[-1])
        self.records[key] = value.to("cpu", self.dtype)

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
                            lambda _m, args, key=key: self._store(key, args[0]))
                    else:
                        module = self.adapter.module(layers[i], "mlp.act" if kind == "act" else "mlp.up")
                        if id(module) in seen:
                            raise RuntimeError(f"module for {kind!r} of layer {i} is shared with another "
                                               "layer; recording it would mix layers")
                        hook = module.register_forward_hook(
                            lambda _m, _args, out, key=key: self._store(key, out))
                    seen.add(id(module))
                    self._handles.append(hook)
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc: Any) -> None:
        self._remove()
        self.records.clear()
        self.mask = None


def tokenize_batches(tokenizer: Any, texts: Sequence[str], *, batch_size: int, max_tokens: int
                     ) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Tokenise texts one by one (truncated to ``max_tokens``) and pad them in batches.

    Padding is on the right, so every real token keeps the position it has when the
    text runs alone and, under a causal mask, never attends to padding.

    Yields
    ------
    indices : list of int
        Positions in ``texts`` of the batch's texts (empty texts are skipped).
    batch : dict
        ``input_ids`` and ``attention_mask`` of shape ``(batch, seq)``.
    """
    encoded = [tokenizer(t, truncation=True, max_length=max_tokens, add_special_tokens=True)["input_ids"]
               for t in texts]
    kept = [i for i, ids in enumerate(encoded) if len(ids) > 0]
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


def _check_and_append(writer: ActivationWriter, rows: Mapping[tuple[int, str], np.ndarray],
                      tokens: np.ndarray, doc: np.ndarray, batch: int, texts: list[str]) -> None:
    """Refuse non-finite activations, then append the batch (runs on the writer thread).

    The check sums each block first (a NaN or inf makes the sum non-finite) and only
    looks element-wise when the sum says so, so it costs one pass over the data.
    """
    for (layer, _kind), block in rows.items():
        if not np.isfinite(block.sum(dtype=np.float64)) and not np.isfinite(block).all():
            raise ValueError(f"non-finite activations in layer {layer}, batch {batch} (texts {texts}); "
                             "try float32 weights")
    writer.append(rows, tokens, doc)


def _input_device(model: nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


@torch.inference_mode()
def capture_activations(model: nn.Module, tokenizer: Any, texts: Sequence[str], out_dir: str | os.PathLike[str],
                        *, text_ids: Sequence[str] | None = None, dataset: Mapping[str, Any] | None = None,
                        batch_size: int = 4, max_tokens: int = 512, drop_first_token: bool = False,
                        kinds: Sequence[str] = ("act", "up"), dtype: str = "float32",
                        layers: Sequence[int] | None = None, overwrite: bool = False,
                        progress: bool = True) -> ActivationStore:
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
        run is resumed; one of a different run is refused unless ``overwrite``.
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
    check_dtype(dtype)
    adapter = get_adapter(model)
    recorder = MLPRecorder(model, kinds=kinds, layers=layers, dtype=dtype, adapter=adapter)
    widths = layer_widths(model)
    batches = list(tokenize_batches(tokenizer, texts, batch_size=batch_size, max_tokens=max_tokens))
    if not batches:
        raise ValueError("every calibration text tokenised to zero tokens")
    identity = {
        "model": {k: v for k, v in describe_model(model).items() if k in ("name", "revision", "model_type")},
        "dataset": dict(dataset or {}),
        "text_ids": [str(t) for t in (text_ids if text_ids is not None else range(len(texts)))],
        "dtype": dtype,
        "kinds": list(recorder.kinds),
        "layers": recorder.layers,
        "widths": {str(i): widths[i] for i in recorder.layers},
        "max_tokens": max_tokens,
        "drop_first_token": drop_first_token,
    }
    writer = ActivationWriter(out_dir, identity, overwrite=overwrite)
    if writer.complete:
        return ActivationStore(out_dir)
    device = _input_device(model)
    bar = tqdm(total=len(batches), initial=writer.batches_done, desc="capturing activations",
               unit="batch", disable=not progress)
    was_training = model.training
    model.eval()
    # Disk writes of batch b overlap the forward pass of batch b + 1 (at most one batch in flight,
    # so memory stays bounded by two batches).
    pending: Future[None] | None = None
    try:
        with recorder, ThreadPoolExecutor(max_workers=1) as io:
            for b, (idx, batch) in enumerate(batches):
                if b < writer.batches_done:
                    continue
                mask = batch["attention_mask"].bool()
                if drop_first_token:
                    mask[:, 0] = False
                recorder.mask = mask
                model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
                rows = {key: block.numpy() for key, block in recorder.records.items()}
                doc = np.repeat(np.asarray(idx, dtype=np.int32), mask.sum(dim=1).numpy())
                tokens = batch["input_ids"][mask].numpy()
                if pending is not None:
                    pending.result()
                    bar.update(1)
                texts_of_batch = [identity["text_ids"][j] for j in idx]
                pending = io.submit(_check_and_append, writer, rows, tokens, doc, b, texts_of_batch)
            if pending is not None:
                pending.result()
                bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    skipped = sorted(set(range(len(texts))) - {i for idx, _ in batches for i in idx})
    return writer.finish(n_tokens=writer.rows, skipped_empty_texts=skipped, environment=environment_info())
