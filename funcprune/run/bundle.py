"""Artefact bundles: the small results of a run, so that a reader can start at any chapter.

A bundle is a ``.tar.gz`` of a run directory without its bulk: the functional networks,
the pruning plans, the activation statistics, the index of the pruned models and the
evaluation results, plus the stage-1 manifest (which names the calibration texts) but
**not** the activations themselves nor the pruned checkpoints. Its first member,
``bundle.json``, lists every file with its size and SHA-256 (:func:`funcprune._io.file_record`),
the funcprune version and where the run came from.

Unpacked into an empty run directory (:func:`unpack_bundle`), it lets chapter 3 (key
neurons) run without stages 1 and 2, and chapters 4 and 5 show their tables; stage 4
rebuilds a pruned model from its plan and the dense model when it needs one. A chapter
that starts with ``ensure_inputs(run_dir, [2], bundle=...)`` runs from a bundle alone.

Command line::

    python -m funcprune.run.bundle write --profile default [--out bundles/default.tar.gz]
    python -m funcprune.run.bundle unpack bundles/default.tar.gz runs/default

A bundle's manifest also records where the run came from (:func:`run_provenance`: model, revision,
licence, data, the model-independent :func:`protocol_fingerprint`, commit, date, machine): the
chapter that sets models side by side (:mod:`funcprune.book.crossmodel`) reads every bundle of
``bundles/`` and marks one measured another way as stale.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

from .._io import ArtefactError, file_record, json_sha256, verify_file
from .rundir import RunDir

__all__ = ["COMPARISON", "MANIFEST", "STAGE_OUTPUTS", "bundle_files", "ensure_inputs", "protocol_fingerprint", "read_bundle_manifest",
           "run_provenance", "unpack_bundle", "write_bundle"]

#: Name of the manifest member, first in every bundle.
MANIFEST = "bundle.json"
#: Folders of a run directory whose contents stay out of a bundle, except the files named here.
BULK = {RunDir.ACTIVATIONS: {PurePosixPath(RunDir.ACTIVATION_MANIFEST).name},
        RunDir.PRUNED: {PurePosixPath(RunDir.INDEX).name, PurePosixPath(RunDir.DECOMPOSITION).name}}
_FORMAT = 1
_FIX = "download or write the bundle again (make bundle)"
#: The comparison bundle (``--comparison``): what chapter 7 reads and the records that say how the run was made,
#: without the networks' maps, the statistics and the plans (about a megabyte instead of tens).
COMPARISON = (RunDir.RESULTS, RunDir.SUMMARY, RunDir.INDEX, RunDir.DECOMPOSITION, RunDir.PROFILE,
              RunDir.ACTIVATION_MANIFEST, RunDir.NETWORKS_RECORD)
#: What each stage leaves in the run directory that a later chapter reads (stage number -> relative paths).
STAGE_OUTPUTS = {1: (RunDir.ACTIVATION_MANIFEST,), 2: (RunDir.NETWORKS_RECORD,), 3: (RunDir.PLANS,),
                 4: (RunDir.INDEX,)}


def bundle_files(run_dir: str | os.PathLike[str], only: Sequence[str] | None = None) -> list[str]:
    """Files of a run directory that belong in its bundle, as sorted POSIX paths relative to it.

    Everything except the bulk (:data:`BULK`): the activation files and the pruned
    checkpoints. Hidden files (temporary files of an interrupted write) are skipped.
    ``only`` keeps the files at or under these relative paths (e.g. :data:`COMPARISON`).

    Raises
    ------
    FileNotFoundError
        When ``run_dir`` is not a directory.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory {str(root)!r} does not exist; run `make notebooks` first")
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        keep = BULK.get(rel.parts[0])
        if keep is not None and (len(rel.parts) != 2 or rel.parts[1] not in keep):
            continue
        if only is None or any(rel.as_posix() == o or rel.as_posix().startswith(f"{o}/") for o in only):
            files.append(rel.as_posix())
    return files


#: What a protocol fingerprint leaves out: what differs between models by nature (their tokens and BOS id, the
#: harness build), so that two models measured the same way share one fingerprint.
_MODEL_SPECIFIC = {"eval_stream": None, "bos": ("token_id",), "zero_shot": ("harness_version",),
                   "eval_dataset": ("n_words",)}
#: Bump when what a bundle's comparisons mean changes (methods, comparisons, decomposition rules).
COMPARISON_PROTOCOL = 1


def protocol_fingerprint(protocol: dict[str, Any]) -> str:
    """The model-independent fingerprint of an evaluation protocol (``results.json["protocol"]``).

    Two runs on different models share it when they were measured the same way: the same held-out
    texts, window lengths and counts, tiers, zero-shot tasks and limit, dtype and comparison rules
    (:data:`COMPARISON_PROTOCOL`); each model's tokens and BOS id are left out (:data:`_MODEL_SPECIFIC`).

    Returns
    -------
    str
        16 hexadecimal characters.
    """
    kept: dict[str, Any] = {"comparison_protocol": COMPARISON_PROTOCOL}
    for key, value in sorted(protocol.items()):
        drop = _MODEL_SPECIFIC.get(key, ())
        if drop is None:
            continue
        kept[key] = {k: v for k, v in value.items() if k not in drop} if isinstance(value, dict) else value
    return json_sha256(kept, default=str)[:16]


def run_provenance(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Where a run's results came from, for a bundle's manifest; None before stage 5 wrote its results.

    Returns
    -------
    dict or None
        ``model`` (name, revision, licence, model type; its path as :func:`funcprune.provenance.display_path`
        shows it), ``data`` (the held-out corpus, its file and SHA-256), ``protocol`` (:func:`protocol_fingerprint`),
        ``results_funcprune`` and ``commit`` (what evaluated), ``evaluated`` (the results' date), ``machine``.
    """
    from ..provenance import display_path

    run = RunDir(run_dir)
    if not run.results_json.exists():
        return None
    record = run.results_record()
    dense = dict(record.get("dense_model") or {})
    if dense.get("path"):
        dense["path"] = display_path(dense["path"])
    env = record.get("environment") or {}
    data = record["protocol"]["eval_dataset"]
    return {"model": {k: dense.get(k) for k in ("name", "source", "revision", "license", "model_type", "path")},
            "data": {k: data.get(k) for k in ("name", "package", "package_version", "file", "sha256", "split")},
            "protocol": protocol_fingerprint(record["protocol"]), "protocol_id": record.get("protocol_id"),
            "results_funcprune": env.get("funcprune"), "commit": env.get("git_commit"),
            "evaluated": time.strftime("%Y-%m-%d", time.gmtime(run.results_json.stat().st_mtime)),
            "machine": {"platform": env.get("platform"), "python": env.get("python"), "cpus": os.cpu_count()}}


def write_bundle(run_dir: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 profile: str | None = None, only: Sequence[str] | None = None) -> dict[str, Any]:
    """Write the bundle of a run directory to ``out`` (atomically: a temporary file, then a rename).

    Parameters
    ----------
    run_dir : str or path
        A run directory written by the stages.
    out : str or path
        The ``.tar.gz`` to write; its parent is created.
    profile : str, optional
        Profile name recorded in the manifest.
    only : sequence of str, optional
        Keep only these parts of the run (:data:`COMPARISON`: the comparison bundle); recorded in the manifest.

    Returns
    -------
    dict
        The manifest (also the bundle's first member).
    """
    from ..provenance import __version__, display_path

    root = Path(run_dir)
    files = bundle_files(root, only)
    if not files:
        raise ArtefactError(root, "holds nothing to bundle", "run the stages first (make notebooks)")
    manifest = {"format": _FORMAT, "funcprune": __version__, "profile": profile, "source": display_path(root),
                "provenance": run_provenance(root), "only": list(only) if only is not None else None,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": {name: file_record(root / name) for name in files}}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            data = json.dumps(manifest, indent=2, sort_keys=True).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))
            for name in files:
                tar.add(root / name, arcname=name, recursive=False)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return manifest


def read_bundle_manifest(bundle: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a bundle, checked for format.

    Raises
    ------
    ArtefactError
        Not a readable ``.tar.gz``, no manifest first, or another format.
    """
    try:
        with tarfile.open(bundle, "r:gz") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST:
                raise ArtefactError(bundle, f"does not start with {MANIFEST} (not a funcprune bundle)", _FIX)
            manifest = json.loads(tar.extractfile(first).read())  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError) as exc:
        raise ArtefactError(bundle, f"cannot be read as a bundle ({exc})", _FIX) from None
    if manifest.get("format") != _FORMAT:
        raise ArtefactError(bundle, f"has bundle format {manifest.get('format')!r}, this funcprune reads {_FORMAT}",
                            "use the funcprune version named in its manifest, or write it again")
    return manifest


def unpack_bundle(bundle: str | os.PathLike[str], run_dir: str | os.PathLike[str], *,
                  overwrite: bool = False) -> list[str]:
    """Unpack a bundle into a run directory and verify every file against the manifest.

    Files are extracted to a temporary directory beside ``run_dir``, verified (size and
    SHA-256), then moved into place: a corrupt bundle changes nothing.

    Parameters
    ----------
    bundle : str or path
        A file written by :func:`write_bundle`.
    run_dir : str or path
        Destination run directory (created if needed).
    overwrite : bool, default=False
        Replace files of ``run_dir`` that differ from the bundle's. Without it such a
        file raises, and nothing is written.

    Returns
    -------
    list of str
        The files now in ``run_dir`` from the bundle (relative paths).

    Raises
    ------
    ArtefactError
        A corrupt bundle, a member outside the manifest or escaping the run directory, or an
        existing different file (without ``overwrite``).
    """
    manifest = read_bundle_manifest(bundle)
    records: dict[str, dict[str, Any]] = manifest["files"]
    root = Path(run_dir)
    for name in records:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts:
            raise ArtefactError(bundle, f"names a file outside the run directory ({name!r})", _FIX)
        target = root / name
        if target.exists() and not overwrite and file_record(target) != records[name]:
            raise ArtefactError(target, "exists and differs from the bundle's copy",
                                "unpack into an empty run directory, or pass overwrite=True (--overwrite)")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}.unpack.") as tmp:
        with tarfile.open(bundle, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.name != MANIFEST]
            unknown = sorted({m.name for m in members} - set(records))
            if unknown or any(not m.isfile() for m in members):
                raise ArtefactError(bundle, f"holds members its manifest does not list: {unknown}", _FIX)
            tar.extractall(tmp, members=members, filter="data")
        for name, record in records.items():
            verify_file(Path(tmp) / name, record, digest=True, fix=_FIX)
        for name in records:
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(tmp) / name, target)
    return sorted(records)


def ensure_inputs(run_dir: str | os.PathLike[str], stages: Sequence[int], *,
                  bundle: str | os.PathLike[str] | None = None) -> list[str]:
    """Make sure the outputs of earlier stages are in a run directory, unpacking a bundle if they are not.

    A chapter calls this first, with the stages it reads, so that a reader can start at it.

    Parameters
    ----------
    run_dir : str or path
        The run directory.
    stages : sequence of int
        Earlier stages whose outputs (:data:`STAGE_OUTPUTS`) the chapter reads.
    bundle : str or path, optional
        A bundle to unpack when some are missing (files already there are kept).

    Returns
    -------
    list of str
        The files unpacked (empty when everything was already there).

    Raises
    ------
    ArtefactError
        Outputs are missing and no bundle was given (or the bundle lacks them), naming the
        chapters to run or the bundle to unpack.
    """
    unknown = sorted(set(stages) - set(STAGE_OUTPUTS))
    if unknown:
        raise ValueError(f"stages {unknown} have no outputs a later chapter reads; accepted: {sorted(STAGE_OUTPUTS)}")
    root = Path(run_dir)

    def missing() -> list[int]:
        return [s for s in sorted(set(stages)) if not all((root / p).exists() for p in STAGE_OUTPUTS[s])]

    gaps = missing()
    if not gaps:
        return []
    fix = (f"run chapters {gaps} first with the same run_dir, or unpack a bundle of a run: "
           f"python -m funcprune.run.bundle unpack <bundle.tar.gz> {root}")
    if bundle is None:
        raise ArtefactError(root, f"lacks the outputs of stage(s) {gaps}", fix)
    manifest = read_bundle_manifest(bundle)
    wanted = [name for name in manifest["files"] if not (root / name).exists()]
    files = unpack_bundle(bundle, root) if wanted else []
    if missing():
        raise ArtefactError(root, f"still lacks the outputs of stage(s) {missing()} after unpacking {bundle}", fix)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    from .profiles import load_profile
    from ..provenance import REPO_ROOT

    parser = argparse.ArgumentParser(prog="python -m funcprune.run.bundle")
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write", help="bundle the run directory of a profile")
    write.add_argument("--profile", default="default")
    write.add_argument("--out", help="default: bundles/<profile>.tar.gz (the folder the comparison chapter reads)")
    write.add_argument("--comparison", action="store_true",
                       help="only what chapter 7 reads and how the run was made (about a megabyte; no maps or plans)")
    unpack = sub.add_parser("unpack", help="unpack a bundle into a run directory")
    unpack.add_argument("bundle")
    unpack.add_argument("run_dir")
    unpack.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "write":
        profile = load_profile(args.profile)
        out = Path(args.out or REPO_ROOT / "bundles" / f"{profile['profile']}.tar.gz")
        manifest = write_bundle(profile["run_dir"], out, profile=profile["profile"],
                                only=COMPARISON if args.comparison else None)
        size = sum(r["size"] for r in manifest["files"].values())
        print(f"{out}: {len(manifest['files'])} files, {size / 2**20:.1f} MiB before compression, "
              f"{out.stat().st_size / 2**20:.1f} MiB written")
    else:
        files = unpack_bundle(args.bundle, args.run_dir, overwrite=args.overwrite)
        print(f"{args.run_dir}: {len(files)} files from {args.bundle}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
