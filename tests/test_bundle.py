"""Artefact bundles: small run results without activations or checkpoints, verified when unpacked."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from funcprune._io import ArtefactError
from funcprune.run.bundle import MANIFEST, bundle_files, main, read_bundle_manifest, unpack_bundle, write_bundle
from funcprune.book.workflow import REPO_ROOT, load_profile, run_notebooks

SMALL = ["activations/manifest.json", "networks/networks.json", "networks/networks.npz", "plans/fn_r0.20.json",
         "pruned/index.json", "results/results.csv", "stats/stats.json"]
BULK = ["activations/layer_000_act.bin", "activations/tokens.bin", "pruned/fn_r0.20/model.safetensors",
        "pruned/fn_r0.20/config.json", "plans/.fn_r0.30.json.abc.tmp"]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    root = tmp_path / "run"
    for i, name in enumerate(SMALL + BULK):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(f"{name}\n".encode() * (i + 1))
    return root


def test_bundle_holds_the_results_not_the_bulk(run_dir: Path, tmp_path: Path) -> None:
    assert bundle_files(run_dir) == sorted(SMALL)
    manifest = write_bundle(run_dir, tmp_path / "out" / "b.tar.gz", profile="tiny")
    assert sorted(manifest["files"]) == sorted(SMALL) and manifest["profile"] == "tiny"
    with tarfile.open(tmp_path / "out" / "b.tar.gz") as tar:
        assert tar.getnames()[0] == MANIFEST and sorted(tar.getnames()[1:]) == sorted(SMALL)
    assert read_bundle_manifest(tmp_path / "out" / "b.tar.gz") == manifest
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file left behind


def test_unpack_restores_identical_files(run_dir: Path, tmp_path: Path) -> None:
    write_bundle(run_dir, tmp_path / "b.tar.gz")
    fresh = tmp_path / "fresh"
    assert unpack_bundle(tmp_path / "b.tar.gz", fresh) == sorted(SMALL)
    for name in SMALL:
        assert (fresh / name).read_bytes() == (run_dir / name).read_bytes()
    assert unpack_bundle(tmp_path / "b.tar.gz", fresh) == sorted(SMALL)  # same files again: fine


def test_unpack_never_replaces_a_different_file_silently(run_dir: Path, tmp_path: Path) -> None:
    write_bundle(run_dir, tmp_path / "b.tar.gz")
    target = tmp_path / "target"
    (target / "plans").mkdir(parents=True)
    (target / "plans" / "fn_r0.20.json").write_text("mine")
    with pytest.raises(ArtefactError, match="differs from the bundle"):
        unpack_bundle(tmp_path / "b.tar.gz", target)
    assert (target / "plans" / "fn_r0.20.json").read_text() == "mine"
    assert not (target / "networks").exists()  # nothing written
    unpack_bundle(tmp_path / "b.tar.gz", target, overwrite=True)
    assert (target / "plans" / "fn_r0.20.json").read_bytes() == (run_dir / "plans" / "fn_r0.20.json").read_bytes()


def _tampered(tmp_path: Path, manifest: dict, members: dict[str, bytes]) -> Path:
    path = tmp_path / "bad.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [(MANIFEST, json.dumps(manifest).encode()), *members.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_corrupt_or_foreign_bundles_are_named_and_change_nothing(run_dir: Path, tmp_path: Path) -> None:
    manifest = write_bundle(run_dir, tmp_path / "b.tar.gz")
    members = {name: (run_dir / name).read_bytes() for name in SMALL}
    target = tmp_path / "target"
    changed = dict(members, **{"plans/fn_r0.20.json": b"x" * len(members["plans/fn_r0.20.json"])})
    with pytest.raises(ArtefactError, match="SHA-256"):
        unpack_bundle(_tampered(tmp_path, manifest, changed), target)
    with pytest.raises(ArtefactError, match="does not list"):
        unpack_bundle(_tampered(tmp_path, manifest, dict(members, **{"extra.txt": b"x"})), target)
    escaping = dict(manifest, files={"../outside.json": manifest["files"]["plans/fn_r0.20.json"]})
    with pytest.raises(ArtefactError, match="outside the run directory"):
        unpack_bundle(_tampered(tmp_path, escaping, {}), target)
    with pytest.raises(ArtefactError, match="format"):
        unpack_bundle(_tampered(tmp_path, dict(manifest, format=99), members), target)
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(ArtefactError, match="cannot be read"):
        unpack_bundle(tmp_path / "junk.tar.gz", target)
    assert not (target / "plans").exists()
    assert not (tmp_path / "outside.json").exists()


def test_empty_or_missing_run_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bundle_files(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtefactError, match="nothing to bundle"):
        write_bundle(tmp_path / "empty", tmp_path / "b.tar.gz")


def test_command_line_round_trip(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text(f"run_dir: {run_dir}\n")
    assert main(["write", "--profile", str(profile), "--out", str(tmp_path / "b.tar.gz")]) == 0
    assert f"{len(SMALL)} files" in capsys.readouterr().out
    assert main(["unpack", str(tmp_path / "b.tar.gz"), str(tmp_path / "again")]) == 0
    assert bundle_files(tmp_path / "again") == sorted(SMALL)


@pytest.mark.slow
def test_chapter_3_runs_from_a_bundle_alone(tmp_path: Path) -> None:
    """Stages 1-2 on the tiny profile, bundle, then chapter 3 in a fresh run directory holding only the bundle."""
    notebooks = sorted((REPO_ROOT / "notebooks").glob("[0-9]*.ipynb"))
    profile = load_profile("tiny")
    profile["run_dir"] = str(tmp_path / "full")
    run_notebooks(profile, tmp_path / "executed", notebooks=notebooks[:2])
    write_bundle(tmp_path / "full", tmp_path / "b.tar.gz")
    unpack_bundle(tmp_path / "b.tar.gz", tmp_path / "fresh")
    assert not list((tmp_path / "fresh" / "activations").glob("*.bin"))
    profile["run_dir"] = str(tmp_path / "fresh")
    report = run_notebooks(profile, tmp_path / "executed3", notebooks=notebooks[2:3])
    assert report[0]["ran"] and list((tmp_path / "fresh" / "plans").glob("fn_*.json"))


def test_ensure_inputs_unpacks_only_when_something_is_missing(run_dir: Path, tmp_path: Path) -> None:
    from funcprune.run.bundle import ensure_inputs

    assert ensure_inputs(run_dir, [1, 2, 3, 4]) == []  # everything is there
    fresh = tmp_path / "fresh"
    with pytest.raises(ArtefactError, match=r"stage\(s\) \[2\].*run chapters \[2\] first"):
        ensure_inputs(fresh, [2])
    write_bundle(run_dir, tmp_path / "b.tar.gz")
    assert ensure_inputs(fresh, [2], bundle=tmp_path / "b.tar.gz") == sorted(SMALL)
    assert (fresh / "networks" / "networks.json").exists()
    assert ensure_inputs(fresh, [2], bundle=tmp_path / "b.tar.gz") == []
    with pytest.raises(ValueError, match="accepted"):
        ensure_inputs(fresh, [5])
    partial = tmp_path / "partial"
    (partial / "plans").mkdir(parents=True)
    (partial / "plans" / "fn_r0.20.json").write_bytes((run_dir / "plans" / "fn_r0.20.json").read_bytes())
    ensure_inputs(partial, [2, 3], bundle=tmp_path / "b.tar.gz")
    assert (partial / "networks" / "networks.npz").exists()
