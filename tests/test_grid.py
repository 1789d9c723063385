"""Stage-4 choices of the decomposition: the baselines with their authors' calibration, on real offline text."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from funcprune.run.grid import describe_native, native_arm, native_text, native_windows


def test_native_windows_are_random_positions_of_the_calibration_stream(default_model) -> None:
    _, tok = default_model
    w = native_windows(tok, "wiki", 5, seq_len=32, seed=1)
    assert w.shape == (5, 32) and w.dtype == torch.long
    assert torch.equal(w, native_windows(tok, "wiki", 5, seq_len=32, seed=1))
    assert not torch.equal(w, native_windows(tok, "wiki", 5, seq_len=32, seed=2))
    with pytest.raises(ValueError, match="n_windows 0"):
        native_windows(tok, "wiki", 0)


def test_native_arm_pairs_with_the_shared_models_on_the_same_windows(default_model) -> None:
    from funcprune.ablation import window_nll
    from funcprune.heldout import heldout_windows, ids_sha256
    from funcprune.methods import build_pruned, make_plan
    from funcprune.scoring import channel_statistics

    lm, tok = default_model
    test = heldout_windows(tok, "wiki", "test", seq_len=32, n_windows=3)
    stats = channel_statistics(lm, tok, ["The cat sat on the mat. " * 20], progress=False)
    parts = {}
    for method in ("flap", "fn"):
        if method == "fn":  # any plan stands in for FN's here: only its windows' NLL is read
            plan = make_plan("magnitude", lm, 0.05)
            model = build_pruned("magnitude", lm, plan)
        else:
            plan = make_plan(method, lm, 0.05, stats=stats)
            model = build_pruned(method, lm, plan, stats=stats)
        parts[method] = {"key": f"{method}_r0.05", "entry": {"method": method, "ratio_requested": 0.05},
                         "perplexity": {"32": {"window_nll": window_nll(model, test).tolist(),
                                               "tokens_sha256": ids_sha256(test.reshape(-1).numpy())}}}
    table = native_arm(lm, tok, parts, [0.05], test_windows=test, setting="32", n_windows={"flap": 4})
    assert list(table["method"]) == ["flap"] and table["windows"].iloc[0] == 4 and table["tokens"].iloc[0] == 512
    row = table.iloc[0]
    assert row["ppl_shared"] == pytest.approx(np.exp(np.mean(parts["flap"]["perplexity"]["32"]["window_nll"])))
    assert row["estimate"] == pytest.approx(row["ppl_native"] / row["ppl_shared"], rel=1e-6)
    assert "fn_vs_native" in table.columns
    with pytest.raises(ValueError, match="not those"):
        native_arm(lm, tok, parts, [0.05], test_windows=test[:, :31].contiguous(), setting="32",
                   n_windows={"flap": 4})


def test_describe_native_states_decisions_and_ranking_changes() -> None:
    base = {"method": "flap", "ratio": 0.2, "corpus": "wiki", "windows": 1024, "tokens": 131072, "ppl_native": 20.0,
            "ppl_shared": 25.0, "estimate": 0.8, "ci_low": 0.7, "ci_high": 0.9, "p_value": 0.001, "decided": True,
            "fn_vs_shared": 1.5, "fn_vs_shared_better": "baseline", "fn_vs_native": 1.8, "fn_vs_native_ci_low": 1.5,
            "fn_vs_native_ci_high": 2.1, "fn_vs_native_better": "baseline"}
    flipped = dict(base, fn_vs_native_better="undecided", decided=False)
    text = describe_native(pd.DataFrame([base, flipped]), labels={"flap": "FLAP"})
    assert "0.80 times" in text[0] and "lower, decided" in text[0] and "does not change" in text[0]
    assert "not decided" in text[1] and "changes with the baseline's calibration" in text[1]
    assert "(1,024 windows of 128 tokens of wiki, 131,072 tokens)" in text[0]  # the authors' count: nothing to add
    fewer = describe_native(pd.DataFrame([dict(base, windows=64, tokens=8192)]), labels={"flap": "FLAP"})[0]
    assert "(64 windows of 128 tokens of wiki, 8,192 tokens; its authors' code takes 1,024 windows)" in fewer


def test_native_text_joins_the_sentences_or_says_why_there_are_none() -> None:
    row = {"method": "flap", "ratio": 0.2, "corpus": "wiki", "windows": 2, "tokens": 256, "ppl_native": 20.0,
           "ppl_shared": 25.0, "estimate": 0.8, "ci_low": 0.7, "ci_high": 0.9, "p_value": 0.001, "decided": True}
    table = pd.DataFrame([row, dict(row, ratio=0.3)])
    assert native_text(table, labels={"flap": "FLAP"}) == " ".join(describe_native(table, labels={"flap": "FLAP"}))
    assert native_text(table.iloc[:0]) == "Neither baseline was in this run at the ratios asked for."
    assert native_text(None) == "This profile does not run them (native_flap_windows and native_wanda_windows are 0)."

def test_the_chosen_criterion_is_compared_with_a_scored_model_on_the_same_windows() -> None:
    from funcprune.ablation import versus_part
    from funcprune.heldout import ids_sha256

    windows = torch.arange(40).reshape(4, 10)
    rng = np.random.default_rng(0)
    base = 3 + rng.normal(0, 0.2, 4)

    def part(method: str, seed: int | None, nll: np.ndarray) -> dict:
        return {"key": f"{method}-{seed}", "entry": {"method": method, "ratio_requested": 0.2, "seed": seed},
                "perplexity": {"10": {"window_nll": nll.tolist(), "tokens_sha256": ids_sha256(windows.reshape(-1).numpy())}}}

    parts = {"a": part("flap+ls0.1", None, base + 0.1), "b": part("random", 0, base + 1), "c": part("random", 1, base + 2)}
    final = pd.DataFrame([{"ratio": 0.2, "window_nll": base.tolist()}, {"ratio": 0.3, "window_nll": base.tolist()}])
    out = versus_part(final, parts, "flap+ls0.1", tokenizer=None, windows=windows, setting="10", n_boot=500)
    assert list(out["ratio"]) == [0.2]  # no flap+ls model at 0.3
    assert out["estimate"].iloc[0] == pytest.approx(np.exp(-0.1))
    pooled = versus_part(final, parts, "random", tokenizer=None, windows=windows, setting="10", n_boot=500)
    assert pooled["ppl_baseline"].iloc[0] == pytest.approx(np.exp((base + 1.5).mean()))  # seeds pooled
    with pytest.raises(ValueError, match="not those"):
        versus_part(final, parts, "random", tokenizer=None, windows=windows + 1, setting="10")


def test_ridge_sentence_warns_at_the_edge_of_the_grid() -> None:
    from funcprune.run.grid import ridge_sentence

    table = pd.DataFrame({"ridge": [0.1, 1.0, 10.0], "ppl": [50.0, 45.0, 44.0], "chosen": [False, False, True]})
    assert "largest value tried" in ridge_sentence(table)
    inner = table.assign(chosen=[False, True, False])
    text = ridge_sentence(inner)
    assert text.startswith("The relative ridge 1 gave the lowest validation perplexity (45.00") and "beyond" not in text


def test_describe_literature_says_when_the_protocols_coincide() -> None:
    from funcprune.run.grid import describe_literature

    table = pd.DataFrame({"method": ["dense", "FN", "FLAP"], "ppl": [30.0, 60.0, 29.0],
                          "ppl (book's windows)": [30.0, 60.0, 29.0], "estimate": [1.03, 2.07, np.nan],
                          "ci_low": [1.0, 1.9, np.nan], "ci_high": [1.1, 2.2, np.nan],
                          "decided": [False, True, np.nan]})
    text = describe_literature(table)
    assert "FN: 2.07 times" in text and "decided by the paired test" in text and "no BOS token" in text
    other = table.assign(**{"ppl (book's windows)": [15.0, 30.0, 14.5]})
    assert "2.00 to 2.00 times the book's" in describe_literature(other)
