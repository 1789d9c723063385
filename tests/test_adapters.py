"""Adapters: every listed family maps canonical names to real modules of the right shape."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from funcprune import UnsupportedArchitectureError, get_adapter
from funcprune.adapters import ArchitectureAdapter, register_adapter


def test_adapter_maps_every_family(family_model: torch.nn.Module) -> None:
    adapter = get_adapter(family_model)
    layers = adapter.get_layers(family_model)
    assert len(layers) == 3
    width = adapter.intermediate_size(family_model.config)
    assert width == 48
    hidden = family_model.get_input_embeddings().weight.shape[1]
    for layer in layers:
        up = adapter.mlp_weight(layer, "mlp.up")
        down = adapter.mlp_weight(layer, "mlp.down")
        assert tuple(up.shape) == (width, hidden)
        assert tuple(down.shape) == (hidden, width)
        if adapter.gated:
            assert tuple(adapter.mlp_weight(layer, "mlp.gate").shape) == (width, hidden)
        assert callable(adapter.module(layer, "mlp.act"))


def test_non_gated_families_are_really_non_gated() -> None:
    assert not get_adapter("gpt2").gated and not get_adapter("gpt_neox").gated
    assert get_adapter("llama").gated
    with pytest.raises(KeyError, match="mlp.gate"):
        get_adapter("gpt2").module(torch.nn.Module(), "mlp.gate")


def test_unsupported_model_names_type_and_supported_ones() -> None:
    config = tf.BertConfig()
    with pytest.raises(UnsupportedArchitectureError) as err:
        get_adapter(config)
    assert "'bert'" in str(err.value)
    for supported in ("llama", "qwen2", "mistral", "gemma2", "gpt2"):
        assert supported in str(err.value)


def test_register_rejects_incomplete_adapter() -> None:
    with pytest.raises(ValueError, match="lacks canonical names"):
        register_adapter(ArchitectureAdapter("half", ("half",), "model.layers", {"mlp.up": "mlp.up_proj"}))
