"""The literature's perplexity protocol (a second setting) and the package's one NLL engine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from funcprune.evaluate import perplexity, token_nll
from funcprune.heldout import (EvaluationStream, ids_sha256, literature_perplexity, literature_windows,
                               select_windows)
from funcprune.lesion import token_nll as lesion_token_nll
from tiny_models import tiny_model

SEQ = 16
BOS = 1


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_model("llama", seed=5)


def stream_of(ids: np.ndarray, bos: int | None) -> EvaluationStream:
    text_index = np.repeat([0, 1], [40, ids.size - 40])
    return EvaluationStream(dataset={"ids": ["first", "second"]}, ids=ids, text_index=text_index,
                            sha256=ids_sha256(ids), bos_token_id=bos)


@pytest.fixture(scope="module")
def ids() -> np.ndarray:
    return np.random.default_rng(0).integers(2, 97, 70).astype(np.int64)


def test_literature_perplexity_equals_a_hand_computation(model, ids) -> None:
    stream = stream_of(ids, BOS)
    result = literature_perplexity(model, stream, seq_len=SEQ, batch_size=3)
    # FLAP's / Wanda's loop: the stream tokenised once with its one BOS, consecutive windows, mean loss each
    full = torch.from_numpy(np.concatenate([[BOS], ids]))
    losses = []
    with torch.no_grad():
        for i in range(full.numel() // SEQ):
            window = full[i * SEQ:(i + 1) * SEQ][None]
            logits = model(input_ids=window).logits[0, :-1]
            losses.append(F.cross_entropy(logits, window[0, 1:]).item())
    assert result["n_windows"] == 4 and result["window_starts"] == [0, 16, 32, 48]
    assert result["ppl"] == pytest.approx(math.exp(np.mean(losses)), rel=1e-6)
    np.testing.assert_allclose(result["window_nll"], losses, rtol=1e-6)
    assert result["bos_token_id"] is None and result["protocol"] == "literature" and "FLAP" in result["rule"]
    assert result["n_tokens_scored"] == 4 * (SEQ - 1) and result["window_articles"] == ["first", "first",
                                                                                       "first", "second"]
    windows, starts = literature_windows(stream, SEQ)
    assert windows[0, 0] == BOS and (windows[1:, 0] != BOS).all() and starts == [0, 16, 32, 48]
    assert result["tokens_sha256"] == ids_sha256(windows.numpy())


def book_setting(model: nn.Module, stream: EvaluationStream) -> float:
    """The book's setting, as results.evaluate_run scores it: BOS in front of every window."""
    span = SEQ - (stream.bos_token_id is not None)
    starts = select_windows(stream.n_tokens, SEQ, None, span=span)
    picked = np.concatenate([stream.ids[s:s + span] for s in starts])
    return perplexity(model, None, torch.from_numpy(picked), seq_len=SEQ, bos=stream.bos_token_id,
                      progress=False)["ppl"]


def test_literature_setting_differs_from_the_book_only_where_the_tokenizer_has_a_bos(model, ids) -> None:
    with_bos = stream_of(ids, BOS)
    lit, book = literature_perplexity(model, with_bos, seq_len=SEQ)["ppl"], book_setting(model, with_bos)
    assert abs(lit / book - 1) > 1e-3
    without = stream_of(ids, None)  # no BOS: the book's windows are the literature's grid
    assert literature_perplexity(model, without, seq_len=SEQ)["ppl"] == pytest.approx(book_setting(model, without),
                                                                                       rel=1e-9)


def test_a_budget_takes_a_spread_subset_of_the_same_grid(ids) -> None:
    windows, starts = literature_windows(stream_of(ids, BOS), SEQ, max_tokens=2 * SEQ)
    assert starts == [0, 32] and windows.shape == (2, SEQ)
    with pytest.raises(ValueError, match="seq_len must be >= 2"):
        literature_windows(stream_of(ids, BOS), 1)


# -- one NLL engine --------------------------------------------------------------------------------------------------
def old_lesion_token_nll(model: nn.Module, windows: torch.Tensor, batch_size: int = 4) -> np.ndarray:
    """lesion.token_nll before it went through evaluate's engine (device from the first parameter)."""
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for start in range(0, windows.shape[0], batch_size):
            ids = windows[start:start + batch_size].to(device)
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            out.append(nll.double().cpu().numpy())
    return np.concatenate(out)


class FirstParameterElsewhere(nn.Module):
    """A model whose first parameter sits on another device than its embedding (as in a sharded model)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.offloaded = nn.Parameter(torch.empty(1, device="meta"))
        self.lm = lm

    def get_input_embeddings(self) -> nn.Module:
        return self.lm.get_input_embeddings()

    def forward(self, **kwargs):  # noqa: ANN003, ANN201
        return self.lm(**kwargs)


def test_the_engine_equals_the_old_lesion_nll_and_perplexity(model) -> None:
    windows = torch.randint(0, 97, (7, SEQ), generator=torch.Generator().manual_seed(1))
    new = token_nll(model, windows, batch_size=3)
    assert lesion_token_nll is token_nll and new.shape == (7, SEQ - 1) and new.dtype == np.float64
    np.testing.assert_allclose(new, old_lesion_token_nll(model, windows, 3), rtol=1e-6, atol=1e-7)
    ppl = perplexity(model, None, windows.reshape(-1), seq_len=SEQ, bos=None, batch_size=2, progress=False)
    np.testing.assert_allclose(new.mean(axis=1), ppl["window_nll"], rtol=1e-12)


def test_the_engine_feeds_the_embedding_device_not_the_first_parameters(model) -> None:
    windows = torch.randint(0, 97, (3, SEQ), generator=torch.Generator().manual_seed(2))
    wrapped = FirstParameterElsewhere(model)
    assert next(wrapped.parameters()).device.type == "meta"
    with pytest.raises((RuntimeError, NotImplementedError, ValueError)):
        old_lesion_token_nll(wrapped, windows)  # the old rule sends the windows to the meta device
    np.testing.assert_allclose(token_nll(wrapped, windows), token_nll(model, windows), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"shape \(n_windows, seq_len >= 2\), got \(16,\)"):
        token_nll(model, windows[0])
