"""Stage 2/3 descriptions: network sizes, stability, overlap and connectivity on planted networks."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from test_ica import planted

from funcprune.atlas import (key_neuron_overlap, network_table, plot_digital_brain, plot_layer_maps,
                             stability, window_table)
from funcprune.ica import FunctionalNetworks


@pytest.fixture(scope="module")
def fitted() -> tuple[FunctionalNetworks, np.ndarray, np.ndarray]:
    X, sources, *_ = planted(seed=1)
    fn = FunctionalNetworks(5, n_init=2, random_state=0, progress=False).fit(X)
    return fn, X, sources


def test_network_table_counts_members(fitted) -> None:
    fn, _, _ = fitted
    table = network_table(fn, threshold=3.0)
    assert len(table) == 5
    for m, z in enumerate(fn.maps_[0]):
        assert table.loc[m, "n_voxels"] == int((np.abs(z) > 3.0).sum())
    # Planted sources are non-zero on ~10% of voxels: networks are sparse, not empty.
    assert (table["n_voxels"] > 0).all() and (table["n_voxels"] < 0.2 * fn.maps_[0].shape[1]).all()


def test_stability_of_a_fit_with_itself_is_one_and_another_seed_close(fitted) -> None:
    fn, X, _ = fitted
    same = stability(fn, fn)
    assert same["min"].iloc[0] == pytest.approx(1.0, abs=1e-6)
    other = FunctionalNetworks(5, n_init=2, random_state=7, progress=False).fit(X)
    assert stability(fn, other)["min"].iloc[0] > 0.9
    with pytest.raises(ValueError, match="n_groups >= 2"):
        stability(fn)


def test_split_half_stability_on_planted_sources() -> None:
    X, *_ = planted(seed=2, n_tokens=600)
    halves = FunctionalNetworks(5, n_init=2, n_groups=2, random_state=0, progress=False).fit(X)
    assert stability(halves)["median"].iloc[0] > 0.9


def test_key_neuron_overlap(fitted) -> None:
    fn, _, sources = fitted
    assert key_neuron_overlap(fn, fn)["jaccard"].iloc[0] == pytest.approx(1.0)
    within = key_neuron_overlap(fn)["jaccard"].iloc[0]
    support = [set(np.flatnonzero(s)) for s in sources]
    expected = np.mean([len(a & b) / len(a | b) for i, a in enumerate(support) for b in support[i + 1:]])
    # Independent random supports of ~10% overlap little; the maps' key sets must too.
    assert within < 0.2 and abs(within - expected) < 0.1


def test_window_table_counts_layers_touched() -> None:
    rng = np.random.default_rng(0)
    data = {i: rng.laplace(size=(300, 40)) for i in range(3)}
    fn = FunctionalNetworks(3, n_init=1, mode="window", window_size=3, random_state=0, progress=False).fit(data)
    table = window_table(fn, threshold=2.0, min_share=0.25)
    assert set(table["window"]) == {0}
    for _, row in table.iterrows():
        shares = [row[f"share_l{i}"] for i in range(3)]
        assert sum(shares) == pytest.approx(1.0)
        assert row["n_layers_touched"] == sum(share >= 0.25 for share in shares)


def test_window_network_confined_to_one_layer_touches_one() -> None:
    """A source planted in layer 1 only must not be reported as spanning the window."""
    X, *_ = planted(seed=4, n_voxels=600)
    rng = np.random.default_rng(1)
    data = {0: rng.normal(size=X.shape), 1: X, 2: rng.normal(size=X.shape)}
    fn = FunctionalNetworks(5, n_init=2, mode="window", window_size=3, random_state=0, progress=False).fit(data)
    table = window_table(fn, threshold=3.0)
    assert (table["layers_touched"].apply(lambda t: t == [1])).sum() >= 4


def _images(fig) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """The arrays a figure's axes show (colour bars excluded), in axes order."""
    return [np.asarray(im.get_array(), dtype=float) for ax in fig.axes for im in ax.get_images()]


def test_layer_maps_show_each_map_folded_into_a_grid(fitted) -> None:
    import matplotlib.pyplot as plt

    fn, _, _ = fitted
    fig = plot_layer_maps(fn, 0, n_maps=2, kinds=("all",))
    images = _images(fig)
    width = fn.maps_[0].shape[1]
    cols = int(np.ceil(np.sqrt(width)))
    assert len(images) == 2 and all(im.shape == (int(np.ceil(width / cols)), cols) for im in images)
    for m, im in enumerate(images):  # row-major fold of map m, NaN after its last channel
        np.testing.assert_array_equal(im.ravel()[:width], fn.maps_[0][m])
        assert np.isnan(im.ravel()[width:]).all()
    assert [ax.get_ylabel() for ax in fig.axes[:2]] == ["map 0", "map 1"]
    plt.close(fig)


def test_digital_brain_rows_are_layers_sorted_or_thresholded() -> None:
    import matplotlib.pyplot as plt

    scores = {0: np.arange(10.0), 1: np.array([5.0, 0.0, 7.0, 1.0, 6.0, 2.0, 3.0, 4.0])}
    fig = plot_digital_brain(scores, threshold=4)
    (key,) = _images(fig)
    np.testing.assert_array_equal(key[0], [1, 1, 1, 1, 1, 0, 0, 0, 0, 0])  # 9..5 are above 4
    np.testing.assert_array_equal(key[1, :8], [1, 1, 1, 0, 0, 0, 0, 0])  # 7, 6, 5; sorted first
    assert np.isnan(key[1, 8:]).all()  # the narrower layer is padded
    plt.close(fig)
    fig = plot_digital_brain(scores, sort=False)
    (raw,) = _images(fig)
    np.testing.assert_array_equal(raw[1, :8], scores[1])
    assert fig.axes[0].get_xlabel() == "channel"
    plt.close(fig)
