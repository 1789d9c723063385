"""Lesion studies: the lesion equals pruning, NLLs agree with perplexity, a planted network is found."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from funcprune.capture import MLPRecorder
from funcprune.evaluate import perplexity
from funcprune.ica import FunctionalNetworks
from funcprune.lesion import lesion, lesion_study, lesion_verdict, token_nll
from funcprune.prune import prune_layer
from tiny_models import tiny_model

WIDTH = 48  # tiny_models' intermediate size


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_model("llama", seed=3)


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    return torch.randint(0, 97, (12, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def networks(model, windows) -> FunctionalNetworks:
    with torch.no_grad(), MLPRecorder(model, kinds=("act",)) as rec:
        rec.forward(input_ids=windows)
        arrays = {layer: rec.records[(layer, "act")].numpy().copy() for layer in range(3)}
    return FunctionalNetworks(3, n_init=2, random_state=0, progress=False).fit(arrays)


def test_a_lesion_equals_pruning_the_channels_and_is_undone_on_exit(model, windows) -> None:
    silenced = [0, 5, 7, 30]
    with torch.no_grad():
        dense = model(input_ids=windows).logits
        with lesion(model, {1: silenced}):
            lesioned = model(input_ids=windows).logits
        pruned = copy.deepcopy(model)
        prune_layer(pruned, 1, [j for j in range(WIDTH) if j not in silenced])
        torch.testing.assert_close(lesioned, pruned(input_ids=windows).logits, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(lesioned, dense)
        torch.testing.assert_close(model(input_ids=windows).logits, dense, rtol=0, atol=0)


def test_token_nll_agrees_with_perplexity(model, windows) -> None:
    nll = token_nll(model, windows, batch_size=5)
    assert nll.shape == (12, 15) and nll.dtype == np.float64
    ppl = perplexity(model, None, windows.reshape(-1), seq_len=16, progress=False)
    assert nll.mean() == pytest.approx(ppl["nll"], rel=1e-6)


def test_a_planted_network_hurts_more_than_random_lesions(model, windows, networks) -> None:
    planted = np.arange(0, WIDTH, 6)  # 8 channels that we make carry the layer's output
    strong = copy.deepcopy(model)
    with torch.no_grad():
        strong.model.layers[1].mlp.down_proj.weight[:, planted] *= 40.0
    fn = copy.deepcopy(networks)
    z = np.zeros(WIDTH, dtype=np.float32)
    z[planted] = 10.0
    fn.maps_[1][0] = z
    table = lesion_study(strong, fn, windows, layers=[1], maps_per_layer=1, n_random=3, kinds=("act",),
                         progress=False)
    row = table.iloc[0]
    assert (row["layer"], row["map"], row["n_channels"]) == (1, 0, len(planted))
    assert row.net_all > 2 * row.rand_all > 0
    assert row.excess_all == pytest.approx(row.net_all - row.rand_all)
    assert table.attrs["n_windows"] == 12 and table.attrs["dense_nll"] > 0


def test_arrays_fit_needs_kinds_and_unknown_layers_are_named(model, windows, networks) -> None:
    fn = copy.deepcopy(networks)
    fn.input_ = {"kind": "array"}
    with pytest.raises(ValueError, match="pass kinds="):
        lesion_study(model, fn, windows, layers=[0], progress=False)
    with pytest.raises(ValueError, match=r"layers \[7\] were not fitted; fitted layers: \[0, 1, 2\]"):
        lesion_study(model, networks, windows, layers=[7], kinds=("act",), progress=False)
    with pytest.raises(ValueError, match="active_share"):
        lesion_study(model, networks, windows, active_share=1.5, kinds=("act",), progress=False)


@pytest.mark.parametrize("excess, word", [(0.5, "Supported"), (-0.5, "Not supported")])
def test_verdict_sentences_follow_the_numbers(excess: float, word: str) -> None:
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"excess_all": excess + 0.1 * rng.normal(size=12),
                          "excess_specificity": 0.1 * rng.normal(size=12)})
    verdict = lesion_verdict(table)
    assert verdict["n_networks"] == 12
    assert verdict["sentences"][0].startswith(word)
    assert verdict["harm"]["significant"] is (word == "Supported")
    assert verdict["specificity"]["p"] > 0.05 and verdict["sentences"][1].startswith("Not supported")
    assert lesion_verdict(table.iloc[:0])["sentences"][0].startswith("No network could be tested")


def test_plot_lesions_draws_both_panels(model, windows, networks) -> None:
    import matplotlib

    matplotlib.use("Agg")
    table = lesion_study(model, networks, windows, layers=[0, 2], maps_per_layer=2, n_random=1, kinds=("act",),
                         threshold=1.0, progress=False)
    fig = lesion_study and __import__("funcprune.lesion", fromlist=["plot_lesions"]).plot_lesions(table)
    assert len(fig.axes) == 2 and len(fig.axes[0].collections) == table["layer"].nunique()
