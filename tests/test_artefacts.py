"""The run layer's one artefact contract: records written last, checked on read, and the one reuse rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from funcprune._io import ArtefactError, sha256_file
from funcprune.run.artefacts import Artefact, load_statistics, save_statistics
from funcprune.scoring import ChannelStatistics

THING = Artefact("test-thing/1", "things", "re-run the thing")


def _write(path: Path, payload: bytes = b"payload", inputs: dict | None = None) -> dict:
    return THING.write(path / "thing.json", {"data": ("thing.bin", lambda fh: fh.write(payload))},
                       {"n": 3}, inputs=inputs)


def test_the_record_names_format_fields_inputs_and_each_file(tmp_path: Path) -> None:
    record = _write(tmp_path, inputs={"digest": "abc"})
    assert record == json.loads((tmp_path / "thing.json").read_text())
    assert list(record) == ["format", "n", "inputs", "data"]
    assert record["data"] == {"file": "thing.bin", "size": 7, "sha256": sha256_file(tmp_path / "thing.bin")}
    read, paths = THING.read(tmp_path / "thing.json", ["data"])
    assert read == record and paths["data"].read_bytes() == b"payload"
    assert "inputs" not in _write(tmp_path / "plain")  # an artefact that is not reused by inputs records none


def test_reuse_rule_reuses_only_the_same_inputs_and_rebuilds_a_damaged_one(tmp_path: Path) -> None:
    record_path = tmp_path / "thing.json"
    assert THING.current(record_path, ["data"], {"digest": "abc"}) is None  # nothing written yet
    _write(tmp_path, inputs={"digest": "abc", "ids": (1, 2)})
    found = THING.current(record_path, ["data"], {"digest": "abc", "ids": [1, 2]})  # compared as JSON
    assert found is not None and found[0]["n"] == 3
    assert THING.current(record_path, ["data"], {"digest": "abd", "ids": [1, 2]}) is None  # other inputs: build
    (tmp_path / "thing.bin").write_bytes(b"paxload")
    with pytest.warns(UserWarning, match=r"building things again: .*thing\.bin: has changed since it was written"):
        assert THING.current(record_path, ["data"], {"digest": "abc", "ids": [1, 2]}) is None


def test_read_names_a_missing_foreign_or_old_record_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"thing.json does not exist: no things saved there; re-run"):
        THING.read(tmp_path / "thing.json", ["data"])
    _write(tmp_path)
    with pytest.raises(ArtefactError, match=r"has format 'test-thing/1', expected 'other/1'.*re-run the other"):
        Artefact("other/1", "others", "re-run the other").read(tmp_path / "thing.json", ["data"])
    with pytest.raises(ArtefactError, match="records no size for its index file"):
        THING.read(tmp_path / "thing.json", ["index"])
    (tmp_path / "thing.bin").unlink()
    with pytest.raises(ArtefactError, match=r"thing.bin: is missing"):
        THING.read(tmp_path / "thing.json", ["data"])


def test_an_interrupted_write_leaves_the_old_artefact_whole(tmp_path: Path) -> None:
    _write(tmp_path, b"old")

    def fails(fh) -> None:  # type: ignore[no-untyped-def]
        fh.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        THING.write(tmp_path / "thing.json", {"data": ("thing.bin", fails)}, {"n": 4})
    record, paths = THING.read(tmp_path / "thing.json", ["data"])
    assert record["n"] == 3 and paths["data"].read_bytes() == b"old"


def test_statistics_round_trip_and_are_reused_only_for_their_inputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stats = ChannelStatistics(mean={0: rng.normal(size=4), 2: rng.normal(size=3)},
                              var={0: rng.random(4), 2: rng.random(3)}, sq_norm={0: rng.random(4), 2: rng.random(3)},
                              n_tokens=11, source={"texts": 2})
    save_statistics(stats, tmp_path, inputs={"model": "m", "texts": "t"})
    for loaded in (load_statistics(tmp_path), load_statistics(tmp_path, inputs={"texts": "t", "model": "m"})):
        assert loaded is not None and loaded.layers == [0, 2] and loaded.n_tokens == 11
        assert loaded.source == {"texts": 2}
        for name in ("mean", "var", "sq_norm"):
            for layer in (0, 2):
                np.testing.assert_array_equal(getattr(loaded, name)[layer], getattr(stats, name)[layer])
    assert load_statistics(tmp_path, inputs={"model": "m", "texts": "other"}) is None


def test_stale_says_why_an_artefact_is_not_reused(tmp_path: Path) -> None:
    record_path = tmp_path / "thing.json"
    assert THING.stale(record_path, ["data"], {"key": "a"}) == "no record of things"
    _write(tmp_path, inputs={"key": "a"})
    assert THING.stale(record_path, ["data"], {"key": "a"}) is None
    assert THING.stale(record_path, ["data"], {"key": "b"}) == "things made from other inputs"
    (tmp_path / "thing.bin").write_bytes(b"")
    assert THING.stale(record_path, ["data"], {"key": "a"}).startswith("things unusable (")


def test_reusable_gives_the_checked_record_or_the_same_reason_as_stale(tmp_path: Path) -> None:
    record_path = tmp_path / "thing.json"
    assert THING.reusable(record_path, ["data"], {"key": "a"}) == (None, "no record of things")
    written = _write(tmp_path, inputs={"key": "a"})
    assert THING.reusable(record_path, ["data"], {"key": "a"}) == (written, None)
    assert THING.reusable(record_path, ["data"], {"key": "b"}) == (None, "things made from other inputs")
    (tmp_path / "thing.bin").write_bytes(b"")
    record, reason = THING.reusable(record_path, ["data"], {"key": "a"})
    assert record is None and reason == THING.stale(record_path, ["data"], {"key": "a"})
    assert "thing.bin" in reason


def test_a_part_is_reused_only_for_its_inputs_and_keeps_its_bytes(tmp_path: Path) -> None:
    from funcprune._io import atomic_write_json
    from funcprune.run.artefacts import load_part, part_record, save_part

    part = {"key": "fn_r0.20", "perplexity": {"128": {"window_nll": [1.5, 2.0]}}, "sha256": "x"}
    stamp = {"protocol_id": "p", "identity": {"plan_sha256": "s"}, "tier": "full"}
    path = save_part(tmp_path / "parts" / "fn_r0.20.json", part, stamp)
    assert part_record(path) == tmp_path / "parts" / "fn_r0.20.record.json"
    atomic_write_json(tmp_path / "plain.json", part)  # the form results.json and bundles copy
    assert path.read_bytes() == (tmp_path / "plain.json").read_bytes()
    assert load_part(path, stamp) == part
    assert load_part(path, {**stamp, "tier": "screen"}) is None
    part_record(path).unlink()  # interrupted before its record: not trusted
    assert load_part(path, stamp) is None
