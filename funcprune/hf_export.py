"""A pruned checkpoint anyone can load: plain ``from_pretrained``, a model card, and the artefacts people reuse.

:func:`funcprune.checkpoint.save_pruned` writes the weights and config with ``save_pretrained``; this module
finishes the directory so that transformers alone loads it, in any process, with no funcprune installed::

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(path)

**Per-layer widths.** Structured pruning leaves every layer its own MLP width; transformers' configs hold
them in ``per_layer_config``, but the families' modelling code builds one global width. Where the widths
differ (or pruning gave a down projection a bias the family has not), the checkpoint carries
``modeling_funcprune.py``, copied from ``funcprune/templates/`` with one line set to the base family: the
family's own config and causal-LM classes, whose MLPs are rebuilt at each layer's width before the weights
load. ``config.json`` registers it through ``auto_map`` and gets the model type ``funcprune_<family>``, which
transformers does not know, so loading without ``trust_remote_code=True`` stops with transformers' own
message naming that flag (instead of building the dense architecture and failing on shapes). Where every
layer ends with one width and no bias was added, the checkpoint is a plain one of the family: no code.

**Files beside the weights** (all listed with size and SHA-256 in ``funcprune_checkpoint.json``):

``channels.json``
    ``format`` (``"funcprune-channels/1"``), ``base_model`` (name, model type, layers, hidden size,
    revision), ``method``, ``ratio_requested``, ``ratio_reached``, ``ratio_basis``, ``params_removed``,
    ``protected_layers``, ``widths_before`` and ``widths_after`` (layer -> MLP width, keys are strings),
    ``kept`` (layer -> sorted indices, into the base model's channels, of the channels kept) and
    ``down_bias_layers``. Enough to prune the base model again with any tool: keep rows ``kept[l]`` of the
    up (and gate) projection and those columns of the down projection of layer ``l``.
``compensation_biases.safetensors``
    Only for bias-compensated models: one tensor ``layers.<l>.mlp.down.bias`` of shape ``(hidden,)`` per
    compensated layer (the format of the run directory's biases), already part of the weights.
``networks.npz``
    Only when ``networks`` is passed: per layer ``maps_<l>`` (the z-scored ICA maps, ``(k, voxels)``),
    ``voxel_channels_<l>`` (the channel of each voxel) and ``key_neuron_score_<l>`` (each channel's max
    ``|z|``, the paper's key-neuron score).
``README.md``
    The model card: method, ratio, calibration data, dense and pruned perplexity when given, the base
    model's licence, how to load it, and how to cite the paper and funcprune.
``generation_config.json``, the tokenizer files, ``pruning_plan.json``
    As transformers and :mod:`funcprune.plan` write them.

:func:`export_gains` measures what the export gains against the dense model (parameters, file size,
tokens/s), side by side.

Used in the chapter :doc:`/executed/04_structured_pruning`.
"""

from __future__ import annotations

import os
import re
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ._io import atomic_write_json, read_json
from .adapters import ArchitectureAdapter, get_adapter, layer_widths
from .plan import PruningPlan

__all__ = [
    "CHANNELS_FILE",
    "MODELING_FILE",
    "ModelCard",
    "base_config",
    "export_gains",
    "finish_export",
    "needs_remote_code",
]

#: The modelling file a checkpoint with per-layer widths carries (registered in ``auto_map``).
MODELING_FILE = "modeling_funcprune.py"
#: Kept channels and per-layer widths (JSON, format in the module notes).
CHANNELS_FILE = "channels.json"
BIASES_FILE = "compensation_biases.safetensors"
NETWORKS_FILE = "networks.npz"
CARD_FILE = "README.md"
CHANNELS_FORMAT = "funcprune-channels/1"
MODEL_TYPE_PREFIX = "funcprune_"
_TEMPLATE = Path(__file__).parent / "templates" / MODELING_FILE
_BASE_LINE = re.compile(r'^BASE_MODEL_TYPE = "[^"]*"', re.MULTILINE)
PAPER_CITATION = """@article{liu2025pruning,
  title   = {Pruning Large Language Models by Identifying and Preserving Functional Networks},
  author  = {Liu, Yiheng and Ning, Junhao and Xia, Sichen and Gao, Xiaohui and Qiang, Ning and Ge, Bao and
             Han, Junwei and Hu, Xintao},
  journal = {arXiv preprint arXiv:2508.05239},
  year    = {2025}
}"""
FUNCPRUNE_CITATION = """@software{funcprune,
  title = {funcprune: pruning LLMs by identifying and preserving functional networks, a reproducible companion},
  year  = {2026},
  note  = {Python package and Jupyter Book, version {version}}
}"""


@dataclass(frozen=True)
class ModelCard:
    """What the model card (``README.md`` of an exported checkpoint) states beyond the plan.

    Parameters
    ----------
    base_model : str, optional
        The dense model's name or hub id; default: the plan's model name.
    license : str, optional
        Licence of the base model's weights (the pruned weights are a derivative work under it).
    calibration : str, optional
        The calibration data, e.g. ``"16 Wikipedia texts of 512 tokens (exllamav3 copy)"``.
    dense_ppl, pruned_ppl : float, optional
        Perplexity of the dense and the pruned model on the same held-out text.
    ppl_protocol : str, optional
        How the perplexities were measured (text, window length, tokens).
    notes : str, optional
        Anything else, one paragraph.
    """

    base_model: str | None = None
    license: str | None = None
    calibration: str | None = None
    dense_ppl: float | None = None
    pruned_ppl: float | None = None
    ppl_protocol: str | None = None
    notes: str | None = None


def mlp_modules(adapter: ArchitectureAdapter) -> dict[str, Any]:
    """Where a family's MLP channels live, as the modelling template reads it from ``config.funcprune``.

    Returns
    -------
    dict
        ``layers`` (path of the decoder layers from the causal LM), ``channel_out`` (projections whose
        outputs are the channels), ``channel_in`` (the projection whose inputs are) and ``width_key``.
    """
    return {"layers": adapter.layers,
            "channel_out": [adapter.modules[k] for k in ("mlp.gate", "mlp.up") if adapter.modules.get(k)],
            "channel_in": adapter.modules["mlp.down"], "width_key": adapter.intermediate_size_key}


def needs_remote_code(model: nn.Module) -> bool:
    """Whether a pruned model needs ``modeling_funcprune.py``: its MLP widths differ, or pruning added a down bias."""
    meta = getattr(model.config, "funcprune", None) or {}
    return len(set(layer_widths(model).values())) > 1 or bool(meta.get("down_bias_layers"))


def _write_remote_code(path: Path, model: nn.Module) -> None:
    """Copy the modelling template (set to the model's family) and register it in ``config.json``."""
    adapter = get_adapter(model)
    base = model.config.model_type
    code, n = _BASE_LINE.subn(f'BASE_MODEL_TYPE = "{base}"', _TEMPLATE.read_text(encoding="utf-8"))
    if n != 1:
        raise RuntimeError(f"{_TEMPLATE} has {n} BASE_MODEL_TYPE lines, expected 1: the template is damaged; "
                           "reinstall funcprune")
    (path / MODELING_FILE).write_text(code, encoding="utf-8")
    config = read_json(path / "config.json")
    config["model_type"] = MODEL_TYPE_PREFIX + base
    config["architectures"] = ["FuncpruneForCausalLM"]
    config["auto_map"] = {"AutoConfig": "modeling_funcprune.FuncpruneConfig",
                          "AutoModelForCausalLM": "modeling_funcprune.FuncpruneForCausalLM"}
    config["funcprune"] = {**config.get("funcprune", {}), "base_model_type": base,
                           "mlp_modules": mlp_modules(adapter)}
    # AutoTokenizer without the flag reads config.json as a generic config, which needs this name (GPT-2: n_layer)
    config.setdefault("num_hidden_layers", int(model.config.num_hidden_layers))
    atomic_write_json(path / "config.json", config)


def base_config(path: str | os.PathLike[str]) -> Any:
    """The config of an exported checkpoint as its base family's transformers config (no remote code run).

    A checkpoint with ``modeling_funcprune.py`` records the model type ``funcprune_<family>``; funcprune's
    own loader (:func:`funcprune.checkpoint.load_pruned`) builds it from the family's config class instead.

    Returns
    -------
    transformers.PretrainedConfig
    """
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = Path(path)
    config = read_json(path / "config.json")
    base = (config.get("funcprune") or {}).get("base_model_type")
    if base is None or config.get("model_type") == base:
        return AutoConfig.from_pretrained(path)
    config = {k: v for k, v in config.items() if k != "auto_map"}
    config["model_type"] = base
    config["architectures"] = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[base]]
    return CONFIG_MAPPING[base].from_dict(config)


def _channels_record(model: nn.Module, plan: PruningPlan) -> dict[str, Any]:
    meta = getattr(model.config, "funcprune", None) or {}
    return {
        "format": CHANNELS_FORMAT, "base_model": plan.model, "method": plan.method,
        "ratio_requested": plan.ratio_requested, "ratio_reached": plan.ratio_reached,
        "ratio_basis": plan.ratio_basis, "params_removed": plan.params_removed,
        "protected_layers": plan.protected_layers,
        "widths_before": {str(i): w for i, w in plan.widths.items()},
        "widths_after": {str(i): w for i, w in layer_widths(model).items()},
        "kept": {str(i): list(map(int, kept)) for i, kept in plan.kept.items()},
        "down_bias_layers": [int(i) for i in meta.get("down_bias_layers", [])],
    }


def _write_biases(path: Path, model: nn.Module) -> bool:
    from safetensors.torch import save_file

    meta = getattr(model.config, "funcprune", None) or {}
    adapter = get_adapter(model)
    layers = adapter.get_layers(model)
    tensors = {f"layers.{i}.mlp.down.bias": adapter.module(layers[int(i)], "mlp.down").bias.detach().cpu().clone()
               for i in meta.get("down_bias_layers", [])}
    if tensors:
        save_file(tensors, str(path / BIASES_FILE), metadata={"format": "funcprune-biases/1"})
    return bool(tensors)


def _write_networks(path: Path, networks: Any, widths: Mapping[int, int]) -> None:
    from .scoring import key_neuron_scores

    maps = {int(layer): np.asarray(z) for layer, z in networks.maps_.items() if int(layer) in widths}
    channels = {layer: np.asarray(networks.voxel_channels_[layer]) for layer in maps}
    scores = key_neuron_scores(maps, channels, widths)
    arrays: dict[str, np.ndarray] = {}
    for layer in maps:
        arrays[f"maps_{layer}"] = maps[layer]
        arrays[f"voxel_channels_{layer}"] = channels[layer]
        arrays[f"key_neuron_score_{layer}"] = scores[layer]
    with open(path / NETWORKS_FILE, "wb") as fh:
        np.savez(fh, **arrays)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("funcprune")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


def _fmt(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.3f}"


def _card_text(model: nn.Module, plan: PruningPlan, card: ModelCard, remote: bool, files: list[str]) -> str:
    info = _channels_record(model, plan)
    base = card.base_model or str(plan.model.get("name"))
    total_after = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    ratio = (f"{100 * plan.ratio_reached:.2f} % of the {plan.ratio_basis} parameters removed"
             + (f" (requested {100 * plan.ratio_requested:.2f} %)" if plan.ratio_requested is not None else ""))
    flag = ", trust_remote_code=True" if remote else ""
    front = ["---", f"license: {card.license or 'other'}", f"base_model: {base}", "library_name: transformers",
             "tags:", "- pruned", "- structured-pruning", "- funcprune", "---", ""]
    widths = ", ".join(f"{i}: {w}" for i, w in info["widths_after"].items())
    lines = [
        f"# {base}, structurally pruned ({plan.method})", "",
        f"A copy of `{base}` with MLP channels physically removed by funcprune, a reproducible companion to "
        "*Pruning Large Language Models by Identifying and Preserving Functional Networks* (Liu et al., 2025, "
        "arXiv:2508.05239). Attention and embeddings are untouched; no weight was fine-tuned.", "",
        "## Load it", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("PATH"{flag})', f'tokenizer = AutoTokenizer.from_pretrained("PATH"{flag})',
        "```", "",
        ("The layers keep different MLP widths, so the folder carries `modeling_funcprune.py` (the family's own "
         "transformers classes, each MLP rebuilt at its layer's width); read it before passing "
         "`trust_remote_code=True`." if remote else
         "Every layer keeps the same MLP width: this is a plain checkpoint of the family, no custom code."), "",
        "## How it was pruned", "",
        "| | |", "|---|---|",
        f"| method | `{plan.method}` ({plan.allocation} allocation) |",
        f"| ratio | {ratio} |",
        f"| parameters | {total_after:,} after pruning ({plan.params_removed:,} removed) |",
        f"| protected layers | {plan.protected_layers} |",
        f"| bias compensation | {'layers ' + str(info['down_bias_layers']) if info['down_bias_layers'] else 'none'} |",
        f"| calibration data | {card.calibration or 'not stated'} |",
        f"| base model licence | {card.license or 'see the base model'} |",
        f"| base model revision | {plan.model.get('revision') or 'unknown'} |", "",
        f"MLP widths per layer: {widths}.", "",
        "## Perplexity", "",
        "| dense | pruned |", "|---|---|", f"| {_fmt(card.dense_ppl)} | {_fmt(card.pruned_ppl)} |", "",
        card.ppl_protocol or "Same held-out text for both, measured by funcprune.", "",
        "## Files", "",
        *[f"- `{name}`: {_FILE_NOTES[name]}" for name in files if name in _FILE_NOTES], "",
    ]
    if card.notes:
        lines += ["## Notes", "", card.notes, ""]
    lines += ["## Licence", "", f"The weights are derived from `{base}` and keep its licence "
              f"({card.license or 'see the base model'}).", "",
              "## Citation", "", "```bibtex", PAPER_CITATION, "", FUNCPRUNE_CITATION.replace("{version}", _version()),
              "```", ""]
    return "\n".join(front + lines)


_FILE_NOTES = {
    CHANNELS_FILE: "kept channel indices and MLP widths per layer (JSON, format `funcprune-channels/1`)",
    BIASES_FILE: "the compensation biases, one `(hidden,)` tensor per compensated layer (already in the weights)",
    NETWORKS_FILE: "the functional networks: ICA maps, voxel channels and key-neuron scores per layer",
    MODELING_FILE: "the model class (the family's, with per-layer MLP widths)",
    "pruning_plan.json": "the full funcprune plan (read by `funcprune.load_pruned`)",
    "funcprune_checkpoint.json": "size and SHA-256 of every file, checked by `funcprune.load_pruned`",
}


def finish_export(path: str | os.PathLike[str], model: nn.Module, plan: PruningPlan, *,
                  card: ModelCard | Mapping[str, Any] | None = None, networks: Any = None) -> list[str]:
    """Make a ``save_pretrained`` directory of a pruned model loadable by transformers alone, and document it.

    Called by :func:`funcprune.checkpoint.save_pruned` before it records the files; see the module notes for
    every file written.

    Parameters
    ----------
    path : str or path-like
        The directory ``model.save_pretrained`` wrote.
    model : nn.Module
        The pruned model.
    plan : PruningPlan
        The plan it was pruned with.
    card : ModelCard or mapping, optional
        What the model card states beyond the plan (a mapping of :class:`ModelCard`'s fields).
    networks : funcprune.ica.FunctionalNetworks, optional
        Written to ``networks.npz`` when given.

    Returns
    -------
    list of str
        The files written, relative to ``path``.
    """
    path = Path(path)
    if card is None:
        card = ModelCard()
    elif not isinstance(card, ModelCard):
        unknown = sorted(set(card) - set(asdict(ModelCard())))
        if unknown:
            raise TypeError(f"unknown model card fields {unknown}; accepted: {sorted(asdict(ModelCard()))}")
        card = ModelCard(**card)
    written = [CHANNELS_FILE]
    remote = needs_remote_code(model)
    if remote:
        _write_remote_code(path, model)
        written.append(MODELING_FILE)
    if not (path / "generation_config.json").exists() and getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(path)
    if (path / "generation_config.json").exists():
        written.append("generation_config.json")
    atomic_write_json(path / CHANNELS_FILE, _channels_record(model, plan))
    if _write_biases(path, model):
        written.append(BIASES_FILE)
    if networks is not None:
        _write_networks(path, networks, plan.widths)
        written.append(NETWORKS_FILE)
    card_files = [*written, "pruning_plan.json", "funcprune_checkpoint.json"]
    (path / CARD_FILE).write_text(_card_text(model, plan, card, remote, card_files), encoding="utf-8")
    written.append(CARD_FILE)
    return written


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) / 1e6


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def export_gains(dense: nn.Module, pruned: nn.Module, *, dense_dir: str | os.PathLike[str] | None = None,
                 pruned_dir: str | os.PathLike[str] | None = None, prefill_len: int = 128, decode_steps: int = 16,
                 rounds: int = 5) -> "Any":
    """Parameters, weight-file size and tokens/s of a dense and a pruned model, measured side by side.

    The two models are timed in alternating order (dense, pruned, pruned, dense, ...) on the same random
    prompt (:func:`funcprune.evaluate.measure_latency`, one warm-up each), so that a machine that speeds
    up or slows down during the cell affects both; medians over ``rounds`` are reported.

    Parameters
    ----------
    dense, pruned : transformers.PreTrainedModel
        E.g. the dense model and the export reloaded with ``from_pretrained``.
    dense_dir, pruned_dir : str or path-like, optional
        Checkpoint directories; their ``*.safetensors`` sizes fill the ``weights MB`` column (else the
        in-memory size of the parameters).
    prefill_len : int, default=128
        Prompt tokens processed in one pass (prefill tokens/s).
    decode_steps : int, default=16
        Tokens generated one at a time after it (decode tokens/s, greedy, KV cache).
    rounds : int, default=5
        Timed rounds per model (about 0.5 s each for a 135M-parameter model on 2 idle CPU cores).

    Returns
    -------
    pandas.DataFrame
        Rows ``dense``, ``pruned`` and ``pruned / dense``; columns ``parameters``, ``weights MB``,
        ``prefill tokens/s``, ``decode tokens/s``. ``attrs["settings"]`` holds the settings and the
        torch thread count.
    """
    import pandas as pd

    from .evaluate import measure_latency

    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    models = {"dense": dense, "pruned": pruned}
    dirs = {"dense": dense_dir, "pruned": pruned_dir}
    times: dict[str, list[dict[str, Any]]] = {name: [] for name in models}
    ids = torch.randint(0, int(dense.config.vocab_size), (1, prefill_len), generator=torch.Generator().manual_seed(0))
    for name, model in models.items():  # warm-up, untimed
        measure_latency(model, ids, prefill_len=prefill_len, decode_steps=decode_steps, repeats=1, warmup=0)
    for r in range(rounds):
        for name in (("dense", "pruned") if r % 2 == 0 else ("pruned", "dense")):
            times[name].append(measure_latency(models[name], ids, prefill_len=prefill_len,
                                               decode_steps=decode_steps, repeats=1, warmup=0))
    rows = {}
    for name, model in models.items():
        size = (_size_mb(Path(dirs[name])) if dirs[name] is not None else
                sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values()) / 1e6)
        rows[name] = {
            "parameters": _n_params(model), "weights MB": size,
            "prefill tokens/s": statistics.median(t["prefill_tokens_per_s"] for t in times[name]),
            "decode tokens/s": statistics.median(t["decode_tokens_per_s"] for t in times[name]),
        }
    table = pd.DataFrame(rows).T
    table.loc["pruned / dense"] = table.loc["pruned"] / table.loc["dense"]
    table.attrs["settings"] = {"prefill_len": prefill_len, "decode_steps": decode_steps, "rounds": rounds,
                               "threads": torch.get_num_threads()}
    return table
