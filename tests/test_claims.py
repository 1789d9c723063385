"""Claims computed by stated rules, on contrived results; the answer's figure and sentences."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

from funcprune import claims
from funcprune.claims import (activity_depth_sentence, comparison_claim, depth_trend, necessity_claim,
                              network_claims_sentence, plain_answer, rank_deficient_sentence,
                              relative_to_baseline, sparsity_claim, stability_claim)

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
