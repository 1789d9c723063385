"""Intervals with every source of variation: articles, seeds, Holm's family, task means, selection on test."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from funcprune.compare import article_clusters, compare_models, compare_windows, describe_evidence, ranked_table
from funcprune.compare import headline_comparisons
from funcprune.heldout import EvaluationStream, ids_sha256
from funcprune.intervals import (add_holm, cluster_bootstrap, hierarchical_bootstrap, holm,
                                 task_mean_bootstrap)
from funcprune.tables import table_from_parts


# -- (i) windows of one article resampled together -----------------------------------------------------------
def article_windows(rng: np.random.Generator, n_articles: int = 20, per_article: int = 6, mu: float = 0.1,
                    between: float = 0.2, within: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Paired differences whose windows share a strong article effect (as text of one article does)."""
    effect = rng.normal(0.0, between, n_articles)
    labels = np.repeat(np.arange(n_articles), per_article)
    return mu + effect[labels] + rng.normal(0.0, within, labels.size), labels


def test_cluster_interval_is_wider_and_covers_at_the_nominal_rate() -> None:
    rng = np.random.default_rng(0)
    d, labels = article_windows(rng)
    iid = compare_windows(d, np.zeros_like(d), n_boot=2000)
    clustered = compare_windows(d, np.zeros_like(d), n_boot=2000, cluster=[f"art{g}" for g in labels])
    assert clustered["n_clusters"] == 20 and clustered["interval"] == "articles" and iid["interval"] == "windows"
    assert clustered["estimate"] == pytest.approx(iid["estimate"])
    # the article effect is shared by 6 windows: the honest interval is about sqrt(6) times wider
    width = lambda r: math.log(r["ci_high"]) - math.log(r["ci_low"])  # noqa: E731
    assert width(clustered) > 1.8 * width(iid)
    covered = {"iid": 0, "cluster": 0}
    reps = 200
    for _ in range(reps):
        d, labels = article_windows(rng)
        for name, cl in (("iid", None), ("cluster", labels)):
            r = (cluster_bootstrap(d, cl, n_boot=400, seed=int(rng.integers(1 << 30))) if cl is not None else
                 cluster_bootstrap(d, np.arange(d.size), n_boot=400, seed=int(rng.integers(1 << 30))))
            covered[name] += r["ci_low"] <= 0.1 <= r["ci_high"]
    # nominal 95 %: the percentile bootstrap with 20 clusters is a little short of it; i.i.d. is far short
    assert covered["cluster"] / reps >= 0.88
    assert covered["iid"] / reps <= 0.65


def test_cluster_bootstrap_errors_and_singletons() -> None:
    d = np.random.default_rng(1).normal(0.05, 0.1, 40)
    single = cluster_bootstrap(d, list(range(40)), n_boot=4000)
    from funcprune.compare import paired_bootstrap

    plain = paired_bootstrap(d, n_boot=4000)
    assert single["mean"] == plain["mean"] and single["se"] == pytest.approx(plain["se"], rel=0.1)
    with pytest.raises(ValueError, match="at least two clusters"):
        cluster_bootstrap(d, ["a"] * 40)
    with pytest.raises(ValueError, match="one label per window: 3 labels for 40 windows"):
        cluster_bootstrap(d, ["a", "b", "c"])


def test_article_labels_come_from_the_stream_and_match_the_recorded_windows() -> None:
    # two articles of 10 and 6 tokens; windows of 4 tokens (a BOS in front: span 3)
    ids = np.arange(16, dtype=np.int64) + 10
    text_index = np.array([0] * 10 + [1] * 6)
    stream = EvaluationStream(dataset={"ids": ["A", "B"]}, ids=ids, text_index=text_index, sha256=ids_sha256(ids),
                              bos_token_id=1)
    assert stream.window_articles([0, 3, 9, 12], 3) == ["A", "A", "B", "B"]  # 9..11: one A token, two B
    starts = [0, 6, 9, 12]
    rec = {"seq_len": 4, "bos_token_id": 1, "window_starts": starts,
           "tokens_sha256": ids_sha256(np.concatenate([ids[s:s + 3] for s in starts]))}
    parts = {"dense": {"key": "dense", "perplexity": {"4": rec}}}
    assert article_clusters(parts, stream) == {"4": ["A", "A", "B", "B"]}
    with pytest.raises(ValueError, match="pass stream="):
        article_clusters(parts)
    recorded = {"dense": {"key": "dense", "perplexity": {"4": {**rec, "window_articles": ["x", "x", "y", "y"]}}}}
    assert article_clusters(recorded) == {"4": ["x", "x", "y", "y"]}
    other = EvaluationStream(dataset={"ids": ["A", "B"]}, ids=ids + 1, text_index=text_index, sha256="", bos_token_id=1)
    with pytest.raises(ValueError, match="checksum differs"):
        article_clusters(parts, other)


# -- (ii) random pruning's seeds inside the interval ---------------------------------------------------------------
def test_resampling_seeds_covers_the_mean_over_seeds_where_pooling_does_not() -> None:
    rng = np.random.default_rng(2)
    n_seeds, n_windows, mu = 8, 40, 0.2
    covered = {"pool": 0, "resample": 0}
    reps = 150
    for rep in range(reps):
        text = rng.normal(3.0, 0.5, n_windows)  # window difficulty, shared by every model
        model = text + mu + rng.normal(0, 0.01, n_windows)
        # every seed of the baseline draws other channels: an offset per seed, mean 0 over seeds
        baseline = text + rng.normal(0, 0.1, (n_seeds, 1)) + rng.normal(0, 0.01, (n_seeds, n_windows))
        pooled = compare_windows(model, baseline.mean(axis=0), n_boot=400, seed=rep)
        resampled = hierarchical_bootstrap(model, baseline, n_boot=400, seed=rep)
        covered["pool"] += pooled["ci_low"] <= math.exp(mu) <= pooled["ci_high"]
        covered["resample"] += resampled["ci_low"] <= mu <= resampled["ci_high"]
    assert covered["resample"] / reps >= 0.85  # (S - 1) / S of the seed variance: close to nominal at 8 seeds
    assert covered["pool"] / reps <= 0.5


def parts_with_seeds() -> dict[str, dict]:
    rng = np.random.default_rng(3)
    text = rng.normal(3.0, 0.5, 32)
    parts = {"fn": {"key": "fn", "entry": {"method": "fn", "seed": None, "ratio_requested": 0.2},
                    "perplexity": {"128": {"window_nll": list(text + 0.05), "tokens_sha256": "w"}}}}
    for s in range(5):
        parts[f"r{s}"] = {"key": f"r{s}", "entry": {"method": "random", "seed": s, "ratio_requested": 0.2},
                          "perplexity": {"128": {"window_nll": list(text + rng.normal(0, 0.08)), "tokens_sha256": "w"}}}
    return parts


def test_seeds_resample_through_the_comparisons() -> None:
    parts = parts_with_seeds()
    seeds = [p for k, p in parts.items() if k.startswith("r")]
    pooled = compare_models([parts["fn"]], seeds, "ppl@128", n_boot=2000)
    resampled = compare_models([parts["fn"]], seeds, "ppl@128", n_boot=2000, seeds="resample")
    assert resampled["estimate"] == pytest.approx(pooled["estimate"]) and resampled["interval"] == "windows and seeds"
    assert resampled["ci_high"] - resampled["ci_low"] > 3 * (pooled["ci_high"] - pooled["ci_low"])
    clusters = {"128": [f"a{i // 4}" for i in range(32)]}
    table = headline_comparisons(parts, baselines=("random",), n_boot=500, seeds="resample", cluster=clusters)
    assert table["interval"].tolist() == ["articles and seeds"] and table["n_clusters"].tolist() == [8]
    assert not table["selected_on_test"].any()
    with pytest.raises(ValueError, match="unknown seeds 'all'; accepted: 'pool', 'resample'"):
        compare_models([parts["fn"]], seeds, "ppl@128", seeds="all")


# -- (iii) Holm's correction --------------------------------------------------------------------------------------
def test_holm_matches_a_hand_computed_family() -> None:
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> monotone 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, np.nan, 0.2]), [0.5, np.nan, 0.4])
    np.testing.assert_allclose(holm([0.6, 0.7]), [1.0, 1.0])
    table = pd.DataFrame({"metric": ["ppl@128"] * 4 + ["acc"] * 2, "p_value": [0.01, 0.04, 0.03, 0.005, 0.02, 0.03]})
    whole = add_holm(table)
    assert whole["decided_holm"].tolist() == [False, False, False, True, False, False]  # 0.005 x 6 = 0.03
    by = add_holm(table, by=["metric"])
    np.testing.assert_allclose(by["p_holm"], [0.03, 0.06, 0.06, 0.02, 0.04, 0.04])
    assert by["decided_holm"].tolist() == [True, False, False, True, True, True]
    assert by["family_size"].tolist() == [4, 4, 4, 4, 2, 2]
    with pytest.raises(KeyError, match=r"columns \['ratio'\] are not in the table"):
        add_holm(table, by=["ratio"])
    with pytest.raises(ValueError, match=r"p-values must lie in \[0, 1\]"):
        holm([0.2, 1.5])


# -- (iv) zero-shot tests on the tables' per-task means -----------------------------------------------------------
def zs_part(key: str, method: str, items: dict[str, tuple[str, str]]) -> dict:
    tasks = {}
    for task, (acc, acc_norm) in items.items():
        a = np.frombuffer(acc.encode(), np.uint8) - 48
        an = np.frombuffer(acc_norm.encode(), np.uint8) - 48
        pref = "acc_norm" if task == "hellaswag" else "acc"
        tasks[task] = {"acc": float(a.mean()), "acc_stderr": 0.01, "acc_norm": float(an.mean()),
                       "acc_norm_stderr": 0.01, "n": a.size, "preferred_metric": pref,
                       "preferred": float((an if pref == "acc_norm" else a).mean()),
                       "items": {"doc_id": list(range(a.size)), "acc": acc, "acc_norm": acc_norm}}
    eff = {k: 1 for k in ("params_total", "params_mlp", "params_attention", "params_embedding", "flops_per_token")}
    return {"key": key, "entry": {"method": method, "seed": None, "ratio_requested": 0.2, "ratio_reached": 0.2},
            "perplexity": {}, "zero_shot": {"tasks": tasks}, "efficiency": eff}


def test_task_mean_tests_use_the_means_the_tables_show() -> None:
    rng = np.random.default_rng(4)
    bits = lambda n, p: "".join("1" if x else "0" for x in rng.random(n) < p)  # noqa: E731
    a = zs_part("fn", "fn", {"piqa": (bits(20, 0.9), bits(20, 0.9)), "hellaswag": (bits(400, 0.3), bits(400, 0.6))})
    b = zs_part("flap", "flap", {"piqa": (bits(20, 0.5), bits(20, 0.5)), "hellaswag": (bits(400, 0.3), bits(400, 0.3))})
    dense = {**a, "key": "dense", "entry": {"method": "dense", "seed": None, "ratio_requested": 0.0}}
    table = table_from_parts([dense, a, b])
    shown = table.set_index(["key", "metric"])["value"]
    for metric in ("mean_acc", "mean_preferred"):
        r = compare_models([a], [b], metric, n_boot=2000)
        assert r["value"] == pytest.approx(shown[("fn", metric)]) and r["n_tasks"] == 2
        assert r["baseline_value"] == pytest.approx(shown[("flap", metric)])
        assert r["estimate"] == pytest.approx(shown[("fn", metric)] - shown[("flap", metric)])
    # pooling the items weighs HellaSwag 20 times PIQA: a different number from the table's
    pooled = compare_models([a], [b], "acc", n_boot=500)
    assert abs(pooled["estimate"] - compare_models([a], [b], "mean_acc", n_boot=500)["estimate"]) > 0.05
    rows = headline_comparisons({"dense": dense, "a": a, "b": b}, methods=("fn",), baselines=("flap",),
                                n_boot=300, zero_shot=("mean_acc", "mean_preferred"))
    assert rows["metric"].tolist() == ["mean_acc", "mean_preferred"]


def test_task_mean_bootstrap_resamples_within_tasks() -> None:
    rng = np.random.default_rng(5)
    model = {"big": rng.random(2000) < 0.6, "small": rng.random(50) < 0.6}
    base = {"big": rng.random(2000) < 0.5, "small": rng.random(50) < 0.6}
    r = task_mean_bootstrap(model, base, n_boot=3000)
    # the se of a mean of two task differences: sqrt(var_big / 2000 + var_small / 50) / 2
    se = math.sqrt(np.var(model["big"].astype(float) - base["big"], ddof=1) / 2000
                   + np.var(model["small"].astype(float) - base["small"], ddof=1) / 50) / 2
    assert r["se"] == pytest.approx(se, rel=0.1) and r["n"] == 2050
    with pytest.raises(ValueError, match="same tasks"):
        task_mean_bootstrap(model, {"big": base["big"]})


# -- (v) runner-up tests on the windows that picked the winner ------------------------------------------------------
def test_selection_on_test_is_flagged_and_said() -> None:
    rng = np.random.default_rng(6)
    text = rng.normal(3.0, 0.5, 32)
    parts = {m: {"key": m, "entry": {"method": m, "seed": None, "ratio_requested": 0.2},
                 "perplexity": {"128": {"window_nll": list(text + shift + rng.normal(0, 0.02, 32)),
                                        "tokens_sha256": "w"}}}
             for m, shift in (("flap", 0.0), ("fn", 0.01), ("random", 0.5))}
    ranked = ranked_table(parts, "ppl@128", n_boot=500)
    assert ranked["selected_on_test"].all() and (ranked["reference"] == "flap").all()
    empty = pd.DataFrame(columns=["ratio", "method", "metric"])
    line = describe_evidence(empty, ranked)[0]
    assert "the same windows picked the best and test it" in line
    chosen = ranked_table(parts, "ppl@128", n_boot=500, chosen={0.2: "fn"})
    assert not chosen["selected_on_test"].any() and (chosen["reference"] == "fn").all()
    row = chosen.set_index("method").loc["flap"]
    assert row["vs_best"] < 1 and chosen.set_index("method").loc["fn", "vs_best"] == 1.0
    line = describe_evidence(empty, chosen)[0]
    assert "against fn, the method chosen on other text" in line and "same windows" not in line
    with pytest.raises(ValueError, match="chosen method 'wanda-sp' at 0.2 was not scored"):
        ranked_table(parts, "ppl@128", n_boot=500, chosen={0.2: "wanda-sp"})
