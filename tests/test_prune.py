"""Stage 4 pruning: slicing, pruning == masking for every family, bias compensation, checks, save/load."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from safetensors.torch import load_file, save_file
from tiny_models import FAMILIES, CharTokenizer, tiny_config, tiny_model
from transformers.pytorch_utils import Conv1D

from funcprune import get_adapter
from funcprune._io import ArtefactError, file_record
from funcprune.plan import PruningPlan, select_by_threshold, select_channels
from funcprune.checkpoint import CHECKPOINT_MANIFEST, load_pruned, save_pruned
from funcprune.prune import (CalibrationData, PlanMismatchError, check_plan, compensate_bias, parameter_report, prune,
                             prune_layer, slice_linear)
from funcprune.adapters import layer_widths
from funcprune.scoring import channel_statistics, random_scores

CALIBRATION = ["the cat sat on the mat and looked at the dog", "functional networks in a digital brain",
               "tokens are time points", "channels are voxels and layers are regions of the brain",
               "a b c d e f g h i j k l m n o p", "pruning keeps the key neurons of every network"]
HELD_OUT = ["an entirely different sentence about rivers and mountains",
            "zebras quietly graze while the sun sets over the plains", "0123456789 numbers too"]


def ids_and_mask(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tok = CharTokenizer()
    encoded = [tok(t)["input_ids"] for t in texts]
    length = max(map(len, encoded))
    ids = torch.zeros((len(texts), length), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(encoded):
        ids[row, :len(e)], mask[row, :len(e)] = torch.tensor(e), 1
    return ids, mask


@torch.no_grad()
def logits(model: torch.nn.Module, texts: list[str] = HELD_OUT) -> torch.Tensor:
    ids, mask = ids_and_mask(texts)
    out = model(input_ids=ids, attention_mask=mask).logits
    return out[mask.bool()]  # real positions only


def random_plan(model: torch.nn.Module, ratio: float = 0.15, seed: int = 0, **kwargs) -> PruningPlan:
    kwargs.setdefault("protected_layers", [])
    return select_channels(random_scores(model, seed), model, ratio=ratio, method="random", **kwargs)


@torch.no_grad()
def masked_logits(model: torch.nn.Module, plan: PruningPlan, texts: list[str] = HELD_OUT) -> torch.Tensor:
    """Logits of the dense model with the removed channels zeroed at the down projection's input."""
    adapter = get_adapter(model)
    handles = []
    for i, layer in enumerate(adapter.get_layers(model)):
        mask = torch.ones(plan.widths[i])
        mask[plan.removed(i)] = 0.0
        handles.append(adapter.module(layer, "mlp.down").register_forward_pre_hook(
            lambda _m, args, mask=mask: (args[0] * mask,)))
    try:
        return logits(model, texts)
    finally:
        for h in handles:
            h.remove()


# -- low level -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_slice_linear_keeps_the_chosen_features(kind: str) -> None:
    torch.manual_seed(0)
    make = (lambda i, o: torch.nn.Linear(i, o)) if kind == "linear" else (lambda i, o: Conv1D(o, i))
    x = torch.randn(5, 6)
    keep = [4, 0, 2]
    full = make(6, 7)
    with torch.no_grad():
        full.bias.normal_()
    out_sliced = slice_linear(copy.deepcopy(full), keep, dim=0)
    torch.testing.assert_close(out_sliced(x), full(x)[:, keep])
    in_sliced = slice_linear(copy.deepcopy(full), keep, dim=1)
    x_masked = torch.zeros_like(x)
    x_masked[:, keep] = x[:, keep]
    torch.testing.assert_close(in_sliced(x[:, keep]), full(x_masked))
    if kind == "linear":
        assert (out_sliced.out_features, in_sliced.in_features) == (3, 3)
    else:
        assert (out_sliced.nf, in_sliced.nx) == (3, 3)
    with pytest.raises(ValueError, match="dim must be 0"):
        slice_linear(full, keep, dim=2)
    with pytest.raises(TypeError, match="Embedding"):
        slice_linear(torch.nn.Embedding(3, 3), keep, dim=0)


# -- pruning == masking ---------------------------------------------------------------------------
def test_pruning_equals_masking_for_every_family(family_model: torch.nn.Module) -> None:
    plan = random_plan(family_model, ratio=0.15)
    assert any(plan.removed(i) for i in plan.layers)
    expected = masked_logits(family_model, plan)
    before = copy.deepcopy(family_model)
    prune(family_model, plan)
    torch.testing.assert_close(logits(family_model), expected, rtol=0, atol=1e-5)
    assert layer_widths(family_model) == plan.pruned_widths
    report = parameter_report(before, family_model)
    assert report["removed"] == plan.params_removed
    assert report["ratio_total"] == pytest.approx(plan.ratio_reached)
    assert report["widths_after"] == plan.pruned_widths


def test_keep_everything_plan_changes_nothing() -> None:
    model = tiny_model("llama")
    reference = logits(model)
    plan = select_channels(random_scores(model), model, ratio=0.0, protected_layers=[])
    prune(model, plan)
    assert torch.equal(logits(model), reference)
    assert not model.config.is_heterogeneous and model.config.intermediate_size == 48


def test_config_records_per_layer_widths() -> None:
    model = tiny_model("llama")
    plan = random_plan(model, protected_layers=[0])
    prune(model, plan)
    widths = plan.pruned_widths
    assert widths[0] == 48 and len({widths[1], widths[2]} - {48}) == 2
    config = model.config
    assert config.is_heterogeneous
    assert [config.per_layer_config[i].intermediate_size for i in range(3)] == [48, widths[1], widths[2]]
    assert config.to_dict()["intermediate_size"] == 48  # the global value keeps the original width
    assert config.funcprune["mlp_widths"] == {str(i): w for i, w in widths.items()}
    assert model.model.layers[1].mlp.intermediate_size == widths[1]


# -- checks ----------------------------------------------------------------------------------
def _replace_kept(plan: PruningPlan, layer: int, kept: list[int]) -> PruningPlan:
    return dataclasses.replace(plan, kept={**plan.kept, layer: kept})


@pytest.mark.parametrize("mutate, match", [
    (lambda p: dataclasses.replace(p, kept={0: p.kept[0], 1: p.kept[1]}, widths={0: 48, 1: 48}),
     r"lists layers \[0, 1\].*layers 0\.\.2"),
    (lambda p: dataclasses.replace(p, model={**p.model, "n_layers": 4}), "3 layers != plan's 4"),
    (lambda p: dataclasses.replace(p, model={**p.model, "model_type": "mistral"}), "model type 'llama'"),
    (lambda p: dataclasses.replace(p, model={**p.model, "hidden_size": 64}), "hidden size 32"),
    (lambda p: _replace_kept(p, 1, [0, 1, 48]), r"layer 1: kept indices \[48\] out of range \[0, 48\)"),
    (lambda p: _replace_kept(p, 1, [0, 1, -1]), r"out of range"),
    (lambda p: _replace_kept(p, 2, [0, 3, 3, 5]), r"layer 2: duplicated kept indices \[3\]"),
    (lambda p: _replace_kept(p, 2, [5, 3]), "not sorted"),
    (lambda p: _replace_kept(p, 2, []), "keeps no channel"),
    (lambda p: dataclasses.replace(p, widths={**p.widths, 1: 64}), r"widths differ.*1: \(64, 48\)"),
])
def test_bad_plans_raise_clear_errors_and_leave_the_model_alone(mutate, match: str) -> None:
    model = tiny_model("llama")
    plan = mutate(random_plan(model))
    with pytest.raises(PlanMismatchError, match=match):
        prune(model, plan)
    assert layer_widths(model) == {0: 48, 1: 48, 2: 48}


@pytest.mark.parametrize("mutate, match", [
    (lambda p: dataclasses.replace(p, params_removed=p.params_removed + 96,
                                   ratio_reached=(p.params_removed + 96) / p.params_basis),
     r"totals disagree with its kept lists.*params_removed="),
    (lambda p: dataclasses.replace(p, params_basis=p.params_basis + 1,
                                   ratio_reached=p.params_removed / (p.params_basis + 1)), "totals disagree"),
    (lambda p: dataclasses.replace(p, ratio_reached=p.ratio_reached + 0.01), r"ratio_reached=.* but params_removed"),
    (lambda p: dataclasses.replace(p, protected_layers=[1]), r"protected layers \[1\] lose channels"),
])
def test_plans_whose_totals_disagree_with_their_kept_lists_are_refused(mutate, match: str) -> None:
    model = tiny_model("llama")
    with pytest.raises(PlanMismatchError, match=match):
        prune(model, mutate(random_plan(model)))
    assert layer_widths(model) == {0: 48, 1: 48, 2: 48}


def test_plan_for_another_model_is_refused() -> None:
    llama, mistral = tiny_model("llama"), tiny_model("mistral")
    with pytest.raises(PlanMismatchError, match="another model.*model type 'llama' != plan's 'mistral'"):
        prune(llama, random_plan(mistral))
    plan = random_plan(llama)
    assert plan.model["revision"] is None  # a model built from a config: no revision to record
    assert random_plan(llama, source={"name": "a", "revision": "abc"}).model["revision"] == "abc"
    other = dataclasses.replace(plan, model={**plan.model, "revision": "def"})
    with pytest.raises(PlanMismatchError, match="revision 'abc' != plan's 'def'"):
        check_plan(llama, other, revision="abc")
    # a plan that records a revision and a model whose revision nobody passed: an error, never a skipped check
    with pytest.raises(PlanMismatchError, match="revision 'def' of .* the model's revision is unknown: pass revision="):
        prune(llama, other)
    check_plan(llama, other, revision="def")
    prune(llama, plan)
    with pytest.raises(PlanMismatchError, match="already pruned"):
        prune(llama, plan)


# -- bias compensation ----------------------------------------------------------------------------
def llama_with_biases(seed: int = 0, *, constant_channels: int = 0, scale: float = 5.0) -> torch.nn.Module:
    """Tiny llama with MLP biases and activations of clearly non-zero mean.

    Gate and up weights are scaled so pre-activations vary around their bias: the
    down-projection inputs then have |mean| / std of about 1.2 per channel.
    With ``constant_channels=k`` the first k channels of every layer get zero gate/up
    weights: their down-projection input is a constant, so compensation is exact.
    """
    config = tiny_config("llama")
    config.mlp_bias = True
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            mlp = layer.mlp
            mlp.gate_proj.weight.mul_(scale)
            mlp.up_proj.weight.mul_(scale)
            mlp.gate_proj.bias.fill_(1.0)
            mlp.up_proj.bias.fill_(0.7)
            mlp.down_proj.weight.mul_(5.0)
            mlp.gate_proj.weight[:constant_channels] = 0.0
            mlp.up_proj.weight[:constant_channels] = 0.0
    return model


def test_compensation_is_exact_for_constant_channels() -> None:
    dense = llama_with_biases(constant_channels=10)
    scores = {i: np.r_[np.zeros(10), np.ones(38)] for i in range(3)}
    plan = select_by_threshold(scores, dense, 0.5, protected_layers=[])
    assert all(plan.removed(i) == list(range(10)) for i in range(3))
    reference = logits(dense)
    stats = channel_statistics(dense, CharTokenizer(), CALIBRATION, progress=False)
    static = prune(copy.deepcopy(dense), plan, bias_compensation=stats)
    progressive = prune(copy.deepcopy(dense), plan, bias_compensation=CalibrationData(
        CharTokenizer(), CALIBRATION, batch_size=4), progress=False)
    plain = prune(copy.deepcopy(dense), plan)
    torch.testing.assert_close(logits(static), reference, rtol=0, atol=1e-4)
    torch.testing.assert_close(logits(progressive), reference, rtol=0, atol=1e-4)
    assert (logits(plain) - reference).abs().max() > 1e-2


@pytest.mark.parametrize("seed", [0, 1])
def test_compensation_reduces_the_error_on_held_out_text(seed: int) -> None:
    dense = llama_with_biases(seed)
    plan = random_plan(dense, ratio=0.25, seed=seed)
    reference = logits(dense)

    def error(model: torch.nn.Module) -> float:
        return float(((logits(model) - reference) ** 2).mean())

    stats = channel_statistics(dense, CharTokenizer(), CALIBRATION, progress=False)
    none = error(prune(copy.deepcopy(dense), plan))
    static = error(prune(copy.deepcopy(dense), plan, bias_compensation=stats))
    progressive = error(prune(copy.deepcopy(dense), plan, progress=False,
                              bias_compensation=CalibrationData(CharTokenizer(), CALIBRATION)))
    assert none > 0  # seeds 0-3 give ratios 0.24-0.44 for both variants
    assert static < 0.6 * none and progressive < 0.6 * none, (none, static, progressive)


def test_progressive_least_squares_is_exact_when_removed_channels_copy_kept_ones() -> None:
    """Removed channels that repeat kept ones carry no information: the refit reproduces the dense logits,
    the authors' bias (a constant for a varying input) does not."""
    from funcprune.compensation import ProgressiveLeastSquares

    dense = llama_with_biases(2)
    with torch.no_grad():
        for layer in dense.model.layers:
            for proj in (layer.mlp.gate_proj, layer.mlp.up_proj):
                proj.weight[:8] = proj.weight[8:16]
                proj.bias[:8] = proj.bias[8:16]
    scores = {i: np.r_[np.zeros(8), np.ones(40)] for i in range(3)}
    plan = select_by_threshold(scores, dense, 0.5, protected_layers=[])
    assert all(plan.removed(i) == list(range(8)) for i in range(3))
    reference = logits(dense)
    calib = CalibrationData(CharTokenizer(), CALIBRATION, batch_size=4)
    refit = prune(copy.deepcopy(dense), plan, bias_compensation=ProgressiveLeastSquares(calib, ridge=0.0))
    torch.testing.assert_close(logits(refit), reference, rtol=0, atol=1e-4)
    bias = prune(copy.deepcopy(dense), plan, bias_compensation=calib, progress=False)
    assert (logits(bias) - reference).abs().max() > 1e-2


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_progressive_least_squares_refits_each_layer_on_the_pruned_prefix(model_type: str) -> None:
    """The one-pass replay equals the definition: each layer refitted on moments of the model whose earlier
    layers are already pruned and refitted, measured with full forward passes; and each layer's refit is at
    least as close to the dense layer's output on its own inputs as the bias measured on the same inputs."""
    from funcprune.compensation import (ProgressiveLeastSquares, _set_down, down_input_moments, least_squares_down,
                                        reconstruction_error)

    dense = tiny_model(model_type)
    plan = random_plan(dense, ratio=0.2)
    tok = CharTokenizer()
    fast = prune(copy.deepcopy(dense), plan, bias_compensation=ProgressiveLeastSquares(
        CalibrationData(tok, CALIBRATION, batch_size=4), ridge=0.05))
    slow = copy.deepcopy(dense)
    adapter = get_adapter(dense)
    for i in plan.layers:
        if not plan.removed(i):
            continue
        m = down_input_moments(slow, tok, CALIBRATION, layers=[i], batch_size=2)
        layer = adapter.get_layers(slow)[i]
        weight, bias = adapter.mlp_weight(layer, "mlp.down").detach().clone(), adapter.module(layer, "mlp.down").bias
        new_w, new_b = least_squares_down(weight, bias, m.mean[i], m.cov[i], plan.kept[i], 0.05)
        removed = plan.removed(i)
        b0 = torch.zeros(weight.shape[0], dtype=torch.float64) if bias is None else bias.detach().double()
        static_b = b0 + weight.double()[:, removed] @ m.mean[i][removed]
        assert reconstruction_error(weight, bias, m.mean[i], m.cov[i], plan.kept[i], new_w, new_b) <= \
            reconstruction_error(weight, bias, m.mean[i], m.cov[i], plan.kept[i], weight.double()[:, plan.kept[i]],
                                 static_b) * (1 + 1e-9)
        prune_layer(slow, i, plan.kept[i])
        with torch.no_grad():
            _set_down(adapter, layer, new_w, new_b)
    for a, b in zip(adapter.get_layers(fast), adapter.get_layers(slow)):
        torch.testing.assert_close(adapter.mlp_weight(a, "mlp.down"), adapter.mlp_weight(b, "mlp.down"),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "gpt2"])
def test_progressive_compensation_measures_on_the_pruned_prefix(model_type: str) -> None:
    """The one-pass layer replay equals re-running the whole pruned prefix for every layer."""
    dense = tiny_model(model_type)
    plan = random_plan(dense, ratio=0.2)
    tok = CharTokenizer()
    fast = prune(copy.deepcopy(dense), plan, progress=False,
                 bias_compensation=CalibrationData(tok, CALIBRATION, batch_size=4))
    slow = copy.deepcopy(dense)  # the definition, layer by layer with full forward passes
    for i in plan.layers:
        stats = channel_statistics(slow, tok, CALIBRATION, batch_size=2, layers=[i], progress=False)
        compensate_bias(slow, plan, stats, layers=[i])
        prune_layer(slow, i, plan.kept[i])
    adapter = get_adapter(dense)
    for a, b in zip(adapter.get_layers(fast), adapter.get_layers(slow)):
        torch.testing.assert_close(adapter.module(a, "mlp.down").bias, adapter.module(b, "mlp.down").bias,
                                   rtol=1e-5, atol=1e-6)
    static = channel_statistics(dense, tok, CALIBRATION, progress=False)
    dense_compensated = prune(copy.deepcopy(dense), plan, bias_compensation=static)
    last = adapter.get_layers(dense_compensated)[-1]
    assert not torch.allclose(adapter.module(last, "mlp.down").bias,
                              adapter.module(adapter.get_layers(fast)[-1], "mlp.down").bias, atol=1e-7)


def test_compensation_needs_the_unpruned_model() -> None:
    model = tiny_model("llama")
    plan = random_plan(model)
    stats = channel_statistics(model, CharTokenizer(), CALIBRATION, progress=False)
    prune(model, plan)
    with pytest.raises(PlanMismatchError, match="compensate before pruning"):
        compensate_bias(model, plan, stats)


# -- save / load ------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", FAMILIES)
def test_save_load_round_trip(model_type: str, tmp_path: Path) -> None:
    plan = random_plan(tiny_model(model_type), protected_layers=[0])
    model = prune(tiny_model(model_type), plan)
    expected = logits(model)
    path = save_pruned(model, None, tmp_path / "pruned", plan=plan)
    assert (path / "pruning_plan.json").exists() and (path / "model.safetensors").exists()
    record = load_pruned(path)
    loaded, tokenizer = record  # unpacks as model, tokenizer
    assert loaded is record.model and tokenizer is None
    assert layer_widths(loaded) == layer_widths(model)
    assert torch.equal(logits(loaded), expected)
    assert record.plan == PruningPlan.load(path / "pruning_plan.json")
    assert record.plan.pruned_widths == layer_widths(model)
    assert record.source["source"] == "pruned" and len(record.source["revision"]) == 16
    assert not hasattr(loaded, "funcprune_plan") and not hasattr(loaded, "funcprune_source")
    with pytest.raises(FileExistsError, match="overwrite"):
        save_pruned(model, None, path, plan=plan)


def test_save_load_with_compensation_biases(tmp_path: Path) -> None:
    dense = tiny_model("llama")
    plan = random_plan(dense)
    model = prune(copy.deepcopy(dense), plan, bias_compensation=channel_statistics(
        dense, CharTokenizer(), CALIBRATION, progress=False))
    assert model.model.layers[1].mlp.down_proj.bias is not None
    report = parameter_report(dense, model)
    assert report["removed"] == plan.params_removed - 3 * 32  # one new bias of size hidden per layer
    path = save_pruned(model, None, tmp_path / "p", plan=plan)
    loaded, _ = load_pruned(path)
    assert loaded.config.funcprune["down_bias_layers"] == [0, 1, 2]
    assert torch.equal(logits(loaded), logits(model))


def test_compensation_returns_the_layers_that_gained_a_bias() -> None:
    """The layers whose down projection gained a bias are returned, not marked on the modules."""
    dense = tiny_model("llama")
    plan = random_plan(dense, protected_layers=[0])
    stats = channel_statistics(dense, CharTokenizer(), CALIBRATION, progress=False)
    model = copy.deepcopy(dense)
    assert compensate_bias(model, plan, stats) == [1, 2]
    assert compensate_bias(model, plan, stats) == []  # the biases exist now
    down = model.model.layers[1].mlp.down_proj
    assert down.bias is not None and not hasattr(down, "funcprune_added_bias")


def test_load_pruned_names_a_bad_dtype_in_one_line(tmp_path: Path) -> None:
    plan = random_plan(tiny_model("llama"))
    path = save_pruned(prune(tiny_model("llama"), plan), None, tmp_path / "p", plan=plan)
    with pytest.raises(ValueError, match=r"model_dtype 'bfloat61' is not a torch floating dtype; accepted: \['float32'"):
        load_pruned(path, dtype="bfloat61")
    assert load_pruned(path, dtype="float64").model.dtype == torch.float64


def rerecord(path: Path, name: str = "model.safetensors") -> None:
    """Record a file of a checkpoint anew, as if save_pruned had written it (to reach the checks after the record's)."""
    manifest = json.loads((path / CHECKPOINT_MANIFEST).read_text())
    manifest["files"][name] = file_record(path / name)
    (path / CHECKPOINT_MANIFEST).write_text(json.dumps(manifest))


def test_load_is_strict(tmp_path: Path) -> None:
    plan = random_plan(tiny_model("llama"))
    model = prune(tiny_model("llama"), plan)
    path = save_pruned(model, None, tmp_path / "p", plan=plan)
    weights = load_file(path / "model.safetensors")
    missing = {k: v for k, v in weights.items() if k != "model.layers.1.mlp.up_proj.weight"}
    save_file(missing, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ArtefactError, match=r"model.safetensors: has \d+ bytes where \d+ were written"):
        load_pruned(path)  # the record catches the change first ...
    rerecord(path)
    with pytest.raises(ValueError, match=r"missing tensors \['model.layers.1.mlp.up_proj.weight'\]"):
        load_pruned(path)  # ... and, re-recorded, the strict load
    save_file({**weights, "model.extra.weight": torch.zeros(2)}, path / "model.safetensors",
              metadata={"format": "pt"})
    rerecord(path)
    with pytest.raises(ValueError, match=r"unexpected tensors \['model.extra.weight'\]"):
        load_pruned(path)


def test_uniform_widths_give_a_standard_checkpoint(tmp_path: Path) -> None:
    """When every layer keeps the same width the global intermediate_size is set: plain loading works."""
    model = tiny_model("llama")
    total = sum(p.numel() for p in model.parameters())
    plan = random_plan(model, ratio=3 * 8 * 96 / total, allocation="uniform")
    prune(model, plan)
    assert set(layer_widths(model).values()) == {40} and model.config.intermediate_size == 40
    path = save_pruned(model, None, tmp_path / "p", plan=plan)
    plain = tf.AutoModelForCausalLM.from_pretrained(path)
    assert torch.equal(logits(plain), logits(model))


def test_plans_compose_and_reload(tmp_path: Path) -> None:
    """A pruned model can be pruned again (a plan made on it), saved and reloaded."""
    model = prune(tiny_model("gpt2"), random_plan(tiny_model("gpt2"), ratio=0.1, protected_layers=[2]))
    second = random_plan(model, ratio=0.05, seed=1, protected_layers=[0])
    before = copy.deepcopy(model)
    prune(model, second)
    assert layer_widths(model) == second.pruned_widths
    assert parameter_report(before, model)["removed"] == second.params_removed
    loaded, _ = load_pruned(save_pruned(model, None, tmp_path / "p", plan=second))
    assert torch.equal(logits(loaded), logits(model))
    assert loaded.config.funcprune["methods"] == ["random", "random"]


def test_plain_from_pretrained_with_per_layer_widths(tmp_path: Path) -> None:
    """Per-layer MLP widths load with transformers alone through the checkpoint's modeling_funcprune.py
    (tests/test_hf_export.py does it per family in a process without funcprune)."""
    plan = random_plan(tiny_model("llama"), protected_layers=[0])
    model = prune(tiny_model("llama"), plan)
    assert len(set(layer_widths(model).values())) > 1
    path = save_pruned(model, None, tmp_path / "p", plan=plan)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        tf.AutoModelForCausalLM.from_pretrained(path)
    plain = tf.AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    assert type(plain).__name__ == "FuncpruneForCausalLM" and layer_widths(plain) == plan.pruned_widths
    assert torch.equal(logits(plain), logits(model))


def test_stored_biases_rebuild_the_compensated_model_exactly() -> None:
    """A mapping of down biases (how a stored plan is rebuilt) gives FLAP-compensated logits, config included."""
    dense = tiny_model("llama")
    stats = channel_statistics(dense, CharTokenizer(), ["some calibration text", "and another one"], progress=False)
    plan = select_channels(random_scores(dense, 0), dense, ratio=0.1, protected_layers=[0])
    compensated = prune(copy.deepcopy(dense), plan, bias_compensation=stats)
    layers = get_adapter(compensated).get_layers(compensated)
    biases = {i: layers[i].mlp.down_proj.bias.detach().clone() for i in range(len(layers))
              if layers[i].mlp.down_proj.bias is not None}
    rebuilt = prune(copy.deepcopy(dense), plan, bias_compensation=biases)
    ids = torch.arange(20).view(2, 10)
    torch.testing.assert_close(rebuilt(input_ids=ids).logits, compensated(input_ids=ids).logits, rtol=0, atol=0)
    assert rebuilt.config.funcprune["down_bias_layers"] == compensated.config.funcprune["down_bias_layers"]
    with pytest.raises(ValueError, match=r"layer 1: a down bias of shape \(3,\)"):
        prune(copy.deepcopy(dense), plan, bias_compensation={1: torch.zeros(3)})
