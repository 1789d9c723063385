"""The inputs :class:`funcprune.ica.FunctionalNetworks` reads: an array, a mapping of arrays, or an activation store.

One read interface (:class:`_Source`) over the three, so the estimator reads a layer's rows the same way
whether they sit in memory or in a memory-mapped store (one kind at a time, one group's rows: never a whole
layer), and the split of the tokens into groups of whole texts (:func:`_split_groups`, the paper's groups).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
from scipy.sparse import issparse

from .store import ActivationStore, StoreView


@dataclass
class _Source:
    """Uniform read access to the input of :meth:`FunctionalNetworks.fit`."""

    layers: list[int]
    n_rows: int
    doc_ids: np.ndarray | None
    read: Callable[[int, slice | np.ndarray], np.ndarray]
    voxel_channels: Callable[[int], np.ndarray]
    description: dict[str, Any] = field(default_factory=dict)


def _is_array(X: Any) -> bool:
    """Whether ``X`` is an array-like (scikit-learn's input), not a store, its path or a mapping of layers."""
    if isinstance(X, (str, os.PathLike, ActivationStore, StoreView)):
        return False
    return issparse(X) or not isinstance(X, Mapping)  # a dok sparse matrix is a dict


def _as_source(X: Any, doc_ids: np.ndarray | None) -> _Source:
    if isinstance(X, (str, os.PathLike)):
        X = ActivationStore(X)
    if isinstance(X, (ActivationStore, StoreView)):
        if doc_ids is not None:
            raise ValueError("doc_ids is taken from the store (store.doc_ids); do not pass it")
        store = X

        def read_store(layer: int, rows: slice | np.ndarray) -> np.ndarray:
            # one kind's memory map at a time, only this group's rows: never a whole layer
            return np.concatenate([np.asarray(store.layer(layer, kind)[rows], dtype=np.float64)
                                   for kind in store.kinds], axis=1)

        return _Source(
            layers=list(store.layers), n_rows=store.n_tokens, doc_ids=store.doc_ids,
            read=read_store,
            voxel_channels=store.voxel_channels,
            description={"kind": "store" if isinstance(X, ActivationStore) else "view", "path": str(store.path),
                         "dtype": store.dtype.name,
                         "kinds": list(store.kinds), "model": store.manifest.get("model"),
                         "dataset": store.manifest.get("dataset"), "n_tokens": store.n_tokens},
        )
    if isinstance(X, Mapping):
        arrays = {int(k): np.asarray(v) for k, v in X.items()}
    else:
        arrays = {0: np.asarray(X)}
    shapes = {k: a.shape for k, a in arrays.items()}
    if not arrays or any(len(s) != 2 for s in shapes.values()):
        raise ValueError(f"expected 2-D arrays of shape (n_tokens, n_voxels); got shapes {shapes}")
    if any(not np.issubdtype(a.dtype, np.number) for a in arrays.values()):
        raise ValueError("activations must be numeric arrays")
    n_rows = {s[0] for s in shapes.values()}
    if len(n_rows) != 1:
        raise ValueError(f"every layer needs the same number of rows (tokens); got shapes {shapes}")
    n = n_rows.pop()
    if doc_ids is not None:
        doc_ids = np.asarray(doc_ids)
        if doc_ids.shape != (n,):
            raise ValueError(f"doc_ids has shape {doc_ids.shape}, expected ({n},) (one per row)")
    return _Source(
        layers=sorted(arrays), n_rows=n, doc_ids=doc_ids,
        read=lambda layer, rows: np.array(arrays[layer][rows], dtype=np.float64),
        voxel_channels=lambda layer: np.arange(arrays[layer].shape[1]),
        description={"kind": "array", "shapes": {str(k): list(s) for k, s in shapes.items()}},
    )


def _split_groups(n_rows: int, doc_ids: np.ndarray | None, n_groups: int
                  ) -> tuple[list[slice | np.ndarray], list[dict[str, Any]]]:
    """Split rows into ``n_groups`` groups; rows of one text always share a group.

    Texts are taken in order of first appearance and dealt out in contiguous runs of
    (nearly) equal numbers of texts, as the paper's groups of 40 texts. Without
    ``doc_ids`` the rows are split into contiguous blocks of (nearly) equal size.

    Returns
    -------
    rows : list of slice or ndarray
        Row selector of each group (a slice when the rows are contiguous).
    info : list of dict
        ``group``, ``n_tokens``, ``rows`` (``[start, stop]`` or None) and ``docs``.
    """
    if doc_ids is None:
        if n_groups > n_rows:
            raise ValueError(f"n_groups={n_groups} exceeds the number of rows ({n_rows})")
        bounds = np.linspace(0, n_rows, n_groups + 1).round().astype(int)
        chunks = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        docs: list[list[int] | None] = [None] * n_groups
    else:
        unique, first = np.unique(doc_ids, return_index=True)
        ordered = unique[np.argsort(first, kind="stable")]
        if n_groups > len(ordered):
            raise ValueError(f"n_groups={n_groups} exceeds the number of texts ({len(ordered)}); "
                             "each group needs at least one text")
        doc_chunks = np.array_split(ordered, n_groups)
        chunks = [np.flatnonzero(np.isin(doc_ids, chunk)) for chunk in doc_chunks]
        docs = [[int(d) for d in chunk] for chunk in doc_chunks]
    rows: list[slice | np.ndarray] = []
    info: list[dict[str, Any]] = []
    for g, (idx, doc) in enumerate(zip(chunks, docs)):
        contiguous = len(idx) > 0 and idx[-1] - idx[0] + 1 == len(idx)
        rows.append(slice(int(idx[0]), int(idx[-1]) + 1) if contiguous else idx)
        info.append({"group": g, "n_tokens": int(len(idx)), "docs": doc,
                     "rows": [int(idx[0]), int(idx[-1]) + 1] if contiguous else None})
    return rows, info
