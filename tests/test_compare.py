"""Paired comparisons: planted differences are detected, identical models are not flagged, sentences stay true."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from funcprune.compare import (compare_items, compare_models, compare_windows, describe_evidence,
                               headline_comparisons, paired_bootstrap, ranked_table)

N_WINDOWS = 64


def windows(seed: int, n: int = N_WINDOWS) -> np.ndarray:
    """Window NLLs with a large spread between windows (some text is harder), as real ones have."""
    return 3.0 + np.random.default_rng(seed).gamma(2.0, 0.5, n)


def part(key: str, method: str, ratio: float, nll: np.ndarray, *, seed: int | None = None,
         items: dict[str, str] | None = None, sha: str = "w") -> dict:
    zs = None
    if items is not None:
        zs = {"tasks": {task: {"items": {"doc_id": list(range(len(v))), "acc": v}} for task, v in items.items()}}
    return {"key": key, "entry": {"method": method, "seed": seed, "ratio_requested": ratio},
            "perplexity": {"128": {"window_nll": list(nll), "tokens_sha256": sha}}, "zero_shot": zs}


# -- the tests themselves ----------------------------------------------------------------------------------
def test_a_planted_small_shift_is_detected_despite_large_window_spread() -> None:
    base = windows(0)
    noise = np.random.default_rng(1).normal(0, 0.01, N_WINDOWS)
    shifted = base + 0.05 + noise  # perplexity x exp(0.05) = 1.051 on every window
    r = compare_windows(shifted, base)
    assert r["decided"] and r["better"] == "baseline" and r["p_value"] < 0.001
    assert r["ci_low"] < math.exp(0.05) < r["ci_high"] and r["ci_low"] > 1.0
    # an unpaired look at the same numbers cannot see it: the shift is far inside the window spread
    unpaired_se = math.sqrt(base.var(ddof=1) / N_WINDOWS + shifted.var(ddof=1) / N_WINDOWS)
    assert abs(shifted.mean() - base.mean()) < 2 * unpaired_se
    better = compare_windows(base - 0.05, base)
    assert better["better"] == "model" and better["estimate"] == pytest.approx(math.exp(-0.05))


def test_identical_models_and_pure_noise_are_not_flagged() -> None:
    base = windows(2)
    same = compare_windows(base, base.copy())
    assert same["estimate"] == 1.0 and same["p_value"] == 1.0 and not same["decided"]
    assert same["better"] == "undecided"
    # a model that differs by zero-mean noise only: flagged in about alpha of the draws, not more
    flagged = [compare_windows(base + np.random.default_rng(s).normal(0, 0.05, N_WINDOWS), base,
                               n_boot=1000)["decided"] for s in range(40)]
    assert sum(flagged) <= 6  # 5 % of 40 is 2; binomial tail P(> 6) < 0.002


def test_bootstrap_interval_matches_the_normal_one_on_a_large_sample() -> None:
    d = np.random.default_rng(3).normal(0.2, 1.0, 2000)
    r = paired_bootstrap(d, n_boot=4000)
    se = d.std(ddof=1) / math.sqrt(d.size)
    assert r["se"] == pytest.approx(se, rel=0.1)
    assert r["ci_low"] == pytest.approx(d.mean() - 1.96 * se, abs=0.3 * se)
    assert r["ci_high"] == pytest.approx(d.mean() + 1.96 * se, abs=0.3 * se)
    with pytest.raises(ValueError, match="at least two"):
        paired_bootstrap([0.1])
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap([0.1, np.nan])


def test_items_paired_bootstrap_and_mcnemar() -> None:
    rng = np.random.default_rng(4)
    base = (rng.random(600) < 0.5).astype(float)
    flipped = base.copy()
    wrong = np.flatnonzero(base == 0)[:60]  # the model answers 60 more items right, no fewer
    flipped[wrong] = 1
    r = compare_items(flipped, base)
    assert r["decided"] and r["better"] == "model" and r["estimate"] == pytest.approx(0.1)
    assert r["discordant"] == [60, 0] and r["mcnemar_p"] < 1e-15
    # the exact McNemar p-value by hand: 10 wins, 4 losses, two-sided binomial(14, 1/2)
    a, b = np.zeros(100), np.zeros(100)
    a[:10] = 1
    b[10:14] = 1
    by_hand = 2 * sum(math.comb(14, k) for k in range(0, 5)) / 2 ** 14
    assert compare_items(a, b)["mcnemar_p"] == pytest.approx(by_hand)
    same = compare_items(base, base)
    assert not same["decided"] and same["mcnemar_p"] == 1.0
    pooled = compare_items(np.full(10, 2 / 3), (np.arange(10) % 2).astype(float))
    assert pooled["mcnemar_p"] is None  # seed-pooled correctness is not 0/1


def test_compare_models_pools_seeds_and_refuses_other_windows() -> None:
    base = windows(5)
    seeds = [part(f"random-s{s}_r0.20", "random", 0.2, base + 0.1 * s, seed=s) for s in range(3)]
    fn = part("fn_r0.20", "fn", 0.2, base + 0.1)
    r = compare_models([fn], seeds, "ppl@128")
    assert r["estimate"] == pytest.approx(1.0) and r["baseline_value"] == pytest.approx(math.exp(base.mean() + 0.1))
    other = part("flap_r0.20", "flap", 0.2, base, sha="other windows")
    with pytest.raises(ValueError, match="same windows"):
        compare_models([fn], [other], "ppl@128")
    with pytest.raises(ValueError, match="unknown metric"):
        compare_models([fn], seeds, "bleu")
    with pytest.raises(KeyError, match="2048"):
        compare_models([fn], seeds, "ppl@2048")


# -- a contrived run -----------------------------------------------------------------------------------------
def contrived_run(fn_shift: float, flap_shift: float, random_shift: float) -> dict[str, dict]:
    base = windows(6)
    rng = np.random.default_rng(7)
    parts = {"dense": part("dense", "dense", 0.0, base)}
    for ratio in (0.1, 0.2):
        grow = 10 * ratio
        parts[f"fn_r{ratio}"] = part(f"fn_r{ratio}", "fn", ratio, base + grow * fn_shift + rng.normal(0, .01, N_WINDOWS))
        parts[f"fn-bias_r{ratio}"] = part(f"fn-bias_r{ratio}", "fn-bias", ratio, base + grow * fn_shift - 0.001)
        parts[f"flap_r{ratio}"] = part(f"flap_r{ratio}", "flap", ratio, base + grow * flap_shift)
        for s in range(2):
            key = f"random-s{s}_r{ratio}"
            parts[key] = part(key, "random", ratio, base + grow * random_shift + 0.02 * s, seed=s)
    return parts


def test_headline_comparisons_cover_every_pair_and_ratio() -> None:
    parts = contrived_run(fn_shift=0.1, flap_shift=0.05, random_shift=0.3)
    table = headline_comparisons(parts, n_boot=500)
    assert len(table) == 2 * 2 * 2  # ratios x (fn, fn-bias) x (flap, random); no wanda-sp in this run
    row = table[(table["ratio"] == 0.2) & (table["method"] == "fn") & (table["baseline"] == "flap")].iloc[0]
    assert row["estimate"] == pytest.approx(math.exp(2 * (0.1 - 0.05)), rel=0.01) and row["better"] == "baseline"
    rnd = table[(table["ratio"] == 0.2) & (table["method"] == "fn") & (table["baseline"] == "random")].iloc[0]
    assert rnd["baseline_seeds"] == 2 and rnd["better"] == "model" and rnd["seed_min"] < rnd["seed_max"]
    assert rnd["baseline_keys"] == "random-s0_r0.2,random-s1_r0.2"


@pytest.mark.parametrize("shifts", [(0.1, 0.05, 0.3), (0.02, 0.1, 0.3), (0.1, 0.1, 0.1), (0.3, 0.05, 0.1)])
def test_the_computed_sentences_are_true_for_any_run(shifts: tuple[float, float, float]) -> None:
    parts = contrived_run(*shifts)
    table = headline_comparisons(parts, n_boot=500)
    ranked = ranked_table(parts, "ppl@128", n_boot=500)
    labels = {"fn": "FN", "fn-bias": "FN + bias", "flap": "FLAP", "random": "random"}
    sentences = describe_evidence(table, ranked, labels=labels)
    truth = {(m, r): math.exp(np.mean([np.mean(p["perplexity"]["128"]["window_nll"]) for p in parts.values()
                                       if p["entry"]["method"] == m and p["entry"]["ratio_requested"] == r]))
             for m in labels for r in (0.1, 0.2)}
    for ratio in (0.1, 0.2):
        best = min(labels, key=lambda m: truth[(m, ratio)])
        line = next(s for s in sentences if s.startswith(f"At {100 * ratio:g} %, ") and "lowest" in s)
        assert f"{labels[best]} has the lowest perplexity ({truth[(best, ratio)]:.4g})" in line
    for _, r in table.iterrows():
        verdict = {"model": "better", "baseline": "worse", "undecided": "not decided"}[r["better"]]
        line = next(s for s in sentences if s.startswith(f"At {100 * r['ratio']:g} %, {labels[r['method']]}'s"))
        assert f"{r['estimate']:.2f}x (95 % CI {r['ci_low']:.2f}-{r['ci_high']:.2f}" in line
        assert f"{labels[r['baseline']]}'s" in line and verdict in line
        # the words agree with the numbers: better means a perplexity ratio below 1, decided means CI and p agree
        assert (r["better"] == "model") == (r["decided"] and r["estimate"] < 1)
    summary = sentences[-1]
    decided = table[table["decided"]]
    assert summary == (f"Of {len(table)} headline comparisons, the paired test (level 0.05) decides {len(decided)}: "
                       f"{int((decided['better'] == 'model').sum())} in favour of the functional-network method and "
                       f"{int((decided['better'] == 'baseline').sum())} against it; "
                       f"{len(table) - len(decided)} remain undecided.")


def test_ranked_table_and_empty_runs() -> None:
    parts = contrived_run(0.1, 0.05, 0.3)
    ranked = ranked_table(parts, "ppl@128", n_boot=500)
    at = ranked[ranked["ratio"] == 0.2]
    assert at["method"].tolist()[0] == "flap" and at["rank"].tolist() == [1, 2, 3, 4]
    assert at["vs_best"].iloc[0] == 1.0 and (at["vs_best"].iloc[1:] > 1).all() and at["ppl"].is_monotonic_increasing
    assert describe_evidence(pd.DataFrame(columns=ranked.columns), ranked.iloc[:0]) == [
        "No pruned models were compared in this run."]
    with pytest.raises(ValueError, match="ppl@"):
        ranked_table(parts, "acc")


def test_item_comparisons_through_parts() -> None:
    base = windows(8)
    dense_items = "1100110011" * 10
    better_items = "1110111011" * 10
    a = part("fn_r0.20", "fn", 0.2, base, items={"piqa": better_items, "boolq": better_items})
    b = part("flap_r0.20", "flap", 0.2, base, items={"piqa": dense_items, "boolq": dense_items})
    r = compare_models([a], [b], "acc")
    assert r["n"] == 200 and r["estimate"] == pytest.approx(0.2) and r["discordant"] == [40, 0]
    table = headline_comparisons({"a": a, "b": b}, n_boot=500)
    assert set(table["metric"]) == {"ppl@128", "acc"}
