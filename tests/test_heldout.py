"""What chapter 5 says of its held-out text and windows, read back from a run's records."""

from __future__ import annotations

from funcprune.data import load_texts
from funcprune.heldout import protocol_facts, window_table


def _setting(seq_len: int, n_windows: int, digest: str) -> dict:
    return {"seq_len_requested": seq_len, "seq_len": min(seq_len, 1024), "seq_len_clamped": seq_len > 1024,
            "n_windows": n_windows, "n_tokens_scored": n_windows * (seq_len - 1), "text_ids": ["a", "b"][:n_windows],
            "window_starts": [0, 500], "tokens_sha256": digest}


DENSE = {"perplexity": {"128": _setting(128, 2, "ab" * 32), "2048": _setting(2048, 1, "cd" * 32)}}
SETTINGS = [DENSE["perplexity"]["128"], DENSE["perplexity"]["2048"]]


def test_window_table_counts_models_and_checks_they_read_the_same_windows() -> None:
    other = {"perplexity": {"128": _setting(128, 2, "ef" * 32)}}  # scored 128 on other tokens, not 2048
    table = window_table(SETTINGS, {"dense": DENSE, "fn": other})
    assert list(table.index) == [128, 2048] and table.index.name == "window requested"
    assert table.loc[128].to_dict() == {"window used": 128, "windows": 2, "tokens scored": 254, "texts touched": 2,
                                        "tokens sha256": "ab" * 8, "models": 2, "same windows for every model": False}
    assert table.loc[2048, "window used"] == 1024 and table.loc[2048, "models"] == 1
    assert table.loc[2048, "same windows for every model"]
    assert window_table(SETTINGS, {"dense": DENSE, "fn": DENSE})["same windows for every model"].all()


def _record(bos: int | None, calibration: dict | None, checked: bool) -> dict:
    return {"protocol": {"eval_dataset": {"name": "wiki", "sha256": "0123456789abcdef" * 4, "part": "test"},
                         "eval_stream": {"n_tokens": 123456}, "bos": {"token_id": bos}},
            "calibration": calibration, "disjointness": {"checked": checked}, "eval_text_ids": ["a", "b", "c"],
            "sanity": {"message": "fine."}}


def test_protocol_facts_by_hand() -> None:
    facts = protocol_facts(_record(1, {"ids": ["x", "y"]}, True), SETTINGS, dataset="wiki",
                           eval_max_tokens=[4096, None], ppl_seq_lens=[128, 2048])
    assert facts == {"eval_corpus": "wiki", "eval_sha": "0123456789abcdef", "n_eval_texts": 3,
                     "n_held_out_texts": len(load_texts("wiki", "evaluation")), "eval_part": "test",
                     "bos_text": "the BOS token (id 1) first", "sanity_text": "fine.", "stream_tokens": "123,456",
                     "windows_text": "2 windows of 128 tokens and 1 window of 1024 tokens",
                     "eval_max_tokens": "4,096 and every", "n_calibration_texts": 2, "n_overlap": 0,
                     "disjoint_checked": "checked"}


def test_protocol_facts_name_an_overlap_a_missing_bos_and_an_unchecked_run() -> None:
    facts = protocol_facts(_record(None, {"ids": ["b", "z"]}, False), SETTINGS[:1], dataset="wiki",
                           eval_max_tokens=512, ppl_seq_lens=[128, 2048])
    assert facts["n_overlap"] == 1 and facts["disjoint_checked"] == "could not be checked"
    assert facts["bos_text"] == "no BOS token (this tokenizer adds none)"
    assert facts["eval_max_tokens"] == "512 and 512"
    assert protocol_facts(_record(None, None, False), SETTINGS, dataset="wiki", eval_max_tokens=None,
                          ppl_seq_lens=[128])["n_calibration_texts"] == 0
