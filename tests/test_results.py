"""Stage 5: one evaluation protocol for the dense and every pruned model, the results table, comparisons.

A tiny random Llama and a byte-level BPE tokenizer trained here (offline, in a second) stand in for the
real model; the held-out text and the zero-shot items are the real offline assets.
"""

from __future__ import annotations

import json
from importlib.metadata import version
import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import transformers as tf

from funcprune import capture_activations, figures, heldout, tables
from funcprune.run import results
from funcprune.data import dataset_info, load_texts
from funcprune.evaluate import count_parameters
from funcprune.heldout import evaluation_parts, evaluation_stream, select_windows
from funcprune.run.pipeline import prune_all, read_index, rebuild_pruned
from funcprune.reference import reference_numbers
from funcprune.run.results import EvaluationProtocol, evaluate_run, load_results
from funcprune.tables import (DENSE_KEY, TABLE_COLUMNS, aggregate_seeds, significant_differences,
                              validate_results_table)
from funcprune.tasks import ALL_TASKS
from funcprune.book.workflow import REPO_ROOT, load_profile, notebook_parameters

matplotlib.use("Agg")

SEQ_LENS = (32, 256)  # 256 exceeds the tiny model's 128 positions: clamped
MAX_TOKENS = 512
TASKS = ("arc_easy", "winogrande")
LIMIT = 2
PROTOCOL = dict(eval_dataset="wiki", ppl_seq_lens=SEQ_LENS, eval_max_tokens=MAX_TOKENS, zero_shot_tasks=TASKS,
                zero_shot_limit=LIMIT)


def evaluate(run_dir: Path, dense_dir: Path, **changed: Any) -> pd.DataFrame:
    """``evaluate_run`` under the test protocol, with ``changed`` protocol settings."""
    return evaluate_run(run_dir, EvaluationProtocol(**{**PROTOCOL, **changed}), model=str(dense_dir), batch_size=8,
                        progress=False)


def tiny_tokenizer(texts: list[str]) -> tf.PreTrainedTokenizerFast:
    """A byte-level BPE (any text encodes; offsets available), trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                      pad_token="<|endoftext|>")


def tiny_llama(vocab: int) -> torch.nn.Module:
    """Seven layers, so the default protection (0, 1, 2, 5, 6) leaves two prunable ones."""
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=7,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                            bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run directory as stages 1 and 4 leave it (manifest, 3 pruned checkpoints), then evaluated once."""
    root = tmp_path_factory.mktemp("stage5")
    calib = load_texts("wiki", "calibration", n_texts=3)
    tok = tiny_tokenizer([t.text for t in load_texts("wiki", "calibration", n_texts=30)])
    model = tiny_llama(len(tok))
    dense_dir = root / "dense"
    model.save_pretrained(dense_dir)
    tok.save_pretrained(dense_dir)
    run_dir = root / "run"
    capture_activations(model, tok, [t.text for t in calib], run_dir / "activations", text_ids=[t.id for t in calib],
                        dataset=dataset_info("wiki", "calibration", calib), max_tokens=32, progress=False)
    prune_all(str(dense_dir), run_dir, ["random", "magnitude"], [0.05], seeds=[0, 1], progress=False)
    table = evaluate(run_dir, dense_dir)
    return {"run_dir": run_dir, "dense_dir": dense_dir, "table": table, "tok": tok, "calib": calib}


# -- the results files ----------------------------------------------------------------------------------
def test_results_files_hold_every_model_and_setting(run: dict) -> None:
    run_dir, table = run["run_dir"], run["table"]
    assert list(table.columns) == list(TABLE_COLUMNS)
    index = read_index(run_dir)
    assert list(dict.fromkeys(table["key"])) == [DENSE_KEY, *index["key"]]  # dense first, then the index order
    pd.testing.assert_frame_equal(load_results(run_dir), table)  # the CSV round-trips exactly

    saved = json.loads((run_dir / "results" / "results.json").read_text())
    protocol = saved["protocol"]
    assert protocol["eval_dataset"]["split"] == "evaluation"
    assert protocol["eval_dataset"]["sha256"] == dataset_info("wiki", "evaluation", [])["sha256"]
    assert protocol["ppl_seq_lens"] == list(SEQ_LENS) and protocol["eval_max_tokens"] == MAX_TOKENS
    assert protocol["zero_shot"]["harness_version"] == "0.4.13" and protocol["zero_shot"]["limit"] == LIMIT
    assert saved["environment"]["packages"]["torch"] == version("torch")
    assert saved["dense_model"]["path"] == str(run["dense_dir"].resolve())
    assert set(saved["models"]) == set(table["key"])

    # efficiency agrees with the pruning index and with a fresh count on the dense model
    params = table[table["metric"] == "params_total"].set_index("key")["value"]
    assert params[DENSE_KEY] == count_parameters(tiny_llama(len(run["tok"])))["total"]
    for _, entry in index.iterrows():
        assert params[entry["key"]] == entry["params_total_after"] < params[DENSE_KEY]
    rel = table[table["metric"] == "params_total_rel"].set_index("key")["value"]
    assert rel[DENSE_KEY] == 1.0
    assert rel.drop(DENSE_KEY).round(12).tolist() == (params.drop(DENSE_KEY) / params[DENSE_KEY]).round(12).tolist()


def test_dense_and_pruned_models_share_one_protocol(run: dict) -> None:
    table, run_dir = run["table"], run["run_dir"]
    pairs = {k: set(zip(g["metric"], g["setting"], g["n"])) for k, g in table.groupby("key")}
    assert len({frozenset(p) for p in pairs.values()}) == 1  # same metrics, settings and sample sizes
    parts = json.loads((run_dir / "results" / "results.json").read_text())["models"]
    for setting in ("32", "256"):
        windows = {k: (p["perplexity"][setting]["tokens_sha256"], tuple(p["perplexity"][setting]["window_starts"]))
                   for k, p in parts.items()}
        assert len(set(windows.values())) == 1, setting
    clamped = parts[DENSE_KEY]["perplexity"]["256"]
    assert clamped["seq_len"] == 128 and clamped["seq_len_clamped"] and clamped["n_windows"] == MAX_TOKENS // 128
    assert parts[DENSE_KEY]["perplexity"]["32"]["n_windows"] == MAX_TOKENS // 32
    acc = table[table["metric"] == "acc"]
    assert set(acc["setting"]) == set(TASKS) and (acc["n"] == LIMIT).all()


def test_dense_perplexity_equals_a_direct_computation(run: dict) -> None:
    """Ground truth: score the recorded windows by hand with the dense model."""
    model = tf.AutoModelForCausalLM.from_pretrained(run["dense_dir"]).eval()
    stream = evaluation_stream(run["tok"], "wiki")
    starts = select_windows(stream.n_tokens, 32, MAX_TOKENS)
    nlls = []
    with torch.no_grad():
        for s in starts:
            window = torch.from_numpy(stream.ids[s:s + 32])
            logits = model(input_ids=window[None]).logits[0]
            nlls.append(F.cross_entropy(logits[:-1].double(), window[1:]).item())
    rows = run["table"].query("key == @DENSE_KEY and setting == '32'").set_index("metric")
    assert rows.loc["nll", "value"] == pytest.approx(np.mean(nlls), rel=1e-6)
    assert rows.loc["ppl", "value"] == pytest.approx(math.exp(np.mean(nlls)), rel=1e-6)
    assert rows.loc["nll", "stderr"] == pytest.approx(np.std(nlls, ddof=1) / math.sqrt(len(nlls)), rel=1e-5)


# -- resume -----------------------------------------------------------------------------------------------
def test_a_second_call_reuses_every_finished_model(run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("a finished model was evaluated again")

    monkeypatch.setattr(results, "_evaluate_model", forbidden)
    again = evaluate(run["run_dir"], run["dense_dir"])
    pd.testing.assert_frame_equal(again, run["table"])


def test_an_interrupted_run_continues_with_the_missing_models(run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = run["run_dir"]
    missing = read_index(run_dir)["key"].iloc[-1]
    # interrupted between the part and its record: the record is written last, so the part is not trusted
    (run_dir / "results" / "parts" / f"{missing}.record.json").unlink()
    evaluated = []
    real = results._evaluate_model

    def spy(lm, tokenizer, stream, settings, progress):
        evaluated.append(lm.source["name"])
        return real(lm, tokenizer, stream, settings, progress)

    monkeypatch.setattr(results, "_evaluate_model", spy)
    again = evaluate(run_dir, run["dense_dir"])
    assert evaluated == [missing]
    pd.testing.assert_frame_equal(again, run["table"])  # deterministic: the same numbers


def test_a_changed_protocol_is_not_served_from_the_cache(run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    class Recomputed(Exception):
        pass

    def stop(*args, **kwargs):
        raise Recomputed

    monkeypatch.setattr(results, "_evaluate_model", stop)
    with pytest.raises(Recomputed):
        evaluate(run["run_dir"], run["dense_dir"], eval_max_tokens=256)
    with pytest.raises(Recomputed):
        evaluate(run["run_dir"], run["dense_dir"], zero_shot_limit=3)


def test_a_tampered_part_is_named_and_evaluated_again(run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = run["run_dir"]
    key = read_index(run_dir)["key"].iloc[0]
    path = run_dir / "results" / "parts" / f"{key}.json"
    part = json.loads(path.read_text())
    assert part["sha256"] == results._part_digest(part)
    part["perplexity"]["32"]["window_nll"][0] += 0.5  # an edit that keeps the JSON valid
    path.write_text(json.dumps(part))
    evaluated = []
    real = results._evaluate_model
    monkeypatch.setattr(results, "_evaluate_model",
                        lambda lm, *a, **k: evaluated.append(lm.source["name"]) or real(lm, *a, **k))
    with pytest.warns(UserWarning, match=f"building results of this model again: .*{key}.json: has "
                                         "(changed since it was written|[0-9]+ bytes where)"):
        again = evaluate(run_dir, run["dense_dir"])
    assert evaluated == [key]
    pd.testing.assert_frame_equal(again, run["table"])


def test_per_window_and_per_item_records_and_comparisons(run: dict) -> None:
    from funcprune.compare import compare_models, item_correctness

    run_dir = run["run_dir"]
    parts = json.loads((run_dir / "results" / "results.json").read_text())["models"]
    for key, part in parts.items():
        assert len(part["perplexity"]["32"]["window_nll"]) == MAX_TOKENS // 32
        items = item_correctness(part)
        assert set(items) == set(TASKS) and all(len(v[1]) == LIMIT for v in items.values())
        for task, (_, correct) in items.items():  # the items reproduce the harness's accuracy
            assert correct.mean() == pytest.approx(part["zero_shot"]["tasks"][task]["acc"])
    # the headline file exists (no functional-network model in this small run: no rows) ...
    headline = pd.read_csv(run_dir / "results" / "comparisons.csv")
    assert {"ratio", "method", "baseline", "metric", "estimate", "ci_low", "ci_high", "p_value"} <= set(headline)
    # ... and any two models compare on their shared windows and items
    r = compare_models([parts["magnitude_r0.05"]], [parts["random-s0_r0.05"], parts["random-s1_r0.05"]], "ppl@32")
    assert r["n"] == MAX_TOKENS // 32 and r["ci_low"] <= r["estimate"] <= r["ci_high"]
    same = compare_models([parts[DENSE_KEY]], [parts[DENSE_KEY]], "acc")
    assert same["estimate"] == 0 and not same["decided"] and same["n"] == LIMIT * len(TASKS)


def test_a_tiered_protocol_screens_the_other_ratios(run: dict, tmp_path: Path) -> None:
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(run["run_dir"], run_dir)
    table = evaluate(run_dir, run["dense_dir"], eval_max_tokens=[512, 256], full_ratios=[0.2])
    pairs = {k: set(zip(g["metric"], g["setting"])) for k, g in table.groupby("key")}
    assert ("ppl", "256") in pairs[DENSE_KEY] and ("acc", "arc_easy") in pairs[DENSE_KEY]
    for key, p in pairs.items():
        if key != DENSE_KEY:  # screened: the shortest window only, no zero-shot
            assert {s for m, s in p if m == "ppl"} == {"32"} and not any(m == "acc" for m, _ in p)
    dense = table.query("key == @DENSE_KEY and metric == 'ppl'").set_index("setting")["n"]
    assert dense["32"] == 512 // 32 and dense["256"] == 256 // 128  # one budget per window length
    with pytest.raises(ValueError, match="one per window length"):
        EvaluationProtocol(**{**PROTOCOL, "eval_max_tokens": [512]})


@pytest.mark.parametrize("changed, match", [
    ({"ppl_seq_lens": [32, 32]}, r"ppl_seq_lens must be distinct ints >= 2, got \[32, 32\]"),
    ({"ppl_seq_lens": [1]}, "ppl_seq_lens must be distinct ints >= 2"),
    ({"zero_shot_tasks": ["mmlu"]}, r"unknown zero-shot task\(s\) \['mmlu'\]; accepted: \['boolq'"),
    ({"eval_max_tokens": 1}, "eval_max_tokens must be ints >= 2 or None"),
])
def test_a_bad_protocol_is_refused_when_it_is_made(changed: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EvaluationProtocol(**{**PROTOCOL, **changed})
    protocol = EvaluationProtocol(**PROTOCOL, full_ratios=(0.2,))
    assert protocol.full_ratios == [0.2] and protocol.budgets == [MAX_TOKENS] * len(SEQ_LENS)


# -- held-out text ------------------------------------------------------------------------------------------
def test_perplexity_windows_never_touch_calibration_text(run: dict) -> None:
    run_dir = run["run_dir"]
    saved = json.loads((run_dir / "results" / "results.json").read_text())
    manifest = json.loads((run_dir / "activations" / "manifest.json").read_text())
    calibration = set(manifest["text_ids"])
    assert calibration == {t.id for t in run["calib"]}
    evaluation = set(saved["eval_text_ids"])
    parts = evaluation_parts(load_texts("wiki", "evaluation"))
    assert evaluation == {t.id for t in parts["test"]}  # reports use the test part of the held-out articles
    assert saved["protocol"]["eval_dataset"]["part"] == "test"
    assert not calibration & evaluation
    for key, part in saved["models"].items():
        for setting, p in part["perplexity"].items():
            assert p["text_ids"] and set(p["text_ids"]) <= evaluation, (key, setting)
    assert saved["disjointness"]["checked"] and saved["disjointness"]["overlap"] == []


def test_calibration_overlap_is_refused(run: dict, tmp_path: Path) -> None:
    bad = tmp_path / "run"
    (bad / "activations").mkdir(parents=True)
    manifest = json.loads((run["run_dir"] / "activations" / "manifest.json").read_text())
    leaked = load_texts("wiki", "evaluation", n_texts=1)[0].id
    manifest["text_ids"] = manifest["dataset"]["ids"] = [*manifest["text_ids"], leaked]
    (bad / "activations" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=f"held-out text ids \\['{leaked}'\\].*calibration"):
        evaluate(bad, run["dense_dir"])


def test_held_out_articles_split_into_disjoint_validation_and_test_parts() -> None:
    held_out = load_texts("wiki", "evaluation")
    parts = evaluation_parts(held_out)
    val, test = ({t.id for t in parts[k]} for k in ("validation", "test"))
    assert not val & test and val | test == {t.id for t in held_out}
    assert abs(len(val) - len(test)) <= 1
    assert [t.id for t in parts["test"]] == [t.id for t in held_out if t.id in test]  # file order kept
    assert evaluation_parts(list(reversed(held_out)))["test"][::-1] == parts["test"]  # depends on ids only
    with pytest.raises(ValueError, match=r"unknown held-out part 'dev'; accepted: \['test', 'validation', 'all'\]"):
        evaluation_stream(None, "wiki", "dev")


def test_the_stream_leaves_bos_to_the_windows() -> None:
    from test_evaluate import bpe_tokenizer

    for adds_bos in (True, False):
        tok = bpe_tokenizer(adds_bos)
        stream = evaluation_stream(tok, "wiki", "validation")
        bos = tok.convert_tokens_to_ids("<s>")
        assert stream.bos_token_id == (bos if adds_bos else None)
        assert stream.part == "validation" and not (stream.ids == bos).any()


def test_perplexity_sanity_flags_short_windows_far_above_long_ones() -> None:
    def part(short: float, long: float) -> dict:
        return {"perplexity": {"128": {"seq_len": 128, "ppl": short}, "2048": {"seq_len": 2048, "ppl": long}}}

    ok = results.perplexity_sanity(part(15.4, 10.2))
    assert not ok["flagged"] and ok["ratio"] == pytest.approx(15.4 / 10.2) and (ok["short"], ok["long"]) == (128, 2048)
    bad = results.perplexity_sanity(part(157.0, 12.2))
    assert bad["flagged"] and "BOS" in bad["message"] and "12.87x" in bad["message"]
    assert not results.perplexity_sanity({"perplexity": {"64": {"seq_len": 64, "ppl": 9.0}}})["flagged"]


def test_windows_are_spread_over_the_stream() -> None:
    assert select_windows(1000, 100, None) == list(range(0, 1000, 100))
    assert select_windows(1000, 100, 300) == [0, 300, 600]
    assert select_windows(1000, 100, 10_000) == list(range(0, 1000, 100))
    assert select_windows(1000, 100, 300, span=99) == [0, 297, 594]  # BOS in front: 99 tokens of text each
    with pytest.raises(ValueError, match="eval_max_tokens"):
        select_windows(1000, 100, 99)
    with pytest.raises(ValueError, match="no perplexity window"):
        select_windows(50, 100, None)


# -- the schema check ------------------------------------------------------------------------------------
def _broken(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    t = table.copy()
    pruned = t["key"] != DENSE_KEY
    first_acc = t.index[(t["metric"] == "acc") & pruned][0]
    cases = {
        "missing columns": t.drop(columns=["stderr"]),
        "duplicated": pd.concat([t, t.iloc[[0]]], ignore_index=True),
        "no dense model": t[~(t["key"] == DENSE_KEY)],
        "accuracies outside": t.assign(value=np.where(t.index == first_acc, 1.5, t["value"])),
        "ppl and nll disagree": t.assign(value=np.where((t["metric"] == "ppl") & pruned, t["value"] * 1.01,
                                                        t["value"])),
        "not measured like the dense model": t.drop(index=first_acc),
        "negative or infinite stderr": t.assign(stderr=np.where(t.index == first_acc, -0.1, t["stderr"])),
        "unknown metrics": t.assign(metric=np.where(t.index == first_acc, "f1", t["metric"])),
        "n missing": t.assign(n=pd.array([0 if i == first_acc else v for i, v in zip(t.index, t["n"])], dtype="Int64")),
        "outside \\[0, 1\\)": t.assign(ratio_reached=np.where(pruned, 1.2, t["ratio_reached"])),
        "non-finite": t.assign(value=np.where(t.index == first_acc + 1, np.nan, t["value"])),
    }
    return cases


def test_validate_accepts_the_real_table_and_rejects_broken_ones(run: dict) -> None:
    table = run["table"]
    assert validate_results_table(table) is table
    for match, bad in _broken(table).items():
        with pytest.raises(ValueError, match=match):
            validate_results_table(bad)


# -- aggregation and significance on hand-made numbers -------------------------------------------------
def _hand_table() -> pd.DataFrame:
    rows = [  # (key, method, seed, ratio, nll, se, mean_acc, se)
        ("dense", "dense", None, 0.0, 3.00, 0.01, 0.60, 0.02),
        ("random-s0_r0.20", "random", 0, 0.2, 3.50, 0.05, 0.50, 0.02),
        ("random-s1_r0.20", "random", 1, 0.2, 3.60, 0.05, 0.52, 0.02),
        ("random-s2_r0.20", "random", 2, 0.2, 3.70, 0.05, 0.54, 0.02),
        ("magnitude_r0.20", "magnitude", None, 0.2, 3.55, 0.02, 0.59, 0.02),
        ("fn_r0.20", "fn", None, 0.2, 3.02, 0.01, 0.61, 0.02),
    ]
    out = []
    for key, method, seed, ratio, nll, nll_se, acc, acc_se in rows:
        common = dict(key=key, method=method, seed=seed, ratio_requested=ratio, ratio_reached=ratio,
                      ratio_basis="total")
        out.append({**common, "metric": "nll", "setting": "128", "value": nll, "stderr": nll_se, "n": 50})
        out.append({**common, "metric": "mean_acc", "setting": "", "value": acc, "stderr": acc_se, "n": 700})
    return pd.DataFrame(out, columns=list(TABLE_COLUMNS))


def test_aggregate_seeds_by_hand() -> None:
    agg = aggregate_seeds(_hand_table()).set_index(["method", "metric"])
    r = agg.loc[("random", "nll")]
    assert r["value"] == pytest.approx(3.6) and r["value_std"] == pytest.approx(0.1) and r["n_seeds"] == 3
    assert r["stderr"] == pytest.approx(math.sqrt(0.05 ** 2 + 0.1 ** 2 / 3))
    m = agg.loc[("magnitude", "nll")]
    assert m["n_seeds"] == 1 and np.isnan(m["value_std"]) and m["stderr"] == pytest.approx(0.02)
    assert agg.loc[("random", "mean_acc"), "value"] == pytest.approx(0.52)


def test_significance_against_dense_and_random_by_hand() -> None:
    table = _hand_table()
    vs_dense = significant_differences(table, "dense").set_index(["method", "metric"])
    fn = vs_dense.loc[("fn", "nll")]
    assert fn["difference"] == pytest.approx(0.02) and fn["stderr"] == pytest.approx(math.sqrt(2) * 0.01)
    assert fn["z"] == pytest.approx(math.sqrt(2)) and not fn["exceeds"] and not fn["better"]
    assert vs_dense.loc[("magnitude", "nll"), "exceeds"]  # 0.55 against 0.022
    assert vs_dense.loc[("random", "nll"), "exceeds"]
    assert not vs_dense.loc[("magnitude", "mean_acc"), "exceeds"]  # -0.01 against 0.028
    assert vs_dense.loc[("random", "mean_acc"), "exceeds"] and not vs_dense.loc[("random", "mean_acc"), "better"]
    # a lower threshold flags the fn difference (z = 1.41 > 1)
    lenient = significant_differences(table, "dense", n_se=1.0).set_index(["method", "metric"])
    assert lenient.loc[("fn", "nll"), "exceeds"]

    vs_random = significant_differences(table, "random").set_index(["method", "metric"])
    assert set(vs_random.index.get_level_values("method")) == {"magnitude", "fn"}
    se_random = math.sqrt(0.05 ** 2 + 0.1 ** 2 / 3)
    mag = vs_random.loc[("magnitude", "nll")]
    assert mag["stderr"] == pytest.approx(math.sqrt(0.02 ** 2 + se_random ** 2))
    assert mag["difference"] == pytest.approx(-0.05) and not mag["exceeds"] and mag["better"]
    fn = vs_random.loc[("fn", "nll")]
    assert fn["exceeds"] and fn["better"]
    with pytest.raises(ValueError, match="baseline 'flap'"):
        significant_differences(table, "flap")
    with pytest.raises(ValueError, match="cannot test metrics \\['params_total'\\]"):
        significant_differences(table, metrics=["params_total"])


# -- displays -----------------------------------------------------------------------------------------------
def test_summary_efficiency_and_plots(run: dict) -> None:
    import matplotlib.pyplot as plt

    table = run["table"]
    summary = tables.summary_table(table)
    assert list(summary.index) == [("dense", 0.0), ("random", 0.05), ("magnitude", 0.05)]
    assert summary.loc[("random", 0.05), "seeds"] == 2
    assert {"ppl@32", "ppl@32 ±", "ppl@256", "mean_acc", "params_total_rel"} <= set(summary.columns)
    eff = tables.efficiency_table(table)
    assert eff.loc[("dense", 0.0), "flops_rel"] == 1.0 and (eff["params_total_rel"] <= 1).all()

    ax = figures.plot_perplexity(table, 32)
    labels = ax.get_legend_handles_labels()[1]
    assert labels[0] == "dense" and any(lab.startswith("random (mean of 2 seeds)") for lab in labels)
    figures.plot_accuracy(table)
    bars = figures.plot_task_bars(table, 0.05)
    assert len(bars.patches) == len(TASKS) * 3  # dense, random, magnitude
    plt.close("all")


def test_reference_numbers_are_labelled_other_models() -> None:
    ref = reference_numbers()
    assert set(ref["model"]) == {"Vicuna-7B-v1.5", "LLaMA-7B"}
    authors = ref[ref["source"].str.startswith("Liu et al.")]
    tasks = ["arc_challenge", "arc_easy", "hellaswag", "openbookqa", "piqa", "winogrande"]
    full = authors.dropna(subset=tasks)
    # the published means are the means of the published task accuracies (6 tasks, no BoolQ)
    np.testing.assert_allclose(full[tasks].mean(axis=1), full["mean_acc"], atol=0.006)
    assert (full["mean_tasks"] == 6).all() and ref["protocol"].notna().all()
    lit = ref[ref["model"] == "LLaMA-7B"].set_index(["method", "removed"])
    assert lit.loc[("dense", 0.0), "ppl_wikitext2_128"] < lit.loc[("flap", 0.2), "ppl_wikitext2_128"]


# -- the Vicuna-7B profile (dry run) -----------------------------------------------------------------------
def test_vicuna_profile_resolves() -> None:
    profile = load_profile("vicuna-7b")
    notebooks = sorted((REPO_ROOT / "notebooks").glob("[0-9]*.ipynb"))
    declared = set().union(*(notebook_parameters(p) for p in notebooks))
    assert set(profile) - {"profile"} <= declared, sorted(set(profile) - {"profile"} - declared)
    assert profile["model"] == "lmsys/vicuna-7b-v1.5"
    assert profile["model_dtype"] in ("bfloat16", "float16") and profile["device"] == "cuda"
    assert profile["dataset"] == profile["eval_dataset"] == "wikitext2"
    assert profile["allocation"] == "per-method"  # each baseline as its authors define it
    assert profile["zero_shot_limit"] is None and set(profile["zero_shot_tasks"]) == set(ALL_TASKS)
    assert profile["ratios"] == [0.1932, 0.3] and Path(profile["run_dir"]).is_absolute()
    text = (REPO_ROOT / "params" / "vicuna-7b.yaml").read_text()
    assert "expected runtime" in text.lower()


def test_notebook_declares_the_shared_stage5_parameters() -> None:
    params = notebook_parameters(REPO_ROOT / "notebooks" / "05_evaluate_benchmarks.ipynb")
    assert {"run_dir", "model", "eval_dataset", "ppl_seq_lens", "eval_max_tokens", "zero_shot_tasks",
            "zero_shot_limit", "eval_batch_size"} <= set(params)
    for name in ("default", "tiny"):
        profile = load_profile(name)
        assert {"eval_max_tokens", "zero_shot_limit", "ppl_seq_lens"} <= set(profile), name


def test_heldout_windows_are_the_windows_evaluate_run_scores(run: dict) -> None:
    """Chapter 6 takes its test windows from here: they must be chapter 5's, token for token."""
    saved = json.loads((run["run_dir"] / "results" / "results.json").read_text())
    record = saved["models"][DENSE_KEY]["perplexity"]
    length = SEQ_LENS[0]  # the other length is clamped to the model's maximum
    windows = heldout.heldout_windows(run["tok"], "wiki", "test", seq_len=length, n_windows=MAX_TOKENS // length)
    assert windows.dtype == torch.long and windows.shape == (record[str(length)]["n_windows"], length)
    assert heldout.ids_sha256(windows.reshape(-1).numpy()) == record[str(length)]["tokens_sha256"]  # no BOS here


def test_heldout_windows_put_bos_first_where_the_family_uses_it() -> None:
    from test_evaluate import bpe_tokenizer

    for adds_bos in (True, False):
        tok = bpe_tokenizer(adds_bos)
        windows = heldout.heldout_windows(tok, "wiki", "validation", seq_len=16, n_windows=5)
        bos = tok.convert_tokens_to_ids("<s>")
        assert windows.shape == (5, 16)
        assert bool((windows[:, 0] == bos).all()) is adds_bos and not (windows[:, 1:] == bos).any()
    with pytest.raises(ValueError, match="n_windows >= 1"):
        heldout.heldout_windows(tok, "wiki", seq_len=16, n_windows=0)


def test_recorded_nll_is_what_stage_5_measured_on_those_windows(run: dict) -> None:
    """Chapter 6 reuses a model's recorded test NLL only on the windows it was scored on, with its plan's channels."""
    from funcprune.evaluate import window_nll
    from funcprune.plan import PruningPlan
    from funcprune.run.results import recorded_nll

    run_dir, length = run["run_dir"], SEQ_LENS[0]
    windows = heldout.heldout_windows(run["tok"], "wiki", "test", seq_len=length, n_windows=MAX_TOKENS // length)
    got = recorded_nll(run_dir, "magnitude", run["tok"], windows, str(length))
    assert list(got) == [0.05]
    nll, kept = got[0.05]
    key = read_index(run_dir).set_index("method").loc["magnitude", "key"]
    assert kept == PruningPlan.load(run_dir / "plans" / f"{key}.json").kept
    from funcprune.models import load_model

    dense = load_model(str(run["dense_dir"]))
    model = rebuild_pruned(run_dir, key, dense.model, source=dense.source).model
    np.testing.assert_allclose(nll, window_nll(model, windows), rtol=0, atol=1e-6)  # batched differently
    assert recorded_nll(run_dir, "magnitude", run["tok"], windows[:, 1:], str(length - 1)) == {}  # not scored
    assert recorded_nll(run_dir, "magnitude", run["tok"], windows.flip(0), str(length)) == {}  # other windows
    assert recorded_nll(run_dir, "flap", run["tok"], windows, str(length)) == {}  # not in this run
