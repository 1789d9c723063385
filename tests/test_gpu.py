"""Device placement: the stage functions on a GPU when one is present, the placement logic on the CPU always.

The CUDA tests run each stage function on ``cuda`` and compare with the same call on the CPU;
without a GPU they are skipped with the reason. The CPU tests check where inputs go for a
model sharded by accelerate (``device_map``), with a mocked ``hf_device_map``, and that
``device_map="auto"`` loads and runs end to end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from funcprune import capture_activations, load_model, models
from funcprune.model_assets import DEFAULT_MODEL
from funcprune.data import load_texts
from funcprune.evaluate import perplexity
from tiny_models import tiny_model

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason=f"no CUDA device: torch {torch.__version__}, "
                                                 "torch.cuda.is_available() is False")


def _texts(n: int = 3) -> list[str]:
    return [t.text for t in load_texts("wiki", "calibration", n_texts=n)]


# ----------------------------------------------------------------------------------
# CPU: placement logic with a fake device map
# ----------------------------------------------------------------------------------
def _offload_embedding(model: nn.Module) -> nn.Embedding:
    """Do what accelerate does to an offloaded module: its weights become ``meta`` tensors."""
    embedding = model.get_input_embeddings()
    embedding.weight = nn.Parameter(torch.empty_like(embedding.weight, device="meta"), requires_grad=False)
    return embedding


def test_inputs_go_where_the_embedding_is_in_a_sharded_model() -> None:
    model = tiny_model("llama")
    layers = [f"model.layers.{i}" for i in range(model.config.num_hidden_layers)]
    # Layers report other devices than the embedding (a model sharded over two GPUs).
    model.hf_device_map = {"model.embed_tokens": "cpu", **{name: 1 for name in layers}, "model.norm": 1, "lm_head": 1}
    assert models.input_device(model) == torch.device("cpu")  # the embedding's, not the last layer's
    _offload_embedding(model)
    model.hf_device_map = {"model.embed_tokens": 1, **{name: 0 for name in layers}, "lm_head": 0}
    assert models.input_device(model) == torch.device("cuda:1")  # from the map: the weight is on meta
    model.hf_device_map = {"model": "cuda:0", "lm_head": "cpu"}  # a parent module's entry covers the embedding
    assert models.input_device(model) == torch.device("cuda:0")
    model.hf_device_map = {"model": "disk"}  # offloaded to disk: accelerate executes it on the CPU
    assert models.input_device(model) == torch.device("cpu")
    del model.hf_device_map
    assert models.input_device(model) == torch.device("cpu")


@pytest.fixture(scope="module")
def offloaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, nn.Module]:
    """A tiny model and its copy loaded by accelerate with the embedding offloaded to disk (weights on meta)."""
    import transformers as tf

    dense = tiny_model("llama")
    dense.config.tie_word_embeddings = False
    path = tmp_path_factory.mktemp("tiny")
    dense.save_pretrained(path)
    device_map = {"model.embed_tokens": "disk", "model.layers": "cpu", "model.norm": "cpu",
                  "model.rotary_emb": "cpu", "lm_head": "cpu"}
    model = tf.AutoModelForCausalLM.from_pretrained(path, device_map=device_map,
                                                    offload_folder=tmp_path_factory.mktemp("offload"))
    return dense, model.eval()


def test_inputs_of_a_really_offloaded_model(offloaded) -> None:
    """With accelerate's own device map, inputs on input_device give the dense model's logits."""
    dense, model = offloaded
    assert model.get_input_embeddings().weight.device.type == "meta"
    device = models.input_device(model)
    assert device == torch.device("cpu")
    ids = torch.randint(0, dense.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids.to(device)).logits, dense(input_ids=ids).logits)


def test_perplexity_of_an_offloaded_model(offloaded) -> None:
    dense, model = offloaded
    ids = torch.randint(0, dense.config.vocab_size, (256,), generator=torch.Generator().manual_seed(0))
    expected = perplexity(dense, None, ids, seq_len=64, progress=False)["ppl"]
    assert perplexity(model, None, ids, seq_len=64, progress=False)["ppl"] == pytest.approx(expected, rel=1e-5)


def test_auto_device_map_loads_and_runs_like_the_cpu_model(default_model, tmp_path: Path) -> None:
    """``device: auto`` (accelerate) works end to end; on a CPU-only machine it keeps every module on the CPU."""
    dense, tokenizer = default_model
    record = load_model(DEFAULT_MODEL, device_map="auto")
    sharded = record.model
    device_map = getattr(sharded, "hf_device_map", None)  # transformers sets none when all is on one device
    if device_map:
        assert record.source["devices"] == sorted({str(d) for d in device_map.values()})
    assert record.source["device"] == str(models.input_device(sharded))
    if not CUDA:
        assert {p.device.type for p in sharded.parameters()} == {"cpu"}
    ids = torch.tensor(tokenizer("\n\n".join(_texts()))["input_ids"][:256])
    a = perplexity(dense, None, ids, seq_len=64, progress=False)["ppl"]
    b = perplexity(sharded, None, ids, seq_len=64, progress=False)["ppl"]
    assert b == pytest.approx(a, rel=1e-4)
    store = capture_activations(sharded, tokenizer, _texts(2), tmp_path / "acts", batch_size=2, max_tokens=16,
                                layers=[0, 5], progress=False)
    assert store.n_tokens > 0 and np.isfinite(store.layer(5)).all()


# ----------------------------------------------------------------------------------
# CUDA: every stage function on the GPU, compared with the CPU
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cuda_model():
    return load_model(DEFAULT_MODEL, dtype="float32", device_map="cuda")


@needs_cuda
def test_cuda_model_and_inputs_on_the_gpu(cuda_model) -> None:
    model, _ = cuda_model
    assert models.input_device(model).type == "cuda"
    assert cuda_model.source["device"].startswith("cuda")


@needs_cuda
def test_capture_on_cuda_matches_the_cpu(cuda_model, default_model, tmp_path: Path) -> None:
    texts = _texts(2)
    kwargs = dict(batch_size=2, max_tokens=32, layers=[0, 15], progress=False)
    gpu = capture_activations(cuda_model[0], cuda_model[1], texts, tmp_path / "gpu", **kwargs)
    cpu = capture_activations(*default_model, texts, tmp_path / "cpu", **kwargs)
    assert np.array_equal(gpu.token_ids, cpu.token_ids)
    np.testing.assert_allclose(gpu.layer(15), cpu.layer(15), rtol=1e-3, atol=1e-3)


@needs_cuda
def test_perplexity_statistics_and_pruning_on_cuda(cuda_model, default_model) -> None:
    from funcprune.methods import build_pruned, make_plan
    from funcprune.scoring import channel_statistics

    (gpu, tokenizer), (cpu, _) = cuda_model, default_model
    ids = torch.tensor(tokenizer("\n\n".join(_texts()))["input_ids"][:512])
    ppl_gpu = perplexity(gpu, None, ids, seq_len=128, progress=False)["ppl"]
    assert ppl_gpu == pytest.approx(perplexity(cpu, None, ids, seq_len=128, progress=False)["ppl"], rel=1e-3)
    stats = channel_statistics(gpu, tokenizer, _texts(2), batch_size=2, max_tokens=32, progress=False)
    plan = make_plan("flap", gpu, 0.1, stats=stats, source=cuda_model.source)
    pruned = build_pruned("flap", gpu, plan, stats=stats, revision=cuda_model.source["revision"])
    assert models.input_device(pruned).type == "cuda"
    assert np.isfinite(perplexity(pruned, None, ids, seq_len=128, progress=False)["ppl"])


@needs_cuda
def test_pruned_checkpoint_reloads_on_cuda(cuda_model, tmp_path: Path) -> None:
    from funcprune.methods import make_plan
    from funcprune.prune import prune
    from funcprune.checkpoint import load_pruned, save_pruned

    model, tokenizer = dense = load_model(DEFAULT_MODEL, device_map="cuda")
    plan = make_plan("magnitude", model, 0.1, source=dense.source)
    prune(model, plan, revision=dense.source["revision"])
    save_pruned(model, tokenizer, tmp_path / "pruned", plan=plan)
    loaded, _ = load_pruned(tmp_path / "pruned", device="cuda")
    ids = torch.tensor([tokenizer("The printing press")["input_ids"]], device="cuda")
    with torch.inference_mode():
        diff = (model(input_ids=ids).logits - loaded(input_ids=ids).logits).abs().max().item()
    assert diff < 1e-4
