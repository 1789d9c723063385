"""Fault injection: every artefact a later stage reads is checked, every resume is exact.

For each artefact type (activation layer files and token index, networks, channel
statistics, plans, exported checkpoints) the faults a disk, a copy or a user can
cause -- truncate, flip a bit, swap two files, delete one, bring one from other
settings -- must raise :class:`funcprune._io.ArtefactError` (or the artefact's own
error) naming the file and the fix, never pass silently.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from test_capture import TEXTS, CharTokenizer
from tiny_models import tiny_model

from funcprune import capture_activations
from funcprune._io import ArtefactError
from funcprune.store import ActivationStore, ActivationWriter, IncompatibleStoreError

CAPTURE_TEXTS = [t * 2 for t in TEXTS if t] * 2  # 8 texts


def _truncate(path: Path, n_bytes: int = 8) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - n_bytes)


def _flip_bit(path: Path, offset: int | None = None) -> None:
    """Flip the lowest bit of one byte (a float32 mantissa bit at a multiple of 4: the value stays finite)."""
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 // 4 * 4 if offset is None else offset
    data[offset] ^= 1
    path.write_bytes(bytes(data))


def _write_nan(path: Path, offset: int = 0) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(np.array([np.nan], dtype=np.float32).tobytes())


def _swap(a: Path, b: Path) -> None:
    tmp = a.with_suffix(".swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def _capture(out: Path, **kwargs) -> ActivationStore:  # type: ignore[no-untyped-def]
    kwargs = {"batch_size": 2, "progress": False, **kwargs}
    return capture_activations(tiny_model("llama"), CharTokenizer(), CAPTURE_TEXTS, out, **kwargs)


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clean") / "activations"
    _capture(path)
    return path


@pytest.fixture
def store_copy(clean_store: Path, tmp_path: Path) -> Path:
    path = tmp_path / "activations"
    shutil.copytree(clean_store, path)
    return path


# ----------------------------------------------------------------------------------
# Activation store: layer files and token index
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["layer_001_up.bin", "tokens.bin", "docs.bin"])
def test_store_truncated_file_is_named_on_open(store_copy: Path, name: str) -> None:
    _truncate(store_copy / name)
    with pytest.raises(ArtefactError, match=rf"{name}: has \d+ bytes where \d+ were written.*re-run stage 1"):
        ActivationStore(store_copy)


@pytest.mark.parametrize("name", ["layer_000_act.bin", "tokens.bin"])
def test_store_deleted_file_is_named_on_open(store_copy: Path, name: str) -> None:
    (store_copy / name).unlink()
    with pytest.raises(ArtefactError, match=rf"{name}: is missing.*delete .*activations and re-run stage 1"):
        ActivationStore(store_copy)


@pytest.mark.parametrize("name", ["layer_002_act.bin", "tokens.bin"])
def test_store_bit_flip_found_by_verify_and_by_reuse(store_copy: Path, name: str) -> None:
    _flip_bit(store_copy / name)
    ActivationStore(store_copy)  # sizes only: a flipped bit passes the cheap check ...
    with pytest.raises(ArtefactError, match=rf"{name}: has changed since it was written"):
        ActivationStore(store_copy, verify=True)  # ... and not the digest
    with pytest.raises(ArtefactError, match=rf"{name}: has changed"):
        _capture(store_copy)  # capture run again does not return a damaged store as complete


def test_store_nan_bytes_in_complete_store_are_not_reused(store_copy: Path) -> None:
    _write_nan(store_copy / "layer_000_up.bin", offset=64)
    with pytest.raises(ArtefactError, match="layer_000_up.bin: has changed"):
        _capture(store_copy)


def test_store_swapped_files_found_by_verify(store_copy: Path) -> None:
    _swap(store_copy / "layer_000_act.bin", store_copy / "layer_001_act.bin")
    with pytest.raises(ArtefactError, match="layer_00[01]_act.bin: has changed"):
        ActivationStore(store_copy, verify=True)


def test_store_cut_manifest_is_named(store_copy: Path) -> None:
    manifest = store_copy / "manifest.json"
    manifest.write_text(manifest.read_text()[:200])
    with pytest.raises(ArtefactError, match=r"manifest.json: not valid JSON.*re-run stage 1"):
        ActivationStore(store_copy)
    with pytest.raises(ArtefactError, match=r"manifest.json: not valid JSON"):
        _capture(store_copy)


def test_store_stale_identity_is_refused(store_copy: Path) -> None:
    with pytest.raises(IncompatibleStoreError, match=r"differs in \['max_tokens'\]"):
        _capture(store_copy, max_tokens=7)
    with pytest.raises(IncompatibleStoreError, match=r"differs in \['dtype'\]"):
        _capture(store_copy, dtype="float16")


def _interrupted(path: Path, monkeypatch: pytest.MonkeyPatch, *, batch_size: int, commits: int) -> None:
    """A capture that dies right after its ``commits``-th commit."""
    original = ActivationWriter.commit
    calls = {"n": 0}

    def commit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == commits:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(ActivationWriter, "commit", commit)
        with pytest.raises(KeyboardInterrupt):
            _capture(path, batch_size=batch_size)


def test_store_nan_bytes_in_committed_rows_refuse_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _interrupted(tmp_path / "s", monkeypatch, batch_size=2, commits=2)
    _write_nan(tmp_path / "s" / "layer_001_act.bin", offset=4)
    with pytest.raises(ArtefactError, match="layer_001_act.bin: committed rows hold NaN or inf"):
        _capture(tmp_path / "s")


@pytest.mark.parametrize("new_batch_size", [4, 1, 3])
def test_resume_with_another_batch_size_continues_exactly(clean_store: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          new_batch_size: int) -> None:
    """Interrupted at batch size 2, resumed at another: the rows of an uninterrupted capture, none lost or doubled."""
    _interrupted(tmp_path / "s", monkeypatch, batch_size=2, commits=1)
    resumed = _capture(tmp_path / "s", batch_size=new_batch_size)
    reference = ActivationStore(clean_store)
    assert resumed.n_tokens == reference.n_tokens
    np.testing.assert_array_equal(resumed.doc_ids, reference.doc_ids)
    np.testing.assert_array_equal(resumed.token_ids, reference.token_ids)
    first = int(np.sum(reference.doc_ids < 2))  # the rows committed before the interruption
    for layer in reference.layers:
        np.testing.assert_array_equal(resumed.layer(layer)[:first], reference.layer(layer)[:first])
        np.testing.assert_allclose(resumed.layer(layer), reference.layer(layer), rtol=1e-5, atol=1e-5)
    assert resumed.manifest["extra"]["batch_sizes"] == [2, new_batch_size]
