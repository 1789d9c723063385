"""A pruned model on disk: save it as a checkpoint transformers loads, verify it, load it back.

:func:`save_pruned` writes the weights and config with ``save_pretrained``, the plan
(``pruning_plan.json``), the files of :func:`funcprune.hf_export.finish_export` and
``funcprune_checkpoint.json``, the size and SHA-256 of every file. :func:`load_pruned`
(through :func:`verify_pruned`) compares them before reading anything (one extra read of the
weights, about 1 s per GB; ``verify=False`` compares the sizes only), checks that the
config's widths and the weights' shapes agree, and that the attached plan describes the
loaded model. It runs no checkpoint code: it builds the architecture at the global width,
slices the MLPs to the saved widths (:func:`funcprune.prune.read_width_config`, the rule
:func:`funcprune.prune.prune` wrote) and loads the weights strictly. Every failure names the
file and the fix (delete the checkpoint and re-run stage 4). :func:`export_round_trip` saves a model and
loads it back both ways (:func:`load_pruned`, and transformers alone), each compared with the model saved.

Used in the chapter :doc:`/executed/04_structured_pruning`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ._io import ArtefactError, atomic_directory, atomic_write_json, file_record, read_json, verify_file
from .adapters import get_adapter, layer_widths
from .hf_export import ModelCard, base_config, finish_export, needs_remote_code
from .models import LoadedModel, check_dtype, prepare_tokenizer
from .plan import PlanMismatchError, PruningPlan
from .prune import PRUNED_FORMAT, global_width, layer_width, prune_layer, read_width_config, write_width_config

__all__ = ["CHECKPOINT_MANIFEST", "PLAN_FILE", "ExportCheck", "export_round_trip", "load_pruned", "save_pruned",
           "verify_pruned"]

#: File name of the plan inside a saved pruned checkpoint.
PLAN_FILE = "pruning_plan.json"
#: File name of the record (sizes and digests) of a saved pruned checkpoint's files.
CHECKPOINT_MANIFEST = "funcprune_checkpoint.json"


def save_pruned(model: nn.Module, tokenizer: Any, path: str | os.PathLike[str],
                plan: PruningPlan, *, overwrite: bool = False, card: ModelCard | Mapping[str, Any] | None = None,
                networks: Any = None) -> Path:
    """Write a pruned model as a checkpoint that transformers alone loads, plus its plan and artefacts.

    The directory holds ``config.json`` (with ``per_layer_config`` and ``funcprune``),
    the weights (safetensors), ``generation_config.json``, the tokenizer (if it has
    ``save_pretrained``), ``pruning_plan.json``, the files of
    :func:`funcprune.hf_export.finish_export` (``modeling_funcprune.py`` where the layers'
    widths differ, ``channels.json``, the compensation biases, ``networks.npz`` when given,
    the model card ``README.md``) and ``funcprune_checkpoint.json`` (size and SHA-256 of
    every file, checked by :func:`load_pruned`). Anyone loads it with
    ``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`` (no flag needed
    when every layer keeps one width). It is written to a temporary directory and renamed,
    so it is never half written.

    Parameters
    ----------
    model : nn.Module
        A model pruned by :func:`prune`.
    tokenizer : transformers tokenizer or None
    path : str or path-like
        Destination directory.
    plan : PruningPlan
        The plan ``model`` was pruned with (e.g. ``LoadedModel.plan`` of
        :func:`funcprune.run.pipeline.rebuild_pruned`); checked against its MLP widths.
    overwrite : bool, default=False
        Replace an existing directory.
    card : funcprune.hf_export.ModelCard or mapping, optional
        What the model card states beyond the plan: base model, licence, calibration data,
        dense and pruned perplexity.
    networks : funcprune.ica.FunctionalNetworks, optional
        Saved as ``networks.npz`` (maps, voxel channels, key-neuron scores per layer).

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    if plan is None:
        raise ValueError("no plan: pass plan= (the plan the model was pruned with)")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    widths = layer_widths(model)
    if plan.pruned_widths != widths:
        raise PlanMismatchError(f"the plan's widths {plan.pruned_widths} are not the model's MLP widths {widths}: "
                                "pass the plan the model was pruned with")
    if getattr(model.config, "funcprune", None) is None:  # sliced by hand (prune_layer), not by prune
        write_width_config(model, plan.method, ())
    with atomic_directory(path) as tmp:
        # the custom class of modeling_funcprune.py loads the model's own tensor names (no legacy renames)
        model.save_pretrained(tmp, save_original_format=not needs_remote_code(model))
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(tmp)
        plan.save(tmp / PLAN_FILE)
        extra = finish_export(tmp, model, plan, card=card, networks=networks)
        recorded = [*_weight_files(tmp), "config.json", PLAN_FILE, *extra]
        atomic_write_json(tmp / CHECKPOINT_MANIFEST, {
            "format": PRUNED_FORMAT, "files": {name: file_record(tmp / name) for name in recorded}})
    return path


def _weight_files(path: Path) -> list[str]:
    """The weight files of a checkpoint (the shard index first when there is one)."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        return [index.name, *sorted(set(read_json(index, fix=_checkpoint_fix(path))["weight_map"].values()))]
    return ["model.safetensors"]


def _checkpoint_fix(path: Path) -> str:
    return f"delete {path} and re-run stage 4 (notebooks/04_structured_pruning.ipynb), or save_pruned the model again"


def verify_pruned(path: str | os.PathLike[str], *, digest: bool = True) -> dict[str, Any]:
    """Check a checkpoint written by :func:`save_pruned` against its recorded sizes and digests.

    Parameters
    ----------
    path : str or path-like
        Checkpoint directory.
    digest : bool, default=True
        Compare SHA-256 digests too (one read of the weights, about 1 s per GB); sizes
        are always compared.

    Returns
    -------
    dict
        The checkpoint's record (``format``, ``files``: name -> size and SHA-256).

    Raises
    ------
    FileNotFoundError
        ``path`` is not a directory.
    funcprune._io.ArtefactError
        The record is missing or corrupt, or a recorded file is missing, truncated or
        changed, naming the file and the fix.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a checkpoint directory (save_pruned writes one)")
    fix = _checkpoint_fix(path)
    record_path = path / CHECKPOINT_MANIFEST
    if not record_path.exists():
        raise ArtefactError(record_path, "is missing: the checkpoint was not written by this version's save_pruned, "
                                         "or was copied without it", fix)
    record = read_json(record_path, fix=fix)
    if not isinstance(record, dict) or record.get("format") != PRUNED_FORMAT or "files" not in record:
        raise ArtefactError(record_path, f"is not a {PRUNED_FORMAT!r} record", fix)
    unrecorded = [name for name in [*_weight_files(path), "config.json"] if name not in record["files"]]
    if unrecorded:
        raise ArtefactError(record_path, f"records no size and digest for {unrecorded}", fix)
    for name, file in record["files"].items():
        verify_file(path / name, file, digest=digest, fix=fix)
    return record


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = [f for f in _weight_files(path) if not f.endswith(".index.json")]
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            weights.update(load_file(path / f))
        except FileNotFoundError:
            raise ArtefactError(path / f, "is missing", _checkpoint_fix(path)) from None
        except Exception as exc:  # safetensors reports truncation and corruption without the path
            raise ArtefactError(path / f, f"cannot be read as safetensors ({exc}): truncated or corrupt",
                                _checkpoint_fix(path)) from None
    return weights


def _check_shapes(path: Path, model: nn.Module, weights: dict[str, torch.Tensor], widths: dict[int, int]) -> None:
    """One line naming config and weights when a tensor's shape is not the one the config implies."""
    expected = model.state_dict()
    for key, tensor in weights.items():
        if key in expected and tuple(expected[key].shape) != tuple(tensor.shape):
            raise ArtefactError(path, f"config.json and the weights disagree: {key} has shape {tuple(tensor.shape)} "
                                      f"in the weights but {tuple(expected[key].shape)} for the MLP widths of "
                                      f"config.json ({widths})", _checkpoint_fix(path))


def _rename_checkpoint_keys(model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply transformers' checkpoint renames (e.g. GPT-NeoX ``embed_out`` -> ``lm_head``).

    ``save_pretrained`` writes some tensors under legacy names and ``from_pretrained``
    renames them back; only pure renames exist for the supported families.
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:  # older transformers: keys are saved as they are
        return weights
    renames = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
    out = {}
    for key, tensor in weights.items():
        for rename in renames:
            key = rename.rename_source_key(key)[0]
        out[key] = tensor
    return out


def _attached_plan(path: Path, model: nn.Module) -> PruningPlan:
    """The checkpoint's plan, checked to describe the loaded (pruned) model."""
    plan_path = path / PLAN_FILE
    plan = PruningPlan.load(plan_path, fix=_checkpoint_fix(path))
    ident, widths = plan.model, layer_widths(model)
    found = {"model_type": model.config.model_type, "n_layers": len(widths),
             "hidden_size": int(model.config.hidden_size)}
    differ = [f"{k} {v!r} != plan's {ident.get(k)!r}" for k, v in found.items() if ident.get(k) != v]
    if plan.pruned_widths != widths:
        differ.append(f"MLP widths {widths} != plan's {plan.pruned_widths}")
    if differ:
        raise ArtefactError(plan_path, f"describes another model or pruning than the checkpoint's weights: "
                                       f"{'; '.join(differ)}", _checkpoint_fix(path))
    return plan


@torch.no_grad()
def load_pruned(path: str | os.PathLike[str], *, dtype: torch.dtype | str = torch.float32,
                device: str | torch.device = "cpu", verify: bool = True) -> LoadedModel:
    """Load a checkpoint written by :func:`save_pruned`.

    The files are first checked against the checkpoint's record (:func:`verify_pruned`).
    The base architecture is built at the global width without random initialisation,
    its MLPs are sliced to the saved widths (down biases added where compensation created
    them), and the weights are loaded strictly: a missing or unexpected tensor, or one
    whose shape the config does not imply, is an error (tied weights excepted). The
    attached plan must describe the loaded model.

    Parameters
    ----------
    path : str or path-like
        Checkpoint directory.
    dtype : torch.dtype or str, default=torch.float32
        Checked by :func:`funcprune.models.check_dtype`.
    device : str or torch.device, default="cpu"
    verify : bool, default=True
        Compare the files' SHA-256 digests with the record (one read of the weights,
        about 1 s per GB); sizes are compared either way.

    Raises
    ------
    ValueError
        ``dtype`` is no floating dtype (one line, :func:`funcprune.models.check_dtype`).
    funcprune._io.ArtefactError
        A file is missing, truncated or changed, the config and the weights disagree,
        or the plan describes another model; the message names the file and the fix.

    Returns
    -------
    funcprune.models.LoadedModel
        ``model`` (in eval mode), ``tokenizer`` (``None`` if the directory has none),
        ``source`` (``source="pruned"``, the path, and as ``revision`` the first 16 hex
        digits of the weights' SHA-256) and ``plan`` (``None`` without a plan file).
        Unpacks as ``model, tokenizer``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights

    path = Path(path)
    dtype = check_dtype(dtype)
    record = verify_pruned(path, digest=verify)
    config = base_config(path)  # the family's config, also for a checkpoint with modeling_funcprune.py
    adapter = get_adapter(config)
    widths = read_width_config(config, adapter)
    meta = getattr(config, "funcprune", None) or {}
    overrides = None
    if getattr(config, "is_heterogeneous", False):
        key = adapter.intermediate_size_key
        width = global_width(config, adapter)
        overrides = {i: {key: w} for i, w in widths.items() if w != width}
        config.per_layer_config = None  # let the modeling code read the global width
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # no_init_weights skips init_weights, which also ties the embeddings
    if overrides:
        config.per_layer_config = overrides
    layers = adapter.get_layers(model)
    if len(layers) != len(widths):
        raise ValueError(f"config describes {len(widths)} MLP widths for {len(layers)} layers")
    for i, width in widths.items():
        if layer_width(adapter, layers[i]) != width:
            prune_layer(model, i, list(range(width)))
        if i in set(meta.get("down_bias_layers", [])):
            down = adapter.module(layers[i], "mlp.down")
            if down.bias is None:
                weight = adapter.mlp_weight(layers[i], "mlp.down")
                down.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype))
    weights = _rename_checkpoint_keys(model, _read_weights(path))
    _check_shapes(path, model, weights, widths)
    expected = model.state_dict(keep_vars=True)
    unexpected = sorted(set(weights) - set(expected))
    loaded_ids = {id(expected[k]) for k in weights if k in expected}
    missing = sorted(k for k in set(expected) - set(weights) if id(expected[k]) not in loaded_ids)
    if unexpected or missing:
        raise ValueError(f"{path} does not match the pruned architecture: missing tensors "
                         f"{missing[:10]}, unexpected tensors {unexpected[:10]}")
    model.load_state_dict(weights, strict=False)
    model.to(device)
    model.eval()
    source = {
        "name": path.name, "source": "pruned", "path": str(path.resolve()),
        "revision": record["files"][_weight_files(path)[0]]["sha256"][:16],
        "model_type": config.model_type, "dtype": str(dtype).replace("torch.", ""),
    }
    plan = _attached_plan(path, model) if (path / PLAN_FILE).exists() else None
    tokenizer = None
    if (path / "tokenizer_config.json").exists():
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path, config=config))  # no remote code
    return LoadedModel(model, tokenizer, source, plan)


@dataclass
class ExportCheck:
    """A checkpoint :func:`export_round_trip` wrote, and how its two reloads compare with the model saved.

    Attributes
    ----------
    path : Path
        The checkpoint directory.
    plain : nn.Module
        The checkpoint loaded by transformers alone (``AutoModelForCausalLM.from_pretrained``).
    rows : dict
        ``"<name> (exported)"`` (:func:`load_pruned`) and ``"<name> (plain)"`` -> ``check`` and
        ``max |logit difference|`` against the model saved.
    files : list of str
        The names in the directory, sorted.
    mb : float
        Size of every file, in MB.
    same_tokens : bool
        Whether the saved tokenizer, loaded by transformers alone, gives the prompt's tokens.
    """

    path: Path
    plain: nn.Module
    rows: dict[str, dict[str, Any]]
    files: list[str]
    mb: float
    same_tokens: bool

    def facts(self, rows: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, str]:
        """What chapter 4 says of the export, by the name it glues each value under.

        ``round_trip_max`` is the largest difference of ``rows`` (default: this export's own rows).
        """
        rows = self.rows if rows is None else rows
        return {"plain_class": type(self.plain).__name__, "export_files": ", ".join(self.files),
                "same_tokens": "the same" if self.same_tokens else "NOT the same", "export_mb": f"{self.mb:.0f}",
                "round_trip_max": f"{max(r['max |logit difference|'] for r in rows.values()):.3g}"}


def export_round_trip(record: LoadedModel, tokenizer: Any, path: str | os.PathLike[str], input_ids: torch.Tensor, *,
                      prompt: str, card: ModelCard | Mapping[str, Any] | None = None, networks: Any = None,
                      dtype: torch.dtype | str = "float32") -> ExportCheck:
    """Save a pruned model (:func:`save_pruned`) and load it back both ways, each compared with the model saved.

    Parameters
    ----------
    record : funcprune.models.LoadedModel
        The pruned model and its plan (e.g. :func:`funcprune.run.pipeline.rebuild_pruned`).
    tokenizer : transformers tokenizer
        Saved with it.
    path : str or path-like
        The new checkpoint directory; its name names the rows.
    input_ids : LongTensor of shape (batch, seq_len)
        The tokens every model reads (on the model's input device).
    prompt : str
        A text both tokenizers (this one and the one saved) tokenise, compared.
    card, networks
        As for :func:`save_pruned`.
    dtype : torch.dtype or str, default="float32"
        Of both reloads, on the model's input device.

    Returns
    -------
    ExportCheck
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .evaluate import max_logit_difference
    from .models import input_device

    device = input_device(record.model)
    path = save_pruned(record.model, tokenizer, path, plan=record.plan, card=card, networks=networks)
    mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
    files = sorted(f.name for f in path.iterdir())
    reloaded = load_pruned(path, dtype=dtype, device=str(device)).model
    plain = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True,
                                                 dtype=check_dtype(dtype)).to(device).eval()
    same_tokens = AutoTokenizer.from_pretrained(path, trust_remote_code=True)(prompt)["input_ids"] == \
        tokenizer(prompt)["input_ids"]
    rows = {f"{path.name} (exported)": {"check": "save_pruned + load_pruned vs rebuilt",
                                        "max |logit difference|": max_logit_difference(record.model, reloaded,
                                                                                       input_ids)},
            f"{path.name} (plain)": {"check": "save_pruned + AutoModelForCausalLM.from_pretrained vs rebuilt",
                                     "max |logit difference|": max_logit_difference(record.model, plain, input_ids)}}
    return ExportCheck(path, plain, rows, files, mb, bool(same_tokens))
