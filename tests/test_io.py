"""The shared artefact helpers: clear errors for truncated, changed and missing files."""

from __future__ import annotations

from pathlib import Path

import pytest

from funcprune._io import (DIGESTS, ArtefactError, atomic_open, atomic_write_json, file_digest, file_record, read_json,
                           verify_file)


def test_atomic_open_replaces_the_file_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_open(target) as fh:
            fh.write(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    with atomic_open(target) as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_read_json_names_a_truncated_file_and_the_fix(tmp_path: Path) -> None:
    path = atomic_write_json(tmp_path / "manifest.json", {"a": [1, 2, 3]})
    assert read_json(path) == {"a": [1, 2, 3]}
    path.write_text(path.read_text()[:7])
    with pytest.raises(ArtefactError, match=r"manifest\.json: not valid JSON.*re-run stage 1") as err:
        read_json(path, fix="delete it and re-run stage 1")
    assert err.value.path == path


@pytest.mark.parametrize(("algorithm", "name"), [("sha256", "SHA-256"), ("xxh3_128", "XXH3-128")])
def test_verify_file_checks_size_always_and_digest_on_request(tmp_path: Path, algorithm: str, name: str) -> None:
    path = tmp_path / "layer.bin"
    path.write_bytes(bytes(range(256)) * 4)
    record = file_record(path, algorithm)
    assert set(record) == {"size", algorithm} and record["size"] == 1024
    assert record[algorithm] == DIGESTS[algorithm](path.read_bytes()).hexdigest()  # the library's own digest
    verify_file(path, record, digest=True)

    flipped = bytearray(path.read_bytes())
    flipped[100] ^= 0x01  # same size, one bit differs
    path.write_bytes(bytes(flipped))
    verify_file(path, record)  # the size check alone cannot see a bit flip
    with pytest.raises(ArtefactError, match=f"{name} differs"):
        verify_file(path, record, digest=True)

    path.write_bytes(bytes(flipped[:500]))
    with pytest.raises(ArtefactError, match="has 500 bytes where 1024 were written"):
        verify_file(path, record, fix="re-run stage 1")
    path.unlink()
    with pytest.raises(ArtefactError, match="is missing"):
        verify_file(path, record)


def test_file_digest_reads_in_chunks_and_names_unknown_algorithms(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    data = bytes(range(256)) * 5000  # 1.28 MB: more than one chunk
    path.write_bytes(data)
    assert file_digest(path, "xxh3_128", chunk_size=4096) == DIGESTS["xxh3_128"](data).hexdigest()
    with pytest.raises(ValueError, match=r"unknown digest 'md5'; known: \['sha256', 'xxh3_128'\]"):
        file_digest(path, "md5")
    with pytest.raises(ValueError, match="exactly one digest"):
        verify_file(path, {"size": len(data)}, digest=True)
