"""Claims computed by stated rules, on contrived results; the answer's figure and sentences."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

from funcprune import claims
from funcprune.claims import (activity_depth_sentence, comparison_claim, depth_trend, headline_facts, lesion_facts,
                              necessity_claim, network_claims_sentence, not_measured, plain_answer,
                              rank_deficient_sentence, relative_to_baseline, sparsity_claim, stability_claim,
                              versus_facts, zero_shot_facts)

matplotlib.use("Agg")


def test_stable_only_above_the_stated_correlation() -> None:
    assert stability_claim(claims.STABLE_R).holds is True
    assert "stable across" in stability_claim(0.9).text
    low = stability_claim(0.48)
    assert low.holds is False and "not reproducible" in low.text and "0.48" in low.text
    assert "partly" in stability_claim(0.6).text and stability_claim(0.6).holds is False
    assert stability_claim(float("nan")).holds is None


def test_sparse_only_below_the_stated_share() -> None:
    assert sparsity_claim(100, 1536).holds is True
    assert sparsity_claim(400, 1536).holds is False and "not sparse" in sparsity_claim(400, 1536).text


def test_necessary_only_when_the_lesion_test_decides() -> None:
    assert necessity_claim(0.18, 9).holds is False and "not shown" in necessity_claim(0.18, 9).text
    assert necessity_claim(0.001, 9).holds is True
    assert necessity_claim(float("nan"), 0).holds is None


def test_the_introduction_sentence_says_what_the_run_found() -> None:
    text = network_claims_sentence(0.48, 96, 1536)
    assert "sparse" in text and "not reproducible" in text and " stable," not in text


def test_depth_trend_only_when_the_rank_test_decides() -> None:
    layers = np.arange(30)
    assert depth_trend(layers, layers * 2.0 + 1, what="x").holds is True
    assert "falls" in depth_trend(layers, -layers, what="x").text
    flat = depth_trend(layers, np.random.default_rng(0).normal(size=30), what="kurtosis")
    assert flat.holds is False and "no trend" in flat.text
    assert depth_trend([0, 1], [1, 2], what="x").holds is None


def test_chapter_one_does_not_call_a_flat_kurtosis_heavier_tailed() -> None:
    rng = np.random.default_rng(1)
    rows = [{"layer": layer, "kind": kind, "std": 0.1 * (layer + 1), "kurtosis": 5 + rng.normal()}
            for layer in range(30) for kind in ("act", "up")]
    text = activity_depth_sentence(pd.DataFrame(rows))
    assert "rises with depth" in text and "no trend" in text and "heavier" not in text


def test_a_win_only_when_the_paired_test_decides() -> None:
    small = {"estimate": 0.99, "ci_low": 0.97, "ci_high": 1.01, "decided": False}
    assert comparison_claim(small, method="fn-protect", baseline="FLAP").holds is None
    assert "cannot be told apart" in comparison_claim(small, method="A", baseline="B").text
    decided = {"estimate": 2.02, "ci_low": 1.85, "ci_high": 2.21, "decided": True}
    assert "worse than" in comparison_claim(decided, method="A", baseline="B").text


def test_rank_deficient_sentence_says_nothing_wrong_at_zero() -> None:
    assert "warnings" not in rank_deficient_sentence(0, 30) and "below" in rank_deficient_sentence(0, 30)
    assert "1 of the 30 fit," in rank_deficient_sentence(1, 30)
    assert "warnings printed above" in rank_deficient_sentence(3, 30)


def _comparisons() -> pd.DataFrame:
    rows = []
    for ratio, flap, wanda, rnd, rnd_decided in [(0.1, 1.5, 1.4, 0.5, True), (0.2, 2.0, 2.1, 0.2, True),
                                                 (0.3, 2.2, 2.3, 0.9, False)]:
        for base, est, dec in [("flap", flap, True), ("wanda-sp", wanda, True), ("random", rnd, rnd_decided)]:
            rows.append({"ratio": ratio, "method": "fn", "baseline": base, "metric": "ppl@128", "estimate": est,
                         "ci_low": est * 0.9, "ci_high": est * 1.1, "decided": dec})
    return pd.DataFrame(rows)


def test_plain_answer_in_words() -> None:
    labels = {"fn": "FN", "flap": "FLAP", "wanda-sp": "Wanda-sp", "random": "random"}
    text = plain_answer(_comparisons(), dense_ppl=12.34, metric="ppl@128", labels=labels,
                        not_measured=["WikiText-2 perplexity"])
    assert "worse than FLAP at every ratio" in text and "worse than Wanda-sp at every ratio" in text
    assert "better than random at 10 %" in text and "undecided at 30 %" in text
    assert "10, 20 and 30 %" in text and "12.3" in text and "decides 8 of these 9" in text
    assert "Not measured by this run: WikiText-2 perplexity." in text
    assert "no answer" in plain_answer(_comparisons().iloc[:0], dense_ppl=1.0, metric="ppl@128")


def test_headline_facts_state_the_paper_method_against_each_baseline() -> None:
    labels = {"fn": "FN", "flap": "FLAP", "wanda-sp": "Wanda-sp", "random": "random"}
    ranked = pd.DataFrame({"ratio": [0.2, 0.2, 0.3], "rank": [2, 1, 1], "method": ["fn", "flap", "random"]})
    dense = {"perplexity": {"128": {"window_nll": [math.log(10.0), math.log(40.0)]}}}
    comparisons = _comparisons()
    facts = headline_facts(comparisons, ranked, dense, ratio=0.2, metric="ppl@128", methods=["fn", "flap"],
                           labels=labels, not_measured=["speed"])
    assert facts == {
        "h_flap": "2.00x (95 % CI 1.80-2.20, decided by the paired test)",
        "h_random": "0.20x (95 % CI 0.18-0.22, decided by the paired test)",
        "h_wanda_sp": "2.10x (95 % CI 1.89-2.31, decided by the paired test)",
        "h_ratio": "20", "h_best": "FLAP", "h_metric": "ppl@128", "h_dense": "20.0",
        "answer_text": plain_answer(comparisons, dense_ppl=20.0, metric="ppl@128", labels=labels,
                                    not_measured=["speed"])}
    assert facts["answer_text"].endswith("Not measured by this run: speed.")
    at_30 = headline_facts(comparisons, ranked, dense, ratio=0.3, metric="ppl@128", methods=["fn"], labels=labels)
    assert at_30["h_random"] == "0.90x (95 % CI 0.81-0.99, not decided by the paired test)"
    assert at_30["h_best"] == "random"
    alone = headline_facts(comparisons, ranked.iloc[:0], dense, ratio=0.2, metric="ppl@128", methods=["flap"],
                           labels=labels)
    assert alone["h_flap"] == alone["h_random"] == alone["h_wanda_sp"] == "not in this run" and alone["h_best"] == "-"


def test_not_measured_names_the_zero_shot_tier() -> None:
    assert not_measured([], 5)[2] == "zero-shot accuracy of the pruned models"
    assert not_measured([0.2], 5) == ["WikiText-2 perplexity (offline text: not comparable with published numbers)",
                                      "the paper's 7B model", "zero-shot accuracy beyond 5 items per task",
                                      "speed on a GPU"]


def test_zero_shot_facts_call_a_figure_precise_only_below_the_stated_error() -> None:
    zero_shot = {"tasks": {"boolq": {"n": 5}, "piqa": {"n": 7}}, "harness": {"version": "0.4.13"}}
    facts = zero_shot_facts(zero_shot, 0.0123, 5)
    assert facts == {"n_tasks": 2, "zs_limit_text": "the first 5 items of each task", "zs_items": 12,
                     "harness_version": "0.4.13", "dense_mean_acc_se": "0.012",
                     "zs_verdict": "That is precise enough for the accuracy figure below."}
    vague = zero_shot_facts(zero_shot, claims.PRECISE_SE + 0.001, None)
    assert vague["zs_limit_text"] == "every item of each task"
    assert vague["zs_verdict"] == ("That is above 0.02, too imprecise to draw accuracies as findings: zero-shot is "
                                   "shown below as a table with standard errors and chance levels, and no figure "
                                   "(raise zero_shot_limit for more items).")
    assert set(zero_shot_facts(None, None, 5).values()) == {"-"} and len(zero_shot_facts(None, None, 5)) == 6


def test_lesion_facts_by_hand() -> None:
    verdict = {"sentences": ["Harm.", "Specific."], "n_networks": 7}
    assert lesion_facts(verdict, ["Layers 3 and 4.", "Two maps each."]) == {
        "lesion_harm": "Harm.", "lesion_specificity": "Specific.", "lesion_n": "7",
        "lesion_scope": "Layers 3 and 4. Two maps each."}


def test_versus_facts_say_why_nothing_was_measured() -> None:
    from funcprune.decompose import describe_versus
    from funcprune.tables import method_labels

    versus = pd.DataFrame([{"ratio": 0.2, "model": "chosen", "baseline": "flap+ls", "estimate": 0.9, "ci_low": 0.85,
                            "ci_high": 0.95, "decided": True}])
    label = method_labels(["flap+ls"])["flap+ls"]
    assert versus_facts(versus, "flap+ls") == {
        "strongest_label6": label,
        "versus_strongest_text": " ".join(describe_versus(versus, labels=method_labels(["flap+ls"])))}
    assert versus_facts(versus.iloc[:0], "flap+ls")["versus_strongest_text"] == \
        "the strongest variant was not scored at the ratios of this chapter."
    assert versus_facts(None, "flap+ls")["versus_strongest_text"].startswith("not measured here: chapter 5 scored")
    assert versus_facts(None, None) == {"strongest_label6": "not chosen in this run",
                                        "versus_strongest_text": "not measured in this run (no grid points)."}

def _part(key: str, method: str, ratio: float, nll: list[float]) -> dict:
    return {"key": key, "entry": {"method": method, "ratio_requested": ratio},
            "perplexity": {"128": {"window_nll": nll, "tokens_sha256": "same"}}}


def test_relative_to_flap_pools_seeds_and_draws_intervals() -> None:
    from funcprune.figures import EmptyAxisError, plot_relative_to

    rng = np.random.default_rng(0)
    base = rng.normal(3.0, 0.5, 64)
    parts = {"dense": _part("dense", "dense", 0.0, list(base - 0.5)),
             "flap": _part("flap", "flap", 0.2, list(base)),
             "fn": _part("fn", "fn", 0.2, list(base + 0.7 + rng.normal(0, 0.01, 64))),
             "r0": _part("r0", "random", 0.2, list(base + 1.0)), "r1": _part("r1", "random", 0.2, list(base + 2.0))}
    rel = relative_to_baseline(parts, "ppl@128", n_boot=500).set_index("method")
    assert set(rel.index) == {"fn", "random"}
    assert rel.loc["fn", "estimate"] == pytest.approx(math.exp(0.7), rel=0.01) and rel.loc["fn", "decided"]
    assert rel.loc["random", "estimate"] == pytest.approx(math.exp(1.5))  # pooled NLL: one definition
    ax = plot_relative_to(rel.reset_index())
    assert ax.get_yscale() == "log" and ax.get_legend() is not None
    with pytest.raises(EmptyAxisError):
        plot_relative_to(rel.iloc[:0].reset_index())


def test_tables_pool_random_perplexity_as_the_paired_tests_do() -> None:
    from funcprune.tables import pooled_value

    nll = [np.log(10.0), np.log(1000.0)]
    assert pooled_value("ppl", np.exp(nll)) == pytest.approx(math.exp(np.mean(nll)))
    assert pooled_value("mean_acc", [0.2, 0.4]) == pytest.approx(0.3)


def test_an_empty_axis_is_refused_and_a_reference_line_is_not_data() -> None:
    import matplotlib.pyplot as plt

    from funcprune.figures import EmptyAxisError, require_data

    fig, ax = plt.subplots()
    ax.axhline(12.0)
    with pytest.raises(EmptyAxisError, match="0 data series"):
        require_data(ax, what="the 2048-token panel")
    ax.plot([0.1, 0.2], [np.nan, np.nan])
    with pytest.raises(EmptyAxisError):
        require_data(ax)
    ax.plot([0.1, 0.2], [13.0, 15.0])
    assert require_data(ax) is ax
    plt.close(fig)


def test_a_perplexity_panel_with_only_the_dense_line_is_left_out() -> None:
    from funcprune.figures import plot_perplexity, plot_perplexity_panels

    common = dict(seed=None, ratio_basis="total", metric="ppl", stderr=0.1, n=8)
    rows = [dict(key="dense", method="dense", ratio_requested=0.0, ratio_reached=0.0, setting="2048", value=12.0,
                 **common),
            dict(key="fn_r0.2", method="fn", ratio_requested=0.2, ratio_reached=0.2, setting="128", value=30.0,
                 **common)]
    table = pd.DataFrame(rows)
    fig, left_out = plot_perplexity_panels(table, {128: "32 windows of 128 tokens"})
    assert left_out == [2048] and len(fig.axes) == 1 and fig.axes[0].get_title() == "32 windows of 128 tokens"
    assert plot_perplexity(table, 128).get_legend() is not None
    assert plot_perplexity_panels(table[table["method"] == "dense"]) == (None, [2048])


def test_identical_width_lines_are_drawn_as_one() -> None:
    from funcprune.atlas import plot_widths

    widths = pd.DataFrame({"wanda-sp": [10, 8], "magnitude": [10, 8], "fn": [10, 5]}, index=[0, 1])
    fig = plot_widths(widths, original=10)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["wanda-sp = magnitude", "fn", "dense"]
