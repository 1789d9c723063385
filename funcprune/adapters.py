"""Architecture adapters: one small mapping per model family.

An adapter maps *canonical* names (``"mlp.gate"``, ``"mlp.up"``, ``"mlp.down"``,
``"mlp.act"``, ``"attn.q"`` ...) to module paths inside one decoder layer, plus the
path of the layer list itself. Capture, scoring and pruning only ever speak
canonical names, so adding a model family is adding one :class:`ArchitectureAdapter`
to :data:`ADAPTERS`, never an ``if`` in the pruning code.

Used in the chapters :doc:`/executed/01_capture_activations` and later stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from torch import nn

__all__ = [
    "ADAPTERS",
    "ArchitectureAdapter",
    "UnsupportedArchitectureError",
    "get_adapter",
    "layer_widths",
    "register_adapter",
]

#: Canonical names every adapter must define (``mlp.gate`` may be ``None``).
CANONICAL_MLP = ("mlp.gate", "mlp.up", "mlp.down", "mlp.act")
CANONICAL_ATTN = ("attn.q", "attn.k", "attn.v", "attn.o", "attn.qkv")


class UnsupportedArchitectureError(ValueError):
    """Raised for a model family funcprune has no adapter for."""


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Where the MLP and attention modules of one model family live.

    Parameters
    ----------
    family : str
        Human-readable family name, e.g. ``"llama"``.
    model_types : tuple of str
        ``config.model_type`` values this adapter serves.
    layers : str
        Dotted path from the causal-LM object to the ``nn.ModuleList`` of
        decoder layers, e.g. ``"model.layers"``.
    modules : Mapping[str, str or None]
        Canonical name -> dotted path *inside one decoder layer*. ``"mlp.gate"``
        is ``None`` for non-gated MLPs (GPT-2, GPT-NeoX).
    intermediate_size_key : str
        Config attribute holding the MLP width (``"intermediate_size"``,
        ``"n_inner"`` for GPT-2).
    weight_layout : {"linear", "conv1d"}
        ``"linear"``: ``weight`` is ``(out_features, in_features)`` as in
        ``nn.Linear``. ``"conv1d"``: GPT-2's ``Conv1D`` stores ``(in, out)``.
    """

    family: str
    model_types: tuple[str, ...]
    layers: str
    modules: Mapping[str, str | None]
    intermediate_size_key: str = "intermediate_size"
    weight_layout: Literal["linear", "conv1d"] = "linear"
    notes: str = field(default="", compare=False)

    @property
    def gated(self) -> bool:
        """Whether the MLP has a gate projection (SwiGLU/GeGLU families)."""
        return self.modules.get("mlp.gate") is not None

    def get_layers(self, model: nn.Module) -> nn.ModuleList:
        """Return the decoder layers of ``model`` (an ``nn.ModuleList``)."""
        try:
            layers = model.get_submodule(self.layers)
        except AttributeError as err:
            raise UnsupportedArchitectureError(
                f"{type(model).__name__} has no module {self.layers!r}, which the "
                f"{self.family!r} adapter expects"
            ) from err
        return layers  # type: ignore[return-value]

    def module(self, layer: nn.Module, name: str) -> nn.Module:
        """Return the module for canonical ``name`` inside one decoder ``layer``.

        Raises
        ------
        KeyError
            If ``name`` is not a canonical name this family defines.
        """
        path = self.modules.get(name)
        if path is None:
            defined = sorted(k for k, v in self.modules.items() if v is not None)
            raise KeyError(f"{self.family!r} adapter has no {name!r}; it defines {defined}")
        return layer.get_submodule(path)

    def intermediate_size(self, config: Any) -> int:
        """MLP width from a config (GPT-2's ``n_inner=None`` means ``4 * n_embd``)."""
        value = getattr(config, self.intermediate_size_key, None)
        if value is None and self.weight_layout == "conv1d":
            return 4 * int(config.n_embd)
        if value is None:
            raise ValueError(f"config has no {self.intermediate_size_key!r}")
        return int(value)

    def mlp_weight(self, layer: nn.Module, name: str) -> "nn.Parameter":
        """Weight of an MLP projection as ``(out_features, in_features)``.

        GPT-2's ``Conv1D`` weights are returned transposed (a view), so callers
        never branch on the layout.
        """
        weight = self.module(layer, name).weight
        return weight.T if self.weight_layout == "conv1d" else weight


_LLAMA_LIKE = {
    "mlp.gate": "mlp.gate_proj",
    "mlp.up": "mlp.up_proj",
    "mlp.down": "mlp.down_proj",
    "mlp.act": "mlp.act_fn",
    "attn.q": "self_attn.q_proj",
    "attn.k": "self_attn.k_proj",
    "attn.v": "self_attn.v_proj",
    "attn.o": "self_attn.o_proj",
    "attn.qkv": None,
}

#: Registered adapters, keyed by ``config.model_type``.
ADAPTERS: dict[str, ArchitectureAdapter] = {}


def register_adapter(adapter: ArchitectureAdapter) -> ArchitectureAdapter:
    """Add ``adapter`` to :data:`ADAPTERS` under each of its model types.

    Missing canonical names are an error, so a half-written adapter cannot
    be registered.
    """
    missing = [k for k in CANONICAL_MLP if k not in adapter.modules]
    if missing:
        raise ValueError(f"adapter {adapter.family!r} lacks canonical names {missing}")
    for model_type in adapter.model_types:
        ADAPTERS[model_type] = adapter
    return adapter


for _adapter in (
    ArchitectureAdapter("llama", ("llama",), "model.layers", _LLAMA_LIKE),
    ArchitectureAdapter("mistral", ("mistral",), "model.layers", _LLAMA_LIKE),
    ArchitectureAdapter("qwen2", ("qwen2", "qwen3"), "model.layers", _LLAMA_LIKE),
    ArchitectureAdapter("gemma", ("gemma", "gemma2", "gemma3_text"), "model.layers", _LLAMA_LIKE),
    ArchitectureAdapter(
        "gpt2",
        ("gpt2",),
        "transformer.h",
        {
            "mlp.gate": None,
            "mlp.up": "mlp.c_fc",
            "mlp.down": "mlp.c_proj",
            "mlp.act": "mlp.act",
            "attn.qkv": "attn.c_attn",
            "attn.o": "attn.c_proj",
        },
        intermediate_size_key="n_inner",
        weight_layout="conv1d",
    ),
    ArchitectureAdapter(
        "gpt_neox",
        ("gpt_neox",),
        "gpt_neox.layers",
        {
            "mlp.gate": None,
            "mlp.up": "mlp.dense_h_to_4h",
            "mlp.down": "mlp.dense_4h_to_h",
            "mlp.act": "mlp.act",
            "attn.qkv": "attention.query_key_value",
            "attn.o": "attention.dense",
        },
    ),
):
    register_adapter(_adapter)


def get_adapter(model_or_config: Any) -> ArchitectureAdapter:
    """Return the adapter for a model, a config, or a ``model_type`` string.

    Parameters
    ----------
    model_or_config : PreTrainedModel, PretrainedConfig or str
        Anything with a ``config.model_type``, a ``model_type``, or the type itself.

    Returns
    -------
    ArchitectureAdapter

    Raises
    ------
    UnsupportedArchitectureError
        Naming the model type and every supported one.
    """
    if isinstance(model_or_config, str):
        model_type = model_or_config
    else:
        config = getattr(model_or_config, "config", model_or_config)
        model_type = getattr(config, "model_type", None)
    if isinstance(model_type, str) and model_type.startswith("funcprune_"):  # a checkpoint of save_pruned
        model_type = model_type[len("funcprune_"):]  # loaded with its modeling_funcprune.py: its base family
    try:
        return ADAPTERS[model_type]  # type: ignore[index]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"model type {model_type!r} is not supported; supported model types: "
            f"{', '.join(sorted(ADAPTERS))}. Add an ArchitectureAdapter with "
            "funcprune.register_adapter to support it."
        ) from None


def layer_widths(model: nn.Module) -> dict[int, int]:
    """Current MLP width of every layer, read from the modules (pruned models included).

    Unlike ``config.intermediate_size``, this is right for models with per-layer
    widths.

    Returns
    -------
    dict[int, int]
        Layer index -> number of intermediate channels (input features of the down
        projection).
    """
    adapter = get_adapter(model)
    return {i: int(adapter.mlp_weight(layer, "mlp.down").shape[1])
            for i, layer in enumerate(adapter.get_layers(model))}
