"""Chapter 4's checks of what stage 4 stored: every method under both allocations, and rebuilt against built."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from tiny_models import tiny_deep_llama

from funcprune.evaluate import perplexity
from funcprune.hf_export import ModelCard
from funcprune.methods import build_pruned, make_plan, method_key
from funcprune.run.checks import allocation_check, allocation_facts, quick_check_card, rebuild_differences

RATIO = 0.2


@pytest.fixture(scope="module")
def dense() -> torch.nn.Module:
    """A tiny llama of 8 layers: 3 of them prunable (the first three and the last two are protected)."""
    return tiny_deep_llama()


def _stored(dense: torch.nn.Module, calls: list[str], seed: int):
    """What stage 4 would store: each method at its own allocation (uniform for magnitude and random)."""
    def stored(key: str) -> SimpleNamespace:
        calls.append(key)
        name = key.split("_r")[0].split("-s")[0]
        plan = make_plan(name, dense, RATIO, seed=seed, basis="mlp")
        return SimpleNamespace(model=build_pruned(name, dense, plan), plan=plan)
    return stored


def test_allocation_check_scores_the_stored_model_and_the_other_allocation(dense) -> None:
    ids = torch.randint(0, 97, (96,), generator=torch.Generator().manual_seed(0))
    calls: list[str] = []
    table = allocation_check(["magnitude", "random"], dense, RATIO, ids, stored=_stored(dense, calls, 3), seed=3,
                             basis="mlp", seq_len=32, own_only=("random",))

    def ppl(model: torch.nn.Module) -> float:
        return perplexity(model, None, ids, seq_len=32, batch_size=4, bos=None, progress=False)["ppl"]

    stored = _stored(dense, [], 3)
    other = build_pruned("magnitude", dense, make_plan("magnitude", dense, RATIO, seed=3, basis="mlp",
                                                        allocation="global"))
    assert calls == [method_key("magnitude", RATIO), method_key("random", RATIO, 3)]
    assert list(table.index) == ["dense", "magnitude", "random"]
    assert list(table.columns) == ["-", "global", "uniform"] and table.attrs["tokens"] == 96
    assert table.loc["dense", "-"] == ppl(dense)
    assert table.loc["magnitude", "uniform"] == ppl(stored(method_key("magnitude", RATIO)).model)
    assert table.loc["magnitude", "global"] == ppl(other) != table.loc["magnitude", "uniform"]
    assert table.loc["random", "uniform"] == ppl(stored(method_key("random", RATIO, 3)).model)
    assert math.isnan(table.loc["random", "global"])  # measured under its own allocation only


def _table() -> pd.DataFrame:
    table = pd.DataFrame({"-": [20.0, None, None], "global": [None, 31.234, 35.0], "uniform": [None, 33.5, 29.999]},
                         index=["dense", "fn", "fn-bias"])
    table.attrs["tokens"] = 2048
    return table


def test_allocation_facts_by_hand() -> None:
    assert allocation_facts(_table(), "fn") == {"quick_dense": "20.00", "quick_fn_global": "31.23",
                                                "quick_fn_uniform": "33.50", "quick_fn_better": "global",
                                                "quick_fn_bias": "35.00"}
    assert allocation_facts(_table(), "fn", "uniform")["quick_fn_bias"] == "30.00"  # the override's model
    assert allocation_facts(_table().drop(index="fn-bias"), "fn")["quick_fn_bias"] == "not run"


def test_quick_check_card_states_the_stored_models_perplexity() -> None:
    card = quick_check_card(_table(), "fn-bias", base_model="m", license="apache-2.0", n_texts=4, dataset="wiki",
                            max_tokens=64)
    assert card == ModelCard(
        base_model="m", license="apache-2.0",
        calibration="4 texts of the 'wiki' corpus, at most 64 tokens each (stage 1)",
        dense_ppl=20.0, pruned_ppl=35.0,
        ppl_protocol="The quick check of chapter 4: 2048 tokens of the validation part of the held-out text, windows "
                     "of 128 tokens. Chapter 5 of the funcprune book reports the test split.")


def test_rebuild_differences_are_zero_for_the_same_plan_and_not_otherwise(dense) -> None:
    ids = torch.randint(0, 97, (1, 16), generator=torch.Generator().manual_seed(1))
    calls: list[str] = []
    rows = rebuild_differences(["magnitude", "random"], dense, RATIO, ids, stored=_stored(dense, calls, 0), seed=0)
    assert calls == ["magnitude_r0.20", "random-s0_r0.20"]
    assert rows == {key: {"check": "rebuilt vs pruned in memory", "max |logit difference|": 0.0} for key in calls}

    def shifted(key: str) -> SimpleNamespace:
        record = _stored(dense, [], 0)(key)
        model = copy.deepcopy(record.model)
        with torch.no_grad():
            model.lm_head.weight[5] += 1.0
        return SimpleNamespace(model=model, plan=record.plan)

    assert rebuild_differences(["magnitude"], dense, RATIO, ids, stored=shifted)["magnitude_r0.20"][
        "max |logit difference|"] > 0
