"""A method is three objects (criterion, allocation, compensation): what each holds, and that a new one is one entry."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from tiny_models import tiny_deep_llama

from funcprune.axes import (COMPENSATIONS, CRITERIA, GLOBAL, UNIFORM, Criterion, LeastSquaresRefit, ProgressiveBias,
                            StaticBias, WidthsOf, compensation_label)
from funcprune.methods import METHODS, Method, build_pruned, get_method, make_plan
from funcprune.plan import layer_widths
from funcprune.scoring import MagnitudeScorer, magnitude_scores

RATIO = 0.2
#: Layers 3, 4 and 5 of 8 are prunable (the first three and the last two are protected).
PRUNABLE = (3, 4, 5)


@pytest.fixture(scope="module")
def dense() -> torch.nn.Module:
    return tiny_deep_llama()


def _networks(widths: dict[int, int]) -> SimpleNamespace:
    """Stand-in fitted networks: one map per layer whose |z| is the channel index."""
    return SimpleNamespace(maps_={i: np.arange(w, dtype=float)[None, :] for i, w in widths.items()},
                           voxel_channels_={i: np.arange(w) for i, w in widths.items()})


def test_each_registered_method_needs_what_its_three_axes_need() -> None:
    # (networks, statistics, texts, seeded), from the definitions: FN reads networks; Wanda-sp and FLAP read
    # activation statistics; a progressive bias measures on calibration texts; FLAP's static bias reads statistics
    expected = {"fn": (True, False, False, False), "fn-bias": (True, False, True, False),
                "random": (False, False, False, True), "magnitude": (False, False, False, False),
                "wanda-sp": (False, True, True, False), "flap": (False, True, True, False),
                "fn-flap": (True, True, True, False), "fn-protect": (True, True, True, False)}
    got = {n: (m.needs_networks, m.needs_statistics, m.needs_texts, m.seeded) for n, m in METHODS.items()}
    assert got == expected
    # widths taken from another method bring that method's needs along
    assert get_method("magnitude@fn").needs_networks and not METHODS["magnitude"].needs_networks
    assert get_method("magnitude@flap").needs_statistics and get_method("magnitude+static").needs_statistics


def test_params_are_every_argument_the_scorer_gets(dense: torch.nn.Module) -> None:
    nets = _networks(layer_widths(dense))
    flap = METHODS["flap"].criterion.scorer_for()
    assert METHODS["flap"].params == {"standardize": True} and flap.standardize is True
    assert flap.settings["standardize"] is True
    fn_flap = METHODS["fn-flap"].with_params(weight=0.5, protect=2.0)
    scorer = fn_flap.criterion.scorer_for(nets)
    assert (scorer.weight, scorer.protect) == (0.5, 2.0) and fn_flap.params == {"weight": 0.5, "protect": 2.0}
    assert METHODS["fn-flap"].params == {"weight": 1.0}  # the registry is left as it was
    assert METHODS["random"].criterion.scorer_for(seed=7).seed == 7
    # a parameter the scorer does not take is an error, never silently dropped
    with pytest.raises(ValueError, match=r"takes no parameter \['norm'\]; it takes \[\]"):
        Criterion("magnitude", MagnitudeScorer, {"norm": "l1"})
    with pytest.raises(ValueError, match=r"takes no parameter \['wieght'\]; it takes \['weight', 'protect'\]"):
        METHODS["fn-flap"].with_params(wieght=0.5)


class _LowMagnitudeFirst:
    """A criterion no registered method has: keep the channels of *smallest* weight norm."""

    name = "anti_magnitude"
    settings: dict[str, Any] = {"of": "magnitude"}

    def __call__(self, model: torch.nn.Module, stats: Any = None) -> dict[int, np.ndarray]:
        return {i: -s for i, s in magnitude_scores(model).items()}


def test_a_new_method_is_one_object_and_goes_through_plans_and_pruning(dense: torch.nn.Module) -> None:
    method = Method("anti-magnitude", "anti-magnitude", Criterion("anti-magnitude", _LowMagnitudeFirst), GLOBAL)
    plan = make_plan(method, dense, RATIO, basis="mlp")
    assert plan.method == "anti-magnitude" and plan.allocation == "global"
    assert plan.settings["scorer"] == "anti_magnitude" and plan.settings["criterion"] == "anti-magnitude"
    magnitude = magnitude_scores(dense)
    removed = np.concatenate([magnitude[i][plan.removed(i)] for i in PRUNABLE])
    kept = np.concatenate([magnitude[i][plan.kept[i]] for i in PRUNABLE])
    assert removed.size and removed.min() >= kept.max()  # the largest norms went, across layers
    pruned = build_pruned(method, dense, plan)
    widths = layer_widths(pruned)
    assert all(widths[i] == len(plan.kept[i]) for i in plan.layers)


def test_a_variant_name_and_the_objects_it_denotes_are_the_same_method() -> None:
    by_name = get_method("magnitude@flap+ls0.1")
    assert by_name.criterion is CRITERIA["magnitude"]
    assert by_name.allocation == WidthsOf(METHODS["flap"]) and by_name.allocation.name == "widths:flap"
    assert by_name.compensation == LeastSquaresRefit(0.1) != LeastSquaresRefit(0.01)
    assert by_name.compensation_params == {"ridge": 0.1}
    assert get_method("fn+progressive").compensation == ProgressiveBias() == METHODS["fn-bias"].compensation
    assert get_method("random@global").allocation is GLOBAL and METHODS["random"].allocation is UNIFORM
    with pytest.raises(ValueError, match="seed"):
        WidthsOf(METHODS["random"])
    assert set(COMPENSATIONS) == {"none", "static", "progressive", "ls", "progressive-ls"}
    assert compensation_label(StaticBias()) == "static bias"


def test_a_compensation_names_the_method_and_what_it_lacks(dense: torch.nn.Module) -> None:
    plan = make_plan("magnitude", dense, RATIO, basis="mlp")
    nothing = dict(calibration=None, stats=None, moments=None)
    with pytest.raises(ValueError, match=r"method 'x' needs stats="):
        StaticBias().for_plan(plan, method="x", **nothing)
    with pytest.raises(ValueError, match=r"method 'x' needs calibration="):
        ProgressiveBias().for_plan(plan, method="x", **nothing)
    with pytest.raises(ValueError, match=r"needs moments="):
        LeastSquaresRefit().for_plan(plan, method="x", **nothing)
