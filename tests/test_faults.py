"""Fault injection: every artefact a later stage reads is checked, every resume is exact.

For each artefact type (activation layer files and token index, networks, channel
statistics, plans, exported checkpoints) the faults a disk, a copy or a user can
cause -- truncate, flip a bit, swap two files, delete one, bring one from other
settings -- must raise :class:`funcprune._io.ArtefactError` (or the artefact's own
error) naming the file and the fix, never pass silently.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_models import TEXTS, CharTokenizer, tiny_model

from funcprune import capture_activations
from funcprune._io import ArtefactError
from funcprune.run.artefacts import load_networks, load_statistics, save_networks, save_statistics
from funcprune.store import ActivationStore, ActivationWriter, IncompatibleStoreError

CAPTURE_TEXTS = [t * 2 for t in TEXTS if t] * 2  # 8 texts


def _truncate(path: Path, n_bytes: int = 8) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - n_bytes)


def _flip_bit(path: Path, offset: int | None = None) -> None:
    """Flip the lowest bit of one byte (a float32 mantissa bit at a multiple of 4: the value stays finite)."""
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 // 4 * 4 if offset is None else offset
    data[offset] ^= 1
    path.write_bytes(bytes(data))


def _write_nan(path: Path, offset: int = 0) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(np.array([np.nan], dtype=np.float32).tobytes())


def _swap(a: Path, b: Path) -> None:
    tmp = a.with_suffix(".swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def _capture(out: Path, **kwargs) -> ActivationStore:  # type: ignore[no-untyped-def]
    kwargs = {"batch_size": 2, "progress": False, **kwargs}
    return capture_activations(tiny_model("llama"), CharTokenizer(), CAPTURE_TEXTS, out, **kwargs)


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clean") / "activations"
    _capture(path)
    return path


@pytest.fixture
def store_copy(clean_store: Path, tmp_path: Path) -> Path:
    path = tmp_path / "activations"
    shutil.copytree(clean_store, path)
    return path


# ----------------------------------------------------------------------------------
# Activation store: layer files and token index
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["layer_001_up.bin", "tokens.bin", "docs.bin"])
def test_store_truncated_file_is_named_on_open(store_copy: Path, name: str) -> None:
    _truncate(store_copy / name)
    with pytest.raises(ArtefactError, match=rf"{name}: has \d+ bytes where \d+ were written.*re-run stage 1"):
        ActivationStore(store_copy)


@pytest.mark.parametrize("name", ["layer_000_act.bin", "tokens.bin"])
def test_store_deleted_file_is_named_on_open(store_copy: Path, name: str) -> None:
    (store_copy / name).unlink()
    with pytest.raises(ArtefactError, match=rf"{name}: is missing.*delete .*activations and re-run stage 1"):
        ActivationStore(store_copy)


@pytest.mark.parametrize("name", ["layer_002_act.bin", "tokens.bin"])
def test_store_bit_flip_found_by_verify_and_by_reuse(store_copy: Path, name: str) -> None:
    _flip_bit(store_copy / name)
    ActivationStore(store_copy)  # sizes only: a flipped bit passes the cheap check ...
    with pytest.raises(ArtefactError, match=rf"{name}: has changed since it was written"):
        ActivationStore(store_copy, verify=True)  # ... and not the digest
    with pytest.raises(ArtefactError, match=rf"{name}: has changed"):
        _capture(store_copy)  # capture run again does not return a damaged store as complete


def test_store_nan_bytes_in_complete_store_are_not_reused(store_copy: Path) -> None:
    _write_nan(store_copy / "layer_000_up.bin", offset=64)
    with pytest.raises(ArtefactError, match="layer_000_up.bin: has changed"):
        _capture(store_copy)


def test_store_swapped_files_found_by_verify(store_copy: Path) -> None:
    _swap(store_copy / "layer_000_act.bin", store_copy / "layer_001_act.bin")
    with pytest.raises(ArtefactError, match="layer_00[01]_act.bin: has changed"):
        ActivationStore(store_copy, verify=True)


def test_store_cut_manifest_is_named(store_copy: Path) -> None:
    manifest = store_copy / "manifest.json"
    manifest.write_text(manifest.read_text()[:200])
    with pytest.raises(ArtefactError, match=r"manifest.json: not valid JSON.*re-run stage 1"):
        ActivationStore(store_copy)
    with pytest.raises(ArtefactError, match=r"manifest.json: not valid JSON"):
        _capture(store_copy)


def test_store_stale_identity_is_refused(store_copy: Path) -> None:
    with pytest.raises(IncompatibleStoreError, match=r"differs in \['max_tokens'\]"):
        _capture(store_copy, max_tokens=7)
    with pytest.raises(IncompatibleStoreError, match=r"differs in \['dtype'\]"):
        _capture(store_copy, dtype="float16")


def _interrupted(path: Path, monkeypatch: pytest.MonkeyPatch, *, batch_size: int, commits: int) -> None:
    """A capture that dies right after its ``commits``-th commit."""
    original = ActivationWriter.commit
    calls = {"n": 0}

    def commit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == commits:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(ActivationWriter, "commit", commit)
        with pytest.raises(KeyboardInterrupt):
            _capture(path, batch_size=batch_size)


def test_store_nan_bytes_in_committed_rows_refuse_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _interrupted(tmp_path / "s", monkeypatch, batch_size=2, commits=2)
    _write_nan(tmp_path / "s" / "layer_001_act.bin", offset=4)
    with pytest.raises(ArtefactError, match="layer_001_act.bin: committed rows hold NaN or inf"):
        _capture(tmp_path / "s")


@pytest.mark.parametrize("new_batch_size", [4, 1])
def test_resume_with_another_batch_size_continues_exactly(clean_store: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          new_batch_size: int) -> None:
    """Interrupted at batch size 2, resumed at another: the rows of an uninterrupted capture, none lost or doubled."""
    _interrupted(tmp_path / "s", monkeypatch, batch_size=2, commits=1)
    resumed = _capture(tmp_path / "s", batch_size=new_batch_size)
    reference = ActivationStore(clean_store)
    assert resumed.n_tokens == reference.n_tokens
    np.testing.assert_array_equal(resumed.doc_ids, reference.doc_ids)
    np.testing.assert_array_equal(resumed.token_ids, reference.token_ids)
    first = int(np.sum(reference.doc_ids < 2))  # the rows committed before the interruption
    for layer in reference.layers:
        np.testing.assert_array_equal(resumed.layer(layer)[:first], reference.layer(layer)[:first])
        np.testing.assert_allclose(resumed.layer(layer), reference.layer(layer), rtol=1e-5, atol=1e-5)
    assert resumed.manifest["extra"]["batch_sizes"] == [2, new_batch_size]


# ----------------------------------------------------------------------------------
# Functional networks
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clean_networks(clean_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from funcprune.ica import FunctionalNetworks

    path = tmp_path_factory.mktemp("networks") / "networks"
    save_networks(FunctionalNetworks(3, n_init=2, random_state=0, progress=False).fit(clean_store), path)
    return path


@pytest.fixture
def networks_copy(clean_networks: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(clean_networks, tmp_path / "networks"))


@pytest.mark.parametrize("fault, match", ids=["truncate", "bit-flip", "delete", "cut-manifest", "stale-format"],
                         argvalues=[
    (lambda p: _truncate(p / "networks.npz"), r"networks.npz: has \d+ bytes where \d+ were written.*re-run stage 2"),
    (lambda p: _flip_bit(p / "networks.npz"), r"networks.npz: has changed since it was written.*re-run stage 2"),
    (lambda p: (p / "networks.npz").unlink(), r"networks.npz: is missing"),
    (lambda p: (p / "networks.json").write_text((p / "networks.json").read_text()[:100]),
     r"networks.json: not valid JSON.*re-run stage 2"),
    (lambda p: (p / "networks.json").write_text((p / "networks.json").read_text().replace(
        "funcprune-networks/1", "funcprune-networks/0")), r"networks.json: has format 'funcprune-networks/0'"),
])
def test_networks_faults_are_named(networks_copy: Path, fault, match: str) -> None:  # type: ignore[no-untyped-def]
    fault(networks_copy)
    with pytest.raises(ArtefactError, match=match):
        load_networks(networks_copy)


def test_networks_swapped_with_another_fit_are_refused(clean_store: Path, networks_copy: Path,
                                                        tmp_path: Path) -> None:
    from funcprune.ica import FunctionalNetworks

    other = save_networks(FunctionalNetworks(3, n_init=2, random_state=1, progress=False).fit(clean_store), tmp_path / "o")
    shutil.copy(other / "networks.npz", networks_copy / "networks.npz")
    with pytest.raises(ArtefactError, match="networks.npz: has"):
        load_networks(networks_copy)
    (networks_copy / "networks.json").unlink()
    with pytest.raises(FileNotFoundError, match="networks.json does not exist.*run stage 2"):
        load_networks(networks_copy)


# ----------------------------------------------------------------------------------
# Channel statistics
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clean_stats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from funcprune.scoring import channel_statistics

    path = tmp_path_factory.mktemp("stats") / "stats"
    save_statistics(channel_statistics(tiny_model("llama"), CharTokenizer(), CAPTURE_TEXTS, progress=False), path)
    return path


@pytest.mark.parametrize("fault, match", ids=["truncate", "bit-flip", "delete", "cut-record", "stale-format"],
                         argvalues=[
    (lambda p: _truncate(p / "stats.npz"), r"stats.npz: has \d+ bytes where \d+ were written.*re-run"),
    (lambda p: _flip_bit(p / "stats.npz"), r"stats.npz: has changed since it was written"),
    (lambda p: (p / "stats.npz").unlink(), r"stats.npz: is missing"),
    (lambda p: (p / "stats.json").write_text((p / "stats.json").read_text()[:50]), r"stats.json: not valid JSON"),
    (lambda p: (p / "stats.json").write_text((p / "stats.json").read_text().replace("funcprune-stats/1", "x")),
     r"stats.json: has format 'x', expected 'funcprune-stats/1'"),
])
def test_statistics_faults_are_named(clean_stats: Path, tmp_path: Path, fault,  # type: ignore[no-untyped-def]
                                     match: str) -> None:
    path = Path(shutil.copytree(clean_stats, tmp_path / "stats"))
    fault(path)
    with pytest.raises(ArtefactError, match=match):
        load_statistics(path)


def test_statistics_swapped_and_stale_are_refused(clean_stats: Path, tmp_path: Path) -> None:
    from funcprune.prune import prune
    from funcprune.scoring import channel_statistics

    path = Path(shutil.copytree(clean_stats, tmp_path / "stats"))
    other = channel_statistics(tiny_model("llama", seed=1), CharTokenizer(), CAPTURE_TEXTS[:3], progress=False)
    save_statistics(other, tmp_path / "other")
    shutil.copy(tmp_path / "other" / "stats.npz", path / "stats.npz")  # another model's statistics, same layout
    with pytest.raises(ArtefactError, match="stats.npz: has changed"):
        load_statistics(path)
    pruned = prune(tiny_model("llama"), _plan(tiny_model("llama")))
    with pytest.raises(ValueError, match="statistics widths differ from the model's"):
        load_statistics(clean_stats).check_model(pruned)


# ----------------------------------------------------------------------------------
# Plans
# ----------------------------------------------------------------------------------
def _plan(model, seed: int = 0, ratio: float = 0.15, source=None):  # type: ignore[no-untyped-def]
    from funcprune.plan import select_channels
    from funcprune.scoring import random_scores

    return select_channels(random_scores(model, seed), model, ratio=ratio, protected_layers=[], method="random",
                           source=source)


def _edit_plan(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    import json

    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("edit, match", ids=["duplicate", "unsorted", "out-of-range", "non-integer",
                                              "ratio", "params", "protected", "missing-field"], argvalues=[
    (lambda d: d["kept"]["1"].append(d["kept"]["1"][-1]), r"layer 1: duplicated kept indices"),
    (lambda d: d["kept"]["1"].reverse(), r"layer 1: kept indices are not sorted"),
    (lambda d: d["kept"]["2"].append(48), r"layer 2: kept indices \[48\] out of range \[0, 48\)"),
    (lambda d: d["kept"]["0"].__setitem__(0, 1.5), r"kept channel indices must be integers"),
    (lambda d: d.update(ratio_reached=d["ratio_reached"] * 2), r"ratio_reached=.* but params_removed"),
    (lambda d: d.update(params_removed=0, ratio_reached=0.0), r"remove \d+ channels but params_removed=0"),
    (lambda d: d.update(protected_layers=[2]), r"protected layers \[2\] lose channels"),
    (lambda d: d.pop("widths"), r"missing .*widths"),
])
def test_plan_files_are_checked_on_load(tmp_path: Path, edit, match: str) -> None:  # type: ignore[no-untyped-def]
    from funcprune.plan import PruningPlan

    path = _plan(tiny_model("llama")).save(tmp_path / "plan.json")
    _edit_plan(path, edit)
    with pytest.raises(ArtefactError, match=rf"plan.json: not a valid pruning plan: .*{match}.*re-run"):
        PruningPlan.load(path)


def test_plan_file_truncated_deleted_or_for_another_model(tmp_path: Path) -> None:
    from funcprune.plan import PlanMismatchError, PruningPlan
    from funcprune.prune import check_plan

    llama = tiny_model("llama")
    path = _plan(llama).save(tmp_path / "plan.json")
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ArtefactError, match=r"plan.json: not valid JSON.*re-run"):
        PruningPlan.load(path)
    path.unlink()
    with pytest.raises(FileNotFoundError):
        PruningPlan.load(path)
    other = _plan(tiny_model("mistral")).save(tmp_path / "mistral.json")  # a valid plan, for another model
    with pytest.raises(PlanMismatchError, match="another model.*model type 'llama' != plan's 'mistral'"):
        check_plan(llama, PruningPlan.load(other))
    plan = _plan(llama, source={"name": "tiny", "revision": "r1"})
    stale = PruningPlan.load(plan.save(tmp_path / "stale.json"))
    check_plan(llama, stale, revision="r1")
    with pytest.raises(PlanMismatchError, match="revision 'r2' != plan's 'r1'"):
        check_plan(llama, stale, revision="r2")  # the weights changed since the plan was made
    with pytest.raises(PlanMismatchError, match="model's revision is unknown"):
        check_plan(llama, stale)


# ----------------------------------------------------------------------------------
# Exported checkpoints
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clean_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from funcprune.prune import prune
    from funcprune.checkpoint import save_pruned

    model = tiny_model("llama")
    plan = _plan(model)
    prune(model, plan)
    return save_pruned(model, None, tmp_path_factory.mktemp("ckpt") / "pruned", plan=plan)


@pytest.fixture
def checkpoint_copy(clean_checkpoint: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(clean_checkpoint, tmp_path / "pruned"))


@pytest.mark.parametrize("fault, match", ids=["truncate", "bit-flip", "delete-weights", "delete-record", "nan-bytes"],
                         argvalues=[
    (lambda p: _truncate(p / "model.safetensors", 1000), r"model.safetensors: has \d+ bytes where \d+ were written"),
    (lambda p: _flip_bit(p / "model.safetensors"), r"model.safetensors: has changed since it was written"),
    (lambda p: (p / "model.safetensors").unlink(), r"model.safetensors: is missing"),
    (lambda p: (p / "funcprune_checkpoint.json").unlink(), r"funcprune_checkpoint.json: is missing"),
    (lambda p: _write_nan(p / "model.safetensors", (p / "model.safetensors").stat().st_size - 4),
     r"model.safetensors: has changed"),
])
def test_checkpoint_faults_are_named(checkpoint_copy: Path, fault, match: str) -> None:  # type: ignore[no-untyped-def]
    from funcprune.checkpoint import load_pruned

    fault(checkpoint_copy)
    with pytest.raises(ArtefactError, match=rf"{match}.*delete .*pruned and re-run stage 4"):
        load_pruned(checkpoint_copy)


def test_checkpoint_swapped_weights_are_refused(checkpoint_copy: Path, tmp_path: Path) -> None:
    from funcprune.prune import prune
    from funcprune.checkpoint import load_pruned, save_pruned

    model = tiny_model("llama")
    plan = _plan(model, seed=1)
    prune(model, plan)
    other = save_pruned(model, None, tmp_path / "other", plan=plan)
    shutil.copy(other / "model.safetensors", checkpoint_copy / "model.safetensors")
    with pytest.raises(ArtefactError, match="model.safetensors: has"):
        load_pruned(checkpoint_copy)


def test_checkpoint_truncated_safetensors_named_even_when_recorded(checkpoint_copy: Path) -> None:
    from test_prune import rerecord

    from funcprune.checkpoint import load_pruned

    _truncate(checkpoint_copy / "model.safetensors", 1000)
    rerecord(checkpoint_copy)
    with pytest.raises(ArtefactError, match=r"model.safetensors: cannot be read as safetensors .*re-run stage 4"):
        load_pruned(checkpoint_copy)


def test_checkpoint_config_widths_disagreeing_with_weights_give_one_line(checkpoint_copy: Path) -> None:
    import json

    from test_prune import rerecord

    from funcprune.checkpoint import load_pruned

    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["funcprune"]["mlp_widths"]["1"] -= 2
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtefactError, match="config.json: has"):  # size or digest
        load_pruned(checkpoint_copy)
    rerecord(checkpoint_copy, "config.json")  # a checkpoint assembled by hand, recorded as it is
    with pytest.raises(ArtefactError) as info:
        load_pruned(checkpoint_copy)
    message = str(info.value)
    assert "\n" not in message and "config.json and the weights disagree" in message
    assert "model.layers.1.mlp" in message and "re-run stage 4" in message


def test_checkpoint_with_the_plan_of_another_pruning_is_refused(checkpoint_copy: Path) -> None:
    from test_prune import rerecord

    from funcprune.checkpoint import PLAN_FILE, load_pruned

    _plan(tiny_model("llama"), seed=1, ratio=0.3).save(checkpoint_copy / PLAN_FILE)
    rerecord(checkpoint_copy, PLAN_FILE)
    with pytest.raises(ArtefactError, match=r"pruning_plan.json: describes another model or pruning.*MLP widths"):
        load_pruned(checkpoint_copy)


def test_checkpoint_verify_false_checks_sizes_only(checkpoint_copy: Path) -> None:
    """The documented cost trade-off: without digests a flipped bit passes, a truncation does not."""
    from funcprune.checkpoint import load_pruned, verify_pruned

    _flip_bit(checkpoint_copy / "model.safetensors")
    verify_pruned(checkpoint_copy, digest=False)
    with pytest.raises(ArtefactError, match="has changed"):
        verify_pruned(checkpoint_copy)
    _truncate(checkpoint_copy / "model.safetensors")
    with pytest.raises(ArtefactError, match="has \\d+ bytes"):
        load_pruned(checkpoint_copy, verify=False)


# ----------------------------------------------------------------------------------
# Resume verifies what it builds on; provenance of a resumed capture; a full disk
# ----------------------------------------------------------------------------------
def _snapshot(path: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(path.iterdir()) if f.is_file()}


@pytest.mark.parametrize("name", ["layer_001_act.bin", "layer_000_up.bin", "tokens.bin", "docs.bin"])
def test_resume_refuses_finite_damage_to_committed_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        name: str) -> None:
    """A flipped mantissa bit in a committed row stays finite: the commit digests catch it, nothing is sealed."""
    _interrupted(tmp_path / "s", monkeypatch, batch_size=2, commits=2)
    _flip_bit(tmp_path / "s" / name, offset=4)  # inside the first committed row
    before = _snapshot(tmp_path / "s")
    with pytest.raises(ArtefactError) as info:
        _capture(tmp_path / "s")
    message = str(info.value)
    assert f"{name}: its " in message and "committed rows changed after they were committed" in message
    assert "XXH3-128 differs" in message and "would seal the damage" in message
    assert "delete" in message and "re-run stage 1" in message
    assert _snapshot(tmp_path / "s") == before  # nothing resumed, truncated or re-sealed
    assert not json.loads((tmp_path / "s" / "manifest.json").read_text())["complete"]


def test_resume_of_an_intact_store_verifies_and_ends_byte_identical(clean_store: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Same batch size: the resumed store's data files and digests equal an uninterrupted capture's."""
    _interrupted(tmp_path / "s", monkeypatch, batch_size=2, commits=2)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert set(manifest["committed"]) == {f.name for f in (tmp_path / "s").glob("*.bin")}
    resumed = _capture(tmp_path / "s")
    reference = ActivationStore(clean_store)
    assert resumed.manifest["files"] == reference.manifest["files"]  # sizes and XXH3-128 of every file
    assert "committed" not in resumed.manifest  # a complete store is verified by its file records
    ActivationStore(tmp_path / "s", verify=True)


def test_resumed_capture_records_only_truly_empty_texts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Texts committed before the interruption are not 'skipped'; the empty one is, and a warning names it."""
    texts = CAPTURE_TEXTS[:3] + [""] + CAPTURE_TEXTS[3:6]

    def capture(**kwargs):  # type: ignore[no-untyped-def]
        return capture_activations(tiny_model("llama"), CharTokenizer(), texts, tmp_path / "s",
                                   progress=False, **kwargs)

    original = ActivationWriter.commit

    def dying(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        original(self, *args, **kwargs)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(ActivationWriter, "commit", dying)
        with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match=r"ids \['3'\]"):
            capture(batch_size=2)
    with pytest.warns(UserWarning, match=r"1 calibration text\(s\) tokenised to zero tokens.*ids \['3'\]"):
        store = capture(batch_size=3)
    assert store.manifest["extra"]["skipped_empty_texts"] == [3]
    uninterrupted = capture_activations(tiny_model("llama"), CharTokenizer(), texts, tmp_path / "u", batch_size=2,
                                        progress=False)
    assert uninterrupted.manifest["extra"]["skipped_empty_texts"] == [3]


def _full_disk_after(monkeypatch: pytest.MonkeyPatch, n_writes: int) -> None:
    """Every block write after the first ``n_writes`` fails as on a full disk."""
    import errno

    original = ActivationWriter._write_staged
    calls = {"n": 0}

    def write(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > n_writes:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ActivationWriter, "_write_staged", write)


def test_full_disk_mid_capture_is_one_clear_line_and_loses_nothing(clean_store: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from funcprune.store import DiskFullError

    with monkeypatch.context() as patch:
        _full_disk_after(patch, 2 * 8 + 5)  # two batches (6 layer blocks and 2 index blocks each), then full
        with pytest.raises(DiskFullError) as info:
            _capture(tmp_path / "s")
    message = str(info.value)
    assert "\n" not in message and not message.startswith("[Errno")
    assert str(tmp_path / "s") in message and "the disk filled up" in message and "free there" in message
    assert "Free space" in message and "resumes at text 4" in message and "keeps the" in message
    assert isinstance(info.value, OSError) and info.value.__cause__ is None
    committed = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert committed["texts_done"] == 4 and not committed["complete"]
    resumed = _capture(tmp_path / "s")  # space freed: the capture resumes and ends as an uninterrupted one
    assert resumed.manifest["files"] == ActivationStore(clean_store).manifest["files"]
