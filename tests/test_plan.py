"""Stage 3 plans: exact ratios, allocation, protected layers, min_width, round_to, thresholds, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from tiny_models import tiny_config

from funcprune.evaluate import count_parameters
from funcprune.plan import (PruningPlan, channel_parameters, default_protected_layers, select_by_threshold,
                            select_channels, threshold_for_ratio)

N_LAYERS, WIDTH, HIDDEN = 8, 48, 32
COST = 3 * HIDDEN  # gated MLP, no biases


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    config = tiny_config("llama")
    config.num_hidden_layers = N_LAYERS
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(config).eval()


def random_layer_scores(seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.random(WIDTH) for i in range(N_LAYERS)}


def n_removed(plan: PruningPlan) -> dict[int, int]:
    return {i: len(plan.removed(i)) for i in plan.layers}


@pytest.mark.parametrize("basis", ["total", "mlp"])
@pytest.mark.parametrize("allocation", ["global", "uniform"])
@pytest.mark.parametrize("round_to", [1, 4])
def test_ratio_is_hit_to_within_half_a_unit(model, basis: str, allocation: str, round_to: int) -> None:
    n_basis = count_parameters(model)[basis]
    assert channel_parameters(model) == {i: COST for i in range(N_LAYERS)}
    for ratio in (0.0, 0.013, 0.05, 0.2 if basis == "mlp" else 0.1):
        plan = select_channels(random_layer_scores(), model, ratio=ratio, basis=basis,
                               allocation=allocation, round_to=round_to)
        removed = sum(n_removed(plan).values()) * COST
        assert plan.params_removed == removed and plan.params_basis == n_basis
        assert abs(removed - ratio * n_basis) <= round_to * COST / 2
        assert plan.ratio_reached == pytest.approx(removed / n_basis)
        assert plan.ratio_requested == ratio and plan.ratio_basis == basis and plan.allocation == allocation


def test_global_ranking_removes_the_lowest_scores(model) -> None:
    scores = random_layer_scores(1)
    plan = select_channels(scores, model, ratio=0.08)
    prunable = [i for i in range(N_LAYERS) if i not in plan.protected_layers]
    removed = np.concatenate([scores[i][plan.removed(i)] for i in prunable])
    kept = np.concatenate([scores[i][plan.kept[i]] for i in prunable])
    assert removed.size > 0 and removed.max() < kept.min()


def test_global_and_uniform_allocations_differ_as_expected(model) -> None:
    scores = {i: 1.0 + np.random.default_rng(i).random(WIDTH) for i in range(N_LAYERS)}
    scores[4] -= 1.0  # layer 4 holds all the least important channels
    ratio = 0.3 * (WIDTH * COST) / count_parameters(model)["total"]  # 30% of one layer's MLP
    glob = select_channels(scores, model, ratio=ratio, allocation="global")
    uni = select_channels(scores, model, ratio=ratio, allocation="uniform")
    assert n_removed(glob) == {**{i: 0 for i in range(N_LAYERS)}, 4: sum(n_removed(glob).values())}
    counts = [n_removed(uni)[i] for i in (3, 4, 5)]
    assert max(counts) - min(counts) <= 1 and min(counts) > 0
    assert abs(glob.params_removed - uni.params_removed) <= COST
    # within a layer, uniform allocation still drops the lowest-scored channels
    for i in (3, 4, 5):
        assert scores[i][uni.removed(i)].max() < scores[i][uni.kept[i]].min()


def test_protected_layers(model) -> None:
    assert default_protected_layers(N_LAYERS) == [0, 1, 2, 6, 7]
    plan = select_channels(random_layer_scores(), model, ratio=0.1)
    assert plan.protected_layers == [0, 1, 2, 6, 7]
    assert all(n_removed(plan)[i] == 0 for i in plan.protected_layers)
    assert all(n_removed(plan)[i] > 0 for i in (3, 4, 5))
    plan = select_channels(random_layer_scores(), model, ratio=0.1, protected_layers=[3, 4])
    assert n_removed(plan)[3] == n_removed(plan)[4] == 0 and n_removed(plan)[0] > 0
    with pytest.raises(ValueError, match=r"protected layers \[9\] out of range.*0\.\.7"):
        select_channels(random_layer_scores(), model, ratio=0.1, protected_layers=[0, 9])


def test_min_width_and_the_maximum_ratio(model) -> None:
    total = count_parameters(model)["total"]
    maximum = 3 * (WIDTH - 10) * COST / total
    plan = select_channels(random_layer_scores(), model, ratio=maximum, min_width=10)
    assert [len(plan.kept[i]) for i in (3, 4, 5)] == [10, 10, 10]
    with pytest.raises(ValueError, match=f"maximum .* is {maximum:.6f}"):
        select_channels(random_layer_scores(), model, ratio=maximum + 0.01, min_width=10)
    with pytest.raises(ValueError, match="maximum"):
        select_channels(random_layer_scores(), model, ratio=-0.1)
    plan = select_channels(random_layer_scores(), model, ratio=0.5 * maximum, min_width=10, allocation="uniform")
    assert all(len(plan.kept[i]) >= 10 for i in range(N_LAYERS))
    everything_protected = list(range(N_LAYERS))
    with pytest.raises(ValueError, match="is 0.000000"):
        select_channels(random_layer_scores(), model, ratio=0.01, protected_layers=everything_protected)


@pytest.mark.parametrize("round_to", [8, 5])
def test_round_to_keeps_multiples(model, round_to: int) -> None:
    allowed = {WIDTH} | set(range(round_to, WIDTH, round_to))  # 5: 48 -> 45 first (a unit of 48 mod 5)
    for allocation in ("global", "uniform"):
        plan = select_channels(random_layer_scores(2), model, ratio=0.12, round_to=round_to,
                               allocation=allocation)
        widths = {len(plan.kept[i]) for i in (3, 4, 5)}
        assert widths <= allowed and widths != {48}


def test_ties_are_broken_deterministically(model) -> None:
    flat = {i: np.ones(WIDTH) for i in range(N_LAYERS)}
    a = select_channels(flat, model, ratio=0.05)
    b = select_channels(dict(reversed(list(flat.items()))), model, ratio=0.05)
    assert a.kept == b.kept
    # equal scores: the earliest prunable layer, lowest channel indices first
    assert a.removed(3) == list(range(len(a.removed(3)))) and n_removed(a)[4] == 0


def test_bad_scores_are_refused(model) -> None:
    scores = random_layer_scores()
    with pytest.raises(ValueError, match=r"no scores for prunable layers \[4\]"):
        select_channels({i: s for i, s in scores.items() if i != 4}, model, ratio=0.1)
    with pytest.raises(ValueError, match=r"layer 3: scores of shape \(47,\)"):
        select_channels({**scores, 3: scores[3][:-1]}, model, ratio=0.1)
    with pytest.raises(ValueError, match="NaN"):
        select_channels({**scores, 3: np.full(WIDTH, np.nan)}, model, ratio=0.1)
    with pytest.raises(ValueError, match="basis 'params'"):
        select_channels(scores, model, ratio=0.1, basis="params")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="allocation 'local'"):
        select_channels(scores, model, ratio=0.1, allocation="local")  # type: ignore[arg-type]
    # protected layers need no scores
    select_channels({i: scores[i] for i in (3, 4, 5)}, model, ratio=0.05)


def test_threshold_mode_and_the_threshold_a_ratio_implies(model) -> None:
    scores = random_layer_scores(3)
    t = 0.2
    plan = select_by_threshold(scores, model, t)
    for i in (3, 4, 5):
        assert plan.kept[i] == np.flatnonzero(scores[i] > t).tolist()
    assert plan.ratio_requested is None and plan.settings["threshold"] == t
    by_ratio = select_channels(scores, model, ratio=0.07)
    implied = threshold_for_ratio(scores, model, 0.07)
    assert select_by_threshold(scores, model, implied).kept == by_ratio.kept
    assert threshold_for_ratio(scores, model, 0.0) == float("-inf")
    narrow = select_by_threshold(scores, model, 2.0, min_width=3)  # everything below t: keep the top 3
    for i in (3, 4, 5):
        assert narrow.kept[i] == sorted(np.argsort(-scores[i])[:3].tolist())


def test_plan_json_round_trip_and_table(model, tmp_path: Path) -> None:
    plan = select_channels(random_layer_scores(), model, ratio=0.1, method="random",
                           settings={"seed": 0})
    path = plan.save(tmp_path / "plan.json")
    raw = json.loads(path.read_text())
    assert raw["format"] == "funcprune-plan/1" and set(raw["kept"]) == {str(i) for i in range(N_LAYERS)}
    loaded = PruningPlan.load(path)
    assert loaded == plan
    assert loaded.heads == {} and loaded.provenance["funcprune"] and loaded.model["model_type"] == "llama"
    assert loaded.model["n_layers"] == N_LAYERS and loaded.model["hidden_size"] == HIDDEN
    table = plan.table()
    assert list(table.columns) == ["layer", "width", "kept", "removed", "fraction"]
    row = table[table.layer == 3].iloc[0]
    assert row.kept + row.removed == WIDTH and row.fraction == pytest.approx(row.removed / WIDTH)
    text = str(plan)
    assert "random" in text and "protected layers [0, 1, 2, 6, 7]" in text and "fraction" in text
    with pytest.raises(ValueError, match="format"):
        PruningPlan.from_dict({**raw, "format": "something-else"})
