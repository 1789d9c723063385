"""A structurally pruned causal language model: the base family's model, each MLP at its own width.

This file was written by funcprune (Liu et al. 2025, arXiv:2508.05239) next to the weights of a pruned
checkpoint, so that transformers alone builds it::

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(path)

Structured pruning removed MLP channels (rows of the up and gate projections, columns of the down
projection), so the layers' MLP widths differ, and the family's transformers code builds one global width.
The classes below are the family's own transformers classes (``BASE_MODEL_TYPE``) with one change: after the
model is built at the global width, every decoder layer whose width in ``config.per_layer_config`` differs has
its MLP projections rebuilt at that width, and a down projection gains a bias where pruning added one
(``config.funcprune["down_bias_layers"]``). The weights then load as usual. Attention, embeddings, norms and
the forward pass are the family's, unchanged.

``config.funcprune["mlp_modules"]`` names, inside one decoder layer, the projections whose outputs are the MLP
channels (``channel_out``) and the one whose inputs are (``channel_in``), and the config attribute that holds
the width (``width_key``).
"""

from __future__ import annotations

from torch import nn
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

BASE_MODEL_TYPE = "llama"  # the family this checkpoint was pruned from (set by funcprune at export)

_BaseConfig = CONFIG_MAPPING[BASE_MODEL_TYPE]
_BaseForCausalLM = MODEL_FOR_CAUSAL_LM_MAPPING[_BaseConfig]


class FuncpruneConfig(_BaseConfig):
    """The base family's config; ``per_layer_config`` holds the MLP widths that differ from the global one."""

    model_type = "funcprune_" + BASE_MODEL_TYPE


def _resized(module: nn.Module, width: int, side: str) -> nn.Module:
    """A new projection like ``module`` with ``width`` outputs (``side="out"``) or inputs (``side="in"``)."""
    weight = module.weight
    conv1d = type(module).__name__ == "Conv1D"  # GPT-2 stores its weights as (inputs, outputs)
    n_in, n_out = weight.shape if conv1d else weight.shape[::-1]
    n_in, n_out = (n_in, width) if side == "out" else (width, n_out)
    if conv1d:
        new = type(module)(n_out, n_in)
    else:
        new = nn.Linear(n_in, n_out, bias=module.bias is not None)
    return new.to(device=weight.device, dtype=weight.dtype)


def _replace(layer: nn.Module, path: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at ``path`` inside ``layer``; return its parent (the MLP)."""
    parent, _, name = path.rpartition(".")
    owner = layer.get_submodule(parent) if parent else layer
    setattr(owner, name, module)
    return owner


class FuncpruneForCausalLM(_BaseForCausalLM):
    """The base family's causal LM with per-layer MLP widths (see the module notes)."""

    config_class = FuncpruneConfig

    def __init__(self, config: FuncpruneConfig) -> None:
        overrides = config.to_dict().get("per_layer_config") or None
        config.per_layer_config = None  # the family's code reads one global width ...
        try:
            super().__init__(config)
        finally:
            config.per_layer_config = overrides  # ... and the layers then take their own
        self._resize_mlps(config)

    def _resize_mlps(self, config: FuncpruneConfig) -> None:
        meta = config.funcprune
        spec = meta["mlp_modules"]
        with_bias = {int(i) for i in meta.get("down_bias_layers", [])}
        for i, layer in enumerate(self.get_submodule(spec["layers"])):
            down = layer.get_submodule(spec["channel_in"])
            built = down.weight.shape[0 if type(down).__name__ == "Conv1D" else 1]
            width = getattr(config.per_layer_config[i], spec["width_key"]) or built
            if width != built:
                for path in spec["channel_out"]:
                    _replace(layer, path, _resized(layer.get_submodule(path), width, "out"))
                down = _resized(down, width, "in")
                mlp = _replace(layer, spec["channel_in"], down)
                if hasattr(mlp, "intermediate_size"):
                    mlp.intermediate_size = width
            if i in with_bias and down.bias is None:
                n_out = down.weight.shape[1 if type(down).__name__ == "Conv1D" else 0]
                down.bias = nn.Parameter(down.weight.new_zeros(n_out))
