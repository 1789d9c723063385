"""Least-squares reconstruction and the method grid (criterion x allocation x compensation), against ground truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from funcprune.adapters import get_adapter, layer_widths
from funcprune.compensation import (DownMoments, down_input_moments, least_squares_down, reconstruction_error)
from funcprune.methods import METHODS, build_pruned, get_method, make_plan, variant
from funcprune.plan import select_channels
from tiny_models import TEXTS, CharTokenizer, tiny_model


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(0)
    return mean, (x - mean).T @ (x - mean) / x.shape[0]


def _static(weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, kept: list[int]):
    removed = [j for j in range(weight.shape[1]) if j not in kept]
    return weight[:, kept], bias + weight[:, removed] @ mean[removed]


def test_least_squares_is_exact_when_removed_channels_are_affine_in_kept_ones() -> None:
    gen = torch.Generator().manual_seed(0)
    n, hidden, k = 400, 6, 5
    x_k = torch.randn(n, k, generator=gen, dtype=torch.float64)
    mix = torch.randn(k, 3, generator=gen, dtype=torch.float64)
    x = torch.cat([x_k, x_k @ mix + 0.7], dim=1)  # channels 5, 6, 7 = affine functions of 0..4
    weight = torch.randn(hidden, 8, generator=gen, dtype=torch.float64)
    bias = torch.randn(hidden, generator=gen, dtype=torch.float64)
    mean, cov = _moments(x)
    kept = list(range(k))
    a, c = least_squares_down(weight, bias, mean, cov, kept, ridge=0.0)
    torch.testing.assert_close(x[:, kept] @ a.T + c, x @ weight.T + bias, rtol=1e-9, atol=1e-9)
    # the static bias is not exact here: the removed channels vary
    w_s, b_s = _static(weight, bias, mean, kept)
    assert float(((x[:, kept] @ w_s.T + b_s - x @ weight.T - bias) ** 2).sum(1).mean()) > 1e-2


@pytest.mark.parametrize("ridge", [0.0, 1e-3, 0.1, 10.0, 1e6])
def test_least_squares_is_never_worse_than_the_static_bias_on_its_tokens(ridge: float) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 10, generator=gen, dtype=torch.float64) @ torch.randn(10, 10, generator=gen,
                                                                                 dtype=torch.float64)
    x = x + torch.linspace(-1, 2, 10, dtype=torch.float64)
    weight = torch.randn(4, 10, generator=gen, dtype=torch.float64)
    bias = torch.zeros(4, dtype=torch.float64)
    mean, cov = _moments(x)
    kept = [0, 2, 3, 7, 9]
    a, c = least_squares_down(weight, bias, mean, cov, kept, ridge=ridge)
    w_s, b_s = _static(weight, bias, mean, kept)
    err_ls = reconstruction_error(weight, bias, mean, cov, kept, a, c)
    err_static = reconstruction_error(weight, bias, mean, cov, kept, w_s, b_s)
    # the moment formula equals the empirical error on the tokens
    empirical = float(((x[:, kept] @ a.T + c - x @ weight.T - bias) ** 2).sum(1).mean())
    assert err_ls == pytest.approx(empirical, rel=1e-8, abs=1e-10)
    assert err_ls <= err_static * (1 + 1e-9)
    if ridge == 0.0:
        assert err_ls < 0.9 * err_static
    if ridge == 1e6:  # a huge ridge is the static bias
        assert err_ls == pytest.approx(err_static, rel=1e-3)


def test_bad_ridge_is_named() -> None:
    w, m, c = torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="ridge -1"):
        least_squares_down(w, None, m, c, [0], ridge=-1)


def _mlp_outputs(model: torch.nn.Module, layer: int, ids: torch.Tensor) -> torch.Tensor:
    adapter = get_adapter(model)
    out = []
    mlp = adapter.module(adapter.get_layers(model)[layer], "mlp.down")
    handle = mlp.register_forward_hook(lambda _m, _i, o: out.append(o.detach()))
    with torch.no_grad():
        model(ids)
    handle.remove()
    return out[0]


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_least_squares_compensation_in_a_model_beats_the_static_bias_on_its_layer(model_type: str) -> None:
    model = tiny_model(model_type)
    tok = CharTokenizer()
    texts = [t for t in TEXTS if t] * 4
    n_layers = len(layer_widths(model))
    layer = 1
    protected = [i for i in range(n_layers) if i != layer]
    plan = select_channels({layer: torch.rand(48, generator=torch.Generator().manual_seed(3)).numpy()}, model,
                           ratio=0.01, basis="total", protected_layers=protected, method="magnitude")
    assert plan.removed(layer)
    moments = down_input_moments(model, tok, texts, batch_size=2)
    assert isinstance(moments, DownMoments) and moments.n_tokens == sum(len(t) for t in texts)
    from funcprune.scoring import channel_statistics

    stats = channel_statistics(model, tok, texts, batch_size=2)
    ls = build_pruned(variant("magnitude", compensation="ls", ridge=0.0), model, plan, moments=moments)
    static = build_pruned(variant("magnitude", compensation="static"), model, plan, stats=stats)
    ids = torch.tensor([tok(t)["input_ids"] for t in texts[:1]])
    dense_out = _mlp_outputs(model, layer, ids)
    err_ls = float(((_mlp_outputs(ls, layer, ids) - dense_out) ** 2).mean())
    err_static = float(((_mlp_outputs(static, layer, ids) - dense_out) ** 2).mean())
    assert err_ls <= err_static + 1e-9


def test_registered_methods_are_points_of_the_grid() -> None:
    assert get_method("fn+progressive") is METHODS["fn-bias"]
    assert get_method("flap+static") is METHODS["flap"]
    assert get_method("random@uniform") is METHODS["random"]
    for name, m in METHODS.items():
        assert m.criterion.name in METHODS
    assert METHODS["fn-bias"].criterion is METHODS["fn"].criterion
    m = get_method("fn@flap+static")
    assert (m.name, m.criterion.name, m.allocation.name, m.compensation.name) == (
        "fn@flap+static", "fn", "widths:flap", "static")
    assert m.allocation.reference is METHODS["flap"] and m.compensation == METHODS["flap"].compensation
    assert m.needs_statistics and m.needs_networks
    assert get_method("wanda-sp+ls0.1").compensation_params == {"ridge": 0.1}
    assert get_method("flap+none").compensation is None
    m = get_method("fn+progressive-ls0.1")
    assert (m.compensation.name, m.compensation_params, m.criterion.name) == ("progressive-ls", {"ridge": 0.1}, "fn")
    assert m.needs_texts and get_method("fn+progressive-ls").compensation_params == {"ridge": 0.01}


@pytest.mark.parametrize("name, match", [
    ("fn@nowhere", "allocation 'nowhere' invalid"),
    ("fn+bias", "compensation 'bias' invalid"),
    ("fn@random", "seed"),
    ("fn-bias+static", "compensated variant|criterion"),
    ("bogus+ls", "unknown pruning method"),
    ("fn+lsx", "not a number"),
    ("fn+progressive-lsx", "not a number"),
])
def test_bad_grid_points_are_named(name: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_method(name)


def test_widths_of_another_plan_are_kept_with_this_criterion() -> None:
    model = tiny_model("llama")
    ref = make_plan("magnitude", model, 0.1, protected_layers=[0])
    plan = make_plan("random@magnitude", model, 0.1, protected_layers=[0], seed=4)
    assert plan.allocation == "widths:magnitude"
    assert {i: len(k) for i, k in plan.kept.items()} == {i: len(k) for i, k in ref.kept.items()}
    assert plan.ratio_reached == pytest.approx(ref.ratio_reached)
    assert plan.kept != ref.kept  # same widths, other channels
    again = make_plan("magnitude@magnitude", model, 0.1, protected_layers=[0])
    assert again.kept == ref.kept
    assert np.isclose(plan.ratio_reached, ref.ratio_reached)


# ----------------------------------------------------------------------------------
# What a mean-based bias does to each token's output
# ----------------------------------------------------------------------------------
def test_bias_effect_finds_a_planted_small_first_position() -> None:
    from funcprune.compensation import bias_effect, describe_bias_effect

    rng = np.random.default_rng(0)
    docs = np.repeat(np.arange(8), 64)  # 8 texts of 64 tokens
    x = rng.normal(1.0, 0.3, size=(len(docs), 16))  # channels with a mean: a bias recovers part of the removed ones
    x[::64] = rng.normal(0.0, 1e-3, size=(8, 16))  # the first position: a tiny MLP input (an attention sink)
    weight = rng.normal(size=(12, 16))
    r = bias_effect(x, weight, kept=range(8), doc_ids=docs)
    assert r["cos_with"] > r["cos_without"]  # the typical token is brought closer to the dense output
    assert r["first_cos_with"] < r["first_cos_without"] - 0.5  # the first position is turned away
    assert r["first_bias_ratio"] > 100 * r["bias_ratio"]
    table = pd.DataFrame([r, r]).rename_axis("layer")
    text = describe_bias_effect(table, normed=True)
    assert "brings the typical token's MLP output closer" in text and "turns the first position" in text
    assert "at full scale" in text and "at full scale" not in describe_bias_effect(table, normed=False)
    calm = bias_effect(rng.normal(1.0, 0.3, size=(len(docs), 16)), weight, kept=range(8), doc_ids=docs)
    assert "does not turn the output away" in describe_bias_effect(pd.DataFrame([calm]), normed=False)
    with pytest.raises(ValueError, match="do not fit together"):
        bias_effect(x, weight[:, :4], kept=range(2), doc_ids=docs)
