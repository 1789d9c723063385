"""The decomposition finds a planted selection, allocation or compensation effect, and only that one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from funcprune.decompose import (PATHS, decompose, decomposition_methods, describe_decomposition, equal_footing,
                                 ridge_of, split_parts,
                                 plot_decomposition)
from funcprune.methods import get_method

N_WINDOWS = 40


def _part(name: str, ratio: float, nll: np.ndarray, seed: int | None = None) -> dict:
    key = f"{name}{'' if seed is None else f'-s{seed}'}_r{ratio:.2f}"
    return {"key": key, "entry": {"method": name, "ratio_requested": ratio, "seed": seed},
            "perplexity": {"128": {"window_nll": nll.tolist(), "tokens_sha256": "same-windows"}}}


def _axes(name: str) -> tuple[str, str, str]:
    """(criterion, widths, compensation) of a grid point: what the planted NLL depends on."""
    m = get_method(name)
    widths = m.widths_from or {"global": m.criterion.name, "uniform": "uniform"}[m.allocation.name]
    if widths == "random":
        widths = "uniform"
    return m.criterion.name, widths, str(m.compensation and m.compensation.name)


def _run(effect: str, size: float = 0.4, ratio: float = 0.2) -> dict:
    """Parts of every model the decomposition needs, with NLL = base + ``size`` where the planted axis is FN's."""
    rng = np.random.default_rng(0)
    base = 3.0 + rng.normal(0, 0.3, N_WINDOWS)
    parts = {}
    for name in decomposition_methods() + ["fn", "flap", "random"]:
        criterion, widths, comp = _axes(name)
        planted = {"selection": criterion == "fn", "allocation": widths == "fn",
                   "compensation": comp == "None"}[effect]
        seeds = [0, 1] if get_method(name).seeded else [None]
        for s in seeds:
            noise = rng.normal(0, 0.01, N_WINDOWS)
            parts[f"{name}-{s}"] = _part(get_method(name).name, ratio, base + size * planted + noise, s)
    return parts


@pytest.mark.parametrize("effect", ["selection", "allocation", "compensation"])
def test_a_planted_effect_is_found_in_both_orders_and_nothing_else(effect: str) -> None:
    table = decompose(_run(effect), n_boot=2000)
    fn_flap = table[table["gap"] == "fn/flap"]
    assert set(fn_flap["order"]) == set(PATHS[("fn", "flap")])
    for _, steps in fn_flap.groupby("order"):
        # the factors of one order multiply to the whole gap
        assert math.prod(steps["factor"]) == pytest.approx(steps["gap_total"].iloc[0], rel=1e-9)
        planted = steps[steps["axis"] == effect]
        others = steps[steps["axis"] != effect]
        assert planted["factor"].iloc[0] == pytest.approx(math.exp(0.4), rel=0.02)
        assert planted["decided"].all()
        assert np.allclose(others["factor"], 1.0, atol=0.02)
    sentences = describe_decomposition(table)
    assert f"the {effect} is the main part of the gap between fn and flap in both orders" in " ".join(sentences)


def test_an_interaction_is_not_called_a_main_part() -> None:
    """When the effect needs two axes together, the orders disagree and no axis is named."""
    parts = _run("selection")
    for p in parts.values():  # FN's channels hurt only in FN's widths: an interaction
        criterion, widths, _ = _axes(p["entry"]["method"])
        nll = np.asarray(p["perplexity"]["128"]["window_nll"])
        if criterion == "fn" and widths != "fn":
            p["perplexity"]["128"]["window_nll"] = (nll - 0.4).tolist()
    table = decompose(parts, n_boot=2000)
    text = " ".join(describe_decomposition(table))
    assert "no single axis is the decided main part of the gap between fn and flap" in text


def test_missing_models_leave_their_path_out_and_equal_footing_rows() -> None:
    parts = {k: v for k, v in _run("selection").items() if not k.startswith("fn+static")}
    table = decompose(parts, n_boot=500)
    assert "compensation first" not in set(table.loc[table["gap"] == "fn/flap", "order"])
    assert "selection first" in set(table.loc[table["gap"] == "fn/flap", "order"])
    pairs = equal_footing(parts, n_boot=500)
    assert not ((pairs["model"] == "fn+static") & (pairs["baseline"] == "flap")).any()
    row = pairs[(pairs["model"] == "fn") & (pairs["baseline"] == "flap+none")].iloc[0]
    assert row["estimate"] == pytest.approx(math.exp(0.4), rel=0.02) and row["better"] == "baseline"


def test_plot_and_empty_table() -> None:
    import matplotlib

    matplotlib.use("Agg")
    table = decompose(_run("allocation"), n_boot=200)
    ax = plot_decomposition(table)
    assert len(ax.get_yticks()) == len(table)
    assert describe_decomposition(table.iloc[0:0]) == []
    with pytest.raises(ValueError, match="empty"):
        plot_decomposition(table.iloc[0:0])


def test_decomposition_methods_are_valid_grid_points_with_the_ridge_named() -> None:
    names = decomposition_methods(ridge=0.1)
    assert "fn+ls0.1" in names and "flap+ls0.1" in names and "fn+ls" not in names
    for name in names:
        get_method(name)  # raises on a bad point


def test_choose_ridge_picks_the_lowest_validation_perplexity() -> None:
    import torch

    from funcprune.compensation import down_input_moments
    from funcprune.run.grid import choose_ridge
    from funcprune.methods import make_plan
    from tiny_models import TEXTS, CharTokenizer, tiny_model

    model = tiny_model("llama")
    tok = CharTokenizer()
    moments = down_input_moments(model, tok, [t for t in TEXTS if t] * 3)
    plan = make_plan("magnitude", model, 0.1, protected_layers=[0])
    windows = torch.randint(1, 97, (4, 16), generator=torch.Generator().manual_seed(0))
    table, ridge = choose_ridge(model, plan, moments, windows, grid=[0.0, 0.1, 100.0])
    assert table["chosen"].sum() == 1 and ridge == table.loc[table["ppl"].idxmin(), "ridge"]
    with pytest.raises(ValueError, match="at least one value"):
        choose_ridge(model, plan, moments, windows, grid=[])


def test_split_parts_and_ridge_of() -> None:
    parts = _run("selection")
    parts["dense"] = _part("dense", 0.0, np.zeros(N_WINDOWS))
    parts["ls"] = _part("fn+ls0.1", 0.2, np.zeros(N_WINDOWS))
    parts["ls2"] = _part("flap+ls0.1", 0.2, np.zeros(N_WINDOWS))
    headline, grid = split_parts(parts)
    assert {p["entry"]["method"] for p in headline.values()} <= {"dense", "fn", "flap", "random", "fn-bias",
                                                                  "wanda-sp"}
    assert "fn@flap+static" in {p["entry"]["method"] for p in grid.values()}
    with pytest.raises(ValueError, match="ridges"):
        ridge_of(parts)
    del parts["ls"], parts["ls2"]
    parts = {k: v for k, v in parts.items() if "ls" not in v["entry"]["method"].partition("+")[2]}
    assert ridge_of(parts) is None
    parts["ls"] = _part("fn+ls0.1", 0.2, np.zeros(N_WINDOWS))
    assert ridge_of(parts) == 0.1


def test_choose_baseline_takes_the_lowest_validation_perplexity_and_reuses_known_values() -> None:
    import torch

    from funcprune.compensation import down_input_moments
    from funcprune.run.grid import choose_baseline
    from funcprune.scoring import channel_statistics
    from tiny_models import TEXTS, CharTokenizer, tiny_model

    model, tok = tiny_model("llama"), CharTokenizer()
    texts = [t for t in TEXTS if t] * 3
    stats = channel_statistics(model, tok, texts, progress=False)
    moments = down_input_moments(model, tok, texts)
    windows = torch.randint(1, 97, (4, 16), generator=torch.Generator().manual_seed(0))
    table, best = choose_baseline(model, windows, 0.1, stats=stats, moments=moments, ridge=0.1,
                                  candidates=("flap", "flap+ls", "wanda-sp"), known={"flap+ls0.1": 0.5},
                                  protected_layers=[0])
    assert list(table["method"]) == ["flap", "flap+ls0.1", "wanda-sp"]
    assert best == "flap+ls0.1" and table["chosen"].sum() == 1  # the planted known value is the lowest
    assert (table.loc[table["method"] != "flap+ls0.1", "ppl"] > 1).all()


def test_versus_strongest_calls_a_win_only_when_decided() -> None:
    from funcprune.decompose import describe_versus, versus_strongest

    parts = _run("selection")  # FN's channels cost 0.4 nats per window
    table = versus_strongest(parts, "flap", n_boot=1000)
    assert list(table["model"]) == ["fn", "fn-bias", "fn+ls"]
    text = describe_versus(table)
    assert all("higher: the paired test decides it" in t for t in text)
    same = _run("allocation")  # FN's widths hurt, not its channels: fn+ls keeps FN's widths
    flat = {k: v for k, v in same.items()}
    for p in flat.values():  # erase every effect: all models equal up to noise
        p["perplexity"]["128"]["window_nll"] = (np.asarray(p["perplexity"]["128"]["window_nll"]) * 0
                                                + 3.0 + np.random.default_rng(len(p["key"])).normal(0, 0.01, N_WINDOWS)
                                                ).tolist()
    text = describe_versus(versus_strongest(flat, "flap", n_boot=1000))
    assert any("cannot tell them apart" in t for t in text)


def test_gap_sentences_for_one_ratio_or_a_plain_absence() -> None:
    from funcprune.decompose import gap_sentences

    table = decompose(_run("compensation"), n_boot=500)
    text = gap_sentences(table, 0.2)
    assert text.startswith("At 20 %, fn's perplexity") and "compensation is the main part" in text
    assert "did not take the gap between fn and flap apart at 30 %" in gap_sentences(table, 0.3)


def test_keys_at_takes_the_first_seed_and_skips_missing_methods() -> None:
    from funcprune.decompose import keys_at

    parts = _run("selection")
    keys = keys_at(parts, ["fn", "random", "magnitude", "flap"], 0.2)
    assert [parts[k]["entry"]["method"] for k in keys] == ["fn", "random", "flap"]
    assert parts[keys[1]]["entry"]["seed"] == 0
    assert keys_at(parts, ["fn"], 0.3) == []


def test_decomposition_facts_by_hand_and_for_a_run_without_grid_points() -> None:
    from funcprune.decompose import decomposition_facts, gap_sentences

    table = decompose(_run("compensation"), n_boot=500)
    facts = decomposition_facts(table, 0.2, ridge=0.1, labels={"fn": "FN"})
    assert facts == {"decomp_answer": gap_sentences(table, 0.2, labels={"fn": "FN"}), "ls_ridge": "0.1",
                     "decomp_text": " ".join(describe_decomposition(table, labels={"fn": "FN"}))}
    empty = decomposition_facts(table.iloc[:0], 0.2, ridge=None)
    assert empty["ls_ridge"] == "(not built in this run)"
    assert empty["decomp_text"].startswith("This run built no grid points (the profile's decompose_ratios is empty)")
    assert empty["decomp_answer"].startswith("This run did not take the gap between fn and flap apart at 20 %")
