"""Functional networks inside FLAP: weight 0 is FLAP, a large weight orders each layer by max |z|."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
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
