"""Fault injection before and around the stages: a damaged or inconsistent model, a misspelt profile key, a cut
results table, a run directory written twice, a path shown on a page, bias files whose bytes must be reproducible.

Each test plants one fault, checks the message (the file or value named, the fix stated) and that nothing already
written was lost or changed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from tiny_models import tiny_config

from funcprune import load_model
from funcprune.run import preflight
from funcprune._io import ArtefactError, canonical_safetensors
from funcprune.run.profiles import declared_parameters, load_profile
from funcprune.run.rundir import RunDir, RunLockedError


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama checkpoint in a local folder (weights and config; no tokenizer is needed to refuse it)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
    tf.AutoModelForCausalLM.from_config(tiny_config("llama")).save_pretrained(path)
    return path


@pytest.fixture
def checkpoint_copy(checkpoint: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(checkpoint, tmp_path / "tiny-llama"))


def _profile(model: Path, tmp_path: Path, **extra) -> dict:  # type: ignore[no-untyped-def]
    return {"profile": "test", "run_dir": str(tmp_path / "run"), "model": str(model), "n_texts": 2,
            "max_tokens": 16, "n_components": 4, "ratios": [0.1], "ratio_basis": "mlp", "methods": ["fn"],
            **extra}


def _edit_config(path: Path, **changes) -> None:  # type: ignore[no-untyped-def]
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


# ----------------------------------------------------------------------------------
# A broken model is named before stage 1, with its file and the fix
# ----------------------------------------------------------------------------------
def test_ff_bytes_in_the_weights_are_named_with_tensor_file_and_fix(checkpoint_copy: Path) -> None:
    weights = checkpoint_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4096:] = b"\xff" * 4096  # 4 KiB of 0xFF: NaN as float32, inside the last tensors
    weights.write_bytes(bytes(data))
    before = _snapshot(checkpoint_copy)
    with pytest.raises(ArtefactError) as info:
        load_model(str(checkpoint_copy))
    message = str(info.value)
    assert message.startswith(f"{weights}: tensor ") and "NaN or inf value(s)" in message
    assert "the checkpoint is damaged" in message and "restore the checkpoint" in message
    assert "float32" not in message  # not blamed on the dtype
    assert _snapshot(checkpoint_copy) == before


def test_registry_model_damage_says_make_assets() -> None:
    from funcprune.models import check_weights_finite

    model = tf.AutoModelForCausalLM.from_config(tiny_config("llama"))
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = float("inf")
    with pytest.raises(ArtefactError, match=r"tensor model\.layers\.1\.mlp\.up_proj\.weight holds 1 NaN or inf.*"
                                            r"delete /c/models/x and run `make assets`"):
        check_weights_finite(model, "/nowhere", {"source": "registry", "name": "x", "path": "/c/models/x",
                                                 "package": "llm-x==1"})


def test_swapped_widths_in_config_are_named_by_the_preflight_and_the_loader(checkpoint_copy: Path,
                                                                            tmp_path: Path) -> None:
    _edit_config(checkpoint_copy, hidden_size=48, intermediate_size=32)
    before = _snapshot(checkpoint_copy)
    report = preflight.check_profile(_profile(checkpoint_copy, tmp_path), strict=False)
    problem = next(p for p in report.problems if "config.json" in p)
    assert problem.startswith(str(checkpoint_copy / "config.json"))
    assert "look swapped" in problem and "restore the config.json that came with these weights" in problem
    assert "set `ignore_mismatched_sizes" not in problem
    with pytest.raises(ValueError) as info:
        load_model(str(checkpoint_copy))
    message = str(info.value)
    assert str(checkpoint_copy / "config.json") in message and "look swapped" in message and "\n" not in message
    assert _snapshot(checkpoint_copy) == before


def test_a_width_that_disagrees_with_the_weights_fails_the_preflight(checkpoint_copy: Path, tmp_path: Path) -> None:
    _edit_config(checkpoint_copy, intermediate_size=40)
    report = preflight.check_profile(_profile(checkpoint_copy, tmp_path), strict=False)
    problem = next(p for p in report.problems if "config.json" in p)
    assert "does not describe the weights beside it" in problem
    assert "mlp.gate_proj.weight is [48, 32] in model.safetensors, config.json implies [40, 32]" in problem
    assert not report.ok
    ok = preflight.check_profile(_profile(checkpoint_copy, tmp_path), strict=False)  # the preflight wrote nothing
    assert ok.problems == report.problems


def test_a_damaged_safetensors_header_is_named(checkpoint_copy: Path, tmp_path: Path) -> None:
    weights = checkpoint_copy / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.write(b"\xff" * 8)
    report = preflight.check_profile(_profile(checkpoint_copy, tmp_path), strict=False)
    assert any(p.startswith(f"{weights}: cannot be read as safetensors") and "the checkpoint is damaged" in p
               for p in report.problems), report.problems
    with pytest.raises(ArtefactError, match="model.safetensors: cannot be read as safetensors"):
        load_model(str(checkpoint_copy))


# ----------------------------------------------------------------------------------
# Profiles
# ----------------------------------------------------------------------------------
def test_unknown_profile_key_fails_the_preflight_with_did_you_mean() -> None:
    declared = declared_parameters()
    profile = {**{k: v for k, v in load_profile("tiny").items() if k in declared or k == "profile"}, "n_textss": 8}
    report = preflight.check_profile(profile, strict=False)
    assert report.problems == [next(p for p in report.problems if "n_textss" in p)]
    assert "profile key 'n_textss' is no parameter of any notebook (did you mean 'n_texts'?)" in report.problems[0]
    assert "params/tiny.yaml" in report.problems[0]
    with pytest.raises(preflight.PreflightError, match="did you mean 'n_texts'"):
        preflight.check_profile(profile)


# ----------------------------------------------------------------------------------
# Compensation biases: bytes that depend only on their content
# ----------------------------------------------------------------------------------
def _raw_safetensors(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def test_safetensors_metadata_order_does_not_change_the_bytes() -> None:
    from safetensors.torch import load

    tensor = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    data = np.array([1.5, -2.0], dtype=np.float32).tobytes()
    a = _raw_safetensors({"__metadata__": {"format": "f", "plan_sha256": "s"}, "b": tensor}, data)
    b = _raw_safetensors({"b": tensor, "__metadata__": {"plan_sha256": "s", "format": "f"}}, data)
    assert a != b and canonical_safetensors(a) == canonical_safetensors(b)
    assert (len(canonical_safetensors(a)) - len(data)) % 8 == 0
    assert load(canonical_safetensors(a))["b"].tolist() == [1.5, -2.0]


def test_bias_files_are_canonical_and_reproducible(tmp_path: Path) -> None:
    from funcprune.run.pipeline import _write_biases
    from funcprune.plan import select_channels
    from funcprune.scoring import random_scores

    model = tf.AutoModelForCausalLM.from_config(tiny_config("llama")).eval()
    plan = select_channels(random_scores(model, 0), model, ratio=0.1, protected_layers=[], method="random")
    for layer in model.model.layers:
        layer.mlp.down_proj.bias = torch.nn.Parameter(torch.arange(32, dtype=torch.float32))
    run = RunDir(tmp_path / "run")
    digests = set()
    for _ in range(5):
        record = _write_biases(run, "k", "plan-sha", model, plan)
        raw = run.bias_paths("k")[0].read_bytes()
        assert canonical_safetensors(raw) == raw  # written in the one order
        digests.add(record["sha256"])
    assert len(digests) == 1


# ----------------------------------------------------------------------------------
# A cut results table is named against results.json
# ----------------------------------------------------------------------------------
def _part(key: str, ppl: float, params: int) -> dict:
    method = "dense" if key == "dense" else key.split("_")[0]
    return {"key": key, "entry": {"method": method, "seed": None, "ratio_requested": 0.0 if key == "dense" else 0.2,
                                  "ratio_reached": 0.0 if key == "dense" else 0.2, "ratio_basis": None if
                                  key == "dense" else "total"},
            "perplexity": {"64": {"ppl": ppl, "ppl_stderr": 0.1, "n_windows": 4, "nll": float(np.log(ppl)),
                                  "nll_stderr": 0.01}},
            "efficiency": {"params_total": params, "params_mlp": params // 2, "params_attention": params // 4,
                           "params_embedding": params // 4, "flops_per_token": 2 * params}}


@pytest.fixture
def results_run(tmp_path: Path) -> Path:
    from funcprune.tables import table_from_parts

    parts = {k: _part(k, p, n) for k, p, n in (("dense", 10.0, 1000), ("fn_r0.20", 14.0, 800),
                                                ("flap_r0.20", 12.5, 800), ("random_r0.20", 30.0, 800))}
    run = RunDir(tmp_path / "run")
    run.results.mkdir(parents=True)
    run.results_json.write_text(json.dumps({"models": parts}, sort_keys=True))
    run.results_csv.write_text(table_from_parts(list(parts.values())).to_csv(index=False))
    return run.path


def _cut_lines(path: Path, keep: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:keep]))


def test_results_csv_cut_at_a_model_boundary_is_named(results_run: Path) -> None:
    from funcprune.run.results import load_results

    table = load_results(results_run)
    assert table["key"].nunique() == 4
    csv = RunDir(results_run).results_csv
    rows_per_model = len(table) // 4
    _cut_lines(csv, 1 + 2 * rows_per_model)  # header, dense, fn: flap and random lost
    record = RunDir(results_run).results_json.read_bytes()
    with pytest.raises(ArtefactError) as info:
        load_results(results_run)
    message = str(info.value)
    assert message.startswith(f"{csv}: holds {2 * rows_per_model} rows of 2 models where results.json")
    assert "models ['flap_r0.20', 'random_r0.20'] are missing" in message and "cut short" in message
    assert "re-run stage 5" in message
    assert RunDir(results_run).results_json.read_bytes() == record


def test_results_csv_cut_inside_a_model_is_named_not_blamed_on_the_protocol(results_run: Path) -> None:
    from funcprune.run.results import load_results

    csv = RunDir(results_run).results_csv
    n_lines = len(csv.read_text().splitlines())
    _cut_lines(csv, n_lines - 3)
    with pytest.raises(ArtefactError) as info:
        load_results(results_run)
    message = str(info.value)
    assert "['random_r0.20'] lack rows (cut inside a model)" in message and "not measured like" not in message
    text = csv.read_text()
    csv.write_text(text[: len(text) - 7])  # cut inside a line
    with pytest.raises(ArtefactError, match=r"results.csv: .*(cut short|cannot be read)"):
        load_results(results_run)


def test_an_edited_results_value_is_named(results_run: Path) -> None:
    from funcprune.run.results import load_results

    csv = RunDir(results_run).results_csv
    csv.write_text(csv.read_text().replace("14.0,", "13.0,", 1))
    with pytest.raises(ArtefactError, match=r"results.csv: differs from results.json.*1 values changed"):
        load_results(results_run)


# ----------------------------------------------------------------------------------
# A run directory is written by one run at a time
# ----------------------------------------------------------------------------------
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "profile.yaml").write_text("model: x\n")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.lock_path.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                             "started": "2026-12-07T10:00:00", "command": "make book"}))
        before = _snapshot(tmp_path / "run")
        with pytest.raises(RunLockedError) as info:
            with run.locked("a second run"):
                pass
        message = str(info.value)
        assert f"is being written by pid {holder.pid} on {socket.gethostname()}" in message
        assert "make book" in message and "choose another run_dir" in message and f"kill {holder.pid}" in message
        assert _snapshot(tmp_path / "run") == before  # the holder's lock and the run's files untouched
        from funcprune.book.workflow import run_notebooks

        notebook = sorted((Path(__file__).parent.parent / "notebooks").glob("01_*.ipynb"))
        with pytest.raises(RunLockedError):
            run_notebooks({"profile": "t", "run_dir": str(run.path)}, tmp_path / "out", notebooks=notebook)
        assert not (tmp_path / "out" / notebook[0].name).exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_with_a_message_and_released(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.json").write_text("{}")
    pid = _dead_pid()
    run.lock_path.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "t", "command": "c"}))
    with pytest.warns(UserWarning, match=rf"taking over the lock of pid {pid} .*whose process is gone"):
        with run.locked("the new run"):
            holder = run.lock_holder()
            assert holder is not None and holder["pid"] == os.getpid() and holder["command"] == "the new run"
            with run.locked("nested"):  # the same process: no second lock, no error
                pass
            assert run.lock_path.exists()
    assert not run.lock_path.exists() and (tmp_path / "run" / "keep.json").read_text() == "{}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with run.locked():  # unlocked now: taken without a word
            pass


def test_a_lock_of_another_host_is_refused_with_how_to_clear_it(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    (tmp_path / "run").mkdir()
    run.lock_path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "t", "command": "c"}))
    with pytest.raises(RunLockedError, match=rf"cannot see that host's processes.*delete {run.lock_path}"):
        with run.locked():
            pass
    assert run.lock_path.exists()


# ----------------------------------------------------------------------------------
# Paths on a page
# ----------------------------------------------------------------------------------
def test_records_shown_on_a_page_carry_no_machine_path(checkpoint: Path, tmp_path: Path) -> None:
    from funcprune.models import LoadedModel

    run = RunDir(tmp_path / "somewhere" / "run")
    assert str(tmp_path) not in repr(run) and repr(run) == "RunDir('run')"
    loaded = LoadedModel(torch.nn.Linear(1, 1), None, {"name": "tiny-llama", "source": "local",
                                                        "path": str(checkpoint)})
    assert str(checkpoint.parent) not in repr(loaded) and "'path': 'tiny-llama'" in repr(loaded)
