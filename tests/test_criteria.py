"""Functional networks inside FLAP: weight 0 is FLAP, a large weight orders each layer by max |z|."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from tiny_models import tiny_model

from funcprune.adapters import layer_widths
from funcprune.plan import select_channels
from funcprune.scoring import ChannelStatistics, FlapScorer, FnFlapScorer, FunctionalNetworkScorer


def _inputs(seed: int = 0):
    model = tiny_model("llama")
    rng = np.random.default_rng(seed)
    widths = layer_widths(model)
    stats = ChannelStatistics(mean={i: rng.normal(size=w) for i, w in widths.items()},
                              var={i: rng.gamma(2.0, size=w) for i, w in widths.items()},
                              sq_norm={i: rng.gamma(3.0, size=w) for i, w in widths.items()}, n_tokens=50)
    fn = SimpleNamespace(maps_={i: rng.laplace(size=(3, 96)) for i in range(3)},
                         voxel_channels_={i: np.tile(np.arange(48), 2) for i in range(3)})
    return model, stats, fn


def test_weight_zero_is_flap_exactly() -> None:
    model, stats, fn = _inputs()
    flap = FlapScorer(standardize=True)(model, stats)
    mixed = FnFlapScorer(fn, weight=0.0)(model, stats)
    for i in flap:
        np.testing.assert_array_equal(mixed[i], flap[i])
    plans = [select_channels(s, model, ratio=0.05, protected_layers=[]) for s in (flap, mixed)]
    assert plans[0].kept == plans[1].kept


def test_a_large_weight_orders_each_layer_by_the_key_neuron_score() -> None:
    model, stats, fn = _inputs(1)
    key = FunctionalNetworkScorer(fn)(model)
    mixed = FnFlapScorer(fn, weight=1e6)(model, stats)
    for i in key:
        assert np.array_equal(np.argsort(mixed[i], kind="stable"), np.argsort(key[i], kind="stable"))
    scorer = FnFlapScorer(fn, weight=0.5)
    assert scorer.settings["weight"] == 0.5 and scorer.name == "fn_flap"


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_bad_weights_are_named(weight: float) -> None:
    _, _, fn = _inputs()
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        FnFlapScorer(fn, weight=weight)


def test_statistics_are_required() -> None:
    model, _, fn = _inputs()
    with pytest.raises(ValueError, match="needs activation statistics"):
        FnFlapScorer(fn)(model, None)


# -- the sweep on validation windows --------------------------------------------------------
def test_sweep_weight_zero_is_the_flap_model_and_deltas_are_paired() -> None:
    import copy

    import pandas as pd
    import torch

    from funcprune.ablation import build_fn_flap, choose_criterion, criterion_sweep, window_nll
    from funcprune.prune import prune

    model, stats, fn = _inputs(2)
    windows = torch.randint(0, 97, (6, 12), generator=torch.Generator().manual_seed(1))
    sweep = criterion_sweep(model, stats, fn, windows, weights=[0.0, 2.0, 0.0], protect=[2.5], ratio=0.05,
                            protected_layers=[], progress=False)
    assert list(sweep["label"]) == ["FLAP", "w = 2", "|z| > 2.5 kept"] and sweep["delta_vs_flap"].iloc[0] == 0.0
    assert list(sweep["weight"]) == [0.0, 2.0, 0.0] and np.isnan(sweep["protect"].iloc[0])
    flap_plan = select_channels(FlapScorer(standardize=True)(model, stats), model, ratio=0.05,
                                protected_layers=[])
    flap_model = copy.deepcopy(model)
    prune(flap_model, flap_plan, bias_compensation=stats)
    np.testing.assert_allclose(sweep.attrs["window_nll"]["FLAP"], window_nll(flap_model, windows), rtol=1e-10)
    pruned, plan = build_fn_flap(model, stats, fn, 0.05, weight=2.0, protected_layers=[])
    assert plan.method == "fn-flap" and plan.settings["scorer_settings"]["weight"] == 2.0
    np.testing.assert_allclose(sweep["nll"].iloc[1], window_nll(pruned, windows).mean(), rtol=1e-10)
    assert sweep["delta_vs_flap"].iloc[1] == pytest.approx(sweep["nll"].iloc[1] - sweep["nll"].iloc[0])

    protected, plan = build_fn_flap(model, stats, fn, 0.05, weight=0.0, protect=2.5, protected_layers=[])
    assert plan.method == "fn-protect" and plan.settings["scorer_settings"]["protect"] == 2.5
    np.testing.assert_allclose(sweep["nll"].iloc[2], window_nll(protected, windows).mean(), rtol=1e-10)

    tie = pd.DataFrame({"label": ["w = 2", "FLAP", "w = 1", "|z| > 3 kept"], "weight": [2.0, 0.0, 1.0, 0.0],
                        "protect": [np.nan, np.nan, np.nan, 3.0], "nll": [3.0, 2.0, 3.0, 3.1]})
    # FLAP is the reference, not a candidate; ties go to the smaller weight
    assert choose_criterion(tie) == {"weight": 1.0, "protect": None}
    assert choose_criterion(tie.assign(nll=[2.9, 2.0, 3.0, 3.1])) == {"weight": 2.0, "protect": None}
    assert choose_criterion(tie.assign(nll=[2.9, 2.0, 3.0, 2.5])) == {"weight": 0.0, "protect": 3.0}
    with pytest.raises(ValueError, match="no candidate that uses the networks"):
        choose_criterion(tie[tie["label"] == "FLAP"])
    with pytest.raises(ValueError, match="weights is empty"):
        criterion_sweep(model, stats, fn, windows, weights=[], ratio=0.05, progress=False)


def test_candidate_nll_is_flap_by_default_and_scores_the_candidates_model() -> None:
    import copy

    import torch

    from funcprune.ablation import build_fn_flap, candidate_nll, window_nll
    from funcprune.prune import prune

    model, stats, fn = _inputs(2)
    windows = torch.randint(0, 97, (6, 12), generator=torch.Generator().manual_seed(1))
    nll, plan = candidate_nll(model, stats, fn, windows, 0.05, protected_layers=[])
    flap_model = copy.deepcopy(model)
    prune(flap_model, select_channels(FlapScorer(standardize=True)(model, stats), model, ratio=0.05,
                                      protected_layers=[]), bias_compensation=stats)
    np.testing.assert_array_equal(nll, window_nll(flap_model, windows))
    assert plan.method == "fn-flap" and plan.settings["scorer_settings"]["weight"] == 0.0
    nll, plan = candidate_nll(model, stats, fn, windows, 0.05, weight=0.0, protect=2.5, protected_layers=[])
    protected, same_plan = build_fn_flap(model, stats, fn, 0.05, weight=0.0, protect=2.5, protected_layers=[])
    np.testing.assert_array_equal(nll, window_nll(protected, windows))
    assert plan.kept == same_plan.kept and plan.method == "fn-protect"


def test_the_strongest_variant_is_paired_only_on_the_same_windows() -> None:
    import pandas as pd
    import torch

    from funcprune.ablation import versus_part, versus_strongest_part
    from funcprune.heldout import ids_sha256

    windows = torch.arange(40).reshape(4, 10)
    base = 3 + np.random.default_rng(0).normal(0, 0.2, 4)

    def part(method: str, ratio: float, nll: np.ndarray) -> dict:
        digest = ids_sha256(windows.reshape(-1).numpy())
        return {"key": f"{method}_r{ratio}", "entry": {"method": method, "ratio_requested": ratio, "seed": None},
                "perplexity": {"10": {"window_nll": nll.tolist(), "tokens_sha256": digest}}}

    parts = {"a": part("flap+ls0.1", 0.2, base + 0.1)}
    final = pd.DataFrame([{"ratio": 0.2, "window_nll": base.tolist()}])
    choices = {"strongest_baseline": "flap+ls0.1", "ratios": [0.2]}
    out = versus_strongest_part(final, parts, choices, tokenizer=None, windows=windows, setting="10", label="chosen",
                                n_boot=500)
    want = versus_part(final, parts, "flap+ls0.1", tokenizer=None, windows=windows, setting="10", n_boot=500)
    pd.testing.assert_frame_equal(out, want.assign(model="chosen"))
    assert versus_strongest_part(final, parts, None, tokenizer=None, windows=windows, setting="10", label="x") is None
    elsewhere = dict(choices, ratios=[0.3])  # not scored at the choice's ratio
    assert versus_strongest_part(final, parts, elsewhere, tokenizer=None, windows=windows, setting="10",
                                 label="x") is None
    assert versus_strongest_part(final, parts, choices, tokenizer=None, windows=windows + 1, setting="10",
                                 label="x") is None  # other windows: not paired, not refused

def test_protect_keeps_every_key_neuron_first_and_ranks_the_rest_as_flap() -> None:
    model, stats, fn = _inputs(3)
    key = FunctionalNetworkScorer(fn)(model)
    flap = FlapScorer(standardize=True)(model, stats)
    scores = FnFlapScorer(fn, weight=0.0, protect=2.5)(model, stats)
    is_key = {i: key[i] >= 2.5 for i in key}
    assert 0 < sum(int(k.sum()) for k in is_key.values()) < sum(len(k) for k in is_key.values())
    lowest_key = min(float(scores[i][is_key[i]].min()) for i in key if is_key[i].any())
    highest_other = max(float(scores[i][~is_key[i]].max()) for i in scores if (~is_key.get(i, np.zeros(0, bool))).any())
    assert lowest_key > highest_other  # lexicographic: every key neuron above every other channel, in any layer
    for i in key:  # within each group the order is FLAP's
        for group in (is_key[i], ~is_key[i]):
            assert np.array_equal(np.argsort(scores[i][group], kind="stable"), np.argsort(flap[i][group], kind="stable"))
    plan = select_channels(scores, model, ratio=0.05, protected_layers=[])
    for i in key:  # a small budget removes no key neuron
        assert not np.any(is_key[i][plan.removed(i)])
    # a threshold no channel reaches protects nothing: FLAP exactly
    none = FnFlapScorer(fn, weight=0.0, protect=1e9)(model, stats)
    for i in flap:
        np.testing.assert_array_equal(none[i], flap[i])
    assert FnFlapScorer(fn, weight=0.0, protect=3.0).settings["protect"] == 3.0


@pytest.mark.parametrize("protect", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_protect_thresholds_are_named(protect: float) -> None:
    _, _, fn = _inputs()
    with pytest.raises(ValueError, match="protect must be a finite"):
        FnFlapScorer(fn, weight=0.0, protect=protect)


def test_describe_criterion_states_the_outcome_either_way() -> None:
    import pandas as pd

    from funcprune.ablation import describe_criterion

    sweep = pd.DataFrame({"label": ["FLAP", "w = 1"], "weight": [0.0, 1.0], "protect": [np.nan, np.nan],
                          "ratio": [0.2, 0.2], "nll": [3.0, 2.9], "ppl": [np.exp(3.0), np.exp(2.9)],
                          "delta_vs_flap": [0.0, -0.1]})
    won = pd.DataFrame({"ratio": [0.1, 0.2], "estimate": [0.9, 0.95], "ci_low": [0.85, 0.9],
                        "ci_high": [0.95, 0.99], "p_value": [0.001, 0.01], "n": [32, 32],
                        "better": ["model", "model"], "channels_changed": [0.1, 0.2]})
    text = describe_criterion(sweep, {"weight": 1.0, "protect": None}, won)
    assert ("best of 1 candidate criteria was FLAP's score with the functional-network term at weight 1, with "
            "perplexity 18.17 at 20%") in text[0]
    assert "against FLAP's 20.09 (below it)" in text[0]
    assert "0.900 times FLAP's" in text[1] and "better than FLAP" in text[1]
    assert text[-1].startswith("The goal is met")
    lost = won.assign(better=["model", "baseline"], estimate=[0.9, 1.3])
    worse = sweep.assign(nll=[3.0, 3.1], ppl=[np.exp(3.0), np.exp(3.1)], delta_vs_flap=[0.0, 0.1])
    last = describe_criterion(worse, {"weight": 1.0, "protect": None}, lost)
    assert "(above it)" in last[0] and "worse than FLAP" in last[2]
    assert last[-1].endswith("decided better at 1 of 2 ratios; at its worst (20%) its perplexity is 1.300 times "
                             "FLAP's.")


# -- why: how FLAP's choice relates to the key neurons -------------------------------------------
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_score_agreement_recovers_planted_agreement_and_disagreement(sign: float) -> None:
    from scipy.stats import rankdata

    from funcprune.ablation import describe_agreement, score_agreement
    from funcprune.scoring import flap_scores

    model, stats, _ = _inputs(4)
    flap = flap_scores(model, stats, standardize=True)
    # planted maps: |z| of each channel is a monotone function of its FLAP rank (sign -1: the reverse),
    # from 0 to 6 in both voxel copies, so the top (or bottom) half of each layer are key neurons at |z| > 3
    maps, voxels = {}, {}
    for i in range(3):
        rank = rankdata(sign * flap[i]) - 1
        z = 6.0 * rank / (len(rank) - 1)
        maps[i], voxels[i] = np.tile(z, 2)[None, :], np.tile(np.arange(len(z)), 2)
    fn = SimpleNamespace(maps_=maps, voxel_channels_=voxels)
    assert list(score_agreement(model, stats, fn, 0.05, protected_layers=[1])["layer"]) == [0, 2]  # 1 is protected
    table = score_agreement(model, stats, fn, 0.05, threshold=3.0, protected_layers=[])
    assert list(table["layer"]) == [0, 1, 2]
    np.testing.assert_allclose(table["rho"], sign)
    assert (table["key"] == [int((6.0 * np.arange(48) / 47 >= 3.0).sum())] * 3).all()
    plan = select_channels(flap, model, ratio=0.05, protected_layers=[])
    assert list(table["pruned"]) == [len(plan.removed(i)) for i in range(3)] and table["pruned"].sum() > 0
    text = describe_agreement(table)
    if sign > 0:  # FLAP removes its lowest scores: none of them is a key neuron
        assert (table["key_pruned"] == 0).all()
        assert "largely agree" in text[0] and "removes 0% of the" in text[1] and "less often than" in text[1]
    else:  # the key neurons are FLAP's lowest: the channels it removes first
        assert (table["key_pruned"] == table["pruned"]).all()
        assert "reverse order" in text[0] and "every channel it removes is a key neuron" in text[1]


def test_flap_already_scored_with_the_same_channels_is_not_scored_again() -> None:
    """compare_with_flap takes FLAP's recorded NLL where FLAP's plan keeps the same channels, else measures it."""
    import torch

    from funcprune.ablation import candidate_nll, compare_with_flap

    model, stats, fn = _inputs(3)
    windows = torch.randint(0, 97, (6, 12), generator=torch.Generator().manual_seed(2))
    kwargs = dict(weight=1.0, ratios=[0.05], protected_layers=[], n_boot=200, progress=False)
    measured = compare_with_flap(model, stats, fn, windows, **kwargs)
    flap_nll, flap_plan = candidate_nll(model, stats, fn, windows, 0.05, protected_layers=[])
    assert measured["ppl_flap"].iloc[0] == float(np.exp(flap_nll.mean()))
    planted = flap_nll + 0.25  # a recording that differs from a measurement: which one was used shows
    reused = compare_with_flap(model, stats, fn, windows, **kwargs, scored={0.05: (planted, flap_plan.kept)})
    assert reused["ppl_flap"].iloc[0] == float(np.exp(planted.mean()))
    assert reused["ppl"].iloc[0] == measured["ppl"].iloc[0]  # the candidate is measured as before
    other = {i: list(c)[1:] for i, c in flap_plan.kept.items()}  # another plan's channels: measured again
    again = compare_with_flap(model, stats, fn, windows, **kwargs, scored={0.05: (planted, other)})
    pd.testing.assert_frame_equal(again, measured)
