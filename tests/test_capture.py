"""Stage 1 capture: hooks, exact values, padding invariance, store round trip and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

from funcprune import MLPRecorder, capture_activations, get_adapter
from funcprune.store import ActivationStore, ActivationWriter, IncompatibleStoreError


class CharTokenizer:
    """A minimal offline tokenizer: one id per character (mod vocab), right padding."""

    pad_token_id = 0

    def __init__(self, vocab: int = 97) -> None:
        self.vocab = vocab

    def __call__(self, text: str, truncation: bool = True, max_length: int = 512,
                 add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [1 + ord(c) % (self.vocab - 1) for c in text]
        return {"input_ids": ids[:max_length] if truncation else ids}


TEXTS = ["the cat sat on the mat", "a", "functional networks in a digital brain", "",
         "tokens are time points and channels are voxels"]


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
    original = ActivationWriter.append

    def crash_on_third(self, rows, tokens, docs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:  # write half a batch of one layer, then die
            with open(tmp_path / "run" / "layer_000_act.bin", "ab") as fh:
                fh.write(b"\x00" * 100)
            raise KeyboardInterrupt
        return original(self, rows, tokens, docs)

    ActivationWriter.append = crash_on_third  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            capture_activations(model, tok, texts, tmp_path / "run", batch_size=1, progress=False)
    finally:
        ActivationWriter.append = original  # type: ignore[method-assign]
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


def test_store_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    identity = {"model": {"name": "m"}, "dataset": {}, "text_ids": ["a", "b"], "dtype": "float32",
                "kinds": ["act", "up"], "layers": [0, 2], "widths": {"0": 4, "2": 4}, "max_tokens": 8,
                "drop_first_token": False}
    writer = ActivationWriter(tmp_path, identity)
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
