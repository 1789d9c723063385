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
from funcprune.lesion import (channel_magnitude, lesion, lesion_scope, lesion_study, lesion_verdict, matched_channels,
                              token_nll)
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


# -- controls that tell function from size ------------------------------------------------------------------------
LARGE = np.arange(0, WIDTH, 3)  # 16 channels made large (5x activation): they hurt more only because they are large


@pytest.fixture(scope="module")
def size_only_case() -> tuple[torch.nn.Module, FunctionalNetworks, torch.Tensor]:
    """Networks of large but otherwise ordinary channels, on text the model itself generates.

    On its own samples the dense model is the best predictor, so every lesion raises the
    loss, and a lesion of larger channels (a larger change of the output) raises it more.
    """
    model = tiny_model("llama", seed=3)
    with torch.no_grad():
        for block in model.model.layers:
            block.mlp.up_proj.weight[LARGE] *= 5.0
            block.mlp.down_proj.weight *= 10.0  # the MLPs carry the prediction
        model.lm_head.weight *= 4.0
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 97, (16, 1), generator=g)
        for _ in range(23):
            probs = torch.softmax(model(input_ids=ids).logits[:, -1], -1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=g)], 1)
        with MLPRecorder(model, kinds=("act",)) as rec:
            rec.forward(input_ids=ids)
            arrays = {layer: rec.records[(layer, "act")].numpy().copy() for layer in range(3)}
    fn = FunctionalNetworks(3, n_init=2, random_state=0, progress=False).fit(arrays)
    for layer in range(3):
        for m in range(3):  # three networks per layer, five large channels each, nothing else special
            z = np.zeros(WIDTH, dtype=np.float32)
            z[LARGE[5 * m:5 * m + 5]] = 10.0
            fn.maps_[layer][m] = z
    return model, fn, ids


def test_a_magnitude_matched_control_tells_size_from_function(size_only_case) -> None:
    model, fn, windows = size_only_case
    runs = {control: lesion_study(model, fn, windows, layers=[0, 1, 2], maps_per_layer=3, n_random=4,
                                  kinds=("act",), control=control, progress=False)
            for control in ("size", "magnitude")}
    size, matched = runs["size"], runs["magnitude"]
    # the unmatched controls are smaller channels; the matched ones are as large as the network's
    assert size["rand_magnitude"].mean() < 0.6 * size["net_magnitude"].mean()
    assert np.allclose(matched["rand_magnitude"], matched["net_magnitude"], rtol=0.25)
    np.testing.assert_allclose(size["net_all"], matched["net_all"])  # the same network lesions
    unmatched_verdict, matched_verdict = lesion_verdict(size), lesion_verdict(matched)
    assert unmatched_verdict["harm"]["significant"] and unmatched_verdict["sentences"][0].startswith("Supported")
    assert not matched_verdict["harm"]["significant"] and matched_verdict["harm"]["p"] > 0.2
    assert "with the same magnitude profile" in matched_verdict["sentences"][0]
    assert matched.attrs["control"] == "magnitude" and "activation RMS" in matched.attrs["magnitude"]


def test_networks_of_one_layer_count_once_and_the_floor_is_said(size_only_case) -> None:
    model, fn, windows = size_only_case
    table = lesion_study(model, fn, windows, layers=[0, 1, 2], maps_per_layer=3, n_random=4, kinds=("act",),
                         progress=False)
    by_layer = lesion_verdict(table, unit="layer")
    assert by_layer["n_networks"] == 9 and by_layer["n_units"] == 3 and by_layer["min_p"] == 0.125
    means = table.groupby("layer")["excess_all"].mean()
    assert by_layer["harm"]["median"] == pytest.approx(float(means.median()))
    assert not by_layer["harm"]["significant"]  # 3 layers can never reach p < 0.05 one-sided
    assert "3 layers, each layer's networks averaged into one" in by_layer["sentences"][0]
    assert "no outcome could reach p below 0.125" in by_layer["sentences"][0]
    with pytest.raises(ValueError, match="unknown unit 'map'; accepted: 'network', 'layer'"):
        lesion_verdict(table, unit="map")
    scope = lesion_scope(table)
    assert "cannot tell function from size" in scope[0] and "cannot go below p = 0.125" in scope[2]


def test_protected_layers_are_left_out(size_only_case) -> None:
    model, fn, windows = size_only_case
    table = lesion_study(model, fn, windows, layers=[0, 1], maps_per_layer=1, n_random=1, kinds=("act",),
                         protected=[0], progress=False)
    assert set(table["layer"]) == {1} and table.attrs["left_out"] == [0] and table.attrs["layers"] == [1]
    default = lesion_study(model, fn, windows, maps_per_layer=1, n_random=1, kinds=("act",), protected=[0, 2],
                           progress=False)
    assert set(default["layer"]) == {1}
    assert "Protected layers [0] were left out" in lesion_scope(table)[2]
    with pytest.raises(ValueError, match=r"every requested layer is protected \(\[0\]\)"):
        lesion_study(model, fn, windows, layers=[0], kinds=("act",), protected=[0], progress=False)
    with pytest.raises(ValueError, match="unknown control 'norm'; accepted: 'size', 'magnitude'"):
        lesion_study(model, fn, windows, kinds=("act",), control="norm", progress=False)


def test_matched_channels_keep_each_stratum_count() -> None:
    rng = np.random.default_rng(0)
    mag = rng.gamma(2.0, 1.0, 100)
    order = np.argsort(mag)
    network = np.concatenate([order[-7:], order[:3]])  # 7 of the top decile and 3 of the bottom
    for _ in range(20):
        drawn = matched_channels(rng, mag, network, n_strata=10)
        assert len(drawn) == 10 and len(set(drawn)) == 10
        # the top decile has only 3 channels outside the network: they are all taken, then 4 of the network's
        assert set(order[-10:-7]) <= set(drawn) and len(set(drawn) & set(order[-10:])) == 7
        assert len(set(drawn) & set(order[:10])) == 3 and not set(drawn) & set(order[:3])


def test_channel_magnitude_is_the_activation_rms(model, windows) -> None:
    mags = channel_magnitude(model, windows, [1], batch_size=5)
    with torch.no_grad(), MLPRecorder(model, kinds=("act",), layers=[1]) as rec:
        rec.forward(input_ids=windows)
        acts = rec.records[(1, "act")].numpy().astype(np.float64)
    # the recorder's "act" is SiLU(gate); the down projection's input multiplies it by up
    up = {}
    handle = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(
        lambda _m, args: up.__setitem__("x", args[0].detach().double().reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        model(input_ids=windows)
    handle.remove()
    np.testing.assert_allclose(mags[1], np.sqrt((up["x"].numpy() ** 2).mean(axis=0)), rtol=1e-10)
    assert acts.shape[1] == WIDTH and mags[1].shape == (WIDTH,)
