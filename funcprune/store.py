"""On-disk activation store: one raw row-major file per layer plus a manifest.

Layout of a store directory::

    manifest.json      what produced the data and how far the capture got
    layer_000_act.bin  (n_tokens, width) in the manifest's dtype, row-major, one file per kind
    layer_000_up.bin
    ...
    tokens.bin         (n_tokens,) int32 token id of every row
    docs.bin           (n_tokens,) int32 index of the text each row came from

Voxels of a layer are ordered kind-major: for kinds ``("act", "up")`` and an MLP
of width ``I``, columns ``0..I-1`` of :meth:`ActivationStore.layer` are the ``act``
copies of channels ``0..I-1`` and columns ``I..2I-1`` their ``up`` copies (see
:meth:`ActivationStore.voxel_channels`). Each kind has its own file, so capture
writes each hooked tensor as it is, without concatenating.

Rows are appended batch by batch. After each batch the files are flushed and the
manifest is rewritten atomically with the committed row count and ``texts_done``, the
index of the first text not yet committed, so a run that is interrupted resumes from
the last committed text: :class:`ActivationWriter` truncates any partially written rows
and capture continues with the next text, whatever the batch size of the new run (so
the rows written are always those of an uninterrupted run; with another batch size
their values may differ from it in the last bits, as between any two batch sizes). A
manifest that describes a different model, dataset, text list, dtype or format is
refused instead of being mixed in.

**Writes.** :meth:`ActivationWriter.write` copies each block into a page-aligned staging
buffer (a few, reused) and returns; one background thread writes the buffers in the order
they came, with direct I/O where the operating system allows it (Linux ``O_DIRECT``: the
disk reads the buffer itself instead of the kernel copying it into the page cache), and
hashes them as it goes. :meth:`~ActivationWriter.commit` waits for every write of its
batch and raises the first error of any. A block whose length or file offset is not a
multiple of :data:`BLOCK_ALIGNMENT` (an MLP width that is not a multiple of 128 float32
values), and every block on a file system that refuses direct I/O (``EINVAL``, e.g.
tmpfs), is written buffered instead: the bytes on disk are the same either way. Why this
much machinery: measured on the 2-core machine for one 1.8 GB capture (a profile of
``capture_activations`` and a write test), synchronous buffered writes cost 3.5 s and
reading the store back for its digests 4.4 s, against 6.2 s for the forward pass itself;
``benchmarks/bench_capture.py`` measures the whole, and the README gives its ratios.

**Verification.** :meth:`ActivationWriter.finish` records the size and XXH3-128
digest (:data:`STORE_DIGEST`) of every data file in the manifest (``files``: the digests
computed while writing; a file of a resumed store, or one written out of order, is read once
instead).
Opening an :class:`ActivationStore` always compares the sizes (a ``stat`` per file), so
a truncated or replaced file is named at once instead of being read as fewer tokens;
``ActivationStore(path, verify=True)`` also compares the digests (one read of the
store). A writer that finds a complete store (capture run again) verifies the digests
before returning it. Every commit records, per file, the XXH3-128 digest of its committed
bytes (``committed`` in the manifest: a copy of the writer's running digest at that point,
so it costs nothing beyond the hashing already done); a writer that resumes an incomplete
store reads the committed rows once, compares them with those digests and checks that they
hold no NaN or inf, so damage done to them since (a flipped bit, a bad sector, an edit) is
refused instead of being resumed over and sealed with fresh digests. The digests of that
read carry on, so a resumed store's files are not read again at
:meth:`~ActivationWriter.finish`. Any failure raises
:class:`~funcprune._io.ArtefactError` naming the file and the fix: delete the store and
re-run stage 1. A full disk raises :class:`DiskFullError`: one line naming the store, the
free space and what to do; nothing committed is lost, and the capture resumes.

Used in the chapter :doc:`/executed/01_capture_activations`.

Why one module: the writer and the reader are two sides of one file format (layout,
identity, committed rows, file records); a change to either must be read against the other.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ._io import DIGEST_NAMES, ArtefactError, atomic_write_json, file_record, new_digest, read_json, verify_file

__all__ = ["ActivationStore", "ActivationWriter", "DiskFullError", "IncompatibleStoreError", "SUPPORTED_DTYPES",
           "StoreView", "all_finite", "text_positions"]

STORE_FORMAT = "funcprune-activations/3"
#: Storage dtypes a user may choose; computations downstream are done in float64.
SUPPORTED_DTYPES = ("float32", "float16")
#: Manifest keys that must match for a resume to be allowed.
IDENTITY_KEYS = ("format", "model", "dataset", "text_ids", "dtype", "kinds", "layers", "widths",
                 "max_tokens", "drop_first_token")
#: Direct I/O needs page-aligned memory, and lengths and file offsets that are multiples of the
#: disk's logical block size (512 on most disks; one that needs more refuses with EINVAL).
PAGE = 4096
BLOCK_ALIGNMENT = 512
#: Staging buffers in flight at once: direct writes wait for the disk, so one thread does them
#: while the forward pass goes on, at most this many blocks behind it.
IN_FLIGHT = 4
#: Digest of the store's files (:data:`funcprune._io.DIGESTS`): XXH3-128, computed by the writer's
#: thread as the bytes are written. SHA-256 there cost about 0.1 of the capture's time on two cores
#: (the thread competes with the forward pass); XXH3-128 is ten times cheaper and detects the same
#: accidental corruption. Stores written with SHA-256 records are still read and verified.
STORE_DIGEST = "xxh3_128"


class IncompatibleStoreError(RuntimeError):
    """An existing store was produced by a different model, dataset or setting."""


class DiskFullError(OSError):
    """The disk filled up while a store was written (``ENOSPC``); the message says where and what to do.

    It is an :class:`OSError` with ``errno.ENOSPC``, so handlers of the bare error still catch it;
    its text is one line, without the ``[Errno 28]`` prefix.
    """

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _size(n_bytes: float) -> str:
    """Bytes as a reader reads them.

    >>> _size(1.8e9), _size(12e6)
    ('1.80 GB', '12.0 MB')
    """
    return f"{n_bytes / 1e9:,.2f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:,.1f} MB"


def _free_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing parent); None if unknown."""
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _fix(path: Path) -> str:
    """How to recover from a damaged store."""
    return (f"delete {path} and re-run stage 1 (capture_activations, notebooks/01_capture_activations.ipynb) "
            "to capture it again")


#: For each storage dtype: its signed and unsigned integer views and its exponent mask.
_FLOAT_BITS = {np.dtype(np.float16): (np.int16, np.uint16, 0x7C00, 0x8000),
               np.dtype(np.float32): (np.int32, np.uint32, 0x7F800000, 0x80000000)}


def all_finite(block: np.ndarray) -> bool:
    """Whether a float16 or float32 array holds no NaN and no inf, read from its bits.

    An IEEE value is NaN or inf exactly when all its exponent bits are set. Seen as
    signed integers, the non-finite positive values are the ones ``>= mask`` (the
    exponent mask); seen as unsigned, the non-finite negative ones are ``>= sign | mask``.
    Two integer maxima decide it exactly, with no conversion (numpy computes
    float16 sums in software, ten times slower).

    Examples
    --------
    >>> all_finite(np.array([1.0, -2.5e38, 0.0], dtype=np.float32))
    True
    >>> all_finite(np.array([1.0, -np.inf], dtype=np.float16))
    False
    """
    if block.size == 0:
        return True
    signed, unsigned, mask, sign = _FLOAT_BITS[block.dtype]
    return bool(block.view(signed).max() < mask and block.view(unsigned).max() < (sign | mask))


def check_storage_dtype(dtype: str) -> np.dtype:
    """Return the numpy dtype for a storage dtype name, or raise a clear error.

    (:func:`funcprune.models.check_dtype` checks a model's weight dtype.)
    """
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; choose one of {list(SUPPORTED_DTYPES)}")
    return np.dtype(dtype)


def _layer_file(root: Path, layer: int, kind: str) -> Path:
    return root / f"layer_{layer:03d}_{kind}.bin"


class ActivationWriter:
    """Append captured activations to a store, resumably.

    Parameters
    ----------
    path : str or path-like
        Store directory.
    identity : Mapping
        What makes this capture what it is: ``model``, ``dataset``, ``text_ids``,
        ``dtype``, ``kinds``, ``layers``, ``widths`` (MLP width per layer),
        ``max_tokens``, ``drop_first_token``. Stored in the manifest and compared
        on resume.
    overwrite : bool, default=False
        Discard an incompatible existing store instead of raising.

    Attributes
    ----------
    batches_done : int
        Batches already committed (non-zero when resuming).
    texts_done : int
        Index of the first text not yet committed: a resumed capture continues there.
    rows : int
        Rows (tokens) committed per layer.
    direct_io : bool
        Whether blocks are still written with direct I/O (False from the first refusal on).
    bytes_direct : int
        Bytes this writer wrote with direct I/O (the rest went through the page cache).
    committed : dict of str to str
        XXH3-128 of every file's committed bytes, as of the last commit (recorded in the manifest
        and verified before a resume).

    Raises
    ------
    DiskFullError
        From any method, when the disk fills up: naming the store, the free space and the fix.
    """

    def __init__(self, path: str | os.PathLike[str], identity: Mapping[str, Any], *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.identity = {"format": STORE_FORMAT, **identity}
        self.np_dtype = check_storage_dtype(self.identity["dtype"])
        self.layers: list[int] = list(self.identity["layers"])
        self.kinds: list[str] = list(self.identity["kinds"])
        self.widths = {layer: int(self.identity["widths"][str(layer)]) for layer in self.layers}
        self.batches_done = 0
        self.texts_done = 0
        self.rows = 0
        self.complete = False
        self.extra: dict[str, Any] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.committed: dict[str, str] = {}
        self._pending: dict[tuple[int, str], int] = {}
        self.direct_io = hasattr(os, "O_DIRECT")
        self.bytes_direct = 0
        self._free: list[mmap.mmap] = []  # staging buffers not in flight
        # Digest of each file as its bytes are written, in order (the thread writes FIFO); a file
        # written out of order (a resumed store, a batch written again) is hashed by reading it at finish.
        self._hashes: dict[Path, tuple[Any, int]] = {}
        self._in_flight: deque[Future[mmap.mmap]] = deque()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="funcprune-store")
        with self._disk_full_named():
            self._open(overwrite)

    @contextmanager
    def _disk_full_named(self) -> Iterator[None]:
        """Turn a bare ``ENOSPC`` of the block into one :class:`DiskFullError` that says where and what to do."""
        try:
            yield
        except DiskFullError:
            raise
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            raise self._disk_full() from None

    def _disk_full(self) -> DiskFullError:
        """The error of a full disk: the store, its free space, what the rest needs, the fix."""
        free = _free_bytes(self.path)
        texts_left = max(len(self.identity.get("text_ids", [])) - self.texts_done, 0)
        need = texts_left * int(self.identity.get("max_tokens") or 0) * sum(self._files().values())
        return DiskFullError(
            f"{self.path}: the disk filled up while the activation store was written (No space left on device); "
            f"{'an unknown amount' if free is None else _size(free)} free there, and the {texts_left} texts still "
            f"to capture need up to {_size(need)} more. Free space (or set run_dir to a larger disk, lower n_texts "
            f"or max_tokens, or store `dtype: float16`) and run stage 1 again: it resumes at text {self.texts_done} "
            f"and keeps the {self.rows} rows already committed")

    # -- set-up -----------------------------------------------------------------
    def _open(self, overwrite: bool) -> None:
        manifest_path = self.path / "manifest.json"
        if manifest_path.exists():
            old = read_json(manifest_path, fix=_fix(self.path))
            mismatched = [k for k in IDENTITY_KEYS if old.get(k) != self.identity.get(k)]
            if mismatched and not overwrite:
                older = ("; it was written by another version of funcprune (format "
                         f"{old.get('format')!r}, this one writes {STORE_FORMAT!r})" if "format" in mismatched else "")
                raise IncompatibleStoreError(
                    f"{self.path} holds activations from a different run (differs in "
                    f"{mismatched}){older}; pass overwrite=True (or delete it) to capture again, "
                    "or choose another directory"
                )
            if not mismatched:
                self.batches_done = int(old["batches_done"])
                self.texts_done = int(old["texts_done"])
                self.rows = int(old["rows"])
                self.complete = bool(old["complete"])
                self.extra = dict(old.get("extra", {}))
                self.committed = dict(old.get("committed", {}))
                if self.complete:  # reused as it is: check every byte first
                    ActivationStore(self.path, verify=True)
                    return
                self._truncate_to_committed()
                self._verify_committed()
                return
        self.path.mkdir(parents=True, exist_ok=True)
        for f in self._files():
            f.write_bytes(b"")
            self._hashes[f] = (new_digest(STORE_DIGEST), 0)
        self._write_manifest()

    def _files(self) -> dict[Path, int]:
        """Every data file of the store and the bytes of one of its rows."""
        files = {_layer_file(self.path, layer, kind): self.widths[layer] * self.np_dtype.itemsize
                 for layer in self.layers for kind in self.kinds}
        return {**files, self.path / "tokens.bin": 4, self.path / "docs.bin": 4}

    def _truncate_to_committed(self) -> None:
        """Drop rows written after the last committed batch (an interrupted append)."""
        for f, row_bytes in self._files().items():
            expected = self.rows * row_bytes
            size = f.stat().st_size if f.exists() else -1
            if size < expected:
                raise ArtefactError(f, f"holds {size} bytes but the manifest commits {expected} (truncated, "
                                       "deleted or copied partially)", _fix(self.path))
            if size > expected:
                with open(f, "r+b") as fh:
                    fh.truncate(expected)

    def _verify_committed(self, chunk_bytes: int = 64 << 20) -> None:
        """Refuse to resume over committed rows that changed since their commit; carry their digests on.

        Reads every file's committed bytes once: a layer file's rows are checked for NaN and
        inf, and each file's XXH3-128 is compared with the digest its last commit recorded
        (:attr:`committed`; a store of an older writer records none and gets the NaN/inf check
        only). The digests computed here continue as the files' running digests, so
        :meth:`finish` need not read the files again.
        """
        for f, row_bytes in self._files().items():
            layer_file = f.name not in ("tokens.bin", "docs.bin")
            digest, end, finite = new_digest(STORE_DIGEST), self.rows * row_bytes, True
            step = max(1, chunk_bytes // row_bytes) * row_bytes
            with open(f, "rb") as fh:
                for start in range(0, end, step):
                    block = fh.read(min(step, end - start))
                    digest.update(block)
                    if layer_file and finite:
                        finite = all_finite(np.frombuffer(block, dtype=self.np_dtype))
            if not finite:
                raise ArtefactError(f, "committed rows hold NaN or inf, which capture never writes (the file "
                                       "was overwritten)", _fix(self.path))
            expected = self.committed.get(f.name)
            if expected is not None and digest.hexdigest() != expected:
                raise ArtefactError(f, f"its {self.rows} committed rows changed after they were committed "
                                       f"({DIGEST_NAMES[STORE_DIGEST]} differs: a flipped bit, a bad sector or an "
                                       "edit); resuming over them would seal the damage", _fix(self.path))
            self._hashes[f] = (digest, end)

    def _committed_digests(self) -> dict[str, str]:
        """Digest of every file's committed bytes: a copy of its running digest, read from disk only if lost.

        A running digest is lost when a block was written out of order (a batch written again
        after a refused commit); the committed bytes are then read once, and the digest goes on.
        """
        digests = {}
        for f, row_bytes in self._files().items():
            end = self.rows * row_bytes
            running = self._hashes.get(f)
            if running is None or running[1] != end:
                digest = new_digest(STORE_DIGEST)
                with open(f, "rb") as fh:
                    for start in range(0, end, 64 << 20):
                        digest.update(fh.read(min(64 << 20, end - start)))
                running = self._hashes[f] = (digest, end)
            digests[f.name] = running[0].copy().hexdigest()
        return digests

    def _write_manifest(self) -> None:
        atomic_write_json(self.path / "manifest.json", {
            **self.identity,
            "batches_done": self.batches_done,
            "texts_done": self.texts_done,
            "rows": self.rows,
            "complete": self.complete,
            "extra": self.extra,
            **({"files": self.files} if self.complete else {"committed": self.committed}),
        })

    # -- appending --------------------------------------------------------------
    def write(self, key: tuple[int, str], block: np.ndarray) -> None:
        """Write one ``(layer, kind)`` block of the batch being appended, uncommitted.

        Blocks can be written as soon as they exist (capture writes each layer while
        the forward pass goes on); the batch counts only after :meth:`commit`. Until
        then its bytes lie past the committed end of the files, where a resumed or
        retried batch overwrites them.

        Parameters
        ----------
        key : (int, str)
            Layer and voxel kind.
        block : ndarray of shape (n_rows, width)
            The batch's rows; every block of a batch has the same ``n_rows``.
        """
        layer, kind = key
        if layer not in self.widths or kind not in self.kinds:
            raise ValueError(f"(layer, kind) {key} is not in this store (layers {self.layers}, kinds {self.kinds})")
        block = np.ascontiguousarray(block, dtype=self.np_dtype)
        n_rows = next(iter(self._pending.values()), None)  # set by the batch's first block
        if (block.ndim != 2 or block.shape[1] != self.widths[layer]
                or (n_rows is not None and block.shape[0] != n_rows)):
            raise ValueError(f"layer {layer} {kind}: rows of shape {block.shape}, expected "
                             f"({'n_rows' if n_rows is None else n_rows}, {self.widths[layer]})")
        with self._disk_full_named():
            self._write_at(_layer_file(self.path, layer, kind), block, self.rows * block.shape[1] * block.itemsize)
        self._pending[key] = block.shape[0]

    def commit(self, token_ids: np.ndarray, doc_ids: np.ndarray, *, texts_done: int | None = None) -> None:
        """Commit the blocks written since the last commit as one batch.

        Parameters
        ----------
        token_ids, doc_ids : ndarray of shape (n_rows,)
            Token id and text index of every row of the batch.
        texts_done : int, optional
            Index of the first text after this batch (capture passes it: a text with no
            rows counts too); default one past the largest ``doc_ids``.

        Raises
        ------
        ValueError
            If a ``(layer, kind)`` of the store was not written or the row counts
            disagree; nothing is committed and the batch can be written again.
        """
        with self._disk_full_named():
            self._commit(token_ids, doc_ids, texts_done)

    def _commit(self, token_ids: np.ndarray, doc_ids: np.ndarray, texts_done: int | None) -> None:
        self._drain()
        pending, self._pending = self._pending, {}
        n_rows = len(token_ids)
        expected_keys = {(layer, kind) for layer in self.layers for kind in self.kinds}
        if set(pending) != expected_keys or len(doc_ids) != n_rows or any(n != n_rows for n in pending.values()):
            raise ValueError(f"batch not committed: written (layer, kind) blocks {sorted(pending)} with "
                             f"{sorted(set(pending.values()))} rows, {n_rows} token ids and {len(doc_ids)} doc ids; "
                             f"the store expects every one of {sorted(expected_keys)} with the same rows")
        for name, values in (("tokens.bin", token_ids), ("docs.bin", doc_ids)):
            self._write_at(self.path / name, np.ascontiguousarray(values, dtype=np.int32), self.rows * 4)
        self._drain()  # every byte of the batch is on disk before the manifest commits it
        self.rows += n_rows
        self.batches_done += 1
        if texts_done is None:
            texts_done = int(np.max(doc_ids)) + 1 if n_rows else self.texts_done
        self.texts_done = max(self.texts_done, int(texts_done))
        self.committed = self._committed_digests()
        self._write_manifest()

    def append(self, rows: Mapping[tuple[int, str], np.ndarray], token_ids: np.ndarray,
               doc_ids: np.ndarray) -> None:
        """Write every block of one batch and commit it (:meth:`write`, then :meth:`commit`).

        Parameters
        ----------
        rows : Mapping[(int, str), ndarray of shape (n_rows, width)]
            Activations of every (layer, kind) of the store for this batch.
        token_ids, doc_ids : ndarray of shape (n_rows,)
            Token id and text index of every row.
        """
        self._pending = {}
        for key, block in rows.items():
            self.write(key, block)
        self.commit(token_ids, doc_ids)

    def _write_at(self, path: Path, data: np.ndarray, offset: int) -> None:
        """Write ``data`` at byte ``offset`` (the committed end) of ``path``, by direct I/O if possible.

        Writing at the committed end rather than appending overwrites whatever an
        interrupted batch left there. The bytes are staged in a page-aligned buffer and
        written (and hashed) by the background thread, in the order of the calls.
        """
        raw = memoryview(np.ascontiguousarray(data)).cast("B")
        staging = self._staging_buffer(len(raw))
        with memoryview(staging) as view:
            view[:len(raw)] = raw
        self._in_flight.append(self._thread.submit(self._write_staged, path, staging, len(raw), offset))

    def _staging_buffer(self, n_bytes: int) -> mmap.mmap:
        """A free page-aligned buffer of at least ``n_bytes``; waits for the oldest write when all are in flight."""
        while len(self._in_flight) >= IN_FLIGHT:
            self._free.append(self._in_flight.popleft().result())
        while self._free:
            buffer = self._free.pop()
            if len(buffer) >= n_bytes:
                return buffer
            buffer.close()  # too small for this block: a larger one replaces it
        length = max(PAGE, -(-n_bytes // PAGE) * PAGE)  # anonymous maps are page-aligned
        flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
        return mmap.mmap(-1, length, flags=flags) if flags else mmap.mmap(-1, length)

    def _write_staged(self, path: Path, staging: mmap.mmap, n_bytes: int, offset: int) -> mmap.mmap:
        """Write ``staging[:n_bytes]`` at ``offset`` and hash it (the background thread); return the buffer.

        Direct I/O when length and offset are multiples of :data:`BLOCK_ALIGNMENT` and
        the file system takes it; buffered otherwise (the same bytes either way).
        """
        with memoryview(staging)[:n_bytes] as data:
            written = 0
            if self.direct_io and n_bytes % BLOCK_ALIGNMENT == 0 and offset % BLOCK_ALIGNMENT == 0:
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
                    try:
                        written = os.pwrite(fd, data, offset)
                    finally:
                        os.close(fd)
                except OSError as error:
                    if error.errno != errno.EINVAL:
                        raise
                    self.direct_io = False  # this file system refuses direct I/O: buffered from now on
            self.bytes_direct += written
            if written < n_bytes:
                with open(path, "r+b") as fh:
                    fh.seek(offset + written)
                    fh.write(data[written:])
            running = self._hashes.pop(path, None)
            if running is not None and running[1] == offset:  # in order: the digest follows the file
                running[0].update(data)
                self._hashes[path] = (running[0], offset + n_bytes)
        return staging

    def _drain(self) -> None:
        """Wait for every write in flight; raise the first error of any."""
        errors = []
        while self._in_flight:
            try:
                self._free.append(self._in_flight.popleft().result())
            except Exception as exc:  # noqa: BLE001 (re-raised below, after every write has ended)
                errors.append(exc)
        if errors:
            raise errors[0]

    def _record(self, path: Path) -> dict[str, Any]:
        """Size and digest of a finished file: from the running digest when every byte was hashed in order."""
        running = self._hashes.get(path)
        size = path.stat().st_size
        if running is not None and running[1] == size:
            return {"size": size, STORE_DIGEST: running[0].hexdigest()}
        return file_record(path, STORE_DIGEST)  # resumed or rewritten: read it once

    def finish(self, **extra: Any) -> "ActivationStore":
        """Mark the store complete, record ``extra`` facts and every file's size and digest, and open it.

        The digests are computed as the bytes are written (by the writer's thread, beside the
        forward pass, and carried on from the verification of a resumed store); only files written
        out of order are read again.
        """
        with self._disk_full_named():
            return self._finish(extra)

    def _finish(self, extra: Mapping[str, Any]) -> "ActivationStore":
        self._drain()
        self._thread.shutdown()
        self._pending = {}
        self._truncate_to_committed()  # drop blocks written but never committed
        self.files = {f.name: self._record(f) for f in self._files()}
        self.complete = True
        self.extra.update(extra)
        self._write_manifest()
        return ActivationStore(self.path)


class ActivationStore:
    """Read-only view of a completed activation store.

    Parameters
    ----------
    path : str or path-like
        Store directory written by :class:`ActivationWriter`.
    verify : bool, default=False
        Also compare every file's digest with the manifest (one read of the whole
        store, at about the disk's speed). Sizes are always compared (one ``stat`` per file).

    Raises
    ------
    FileNotFoundError
        No manifest at ``path``.
    IncompatibleStoreError
        Another format, or an incomplete capture (run it again to resume).
    funcprune._io.ArtefactError
        A file is missing, truncated, replaced or (``verify``) changed, naming it and the fix.

    Attributes
    ----------
    manifest : dict
        The store's manifest (model, dataset, text ids, dtype, kinds, ...).
    layers : list of int
        Layers captured.
    n_tokens : int
        Rows (time points) per layer.
    kinds : tuple of str
        Voxel copies per channel, in column order.
    """

    def __init__(self, path: str | os.PathLike[str], *, verify: bool = False) -> None:
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"no activation store at {self.path} (manifest.json missing)")
        self.manifest: dict[str, Any] = read_json(manifest_path, fix=_fix(self.path))
        if self.manifest.get("format") != STORE_FORMAT:
            raise IncompatibleStoreError(
                f"{self.path} has format {self.manifest.get('format')!r}, expected {STORE_FORMAT!r} (written by "
                f"another version of funcprune); {_fix(self.path)}")
        if not self.manifest["complete"]:
            raise IncompatibleStoreError(
                f"{self.path} is incomplete ({self.manifest['batches_done']} batches committed); "
                "run the capture again to resume it")
        records = self.manifest.get("files", {})
        expected = [_layer_file(self.path, layer, kind).name for layer in self.manifest["layers"]
                    for kind in self.manifest["kinds"]] + ["tokens.bin", "docs.bin"]
        unrecorded = [name for name in expected if name not in records]
        if unrecorded:
            raise ArtefactError(manifest_path, f"records no size and digest for {unrecorded}", _fix(self.path))
        for name in expected:
            verify_file(self.path / name, records[name], digest=verify, fix=_fix(self.path))
        self.layers: list[int] = list(self.manifest["layers"])
        self.n_tokens: int = int(self.manifest["rows"])
        self.kinds: tuple[str, ...] = tuple(self.manifest["kinds"])
        self.dtype = np.dtype(self.manifest["dtype"])

    def width(self, layer: int) -> int:
        """MLP width (channels) of ``layer``."""
        return int(self.manifest["widths"][str(layer)])

    def layer(self, layer: int, kind: str | None = None) -> np.ndarray:
        """Memory-mapped activations of one layer.

        Parameters
        ----------
        layer : int
            Layer index (one of :attr:`layers`).
        kind : str, optional
            Return only the columns of one voxel kind (e.g. ``"act"``).

        Returns
        -------
        ndarray of shape (n_tokens, n_voxels) or (n_tokens, width)
            With ``kind``: a read-only memory map in the stored dtype. Without: all
            kinds side by side (an in-memory copy). Cast to float64 before statistics.
        """
        if layer not in self.layers:
            raise KeyError(f"layer {layer} not in store; captured layers: {self.layers}")
        if kind is None:
            return np.concatenate([self.layer(layer, k) for k in self.kinds], axis=1)
        if kind not in self.kinds:
            raise KeyError(f"kind {kind!r} not in store; captured kinds: {list(self.kinds)}")
        return np.memmap(_layer_file(self.path, layer, kind), dtype=self.dtype, mode="r",
                         shape=(self.n_tokens, self.width(layer)))

    def voxel_channels(self, layer: int) -> np.ndarray:
        """Channel index of every voxel (column) of ``layer``, shape ``(n_voxels,)``."""
        return np.tile(np.arange(self.width(layer)), len(self.kinds))

    @property
    def token_ids(self) -> np.ndarray:
        """Token id of every row, shape ``(n_tokens,)``."""
        return np.fromfile(self.path / "tokens.bin", dtype=np.int32)

    @property
    def doc_ids(self) -> np.ndarray:
        """Index (into ``manifest['text_ids']``) of the text every row came from."""
        return np.fromfile(self.path / "docs.bin", dtype=np.int32)

    def __repr__(self) -> str:
        from .provenance import display_path  # the path as a reader sees it, never the builder's

        model = self.manifest.get("model", {}).get("name", "?")
        return (f"ActivationStore({display_path(self.path)!r}, model={model!r}, layers={len(self.layers)}, "
                f"tokens={self.n_tokens}, kinds={self.kinds}, dtype={self.dtype.name})")


def text_positions(doc_ids: np.ndarray) -> np.ndarray:
    """Position of every row within its text (0 for a text's first stored token).

    Rows of one text are contiguous in a store (capture appends text by text).

    >>> text_positions(np.array([0, 0, 0, 1, 1, 2]))
    array([0, 1, 2, 0, 1, 0])
    """
    doc_ids = np.asarray(doc_ids)
    if doc_ids.size == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, doc_ids[1:] != doc_ids[:-1]])
    return np.arange(doc_ids.size) - np.repeat(starts, np.diff(np.r_[starts, doc_ids.size]))


class _Rows:
    """Rows of one voxel kind of a :class:`StoreView`, read (and derived) only when indexed."""

    def __init__(self, view: "StoreView", layer: int, kind: str) -> None:
        self.view, self.layer, self.kind = view, layer, kind
        self.shape = (view.n_tokens, view.width(layer))

    def __getitem__(self, rows: slice | np.ndarray) -> np.ndarray:
        store = self.view.store
        index = np.arange(store.n_tokens)[rows] if self.view.rows is None else self.view.rows[rows]
        if self.kind in store.kinds:
            return np.asarray(store.layer(self.layer, self.kind)[index])
        # "product" from the stored copies: the down projection's input, act(gate x) * up x
        return np.multiply(store.layer(self.layer, "act")[index], store.layer(self.layer, "up")[index],
                           dtype=np.float64)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[slice(None)]
        return out if dtype is None else out.astype(dtype)


class StoreView:
    """Chosen rows and voxel kinds of a store, read lazily: the input of a fit that varies stage 1.

    :class:`~funcprune.ica.FunctionalNetworks` fits a view as it fits a store (one layer
    and one group at a time), so fewer tokens per text, texts without their first token
    or the down projection's input as the only voxel need no second capture
    (:mod:`funcprune.needs`).

    Parameters
    ----------
    store : ActivationStore
        A completed store.
    rows : array of int, optional
        Rows of the store to keep, increasing (default all). Rows of one text stay
        together, so groups still never split a text.
    kinds : sequence of str, optional
        Voxel kinds, each stored or ``"product"`` (``act * up``, the down projection's
        input, derived from the stored ``act`` and ``up`` copies). Default the stored kinds.

    Raises
    ------
    ValueError
        Rows out of range or not increasing, an unknown kind, or ``"product"`` from a store
        without both copies.

    Examples
    --------
    >>> view = StoreView(store, rows=np.flatnonzero(text_positions(store.doc_ids) > 0),  # doctest: +SKIP
    ...                  kinds=("product",))
    """

    def __init__(self, store: ActivationStore, *, rows: np.ndarray | None = None,
                 kinds: Sequence[str] | None = None) -> None:
        self.store = store
        self.kinds: tuple[str, ...] = tuple(store.kinds if kinds is None else kinds)
        derivable = set(store.kinds) | ({"product"} if {"act", "up"} <= set(store.kinds) else set())
        bad = [k for k in self.kinds if k not in derivable]
        if bad or not self.kinds or len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds {list(self.kinds)} cannot be read from this store; choose distinct values "
                             f"from {sorted(derivable)} (stored: {list(store.kinds)})")
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64)
            if rows.ndim != 1 or rows.size == 0 or rows.min() < 0 or rows.max() >= store.n_tokens \
                    or np.any(np.diff(rows) <= 0):
                raise ValueError(f"rows must be a non-empty increasing array of row indices in [0, {store.n_tokens})")
        self.rows = rows
        self.path, self.manifest, self.dtype, self.layers = store.path, store.manifest, store.dtype, store.layers
        self.n_tokens = store.n_tokens if rows is None else int(rows.size)

    def width(self, layer: int) -> int:
        """MLP width (channels) of ``layer``."""
        return self.store.width(layer)

    def layer(self, layer: int, kind: str) -> _Rows:
        """The view's rows of one voxel kind of ``layer``; index it (``[rows]``) to read them."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer} not in store; captured layers: {self.layers}")
        if kind not in self.kinds:
            raise KeyError(f"kind {kind!r} not in this view; its kinds: {list(self.kinds)}")
        return _Rows(self, layer, kind)

    def voxel_channels(self, layer: int) -> np.ndarray:
        """Channel index of every voxel (column) of ``layer``, shape ``(n_voxels,)``."""
        return np.tile(np.arange(self.width(layer)), len(self.kinds))

    @property
    def doc_ids(self) -> np.ndarray:
        """Text index of every row of the view."""
        ids = self.store.doc_ids
        return ids if self.rows is None else ids[self.rows]

    @property
    def token_ids(self) -> np.ndarray:
        """Token id of every row of the view."""
        ids = self.store.token_ids
        return ids if self.rows is None else ids[self.rows]

    def __repr__(self) -> str:
        return f"StoreView({self.store!r}, tokens={self.n_tokens}, kinds={self.kinds})"


def split_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    """Validate a layer selection against a model with ``n_layers`` layers."""
    if layers is None:
        return list(range(n_layers))
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range; the model has layers 0..{n_layers - 1}")
    return sorted(set(int(layer) for layer in layers))
