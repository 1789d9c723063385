"""Stage 3 scores: the key-neuron score, every baseline's formula, and the activation statistics."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_models import CharTokenizer, tiny_model

from funcprune import capture_activations, get_adapter
from funcprune.scoring import (ChannelStatistics, FlapScorer, FunctionalNetworkScorer, MagnitudeScorer,
                               RandomScorer, WandaSpScorer, ColumnMoments, channel_statistics,
                               channel_statistics_from_store, flap_scores, key_neuron_scores,
                               magnitude_scores, random_scores, wanda_sp_scores)
from funcprune.adapters import layer_widths
from funcprune.run.artefacts import load_statistics, save_statistics

TEXTS = ["the cat sat on the mat", "functional networks in a digital brain", "ab",
         "tokens are time points and channels are voxels", "pruning keeps the key neurons"]


# -- key neurons --------------------------------------------------------------------------
def _loop_key_scores(maps: np.ndarray, channels: np.ndarray, width: int) -> np.ndarray:
    expected = np.zeros(width)
    for m in range(maps.shape[0]):
        for v, c in enumerate(channels):
            expected[c] = max(expected[c], abs(maps[m, v]))
    return expected


def test_key_neuron_score_is_max_abs_z_over_maps_and_both_voxels() -> None:
    width = 4
    channels = np.tile(np.arange(width), 2)  # act copies then up copies
    maps = np.zeros((3, 2 * width))
    maps[0, 1] = 2.0          # channel 1, act voxel
    maps[2, width + 1] = 5.0  # channel 1, up voxel, another map: the larger wins
    maps[1, 3] = -7.0         # channel 3: |z| counts, sign does not
    maps[1, width + 0] = 0.5
    scores = key_neuron_scores({4: maps}, {4: channels}, {4: width})
    np.testing.assert_array_equal(scores[4], [0.5, 5.0, 0.0, 7.0])
    rng = np.random.default_rng(0)
    big = rng.normal(size=(6, 40))
    chan = rng.permutation(np.tile(np.arange(20), 2))
    np.testing.assert_allclose(key_neuron_scores({0: big}, {0: chan}, 20)[0], _loop_key_scores(big, chan, 20))


def test_key_neuron_scores_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="do not match 6 voxels"):
        key_neuron_scores({0: np.zeros((2, 5))}, {0: np.arange(6)}, 6)
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        key_neuron_scores({0: np.zeros((2, 4))}, {0: np.arange(4)}, 3)


def test_functional_network_scorer_accepts_any_fitted_object() -> None:
    model = tiny_model("llama")
    rng = np.random.default_rng(1)
    fn = SimpleNamespace(maps_={i: rng.normal(size=(3, 96)) for i in range(3)},
                         voxel_channels_={i: np.tile(np.arange(48), 2) for i in range(3)})
    scorer = FunctionalNetworkScorer(fn)
    scores = scorer(model)
    assert scorer.name == "functional_networks" and sorted(scores) == [0, 1, 2]
    for i in range(3):
        np.testing.assert_allclose(scores[i], _loop_key_scores(fn.maps_[i], fn.voxel_channels_[i], 48))
    with pytest.raises(TypeError, match="maps_"):
        FunctionalNetworkScorer(SimpleNamespace(maps_={}))


def test_functional_network_scorer_on_real_functional_networks(tmp_path: Path) -> None:
    from funcprune.ica import FunctionalNetworks

    model = tiny_model("llama")
    store = capture_activations(model, CharTokenizer(), TEXTS * 3, tmp_path / "s", progress=False)
    fn = FunctionalNetworks(n_components=3, n_init=1, random_state=0, progress=False).fit(store)
    scores = FunctionalNetworkScorer(fn)(model)
    assert {i: s.shape for i, s in scores.items()} == {0: (48,), 1: (48,), 2: (48,)}
    for i in range(3):
        np.testing.assert_allclose(scores[i], _loop_key_scores(fn.maps_[i], fn.voxel_channels_[i], 48),
                                   rtol=1e-6)


# -- weight- and data-free baselines -------------------------------------------------------------
def test_random_scores_are_seeded() -> None:
    model = tiny_model("llama")
    a, b, c = random_scores(model, 3), RandomScorer(3)(model), random_scores(model, 4)
    for i in a:
        np.testing.assert_array_equal(a[i], b[i])
        assert a[i].shape == (48,) and not np.array_equal(a[i], c[i])


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_magnitude_scores_follow_the_formula(model_type: str) -> None:
    """Channel 2 owns the largest weights; scores equal sqrt(|gate row|^2 + |up row|^2 + |down col|^2)."""
    model = tiny_model(model_type)
    adapter = get_adapter(model)
    layer = adapter.get_layers(model)[1]
    with torch.no_grad():
        adapter.mlp_weight(layer, "mlp.up")[2, :] = 0.5  # a view: writes the Conv1D weight too
        adapter.mlp_weight(layer, "mlp.down")[:, 2] = 0.3
    scores = MagnitudeScorer()(model)
    assert int(np.argmax(scores[1])) == 2
    one, other = MagnitudeScorer(), MagnitudeScorer()
    one.settings["norm"] = "l1"  # editing one scorer's settings changes no other scorer's
    assert other.settings["norm"] == one.settings["norm"] == "l2"
    w_up = adapter.mlp_weight(layer, "mlp.up").detach().double().numpy()
    w_down = adapter.mlp_weight(layer, "mlp.down").detach().double().numpy()
    expected = [np.sum(w_up[j] ** 2) + np.sum(w_down[:, j] ** 2) for j in range(48)]
    if adapter.gated:
        w_gate = adapter.mlp_weight(layer, "mlp.gate").detach().double().numpy()
        expected = [e + np.sum(w_gate[j] ** 2) for j, e in enumerate(expected)]
    np.testing.assert_allclose(scores[1], np.sqrt(expected), rtol=1e-12)
    assert np.array_equal(magnitude_scores(model)[0], scores[0])


# -- activation-based baselines on a hand-built layer -------------------------------------------
def _hand_built() -> tuple[torch.nn.Module, ChannelStatistics]:
    """Tiny llama, layer 0's down projection set so each baseline's choice is known by hand."""
    model = tiny_model("llama")
    down = model.model.layers[0].mlp.down_proj.weight  # (32, 48)
    with torch.no_grad():
        down.zero_()
        down[0, :4] = torch.tensor([1.0, 2.0, 10.0, 4.0])  # channel 2 has the largest weights
    widths = layer_widths(model)
    ones = {i: np.ones(w) for i, w in widths.items()}
    sq_norm = {**ones, 0: np.r_[[400.0, 1.0, 1.0, 1.0], np.ones(44)]}   # channel 0 is loud
    var = {**ones, 0: np.r_[[4.0, 1.0, 0.0, 1.0], np.ones(44)]}        # channel 2 is constant
    mean = {i: np.zeros(w) for i, w in widths.items()}
    return model, ChannelStatistics(mean=mean, var=var, sq_norm=sq_norm, n_tokens=10)


def test_wanda_sp_is_weight_abs_sum_times_activation_norm() -> None:
    model, stats = _hand_built()
    scores = WandaSpScorer()(model, stats)
    np.testing.assert_allclose(scores[0][:4], [1.0 * 20, 2.0, 10.0, 4.0])
    assert scores[0][:4].argmax() == 0 == np.argmax(scores[0])  # activation norm beats weight size
    np.testing.assert_allclose(scores[1], wanda_sp_scores(model, stats)[1])


def test_flap_is_variance_times_squared_column_norm() -> None:
    model, stats = _hand_built()
    scores = FlapScorer()(model, stats)
    np.testing.assert_allclose(scores[0][:4], [4.0 * 1, 1.0 * 4, 0.0, 1.0 * 16])
    assert scores[0][2] == 0.0  # a constant channel carries no fluctuation, whatever its weights
    z = flap_scores(model, stats, standardize=True)[0]
    np.testing.assert_allclose(z, (scores[0] - scores[0].mean()) / scores[0].std(ddof=1))


def test_activation_scorers_need_matching_statistics() -> None:
    model, stats = _hand_built()
    with pytest.raises(ValueError, match="channel_statistics"):
        WandaSpScorer()(model)
    stats.mean[1] = np.zeros(10)
    with pytest.raises(ValueError, match="widths differ"):
        FlapScorer()(model, stats)


# -- statistics ------------------------------------------------------------------------------
def test_channel_statistics_match_numpy_on_captured_products(tmp_path: Path) -> None:
    """One streaming pass (batched, padded) equals numpy on the stored products; the store path agrees."""
    model, tok = tiny_model("gpt2"), CharTokenizer()
    store = capture_activations(model, tok, TEXTS, tmp_path / "s", kinds=("product",), batch_size=1,
                                progress=False)
    streamed = channel_statistics(model, tok, TEXTS, batch_size=3, progress=False)
    from_store = channel_statistics_from_store(store, chunk_rows=7, progress=False)
    assert streamed.n_tokens == from_store.n_tokens == sum(len(t) for t in TEXTS)
    for i in range(3):
        x = np.asarray(store.layer(i, "product"), dtype=np.float64)
        for stats in (streamed, from_store):
            np.testing.assert_allclose(stats.mean[i], x.mean(0), rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(stats.var[i], x.var(0), rtol=1e-4, atol=1e-9)
            np.testing.assert_allclose(stats.sq_norm[i], (x ** 2).sum(0), rtol=1e-5)
    with pytest.raises(ValueError, match="'product'"):
        channel_statistics_from_store(capture_activations(model, tok, TEXTS, tmp_path / "t", progress=False))


def test_streaming_variance_is_stable_with_a_large_offset() -> None:
    rng = np.random.default_rng(0)
    x = 1e6 + rng.normal(scale=1e-2, size=(5000, 3))
    acc = ColumnMoments()
    for start in range(0, len(x), 333):
        acc.update(torch.from_numpy(x[start:start + 333]))
    mean, var, sq = acc.result()
    np.testing.assert_allclose(var, x.var(0), rtol=1e-6)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-12)


def test_channel_statistics_round_trip(tmp_path: Path) -> None:
    stats = channel_statistics(tiny_model("llama"), CharTokenizer(), TEXTS, progress=False)
    loaded = load_statistics(save_statistics(stats, tmp_path / "stats"))
    assert loaded.n_tokens == stats.n_tokens and loaded.layers == stats.layers
    for i in stats.layers:
        np.testing.assert_array_equal(loaded.var[i], stats.var[i])
