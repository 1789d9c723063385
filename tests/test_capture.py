"""Stage 1 capture: hooks, exact values, padding invariance, store round trip and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import TEXTS, CharTokenizer, tiny_model

from funcprune import MLPRecorder, capture_activations, get_adapter
from funcprune.capture import StopForward, all_finite, rows_finite, stop_at_input
from funcprune.layerpass import LayerInputs, layer_calls
from funcprune.store import ActivationStore, ActivationWriter, IncompatibleStoreError


def _n_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_after_exception(family_model: torch.nn.Module) -> None:
    before = _n_hooks(family_model)
    with pytest.raises(RuntimeError, match="boom"):
        with MLPRecorder(family_model, kinds=("act", "up", "product")):
            assert _n_hooks(family_model) == before + 3 * 3
            raise RuntimeError("boom")
    assert _n_hooks(family_model) == before


def test_hooks_leave_foreign_hooks_alone() -> None:
    model = tiny_model("llama")
    mlp = model.model.layers[0].mlp
    foreign = mlp.up_proj.register_forward_hook(lambda *a: None)
    with MLPRecorder(model):
        pass
    assert len(mlp.up_proj._forward_hooks) == 1
    foreign.remove()


def test_captured_values_equal_manual_recomputation(family_model: torch.nn.Module) -> None:
    """act = act_fn(gate x) (or act(up x)), up = up x, product = act * up for gated MLPs."""
    adapter = get_adapter(family_model)
    layers = adapter.get_layers(family_model)
    inputs: dict[int, torch.Tensor] = {}
    grab = [adapter.module(layer, "mlp.up").register_forward_pre_hook(
        lambda _m, args, i=i: inputs.__setitem__(i, args[0].detach())) for i, layer in enumerate(layers)]
    ids = torch.randint(0, 97, (2, 7))
    try:
        with torch.no_grad(), MLPRecorder(family_model, kinds=("act", "up", "product")) as rec:
            family_model(input_ids=ids)
            records = dict(rec.records)
    finally:
        for g in grab:
            g.remove()
    with torch.no_grad():
        for i, layer in enumerate(layers):
            x = inputs[i].reshape(-1, inputs[i].shape[-1])
            up = adapter.module(layer, "mlp.up")(x)
            source = adapter.module(layer, "mlp.gate")(x) if adapter.gated else up
            act = adapter.module(layer, "mlp.act")(source)
            torch.testing.assert_close(records[(i, "up")], up, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(records[(i, "act")], act, rtol=1e-6, atol=1e-6)
            expected_product = act * up if adapter.gated else act
            torch.testing.assert_close(records[(i, "product")], expected_product, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_padding_invariance(tmp_path: Path, model_type: str) -> None:
    """Batched capture with padding equals running each text alone; no padded rows."""
    model, tok = tiny_model(model_type), CharTokenizer()
    texts = [t for t in TEXTS if t]
    batched = capture_activations(model, tok, texts, tmp_path / "b", batch_size=3, progress=False)
    alone = capture_activations(model, tok, texts, tmp_path / "a", batch_size=1, progress=False)
    n_real = sum(len(t) for t in texts)
    assert batched.n_tokens == alone.n_tokens == n_real
    for layer in batched.layers:
        np.testing.assert_allclose(batched.layer(layer), alone.layer(layer), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(batched.token_ids, alone.token_ids)
    np.testing.assert_array_equal(np.bincount(batched.doc_ids), [len(t) for t in texts])


def test_drop_first_token_and_max_tokens(tmp_path: Path) -> None:
    model, tok = tiny_model("llama"), CharTokenizer()
    texts = ["abcdefgh", "xyz"]
    store = capture_activations(model, tok, texts, tmp_path / "s", max_tokens=5, drop_first_token=True,
                                progress=False)
    assert store.n_tokens == (5 - 1) + (3 - 1)
    np.testing.assert_array_equal(store.token_ids[:4], tok("abcdefgh")["input_ids"][1:5])


def test_empty_text_is_skipped_and_recorded(tmp_path: Path) -> None:
    store = capture_activations(tiny_model("llama"), CharTokenizer(), TEXTS, tmp_path / "s", progress=False)
    assert store.manifest["extra"]["skipped_empty_texts"] == [3]
    assert 3 not in set(store.doc_ids.tolist())


def test_manifest_describes_the_run(tmp_path: Path) -> None:
    store = capture_activations(tiny_model("llama"), CharTokenizer(), TEXTS[:2], tmp_path / "s",
                                text_ids=["t0", "t1"], dataset={"name": "unit"}, dtype="float16",
                                progress=False)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["text_ids"] == ["t0", "t1"] and manifest["dataset"] == {"name": "unit"}
    assert manifest["dtype"] == "float16" and store.layer(0).dtype == np.float16
    assert manifest["model"]["model_type"] == "llama" and manifest["complete"]
    assert manifest["rows"] == store.n_tokens == len(TEXTS[0]) + len(TEXTS[1])
    assert manifest["extra"]["environment"]["funcprune"]


@pytest.mark.parametrize("bad, match", [
    ({"texts": []}, "empty"),
    ({"texts": [""]}, "zero tokens"),
    ({"dtype": "bfloat16"}, r"float32.*float16"),
    ({"kinds": ("act", "gate")}, "kinds"),
    ({"layers": [0, 7]}, "out of range"),
])
def test_clear_errors(tmp_path: Path, bad: dict, match: str) -> None:
    kwargs = {"texts": TEXTS[:2], **bad}
    with pytest.raises(ValueError, match=match):
        capture_activations(tiny_model("llama"), CharTokenizer(), out_dir=tmp_path / "s", progress=False, **kwargs)


def test_non_finite_activations_raise(tmp_path: Path) -> None:
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite activations in layer 1"):
        capture_activations(model, CharTokenizer(), TEXTS[:2], tmp_path / "s", progress=False)


def test_resume_after_interruption(tmp_path: Path) -> None:
    """A capture killed mid-batch resumes from the last committed batch and equals an uninterrupted one."""
    model, tok = tiny_model("llama"), CharTokenizer()
    texts = [t * 3 for t in TEXTS if t]
    reference = capture_activations(model, tok, texts, tmp_path / "ref", batch_size=1, progress=False)

    calls = {"n": 0}
    original = ActivationWriter.commit

    def crash_on_third(self, tokens, docs, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:  # every layer of batch 3 is written, plus half a row more; die before the commit
            with open(tmp_path / "run" / "layer_000_act.bin", "ab") as fh:
                fh.write(b"\x00" * 100)
            raise KeyboardInterrupt
        return original(self, tokens, docs, **kwargs)

    ActivationWriter.commit = crash_on_third  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            capture_activations(model, tok, texts, tmp_path / "run", batch_size=1, progress=False)
    finally:
        ActivationWriter.commit = original  # type: ignore[method-assign]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    row_bytes = manifest["widths"]["0"] * 4
    assert manifest["batches_done"] == 2
    assert (tmp_path / "run" / "layer_000_act.bin").stat().st_size > manifest["rows"] * row_bytes  # uncommitted
    with pytest.raises(IncompatibleStoreError, match="incomplete"):
        ActivationStore(tmp_path / "run")
    resumed = capture_activations(model, tok, texts, tmp_path / "run", batch_size=1, progress=False)
    assert resumed.manifest["batches_done"] == len(texts)
    for layer in reference.layers:
        np.testing.assert_array_equal(resumed.layer(layer), reference.layer(layer))


def test_store_from_other_run_is_refused(tmp_path: Path) -> None:
    tok = CharTokenizer()
    capture_activations(tiny_model("llama"), tok, TEXTS[:2], tmp_path / "s", progress=False)
    with pytest.raises(IncompatibleStoreError, match="text_ids"):
        capture_activations(tiny_model("llama"), tok, TEXTS[:3], tmp_path / "s", progress=False)
    store = capture_activations(tiny_model("llama"), tok, TEXTS[:3], tmp_path / "s", overwrite=True,
                                progress=False)
    assert store.manifest["text_ids"] == ["0", "1", "2"]


def _writer(path: Path, kinds: list[str], layers: list[int], width: int) -> ActivationWriter:
    """A writer for a synthetic store (no model): float32, every layer ``width`` channels wide."""
    identity = {"model": {"name": "m"}, "dataset": {}, "text_ids": ["a", "b"], "dtype": "float32", "kinds": kinds,
                "layers": layers, "widths": {str(layer): width for layer in layers}, "max_tokens": 8,
                "drop_first_token": False}
    return ActivationWriter(path, identity)


def _write_synthetic(path: Path, width: int, *, direct: bool) -> ActivationWriter:
    """Two batches of 5 rows (odd, so offsets after the first are aligned only for some widths)."""
    rng = np.random.default_rng(1)
    writer = _writer(path, ["act"], [0, 1], width)
    writer.direct_io = writer.direct_io and direct
    for b in range(2):
        rows = {(layer, "act"): rng.normal(size=(5, width)).astype(np.float32) for layer in (0, 1)}
        writer.append(rows, np.arange(5) + 10 * b, np.full(5, b))
    writer.finish()
    return writer


@pytest.mark.parametrize("width", [128, 100])  # 512-byte rows (direct I/O possible) and 400-byte rows
def test_direct_and_buffered_writes_give_the_same_bytes(tmp_path: Path, width: int) -> None:
    direct = _write_synthetic(tmp_path / "direct", width, direct=True)
    buffered = _write_synthetic(tmp_path / "buffered", width, direct=False)
    assert buffered.bytes_direct == 0
    for name in ("layer_000_act.bin", "layer_001_act.bin", "tokens.bin", "docs.bin"):
        assert (tmp_path / "direct" / name).read_bytes() == (tmp_path / "buffered" / name).read_bytes()
    layer_bytes = 2 * 2 * 5 * width * 4
    if width % 128:  # rows of 400 bytes: no block is aligned, every byte goes through the page cache
        assert direct.bytes_direct == 0
    elif direct.direct_io:  # the file system took direct I/O: every layer block went that way
        assert direct.bytes_direct == layer_bytes
    else:  # it refused (EINVAL, e.g. tmpfs): the writer fell back for good, nothing was lost
        assert direct.bytes_direct == 0


def test_a_refused_direct_write_falls_back_to_buffered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    real_open = os.open

    def refuse_direct(path: str, flags: int, *args: object) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse_direct)
    refused = _write_synthetic(tmp_path / "refused", 128, direct=True)
    assert refused.bytes_direct == 0 and not refused.direct_io
    monkeypatch.undo()
    _write_synthetic(tmp_path / "reference", 128, direct=False)
    assert (tmp_path / "refused" / "layer_001_act.bin").read_bytes() == \
        (tmp_path / "reference" / "layer_001_act.bin").read_bytes()


def test_a_failed_background_write_surfaces_at_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    writer = _writer(tmp_path, ["act"], [0, 1], 128)
    if not writer.direct_io:
        pytest.skip("no O_DIRECT on this platform: every write is synchronous")

    def disk_error(*_: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "pwrite", disk_error)
    for layer in (0, 1):
        writer.write((layer, "act"), np.ones((4, 128), dtype=np.float32))  # returns at once: the thread writes
    with pytest.raises(OSError, match="Input/output error"):
        writer.commit(np.arange(4), np.zeros(4))
    assert writer.rows == 0 and writer.batches_done == 0  # nothing committed; the batch can be written again


@pytest.mark.parametrize("rewrite", [False, True], ids=["in order", "a rejected batch written again"])
def test_digests_computed_while_writing_equal_a_read_of_the_file(tmp_path: Path, rewrite: bool) -> None:
    from funcprune._io import file_digest

    writer = _writer(tmp_path, ["act"], [0, 1], 128)
    rng = np.random.default_rng(2)
    if rewrite:  # one block only: the commit refuses the batch, which is then written again
        writer.write((0, "act"), rng.normal(size=(3, 128)))
        with pytest.raises(ValueError, match="batch not committed"):
            writer.commit(np.arange(3), np.zeros(3))
    writer.append({(layer, "act"): rng.normal(size=(3, 128)) for layer in (0, 1)}, np.arange(3), np.zeros(3))
    writer.append({(layer, "act"): rng.normal(size=(5, 128)) for layer in (0, 1)}, np.arange(5), np.ones(5))
    writer.finish()
    files = json.loads((tmp_path / "manifest.json").read_text())["files"]
    assert set(files) == {"layer_000_act.bin", "layer_001_act.bin", "tokens.bin", "docs.bin"}
    for name, record in files.items():
        assert record == {"size": (tmp_path / name).stat().st_size, "xxh3_128": file_digest(tmp_path / name, "xxh3_128")}


def test_store_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    writer = _writer(tmp_path, ["act", "up"], [0, 2], 4)
    batches = [{(layer, kind): rng.normal(size=(3, 4)) for layer in (0, 2) for kind in ("act", "up")}
               for _ in range(2)]
    for b, rows in enumerate(batches):
        writer.append(rows, np.arange(3) + 10 * b, np.full(3, b))
    store = writer.finish()
    for layer in (0, 2):
        expected = np.concatenate([np.hstack([b[(layer, "act")], b[(layer, "up")]]) for b in batches])
        expected = expected.astype(np.float32)
        np.testing.assert_array_equal(store.layer(layer), expected)
        np.testing.assert_array_equal(store.layer(layer, "up"), expected[:, 4:])
    np.testing.assert_array_equal(store.voxel_channels(0), [0, 1, 2, 3, 0, 1, 2, 3])
    np.testing.assert_array_equal(store.doc_ids, [0, 0, 0, 1, 1, 1])
    with pytest.raises(KeyError, match="captured layers"):
        store.layer(1)


def test_records_are_the_masked_rows_for_any_mask() -> None:
    """Run-wise copies equal boolean-mask indexing, for holes and left padding too, in each dtype."""
    model = tiny_model("llama")
    ids = torch.randint(0, 97, (3, 6))
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1]], dtype=torch.bool)
    outputs: dict[int, torch.Tensor] = {}
    up = model.model.layers[1].mlp.up_proj
    grab = up.register_forward_hook(lambda _m, _a, out: outputs.__setitem__(1, out.detach()))
    try:
        for dtype in ("float32", "float16"):
            with torch.no_grad(), MLPRecorder(model, kinds=("up",), layers=[1], dtype=dtype) as rec:
                rec.mask = mask
                model(input_ids=ids)
                record = rec.records[(1, "up")]
            assert record.dtype == getattr(torch, dtype) and record.is_contiguous()
            torch.testing.assert_close(record, outputs[1][mask].to(record.dtype), rtol=0, atol=0)
    finally:
        grab.remove()


def test_mask_of_the_wrong_shape_is_refused() -> None:
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"mask of shape \(2, 4\) does not match .* \(2, 5\)"):
        with torch.no_grad(), MLPRecorder(model) as rec:
            rec.mask = torch.ones(2, 4, dtype=torch.bool)
            model(input_ids=torch.randint(0, 97, (2, 5)))


def test_mask_is_read_when_assigned() -> None:
    """The recorder keeps its own copy of the mask: editing the tensor later changes nothing."""
    model = tiny_model("llama")
    ids = torch.randint(0, 97, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    expected = mask.clone()
    with torch.no_grad(), MLPRecorder(model, kinds=("up",), layers=[0]) as rec:
        rec.mask = mask
        mask[:] = False
        model(input_ids=ids)
        assert rec.records[(0, "up")].shape[0] == int(expected.sum())
        torch.testing.assert_close(rec.mask, expected)
        with pytest.raises(ValueError, match=r"shape \(batch, seq\), got \(5,\)"):
            rec.mask = torch.ones(5, dtype=torch.bool)


def test_stop_early_records_the_same_and_runs_no_further(family_model: torch.nn.Module) -> None:
    """With stop_early the pass ends after the last recorded layer: same records, no later layer, no head."""
    adapter = get_adapter(family_model)
    layers = adapter.get_layers(family_model)
    ids = torch.randint(0, 97, (2, 6))
    calls: list[str] = []
    watchers = [layers[-1].register_forward_hook(lambda *_: calls.append("last layer")),
                family_model.get_output_embeddings().register_forward_hook(lambda *_: calls.append("head"))]
    before = _n_hooks(family_model)
    try:
        with torch.no_grad(), MLPRecorder(family_model, kinds=("act", "up"), layers=[1]) as full:
            assert full.forward(input_ids=ids) is not None
            expected = dict(full.records)
        assert calls == ["last layer", "head"]
        calls.clear()
        with torch.no_grad(), MLPRecorder(family_model, kinds=("act", "up"), layers=[1], stop_early=True) as rec:
            assert _n_hooks(family_model) == before + 2 + 1
            assert rec.forward(input_ids=ids) is None
            got = dict(rec.records)
            with pytest.raises(StopForward):
                family_model(input_ids=ids)
        assert calls == [] and _n_hooks(family_model) == before
        assert got.keys() == expected.keys() == {(1, "act"), (1, "up")}
        for key, rows in expected.items():
            torch.testing.assert_close(got[key], rows, rtol=0, atol=0)
    finally:
        for w in watchers:
            w.remove()


def test_on_record_gets_every_record_as_it_exists_and_its_error_ends_the_pass() -> None:
    """Records handed to on_record equal the kept ones and are not kept; an error there leaves no hook behind."""
    model = tiny_model("llama")
    ids = torch.randint(0, 97, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad(), MLPRecorder(model, kinds=("act", "up")) as kept:
        kept.mask = mask
        model(input_ids=ids)
        expected = dict(kept.records)
    handed: dict[tuple[int, str], torch.Tensor] = {}
    with torch.no_grad(), MLPRecorder(model, kinds=("act", "up"), on_record=handed.__setitem__) as rec:
        rec.mask = mask
        model(input_ids=ids)
        assert rec.records == {}
    assert handed.keys() == expected.keys() and len(expected) == 3 * 2
    for key, rows in expected.items():
        torch.testing.assert_close(handed[key], rows, rtol=0, atol=0)

    def disk_full(key: tuple[int, str], rows: torch.Tensor) -> None:
        raise OSError("disk full")

    before = _n_hooks(model)
    with pytest.raises(OSError, match="disk full"):
        with torch.no_grad(), MLPRecorder(model, on_record=disk_full):
            model(input_ids=ids)
    assert _n_hooks(model) == before


def test_writer_never_commits_a_bad_batch(tmp_path: Path) -> None:
    """A rejected batch is never committed, and the next good batch lands where it should."""
    writer = _writer(tmp_path, ["act", "up"], [0], 4)
    rows = np.arange(20, dtype=np.float32).reshape(5, 4)
    with pytest.raises(ValueError, match=r"layer 0 up: rows of shape \(4, 4\), expected \(5, 4\)"):
        writer.append({(0, "act"): rows, (0, "up"): rows[:4]}, np.arange(5), np.zeros(5))
    with pytest.raises(ValueError, match="batch not committed"):
        writer.append({(0, "act"): rows}, np.arange(5), np.zeros(5))
    with pytest.raises(ValueError, match="not in this store"):
        writer.write((1, "act"), rows)
    writer.append({(0, "act"): rows, (0, "up"): rows[::-1]}, np.arange(5), np.zeros(5))
    store = writer.finish()
    np.testing.assert_array_equal(store.layer(0, "act"), rows)
    np.testing.assert_array_equal(store.layer(0, "up"), rows[::-1])


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_all_finite_matches_numpy_on_every_special_value(dtype: type) -> None:
    info = np.finfo(dtype)
    specials = [0.0, -0.0, 1.0, -1.0, info.max, -info.max, info.tiny, -info.tiny, info.smallest_subnormal,
                -info.smallest_subnormal, np.inf, -np.inf, np.nan, -np.nan]
    rng = np.random.default_rng(0)
    for value in specials:
        block = rng.normal(size=(7, 5)).astype(dtype)
        block[3, 2] = value
        assert all_finite(block) == bool(np.isfinite(block).all()), value
    # every float16 bit pattern, each alone in a block of ones
    patterns = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    blocks = np.ones((len(patterns), 3), dtype=np.float16)
    blocks[:, 1] = patterns
    assert [all_finite(b) for b in blocks] == np.isfinite(patterns).tolist()
    assert all_finite(np.zeros((0, 4), dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_rows_finite_is_exact_also_when_row_sums_overflow(dtype: torch.dtype) -> None:
    """The fast row-sum test never clears a non-finite value and never refuses finite rows whose sum overflows."""
    big = torch.finfo(dtype).max
    assert rows_finite(torch.full((3, 4), big, dtype=dtype))  # every row sum overflows; all values finite
    assert rows_finite(torch.zeros((0, 4), dtype=dtype))
    patterns = torch.arange(2**16, dtype=torch.int32).to(torch.int16).view(torch.float16)
    rows = torch.full((len(patterns), 3), 1000.0, dtype=torch.float16)
    rows[:, 1] = patterns
    finite = torch.isfinite(patterns)
    for value in (0.0, big, -big, float("inf"), -float("inf"), float("nan")):
        block = torch.randn(5, 6).to(dtype)
        block[2, 3] = value
        block[4, :] = big  # an overflowing row beside it
        assert rows_finite(block) == bool(torch.isfinite(block).all()), value
    rows = rows.to(dtype)  # every float16 bit pattern, each in a row of its own
    assert [rows_finite(rows[i:i + 1]) for i in range(len(rows))] == finite.tolist()


def test_finish_drops_blocks_that_were_never_committed(tmp_path: Path) -> None:
    writer = _writer(tmp_path, ["act"], [0], 4)
    rows = np.ones((3, 4), dtype=np.float32)
    writer.append({(0, "act"): rows}, np.arange(3), np.zeros(3))
    writer.write((0, "act"), 2 * rows)  # written, never committed
    store = writer.finish()
    assert (tmp_path / "layer_000_act.bin").stat().st_size == rows.nbytes
    np.testing.assert_array_equal(store.layer(0, "act"), rows)


_KILL_SCRIPT = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tiny_models import TEXTS, CharTokenizer, tiny_model
from funcprune import capture_activations
from funcprune.store import ActivationWriter

original = ActivationWriter.write
def write(self, key, block):
    original(self, key, block)
    if self.batches_done == 2:  # the third batch is half written: wait here to be killed
        print("ready", flush=True)
        time.sleep(600)
ActivationWriter.write = write
capture_activations(tiny_model("llama"), CharTokenizer(), [t * 3 for t in TEXTS if t], sys.argv[2],
                    batch_size=1, progress=False)
"""


def test_resume_after_kill_9_is_byte_identical(tmp_path: Path) -> None:
    """A capture killed with SIGKILL in the middle of a batch resumes to the uninterrupted store, byte for byte."""
    import os
    import signal
    import subprocess
    import sys

    texts = [t * 3 for t in TEXTS if t]
    reference = capture_activations(tiny_model("llama"), CharTokenizer(), texts, tmp_path / "ref", batch_size=1,
                                    progress=False)
    script = tmp_path / "kill.py"
    script.write_text(_KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(Path(__file__).parent), str(tmp_path / "run")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["batches_done"] == 2
    resumed = capture_activations(tiny_model("llama"), CharTokenizer(), texts, tmp_path / "run", batch_size=1,
                                  progress=False)
    assert resumed.manifest["files"] == reference.manifest["files"]  # sizes and SHA-256 of every file
    for name in reference.manifest["files"]:
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()


def test_two_captures_are_byte_identical(tmp_path: Path) -> None:
    stores = [capture_activations(tiny_model("llama"), CharTokenizer(), TEXTS, tmp_path / name, batch_size=2,
                                  progress=False) for name in ("a", "b")]
    assert stores[0].manifest["files"] == stores[1].manifest["files"]
    assert set(stores[0].manifest["files"]) == {"tokens.bin", "docs.bin"} | {
        f"layer_{layer:03d}_{kind}.bin" for layer in range(3) for kind in ("act", "up")}


def test_layer_summary_matches_the_textbook_formulas(tmp_path: Path) -> None:
    """Per-layer statistics of a synthetic store, against scipy and numpy on the whole block (a dead channel too)."""
    from scipy.stats import kurtosis

    from funcprune.explore import layer_summary

    rng = np.random.default_rng(3)
    writer = _writer(tmp_path, ["act"], [0, 1], 6)
    blocks = {layer: np.concatenate([rng.standard_t(4, size=(9, 5)) * (layer + 1) + layer, np.full((9, 1), 2.0)],
                                    axis=1).astype(np.float32) for layer in (0, 1)}
    writer.append({(layer, "act"): b for layer, b in blocks.items()}, np.arange(9), np.zeros(9))
    summary = layer_summary(writer.finish())
    for layer, block in blocks.items():
        x = block.astype(np.float64)
        row = summary[summary["layer"] == layer].iloc[0]
        total = np.abs(x).sum(axis=0)
        expected = {"mean": x.mean(), "std": x.std(), "max_abs": np.abs(x).max(),
                    "kurtosis": kurtosis(x[:, :5], axis=0, fisher=True, bias=True).mean(),
                    "dead_fraction": 1 / 6, "top1_share": total.max() / total.sum()}
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, rel=1e-12), key


def _same(a: object, b: object) -> bool:
    """Equal to the bit, through tuples, lists and dicts of tensors."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape \
            and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def test_layer_calls_are_the_calls_of_a_real_pass_without_computing_a_layer(family_model: torch.nn.Module) -> None:
    """Stubbed layers see the calls (masks, position embeddings ...) that a real pass hands them, and none runs."""
    layers = get_adapter(family_model).get_layers(family_model)
    batches = [{"input_ids": torch.randint(1, 97, (2, 7)), "attention_mask": torch.tensor([[1] * 7, [1] * 5 + [0] * 2])},
               {"input_ids": torch.randint(1, 97, (1, 4)), "attention_mask": torch.ones(1, 4, dtype=torch.long)}]
    real_inputs, real_calls = [], []

    def record(i: int, _module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        hidden, rest = (args[0], args[1:]) if args else (kwargs.pop("hidden_states"), ())
        if i == 0:
            real_inputs.append(hidden)
        real_calls[-1].append((rest, kwargs))

    handles = [layer.register_forward_pre_hook(lambda m, a, k, i=i: record(i, m, a, k), with_kwargs=True)
               for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for batch in batches:
                real_calls.append([])
                family_model(**batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    ran: list[int] = []
    downs = [get_adapter(family_model).module(layer, "mlp.down") for layer in layers]
    watchers = [down.register_forward_hook(lambda *_, i=i: ran.append(i)) for i, down in enumerate(downs)]
    try:
        with torch.no_grad():
            inputs, calls = layer_calls(family_model, batches)
    finally:
        for w in watchers:
            w.remove()
    assert ran == [] and all("forward" not in vars(layer) for layer in layers)
    assert _same(inputs, real_inputs) and len(calls) == len(real_calls) == 2
    for got, want in zip(calls, real_calls):
        assert len(got) == len(want) == len(layers)
        assert all(_same(g, w) for g, w in zip(got, want))


def test_a_replayed_pass_gives_the_same_logits_to_the_bit(family_model: torch.nn.Module) -> None:
    """Later layers fed the recorded input of a layer, earlier ones skipped: the logits of a full pass, also with a
    hook at that layer (a lesion)."""
    layers = get_adapter(family_model).get_layers(family_model)
    down = get_adapter(family_model).module(layers[2], "mlp.down")
    batches = [torch.randint(1, 97, (2, 6)), torch.randint(1, 97, (1, 6))]
    prefix = LayerInputs(family_model, 2)
    with torch.no_grad():
        with prefix.record():
            dense = [family_model(input_ids=ids).logits for ids in batches]
        handle = down.register_forward_pre_hook(lambda _m, args: (args[0] * 0.5,))
        try:
            full = [family_model(input_ids=ids).logits for ids in batches]
            ran: list[int] = []
            watch = get_adapter(family_model).module(layers[0], "mlp.down").register_forward_hook(
                lambda *_: ran.append(0))
            with prefix.replay():
                replayed = [family_model(input_ids=ids).logits for ids in batches]
            watch.remove()
        finally:
            handle.remove()
    assert ran == [] and len(prefix.states) == 2
    assert not torch.equal(full[0], dense[0])  # the hook changed the pass ...
    assert all(torch.equal(a, b) for a, b in zip(replayed, full))  # ... and replaying changed nothing else
    assert all("forward" not in vars(layer) for layer in layers)  # the layers are restored


def test_replaying_other_batches_or_more_passes_is_refused() -> None:
    model = tiny_model("llama")
    prefix = LayerInputs(model, 1)
    with torch.no_grad():
        with prefix.record():
            model(input_ids=torch.randint(1, 97, (2, 6)))
        with pytest.raises(RuntimeError, match=r"a batch of shape \(1, 6, 32\), recorded \(2, 6, 32\)"):
            with prefix.replay():
                model(input_ids=torch.randint(1, 97, (1, 6)))
        with pytest.raises(RuntimeError, match="more passes than the 1 recorded inputs of layer 1"):
            with prefix.replay():
                model(input_ids=torch.randint(1, 97, (2, 6)))
                model(input_ids=torch.randint(1, 97, (2, 6)))
    assert all("forward" not in vars(layer) for layer in model.model.layers)
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\], got 3"):
        LayerInputs(model, 3)


def test_stop_at_input_ends_the_pass_after_the_hooks_before_it(family_model: torch.nn.Module) -> None:
    """The recorder's hook on the down projection's input runs, the projection itself does not."""
    adapter = get_adapter(family_model)
    down = adapter.module(adapter.get_layers(family_model)[1], "mlp.down")
    ran: list[str] = []
    watch = down.register_forward_hook(lambda *_: ran.append("down"))
    ids = torch.randint(0, 97, (2, 5))
    try:
        with torch.no_grad(), MLPRecorder(family_model, kinds=("product",), layers=[1]) as rec:
            family_model(input_ids=ids)
            expected = rec.records[(1, "product")]
            ran.clear()
            with stop_at_input(down):
                with pytest.raises(StopForward):
                    family_model(input_ids=ids)
            assert ran == [] and torch.equal(rec.records[(1, "product")], expected)
            family_model(input_ids=ids)  # the hook is gone on exit
            assert ran == ["down"]
    finally:
        watch.remove()
