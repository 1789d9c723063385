"""Stage 4 pipeline: every method through the same code, prune_all's run directory, resume, calibration texts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from tiny_models import CharTokenizer
from tiny_models import tiny_config

from funcprune import capture_activations
from funcprune.run import calibration, pipeline
from funcprune.adapters import layer_widths
from funcprune.data import dataset_info, load_texts
from funcprune.evaluate import count_parameters
from funcprune.ica import FunctionalNetworks
from funcprune.run.calibration import calibration_data, calibration_statistics, calibration_texts
from funcprune.methods import METHODS, build_pruned, get_method, make_plan, method_key
from funcprune.run.pipeline import prune_all, read_index
from funcprune.plan import PruningPlan, channel_parameters
from funcprune._io import ArtefactError
from funcprune.prune import CalibrationData, PlanMismatchError
from funcprune.checkpoint import load_pruned, save_pruned
from funcprune.run.artefacts import load_statistics
from funcprune.scoring import (channel_statistics, flap_scores, fn_flap_scores, key_neuron_scores,
                               magnitude_scores, random_scores, wanda_sp_scores)

TEXTS = ["the cat sat on the mat and looked at the dog", "functional networks in a digital brain",
         "tokens are time points", "channels are voxels and layers are regions of the brain",
         "a b c d e f g h i j k l m n o p", "pruning keeps the key neurons of every network",
         "zebras quietly graze while the sun sets over the plains", "0123456789 numbers too"]
PROTECTED = [0, 1, 2, 5, 6]  # the default for 7 layers: first three and last two
RATIO = 0.1


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    """A 7-layer tiny Llama (two prunable layers with the default protection)."""
    config = tiny_config("llama")
    config.num_hidden_layers = 7
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # larger weights than the default init, so activations are not all tiny
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    model, tok = tiny_llama(), CharTokenizer()
    store = capture_activations(model, tok, TEXTS, tmp_path_factory.mktemp("s") / "activations", progress=False)
    networks = FunctionalNetworks(4, n_init=1, random_state=0, progress=False).fit(store)
    stats = channel_statistics(model, tok, TEXTS, progress=False)
    return {"model": model, "tok": tok, "networks": networks, "stats": stats}


@torch.no_grad()
def logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.tensor([CharTokenizer()("an entirely different sentence about rivers")["input_ids"]])
    return model(input_ids=ids).logits[0]


def reference_scores(name: str, setup: dict, seed: int) -> dict[int, np.ndarray]:
    model, stats, fn = setup["model"], setup["stats"], setup["networks"]
    return {"functional_networks": lambda: key_neuron_scores(fn.maps_, fn.voxel_channels_, layer_widths(model)),
            "random": lambda: random_scores(model, seed), "magnitude": lambda: magnitude_scores(model),
            "wanda_sp": lambda: wanda_sp_scores(model, stats),
            "flap": lambda: flap_scores(model, stats, standardize=True),
            "fn_flap": lambda: fn_flap_scores(model, stats, fn, **get_method(name).params)
            }[get_method(name).criterion.scorer.name]()


# -- plans --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_every_method_plans_the_requested_ratio_with_its_own_score(name: str, allocation: str, setup: dict) -> None:
    model = setup["model"]
    plan = make_plan(name, model, RATIO, networks=setup["networks"], stats=setup["stats"], seed=3,
                     allocation=allocation)
    assert plan.method == name and plan.allocation == allocation
    assert plan.protected_layers == PROTECTED
    assert all(len(plan.kept[i]) == plan.widths[i] for i in PROTECTED)
    unit = channel_parameters(model)[3]
    assert plan.params_basis == count_parameters(model)["total"]
    assert abs(plan.params_removed - RATIO * plan.params_basis) <= unit / 2
    scores = reference_scores(name, setup, seed=3)
    removed = {i: scores[i][plan.removed(i)] for i in (3, 4)}
    kept = {i: scores[i][plan.kept[i]] for i in (3, 4)}
    if allocation == "global":  # one ranking: every removed channel scores at most every kept one
        assert max(r.max() for r in removed.values() if r.size) <= min(k.min() for k in kept.values())
    else:  # same share of each layer, lowest-scored channels of each layer
        assert abs(len(removed[3]) - len(removed[4])) <= 1
        assert all(removed[i].max() <= kept[i].min() for i in (3, 4))


def test_each_method_uses_its_authors_allocation_unless_overridden(setup: dict) -> None:
    model = setup["model"]
    expected = {"fn": "global", "fn-bias": "global", "flap": "global", "fn-flap": "global", "fn-protect": "global",
                "wanda-sp": "uniform", "magnitude": "uniform", "random": "uniform"}
    assert {name: m.allocation.name for name, m in METHODS.items()} == expected
    for name, allocation in expected.items():
        plan = make_plan(name, model, RATIO, networks=setup["networks"], stats=setup["stats"])
        assert plan.allocation == allocation and plan.settings["allocation_source"] == "method"
    # Wanda-sp as FLAP's paper runs it: the same share of every prunable layer, whatever its scores
    stats = setup["stats"]
    # activation norms growing with depth, as raw Wanda scores do: a global ranking would empty layer 3
    scaled = dataclasses.replace(stats, sq_norm={i: v * 100.0 ** i for i, v in stats.sq_norm.items()})
    plan = make_plan("wanda-sp", model, RATIO, stats=scaled)
    shares = [len(plan.removed(i)) / plan.widths[i] for i in plan.layers if i not in PROTECTED]
    assert len(shares) == 2 and max(shares) - min(shares) <= 1 / 48 + 1e-12 and min(shares) > 0
    glob = make_plan("wanda-sp", model, RATIO, stats=scaled, allocation="global")  # the ablation
    assert glob.allocation == "global" and glob.settings["allocation_source"] == "override"
    assert len(glob.removed(3)) > len(glob.removed(4))
    with pytest.raises(ValueError, match=r"allocation 'layerwise' invalid; choose one of \['per-method'"):
        make_plan("fn", model, RATIO, networks=setup["networks"], allocation="layerwise")


def test_fn_and_fn_bias_share_the_plan_and_differ_only_by_biases(setup: dict) -> None:
    model, networks = setup["model"], setup["networks"]
    fn = make_plan("fn", model, RATIO, networks=networks)
    fn_bias = make_plan("fn-bias", model, RATIO, networks=networks)
    assert fn.kept == fn_bias.kept and fn.settings["bias_compensation"] is None
    assert fn_bias.settings["bias_compensation"] == "progressive"
    a = build_pruned("fn", model, fn)
    b = build_pruned("fn-bias", model, fn, calibration=CalibrationData(setup["tok"], TEXTS))
    assert b.config.funcprune["methods"] == ["fn-bias"] and layer_widths(b) == fn.pruned_widths
    for i, (la, lb) in enumerate(zip(a.model.layers, b.model.layers)):
        for name in ("gate_proj", "up_proj", "down_proj"):
            assert torch.equal(getattr(la.mlp, name).weight, getattr(lb.mlp, name).weight)
        assert la.mlp.down_proj.bias is None
        assert (lb.mlp.down_proj.bias is not None) == bool(fn.removed(i))
    assert not torch.allclose(logits(a), logits(b))
    assert layer_widths(model) == {i: 48 for i in range(7)}  # the dense model is untouched


def test_flap_compensates_with_the_dense_means(setup: dict) -> None:
    model, stats = setup["model"], setup["stats"]
    plan = make_plan("flap", model, RATIO, stats=stats)
    pruned = build_pruned("flap", model, plan, stats=stats)
    for i in (3, 4):
        removed = plan.removed(i)
        w = model.model.layers[i].mlp.down_proj.weight.double()
        expected = w[:, removed] @ torch.as_tensor(stats.mean[i][removed])
        torch.testing.assert_close(pruned.model.layers[i].mlp.down_proj.bias.double(), expected,
                                   rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="needs stats="):
        build_pruned("flap", model, plan)
    with pytest.raises(ValueError, match="needs calibration="):
        build_pruned("fn-bias", model, plan)


def test_unknown_method_and_bad_ratios_raise_clear_errors(setup: dict, tmp_path: Path) -> None:
    model = setup["model"]
    with pytest.raises(ValueError, match=r"unknown pruning method 'obd'; accepted methods: \['fn', 'fn-bias'"):
        make_plan("obd", model, RATIO)
    with pytest.raises(ValueError, match="accepted methods"):
        prune_all(model, tmp_path, ["fn", "obd"], [RATIO], networks=setup["networks"], progress=False)
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        make_plan("magnitude", model, 0.0)
    with pytest.raises(ValueError, match="maximum"):
        make_plan("magnitude", model, 0.5)
    with pytest.raises(ValueError, match="maximum"):  # fails while planning, before anything is built
        prune_all(model, tmp_path, ["magnitude"], [RATIO, 0.5], progress=False)
    assert not (tmp_path / "pruned").exists()
    with pytest.raises(ValueError, match="needs functional networks"):
        make_plan("fn", model, RATIO)
    with pytest.raises(FileNotFoundError, match="stage 2"):
        prune_all(model, tmp_path, ["fn"], [RATIO], progress=False)


def test_method_keys() -> None:
    assert method_key("fn", 0.2) == "fn_r0.20"
    assert method_key("random", 0.1, seed=1) == "random-s1_r0.10"
    assert method_key("fn-bias", 0.125) == "fn-bias_r0.125"
    assert len({method_key("fn", r) for r in (0.12, 0.125, 0.1251)}) == 3


# -- prune_all ----------------------------------------------------------------------------------------
def run_grid(setup: dict, run_dir: Path, methods: list[str], ratios: list[float], **kwargs):
    return prune_all(setup["model"], run_dir, methods, ratios, kwargs.pop("seeds", [0, 1]),
                     texts=kwargs.pop("texts", TEXTS), tokenizer=setup["tok"], networks=setup["networks"],
                     progress=False, **kwargs)


def test_prune_all_writes_plans_biases_and_an_index_that_rebuild(setup: dict, tmp_path: Path) -> None:
    model = setup["model"]
    dense_logits = logits(model)
    rows = run_grid(setup, tmp_path, list(METHODS), [RATIO])
    keys = [f"{m}_r0.10" for m in ("fn", "fn-bias", "random-s0", "random-s1", "magnitude", "wanda-sp", "flap",
                                       "fn-flap", "fn-protect")]
    assert list(rows["key"]) == keys
    index = json.loads((tmp_path / "pruned" / "index.json").read_text())
    assert [e["key"] for e in index["entries"]] == keys
    assert read_index(tmp_path)["key"].tolist() == keys
    assert (tmp_path / "stats" / "stats.npz").exists()
    # plans and biases only: no checkpoint, nothing the size of a model
    assert not list(tmp_path.rglob("model.safetensors")) and not list(tmp_path.rglob("config.json"))
    total, mlp = count_parameters(model)["total"], count_parameters(model)["mlp"]
    calibration = calibration_data(setup["tok"], TEXTS)
    stats = load_statistics(tmp_path / "stats")
    for entry in index["entries"]:
        plan = PruningPlan.load(tmp_path / entry["plan"])
        assert plan.protected_layers == entry["protected_layers"] == PROTECTED
        assert entry["allocation"] == plan.allocation == METHODS[entry["method"]].allocation.name
        assert entry["ratio_reached"] == plan.ratio_reached
        assert abs(entry["ratio_reached"] - entry["ratio_requested"]) <= channel_parameters(model)[3] / 2 / total
        assert entry["status"] == "built" and entry["seconds"] > 0
        compensated = METHODS[entry["method"]].compensation is not None
        assert (entry["biases"] is not None) == compensated
        if compensated:
            assert entry["biases"]["layers"] == [i for i in plan.layers if plan.removed(i)]
            assert (tmp_path / entry["biases"]["path"]).stat().st_size == entry["biases"]["size"]
        record = pipeline.rebuild_pruned(tmp_path, entry["key"], model, source=None)
        rebuilt = record.model
        counted = count_parameters(rebuilt)
        assert (entry["params_total_before"], entry["params_mlp_before"]) == (total, mlp)
        assert (entry["params_total_after"], entry["params_mlp_after"]) == (counted["total"], counted["mlp"])
        assert entry["widths"] == list(layer_widths(rebuilt).values())
        assert record.plan == plan and record.source["plan_sha256"] == entry["plan_sha256"]
        assert record.source["source"] == "rebuilt" and record.source["dense"] == {}
        in_memory = build_pruned(entry["method"], model, plan, calibration=calibration, stats=stats)
        assert torch.equal(logits(rebuilt), logits(in_memory)), entry["key"]
        assert rebuilt.config.funcprune["down_bias_layers"] == in_memory.config.funcprune["down_bias_layers"]
    fn, fn_bias = (PruningPlan.load(tmp_path / "plans" / f"{k}_r0.10.json") for k in ("fn", "fn-bias"))
    assert fn.kept == fn_bias.kept
    r0, r1 = (PruningPlan.load(tmp_path / "plans" / f"random-s{s}_r0.10.json") for s in (0, 1))
    assert r0.kept != r1.kept
    assert torch.equal(logits(model), dense_logits)  # the dense model is never modified
    # a rebuilt model exports as an HF checkpoint that reloads with the same outputs
    rebuilt, _ = record = pipeline.rebuild_pruned(tmp_path, "fn-bias_r0.10", model, source=None)
    save_pruned(rebuilt, None, tmp_path / "export", plan=record.plan)
    loaded, _ = load_pruned(tmp_path / "export")
    assert torch.equal(logits(loaded), logits(rebuilt))
    with pytest.raises(KeyError, match="fn_r0.30"):
        pipeline.rebuild_pruned(tmp_path, "fn_r0.30", model, source=None)


def test_a_recorded_revision_is_checked_when_rebuilding(setup: dict, tmp_path: Path) -> None:
    """The dense model's source goes into the plans and the index; rebuilding checks it, never skips it."""
    source = {"name": "tiny-llama", "source": "local", "revision": "0123abcd"}
    run_grid(setup, tmp_path, ["magnitude"], [RATIO], source=source)
    plan = PruningPlan.load(tmp_path / "plans" / "magnitude_r0.10.json")
    assert plan.model["name"] == "tiny-llama" and plan.model["revision"] == "0123abcd"
    assert json.loads((tmp_path / "pruned" / "index.json").read_text())["base_model"]["revision"] == "0123abcd"
    record = pipeline.rebuild_pruned(tmp_path, "magnitude_r0.10", setup["model"], source=source)
    assert record.source["dense"] == source and not hasattr(record.model, "funcprune_source")
    with pytest.raises(PlanMismatchError, match=r"revision is unknown: pass revision=.*source= to rebuild_pruned"):
        pipeline.rebuild_pruned(tmp_path, "magnitude_r0.10", setup["model"], source=None)
    with pytest.raises(PlanMismatchError, match="revision 'ffff' != plan's '0123abcd'"):
        pipeline.rebuild_pruned(tmp_path, "magnitude_r0.10", setup["model"], source={**source, "revision": "ffff"})


def test_a_corrupt_bias_file_is_named_with_its_fix_and_recomputed(setup: dict, tmp_path: Path) -> None:
    model = setup["model"]
    run_grid(setup, tmp_path, ["flap"], [RATIO])
    entry = read_index(tmp_path).set_index("key").loc["flap_r0.10"]
    path = tmp_path / entry["biases"]["path"]
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # same size, other content
    path.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match=r"flap_r0\.10\.safetensors: has changed since it was written.*re-run stage 4"):
        pipeline.rebuild_pruned(tmp_path, "flap_r0.10", model, source=None)
    with pytest.warns(UserWarning, match=r"building compensation biases again: .*flap_r0\.10\.safetensors"):
        rows = run_grid(setup, tmp_path, ["flap"], [RATIO])
    assert rows["status"].tolist() == ["built"]
    pipeline.rebuild_pruned(tmp_path, "flap_r0.10", model, source=None)  # intact again
    plan_path = tmp_path / entry["plan"]
    plan_path.write_text(plan_path.read_text().replace('"ratio_requested": 0.1', '"ratio_requested": 0.11'))
    with pytest.raises(ArtefactError, match="differs from the plan the index records"):
        pipeline.rebuild_pruned(tmp_path, "flap_r0.10", model, source=None)


def test_prune_all_reuses_completed_work(setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_build = pipeline.build_pruned
    real_stats = calibration.channel_statistics

    def counting_build(method, *args, **kwargs):
        calls.append(get_method(method).name)
        return real_build(method, *args, **kwargs)

    def counting_stats(*args, **kwargs):
        calls.append("stats")
        return real_stats(*args, **kwargs)

    monkeypatch.setattr(pipeline, "build_pruned", counting_build)
    monkeypatch.setattr(calibration, "channel_statistics", counting_stats)
    methods = ["fn", "random", "flap"]
    first = run_grid(setup, tmp_path, methods, [RATIO])
    assert calls == ["stats", "fn", "random", "random", "flap"]
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "pruned" / "biases").iterdir()}
    mtimes.update({p: p.stat().st_mtime_ns for p in (tmp_path / "plans").iterdir()})

    calls.clear()
    second = run_grid(setup, tmp_path, methods, [RATIO])
    assert calls == [] and set(second["status"]) == {"reused"}
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    cols = ["key", "params_total_after", "params_mlp_after", "widths", "plan_sha256", "seconds"]
    assert second[cols].equals(first[cols])

    calls.clear()  # a new ratio builds only the new models; the index keeps the old ones
    run_grid(setup, tmp_path, ["fn"], [0.05])
    assert calls == ["fn"]
    assert len(read_index(tmp_path)) == 5

    calls.clear()  # another allocation changes the plan: rebuilt in place
    third = run_grid(setup, tmp_path, ["fn"], [RATIO], allocation="uniform")
    assert calls == ["fn"] and third["allocation"].tolist() == ["uniform"]
    assert PruningPlan.load(tmp_path / "plans" / "fn_r0.10.json").allocation == "uniform"

    calls.clear()  # different calibration texts: statistics and the data-driven methods are redone
    run_grid(setup, tmp_path, ["random", "flap"], [RATIO], texts=TEXTS[:5])
    assert calls == ["stats", "flap"]

    calls.clear()  # without the index, plans and biases on disk are still reused and counted again
    (tmp_path / "pruned" / "index.json").unlink()
    rows = run_grid(setup, tmp_path, ["random", "flap"], [RATIO], texts=TEXTS[:5])
    assert calls == [] and set(rows["status"]) == {"reused"}
    assert rows["params_total_after"].tolist()[0] == first.set_index("key").loc["random-s0_r0.10",
                                                                                  "params_total_after"]

    calls.clear()  # a missing bias file is recomputed
    (tmp_path / "pruned" / "biases" / "flap_r0.10.safetensors").unlink()
    with pytest.warns(UserWarning, match="is missing"):
        rows = run_grid(setup, tmp_path, ["flap"], [RATIO], texts=TEXTS[:5])
    assert calls == ["flap"] and rows["status"].tolist() == ["built"]


def test_legacy_checkpoints_are_removed(setup: dict, tmp_path: Path) -> None:
    legacy = tmp_path / "pruned" / "magnitude_r0.10"
    legacy.mkdir(parents=True)
    (legacy / "pruning_plan.json").write_text("{}")
    (legacy / "model.safetensors").write_bytes(b"0" * 100)
    run_grid(setup, tmp_path, ["magnitude"], [RATIO])
    assert not legacy.exists()


def test_statistics_are_cached_per_texts(setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = calibration.channel_statistics
    monkeypatch.setattr(calibration, "channel_statistics", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, tok = setup["model"], setup["tok"]
    a = calibration_statistics(tmp_path, model, tok, TEXTS, progress=False)
    b = calibration_statistics(tmp_path, model, tok, TEXTS, batch_size=3, progress=False)
    assert len(calls) == 1
    np.testing.assert_array_equal(a.var[3], b.var[3])
    np.testing.assert_allclose(a.mean[4], setup["stats"].mean[4], rtol=1e-5, atol=1e-7)  # other batches
    calibration_statistics(tmp_path, model, tok, TEXTS[:3], progress=False)
    assert len(calls) == 2


# -- calibration texts ----------------------------------------------------------------------------------
def write_manifest(run_dir: Path, info: dict) -> None:
    (run_dir / "activations").mkdir(parents=True, exist_ok=True)
    (run_dir / "activations" / "manifest.json").write_text(json.dumps({"dataset": info,
                                                                       "text_ids": info["ids"]}))


def test_calibration_texts_reload_stage_one_texts_and_refuse_mismatches(tmp_path: Path) -> None:
    texts = load_texts("wiki", "calibration", n_texts=5)[2:5]
    info = dataset_info("wiki", "calibration", texts)
    write_manifest(tmp_path, info)
    assert calibration_texts(tmp_path) == texts
    write_manifest(tmp_path, {**info, "sha256": "0" * 64})
    with pytest.raises(ValueError, match="checksum"):
        calibration_texts(tmp_path)
    write_manifest(tmp_path, {**info, "ids": info["ids"][:2] + ["no-such-article"]})
    with pytest.raises(ValueError, match="no-such-article"):
        calibration_texts(tmp_path)
    write_manifest(tmp_path, {**info, "name": "ptb"})
    with pytest.raises(ValueError, match="registered datasets"):
        calibration_texts(tmp_path)
    with pytest.raises(FileNotFoundError, match="stage 1"):
        calibration_texts(tmp_path / "empty")


def test_grid_points_go_through_prune_all_and_rebuild_exactly(setup: dict, tmp_path: Path) -> None:
    """Any point of the grid (criterion x allocation x compensation) is planned, stored and rebuilt like a
    registered method; least squares stores its refitted down weights, and the rebuild equals the build."""
    from funcprune.compensation import down_input_moments

    model = setup["model"]
    names = ["fn+static", "fn@flap+static", "flap@fn+none", "random@fn", "fn+ls0.1", "flap+ls", "fn+progressive-ls0.1"]
    rows = run_grid(setup, tmp_path, ["fn", "flap"] + names, [RATIO])
    assert "fn@flap+static_r0.10" in set(rows["key"]) and "random@fn-s1_r0.10" in set(rows["key"])
    plans = {k: PruningPlan.load(tmp_path / "plans" / f"{k}.json") for k in rows["key"]}
    widths = lambda p: {i: len(k) for i, k in p.kept.items()}  # noqa: E731
    assert widths(plans["fn@flap+static_r0.10"]) == widths(plans["flap_r0.10"])
    assert widths(plans["flap@fn+none_r0.10"]) == widths(plans["fn_r0.10"])
    assert widths(plans["random@fn-s0_r0.10"]) == widths(plans["fn_r0.10"])
    assert plans["fn+static_r0.10"].kept == plans["fn_r0.10"].kept
    moments = down_input_moments(model, setup["tok"], TEXTS)
    stats = load_statistics(tmp_path / "stats")
    from funcprune.run.calibration import calibration_data

    calibration = calibration_data(setup["tok"], TEXTS)
    for key in ("fn+ls0.1_r0.10", "flap+ls_r0.10", "fn@flap+static_r0.10", "fn+progressive-ls0.1_r0.10"):
        entry = rows.set_index("key").loc[key]
        rebuilt = pipeline.rebuild_pruned(tmp_path, key, model, source=None).model
        in_memory = build_pruned(entry["method"], model, plans[key], stats=stats, moments=moments,
                                 calibration=calibration)
        torch.testing.assert_close(logits(rebuilt), logits(in_memory), rtol=0, atol=1e-6)
    assert plans["fn+ls0.1_r0.10"].settings["compensation_settings"] == {"ridge": 0.1}
    # least squares changed the kept down weights, so the rebuild must not be the static-bias model
    static = pipeline.rebuild_pruned(tmp_path, "fn+static_r0.10", model, source=None).model
    assert not torch.allclose(logits(static), logits(pipeline.rebuild_pruned(tmp_path, "fn+ls0.1_r0.10", model,
                                                                             source=None).model))
    # measured on the pruned prefix, not on the dense model: another refit
    assert not torch.allclose(logits(pipeline.rebuild_pruned(tmp_path, "fn+progressive-ls0.1_r0.10", model,
                                                             source=None).model),
                              logits(pipeline.rebuild_pruned(tmp_path, "fn+ls0.1_r0.10", model, source=None).model))


def test_literature_table_rebuilds_models_and_pairs_them_on_consecutive_windows(default_model, tmp_path: Path) -> None:
    from funcprune.run.grid import literature_table
    from funcprune.heldout import evaluation_stream, literature_perplexity

    model, tok = default_model
    prune_all(model, tmp_path, ["magnitude", "random"], [0.05], [0], tokenizer=tok, progress=False,
              source=default_model.source)
    keys = ["magnitude_r0.05", "random-s0_r0.05"]
    table = literature_table(model, tok, tmp_path, keys, seq_len=32, max_tokens=256, baseline="magnitude_r0.05",
                             source=default_model.source)
    assert list(table["key"]) == ["dense"] + keys
    direct = literature_perplexity(model, evaluation_stream(tok, "wiki", "test"), seq_len=32, max_tokens=256)
    assert table.loc[0, "ppl"] == pytest.approx(direct["ppl"], rel=1e-9)
    assert (table["windows"] == 8).all()
    rows = table.set_index("key")
    assert rows.loc["random-s0_r0.05", "estimate"] == pytest.approx(
        rows.loc["random-s0_r0.05", "ppl"] / rows.loc["magnitude_r0.05", "ppl"], rel=1e-6)
    assert np.isnan(rows.loc["magnitude_r0.05", "estimate"])
    assert "no BOS per window" in table.attrs["rule"]


def test_replace_starts_a_new_index_and_reuses_plans_on_disk(setup: dict, tmp_path: Path) -> None:
    run_grid(setup, tmp_path, ["magnitude", "random"], [RATIO], seeds=[0, 1])
    assert set(read_index(tmp_path)["key"]) == {"magnitude_r0.10", "random-s0_r0.10", "random-s1_r0.10"}
    rows = run_grid(setup, tmp_path, ["magnitude", "random"], [RATIO], seeds=[0], replace=True)
    assert set(read_index(tmp_path)["key"]) == {"magnitude_r0.10", "random-s0_r0.10"}  # seed 1 no longer asked for
    assert set(rows["status"]) == {"reused"}
    run_grid(setup, tmp_path, ["flap"], [RATIO])  # a later call adds to the index
    assert "flap_r0.10" in set(read_index(tmp_path)["key"]) and len(read_index(tmp_path)) == 3
