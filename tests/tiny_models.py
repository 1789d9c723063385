"""Test helpers: tiny randomly initialised models of every supported family (built offline from configs),
a character tokenizer and a few texts."""

from __future__ import annotations

import torch
import transformers as tf

#: Model types covered by the adapter tests (every family funcprune supports).
FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text", "gpt2", "gpt_neox")

_COMMON = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def tiny_config(model_type: str) -> tf.PretrainedConfig:
    """A small config of ``model_type`` (GQA where the family has it)."""
    if model_type == "gpt2":
        return tf.GPT2Config(vocab_size=97, n_embd=32, n_inner=48, n_layer=3, n_head=4, n_positions=128)
    if model_type == "gpt_neox":
        return tf.GPTNeoXConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                num_attention_heads=4, max_position_embeddings=128)
    config_cls = tf.AutoConfig.for_model(model_type).__class__
    extra = {"head_dim": 8} if model_type.startswith("gemma") else {}
    return config_cls(**_COMMON, **extra)


def tiny_model(model_type: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised causal LM of ``model_type`` in float32 eval mode."""
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(tiny_config(model_type), dtype=torch.float32)
    return model.eval()


def tiny_deep_llama(n_layers: int = 8, seed: int = 0) -> torch.nn.Module:
    """A tiny llama deep enough to prune: of 8 layers, 3 are prunable (the first three and the last two are
    protected by default)."""
    config = tiny_config("llama")
    config.num_hidden_layers = n_layers
    torch.manual_seed(seed)
    return tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


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
