"""Preflight (funcprune.run.preflight): a whole profile checked from the model's config, every problem at once."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
import yaml

from funcprune.run import preflight
from funcprune.book import workflow
from funcprune.evaluate import count_parameters
from funcprune.plan import select_channels
from tiny_models import tiny_config


def _embedding_heavy(path: Path, tied: bool = False) -> Path:
    """A config-only checkpoint (no weights at all) whose embeddings hold most parameters."""
    config = tiny_config("llama")
    config.num_hidden_layers, config.vocab_size, config.tie_word_embeddings = 8, 4000, tied
    config.save_pretrained(path)
    assert not list(path.glob("*.safetensors"))
    return path


def _profile(model: Path, tmp_path: Path, **extra) -> dict:
    return {"profile": "test", "run_dir": str(tmp_path / "run"), "model": str(model), "n_texts": 2,
            "max_tokens": 16, "dtype": "float32", "n_components": 4, "n_groups": 1, "ratios": [0.02, 0.2],
            "ratio_basis": "total", "allocation": "global", "round_to": 1, "methods": ["fn", "random"],
            "random_seeds": [0, 1], "zero_shot_tasks": ["piqa"], "zero_shot_limit": 2,
            "ppl_seq_lens": [16], "eval_max_tokens": 64, **extra}


def test_empty_model_counts_equal_the_real_models(tmp_path: Path) -> None:
    for tied in (True, False):
        config = tiny_config("llama")
        config.tie_word_embeddings = tied
        real = tf.AutoModelForCausalLM.from_config(config)
        empty = preflight.empty_model(config)
        assert next(empty.parameters()).device.type == "meta"
        assert count_parameters(empty) == count_parameters(real)


def test_impossible_ratio_fails_with_the_maximum_and_the_three_fixes(tmp_path: Path) -> None:
    model_dir = _embedding_heavy(tmp_path / "ckpt")
    with pytest.raises(preflight.PreflightError) as info:
        preflight.check_profile(_profile(model_dir, tmp_path))
    message = str(info.value)
    problem = next(line for line in message.splitlines() if "0.2 of total" in line)
    assert "ratio_basis: mlp" in problem and "lower the ratios to at most" in problem
    assert "protect fewer layers" in problem and "protected layers [0, 1, 2, 6, 7]" in problem
    assert "ratio 0.02" not in message  # the reachable ratio is no problem
    # Ground truth: the maximum is the one select_channels states on the real model.
    config = tf.AutoConfig.from_pretrained(model_dir)
    real = tf.AutoModelForCausalLM.from_config(config)
    scores = {i: np.random.default_rng(i).random(config.intermediate_size) for i in range(8)}
    with pytest.raises(ValueError) as truth:
        select_channels(scores, real, ratio=0.9)
    expected = float(re.search(r"is (\d\.\d+)", str(truth.value)).group(1))
    stated = float(re.search(r"the largest with protected layers \[[\d, ]+\] is (\d\.\d+)", problem).group(1))
    assert stated == pytest.approx(expected, abs=1e-4)
    report = preflight.check_profile(_profile(model_dir, tmp_path), strict=False)
    assert report.max_ratio["total"]["protected"] == pytest.approx(expected, abs=1e-6)
    # The fix works: the same ratios on the MLP basis pass.
    assert preflight.check_profile(_profile(model_dir, tmp_path, ratio_basis="mlp")).ok


def test_every_problem_is_listed_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    bad = _profile(tmp_path / "missing", tmp_path, model_dtype="float13", device="cuda", dataset="nope",
                   methods=["fn", "lasso"], zero_shot_tasks=["piqa", "mmlu"], ratio_basis="params")
    report = preflight.check_profile(bad, strict=False)
    text = "\n".join(report.problems)
    for expected in ("model_dtype 'float13' is not a torch floating dtype", "device 'cuda' is not available",
                     "local path", "does not exist", "Unknown dataset 'nope'", "unknown pruning method 'lasso'",
                     "zero-shot tasks ['mmlu'] are unknown", "ratio_basis 'params' invalid"):
        assert expected in text, expected
    with pytest.raises(preflight.PreflightError, match=r"cannot run \(7 problems\)"):
        preflight.check_profile(bad)


def test_disk_and_sensible_ratio_notes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = _embedding_heavy(tmp_path / "ckpt")
    report = preflight.check_profile(_profile(model_dir, tmp_path, ratio_basis="mlp", ratios=[0.1, 0.35]),
                                     strict=False)
    assert report.ok and any("ratio 0.35 of mlp parameters removes" in n for n in report.notes)
    n_tokens, voxels = 2 * 16, 2 * 48 * 8
    assert report.disk["activations"] == n_tokens * voxels * 4
    assert report.disk["total"] == sum(v for k, v in report.disk.items() if k not in ("total", "existing", "free"))
    assert set(report.runtime) == {"stage 1", "stage 2", "stage 4", "stage 5", "total"}
    monkeypatch.setattr(preflight, "_free_bytes", lambda path: 1000)
    with pytest.raises(preflight.PreflightError, match=r"has 0\.0 MB free; free space, point run_dir elsewhere"):
        preflight.check_profile(_profile(model_dir, tmp_path, ratio_basis="mlp"))


def test_derive_profile_switches_the_basis_with_a_note(tmp_path: Path) -> None:
    model_dir = _embedding_heavy(tmp_path / "ckpt")
    base = workflow.load_profile("tiny")
    derived, notes = preflight.derive_profile(base, str(model_dir))
    assert derived["model"] == str(model_dir) and derived["ratio_basis"] == "mlp"
    assert derived["ratios"] == base["ratios"] and Path(derived["run_dir"]).name == "ckpt"
    assert any("ratio_basis total -> mlp" in n and "out of reach" in n for n in notes)
    assert all(0 <= i < 8 for i in derived["stability_layers"] + derived["window_layers"])
    assert preflight.check_profile({**derived, "run_dir": str(tmp_path / "run")}).ok
    same, notes = preflight.derive_profile(base, base["model"])  # the default model: nothing to adapt
    assert same["ratios"] == base["ratios"] and same["ratio_basis"] == base["ratio_basis"]
    assert not any("ratio" in n for n in notes)


def test_command_line_preflight_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = _embedding_heavy(tmp_path / "ckpt")
    path = tmp_path / "impossible.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in _profile(model_dir, tmp_path).items() if k != "profile"}))
    assert workflow.main(["preflight", "--profile", str(path)]) == 2
    err = capsys.readouterr().err
    assert "PROBLEM: ratio 0.2 of total parameters cannot be reached" in err and "ratio_basis: mlp" in err
    path.write_text(yaml.safe_dump({k: v for k, v in _profile(model_dir, tmp_path, ratio_basis="mlp").items()
                                    if k != "profile"}))
    assert workflow.main(["preflight", "--profile", str(path)]) == 0
    assert "preflight of profile 'impossible': ok" in capsys.readouterr().err


def test_vicuna_profile_offers_only_sensible_ratios(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper's profile on a config of Vicuna-7B's shape (Llama 2 7B): every ratio reachable, none near-total."""
    from funcprune.book.workflow import REPO_ROOT, notebook_parameters

    profile = workflow.load_profile("vicuna-7b")
    declared = set().union(*(notebook_parameters(p) for p in sorted((REPO_ROOT / "notebooks").glob("[0-9]*.ipynb"))))
    assert set(profile) - {"profile"} <= declared
    assert profile["dataset"] == profile["eval_dataset"] == "wikitext2"
    assert (profile["n_texts"], profile["max_tokens"], profile["n_components"]) == (40, 1024, 128)
    shape = tmp_path / "vicuna-shape"
    tf.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False).save_pretrained(shape)
    monkeypatch.setattr(preflight, "_free_bytes", lambda path: 2**50)
    report = preflight.check_profile({**profile, "model": str(shape), "device": "cpu", "dataset": "wiki",
                                      "eval_dataset": "wiki", "run_dir": str(tmp_path / "run")}, strict=False)
    assert report.ok, report.problems
    assert not any("removes" in n for n in report.notes)  # no ratio empties most prunable channels
    assert report.max_ratio["total"]["protected"] == pytest.approx(0.5419, abs=1e-4)
    # 0.5, offered before, removes ~92 % of the prunable MLP parameters: the preflight says so.
    old = preflight.check_profile({**profile, "model": str(shape), "device": "cpu", "dataset": "wiki",
                                   "eval_dataset": "wiki", "ratios": [0.5], "run_dir": str(tmp_path / "run")},
                                  strict=False)
    assert any("ratio 0.5 of total parameters removes 92%" in n for n in old.notes)


def test_hub_dataset_offline_is_a_preflight_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from funcprune import data

    def offline(spec, split):
        raise ConnectionError(f"Couldn't reach {spec.hub_id!r} on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(data, "_hub_load", offline)
    data._hub_rows.cache_clear()
    model_dir = _embedding_heavy(tmp_path / "ckpt")
    report = preflight.check_profile(_profile(model_dir, tmp_path, ratio_basis="mlp", dataset="wikitext2"),
                                     strict=False)
    assert any("dataset 'wikitext2'" in p and "use an offline corpus instead" in p for p in report.problems)


@pytest.mark.parametrize("name", sorted(p.stem for p in (workflow.REPO_ROOT / "params").glob("*.yaml")))
def test_every_shipped_profile_gets_a_report(name: str) -> None:
    """The preflight reads every key form the shipped profiles use (lists of budgets, per-method allocation)."""
    report = preflight.check_profile(workflow.load_profile(name), strict=False)
    if name in ("default", "tiny", "workshop"):  # offline profiles: nothing to fix, every estimate made
        assert report.problems == [], report.problems
        assert report.disk["total"] > 0 and 0 < report.runtime["stage 5"] < report.runtime["total"]
    else:  # a hub model: estimated where its config can be read, else every problem named
        assert report.problems or report.disk["total"] > 0


def test_a_bad_settings_grid_is_named_in_seconds(tmp_path: Path) -> None:
    model = _embedding_heavy(tmp_path / "m")
    report = preflight.check_profile(_profile(model, tmp_path, needs_grid={"voxels": ["down"], "k": [8]}),
                                     strict=False)
    assert any("unknown sweep axes ['k']" in problem for problem in report.problems)
    report = preflight.check_profile(_profile(model, tmp_path, needs_grid={"voxels": ["down"]}), strict=False)
    assert any("voxels='down' is not accepted; choose one of ['copies', 'product']" in problem
               for problem in report.problems)
    report = preflight.check_profile(_profile(model, tmp_path, needs_grid={"n_groups": [8]}), strict=False)
    assert any("needs_grid: the setting {'n_groups': 8} needs more time points per group than its 4 tokens" in p
               for p in report.problems)
    ok = preflight.check_profile(_profile(model, tmp_path, needs_grid={"n_groups": [2], "rule": ["threshold"]}),
                                 strict=False)
    assert not any("needs_grid" in problem or "sweep" in problem for problem in ok.problems)



def test_bad_criterion_grids_are_named_in_seconds(tmp_path: Path) -> None:
    model = _embedding_heavy(tmp_path / "m")
    report = preflight.check_profile(_profile(model, tmp_path, sweep_weights=[0.0, -1.0], sweep_protect=[0.0]),
                                     strict=False)
    assert any("sweep_weights [0.0, -1.0] must be a list of finite numbers, each at least 0" in q
               for q in report.problems)
    assert any("sweep_protect [0.0] must be a list of finite numbers, each above 0" in q for q in report.problems)
    report = preflight.check_profile(_profile(model, tmp_path, sweep_weights=[0.0], sweep_protect=[]), strict=False)
    assert any("leave chapter 6 no candidate but FLAP" in q for q in report.problems)
    ok = preflight.check_profile(_profile(model, tmp_path, sweep_weights=[0.0], sweep_protect=[3.0]), strict=False)
    assert not any("sweep_" in q for q in ok.problems)
