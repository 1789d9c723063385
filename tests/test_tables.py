"""What a run evaluated and how long it took, read from its records; intervals as text."""

from __future__ import annotations

import pandas as pd

from funcprune.tables import evaluation_facts, table_contents, timing_table, with_interval


def _part(method: str, ratio: float, seed: int | None, total: float, **extra) -> dict:
    return {"entry": {"method": method, "ratio_requested": ratio, "seed": seed},
            "seconds": {"load": 1.0, "total": total}, **extra}


PARTS = {"dense": _part("dense", 0.0, None, 60.0), "fn_r0.20": _part("fn", 0.2, None, 90.0, tier="screen"),
         "random-s0_r0.10": _part("random", 0.1, 0, 30.0)}


def test_table_contents_lists_methods_in_order_and_sorted_ratios() -> None:
    table = pd.DataFrame({"method": ["dense", "fn", "random", "fn", "dense"],
                          "ratio_requested": [0.0, 0.3, 0.1, 0.1, 0.0], "metric": ["ppl", "ppl", "ppl", "acc", "acc"]})
    assert table_contents(table) == (["fn", "random"], [0.1, 0.3], True)
    assert table_contents(table[table["metric"] == "ppl"])[2] is False


def test_timing_table_and_evaluation_facts_by_hand() -> None:
    timing = timing_table(PARTS)
    assert list(timing.index) == list(PARTS) and list(timing.columns) == ["method", "seed", "ratio", "tier", "load s",
                                                                          "total s"]
    assert timing.loc["fn_r0.20", "tier"] == "screen" and timing.loc["dense", "tier"] == "full"
    assert timing.loc["random-s0_r0.10", "total s"] == 30.0
    assert evaluation_facts(PARTS, ["fn", "random"], [0.1, 0.2]) == {
        "n_models": 3, "n_pruned": 2, "n_methods": 2, "ratios": "0.1, 0.2", "stage_minutes": "3.0",
        "per_model_seconds": "60"}


def test_with_interval_writes_the_bounds_as_text() -> None:
    out = with_interval(pd.DataFrame({"ci_low": [0.912, 1.5], "ci_high": [1.0449, 2.0], "x": [1, 2]}))
    assert out["interval"].tolist() == ["0.91-1.04", "1.50-2.00"] and list(out.columns)[-1] == "interval"
