"""Tests of funcprune.ica.FunctionalNetworks against planted sources and nilearn's CanICA."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from funcprune._fastica import _randomized_svd_torch
from funcprune._io import ArtefactError
from funcprune.agreement import match_maps
from funcprune.ica import FunctionalNetworks, ICAConvergenceWarning, zscore_time_in_place
from funcprune.run.artefacts import load_networks, save_networks
from funcprune.store import ActivationStore, ActivationWriter

N_SOURCES, N_VOXELS, N_TOKENS = 5, 2000, 300


def planted(seed: int = 0, n_sources: int = N_SOURCES, n_voxels: int = N_VOXELS,
            n_tokens: int = N_TOKENS, noise: float = 0.05):
    """X = time courses @ sparse Laplacian sources + noise.

    Returns X (T, V), the sources (k, V), the time courses (T, k) and the sources as
    they appear in the z-scored data (each voxel divided by its std over time):
    z-scoring rescales every voxel, so these, not the raw sources, are what any
    CanICA on z-scored data can recover.
    """
    rng = np.random.default_rng(seed)
    sources = rng.laplace(size=(n_sources, n_voxels)) * (rng.random((n_sources, n_voxels)) < 0.1)
    courses = rng.normal(size=(n_tokens, n_sources))
    X = courses @ sources + noise * rng.normal(size=(n_tokens, n_voxels))
    return X, sources, courses, sources / X.std(axis=0)


def is_signed_permutation(corr: np.ndarray, tol: float = 0.05) -> bool:
    """|corr| is a permutation matrix up to ``tol``."""
    a = np.abs(corr)
    return bool(np.all((a > 1 - tol) | (a < tol)) and np.all((a > 1 - tol).sum(0) == 1)
                and np.all((a > 1 - tol).sum(1) == 1))


@pytest.fixture(scope="module")
def planted_data():
    return planted()


@pytest.fixture(scope="module")
def planted_fit(planted_data):
    X = planted_data[0]
    return FunctionalNetworks(N_SOURCES, n_init=4, random_state=0, progress=False).fit(X)


# -- 1. planted sources ----------------------------------------------------------------
def test_recovers_planted_sources(planted_data, planted_fit):
    X, sources, courses, sources_z = planted_data
    maps = planted_fit.maps_[0]
    assert maps.shape == (N_SOURCES, N_VOXELS) and maps.dtype == np.float32
    corr = np.corrcoef(sources_z, maps)[:N_SOURCES, N_SOURCES:]
    assert is_signed_permutation(corr, tol=0.1), np.round(corr, 2)
    _, matched = match_maps(sources_z, maps)
    assert matched.min() > 0.95, matched
    # maps are z-scored over voxels, peak positive, ordered by explained variance
    np.testing.assert_allclose(maps.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(maps.std(axis=1), 1, atol=1e-5)
    assert np.all(maps.max(axis=1) >= -maps.min(axis=1))
    ev = planted_fit.explained_variance_[0]
    assert np.all(np.diff(ev) <= 0) and ev.sum() <= 1.0
    assert planted_fit.convergence_[0]["status"] == "ok"
    # time courses by least squares (transform) recover the planted ones
    _, matched_courses = match_maps(courses.T, planted_fit.transform(X).T)
    assert matched_courses.min() > 0.99, matched_courses
    # transform z-scores its input: per-voxel affine rescaling changes nothing
    scale = np.random.default_rng(3).uniform(0.5, 4.0, size=N_VOXELS)
    np.testing.assert_allclose(planted_fit.transform(X * scale + 7.0), planted_fit.transform(X),
                               atol=1e-8)


# -- 2. agreement with nilearn's CanICA ------------------------------------------------
def test_agrees_with_nilearn_canica(planted_data, planted_fit):
    nib = pytest.importorskip("nibabel")
    from nilearn.decomposition import CanICA

    X = planted_data[0]
    grid = (10, 10, 20)  # voxels laid out in a 3-D grid; C order matches the masker's
    assert np.prod(grid) == N_VOXELS
    img = nib.Nifti1Image(X.T.reshape(*grid, N_TOKENS), np.eye(4))
    mask = nib.Nifti1Image(np.ones(grid, dtype=np.int8), np.eye(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn's own notices about the toy image
        canica = CanICA(mask=mask, n_components=N_SOURCES, smoothing_fwhm=None, do_cca=False,
                        threshold=None, n_init=4, random_state=0, standardize="zscore_sample",
                        detrend=False, standardize_confounds=False, verbose=0).fit(img)
    reference = canica.components_
    corr = np.corrcoef(reference, planted_fit.maps_[0])[:N_SOURCES, N_SOURCES:]
    assert is_signed_permutation(corr, tol=0.01), np.round(corr, 3)
    _, matched = match_maps(reference, planted_fit.maps_[0])
    # measured: every matched |corr| > 0.99999 (both find the same sources)
    assert matched.min() > 0.999, matched
    # same sign convention (peak positive): matched maps correlate positively
    pairs, _ = match_maps(reference, planted_fit.maps_[0])
    signed = [np.corrcoef(reference[i], planted_fit.maps_[0][j])[0, 1] for i, j in pairs]
    assert min(signed) > 0.999


# -- 3. reproducibility ----------------------------------------------------------------
def test_same_random_state_is_byte_identical(planted_data, planted_fit):
    again = FunctionalNetworks(N_SOURCES, n_init=4, random_state=0, progress=False).fit(planted_data[0])
    assert np.array_equal(again.maps_[0], planted_fit.maps_[0])
    assert again.seed_ == planted_fit.seed_


def test_other_random_state_matches(planted_data, planted_fit):
    other = FunctionalNetworks(N_SOURCES, n_init=4, random_state=123, progress=False).fit(planted_data[0])
    assert other.seed_ != planted_fit.seed_
    assert not np.array_equal(other.maps_[0], planted_fit.maps_[0])
    _, matched = match_maps(planted_fit.maps_[0], other.maps_[0])
    assert matched.min() > 0.9, matched


def test_layer_results_do_not_depend_on_other_layers(planted_data):
    X = planted_data[0]
    both = FunctionalNetworks(N_SOURCES, n_init=2, random_state=5, progress=False).fit({0: X, 1: X[:, ::-1]})
    only = FunctionalNetworks(N_SOURCES, n_init=2, random_state=5, layers=[1], progress=False).fit(
        {0: X, 1: X[:, ::-1]})
    assert list(only.maps_) == [1]
    assert np.array_equal(both.maps_[1], only.maps_[1])


# -- 4. groups, bad input, convergence -------------------------------------------------
def test_groups_keep_texts_whole():
    rng = np.random.default_rng(1)
    lengths = rng.integers(5, 40, size=17)
    doc_ids = np.repeat(np.arange(17) + 100, lengths)
    X = rng.normal(size=(len(doc_ids), 30))
    fn = FunctionalNetworks(3, n_groups=4, n_init=1, max_iter=50, random_state=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ICAConvergenceWarning)  # Gaussian noise: no sources
        fn.fit(X, doc_ids=doc_ids)
    assert len(fn.groups_) == 4 and fn.n_groups_used_ == {0: 4}
    seen = []
    for group in fn.groups_:
        start, stop = group["rows"]
        assert set(doc_ids[start:stop]) == set(group["docs"])  # whole texts only
        assert group["n_tokens"] == stop - start == np.isin(doc_ids, group["docs"]).sum()
        seen += group["docs"]
    assert sorted(seen) == list(range(100, 117))
    assert fn.maps_[0].shape == (4 * 3, 30)
    assert np.array_equal(fn.map_groups_[0], np.repeat(np.arange(4), 3))
    with pytest.raises(ValueError, match="n_groups=18 exceeds the number of texts"):
        FunctionalNetworks(3, n_groups=18, progress=False).fit(X, doc_ids=doc_ids)


def test_array_groups_split_rows_evenly(planted_data):
    fn = FunctionalNetworks(N_SOURCES, n_groups=2, n_init=2, random_state=0, progress=False)
    fn.fit(planted_data[0])
    assert [g["rows"] for g in fn.groups_] == [[0, 150], [150, 300]]
    assert fn.n_groups_used_ == {0: 2} and fn.maps_[0].shape == (2 * N_SOURCES, N_VOXELS)
    # each half recovers the planted sources on its own
    for g in range(2):
        _, matched = match_maps(planted_data[3], fn.maps_[0][fn.map_groups_[0] == g])
        assert matched.min() > 0.9, (g, matched)


def test_nan_input_raises_naming_layer_and_group(planted_data):
    X = planted_data[0].copy()
    X[200, 7] = np.nan
    with pytest.raises(ValueError, match=r"layer 3, group 1: 1 non-finite"):
        FunctionalNetworks(N_SOURCES, n_groups=2, progress=False).fit({3: X})


def test_constant_voxels_become_zero_not_nan(planted_data):
    X = planted_data[0][:, :300].copy()
    X[:, :4] = 2.5  # constant voxels
    Z = X.copy()
    assert zscore_time_in_place(Z).sum() == 4
    assert np.all(Z[:, :4] == 0) and np.isfinite(Z).all()
    fn = FunctionalNetworks(3, n_init=1, random_state=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ICAConvergenceWarning)
        fn.fit(X)
    assert np.isfinite(fn.maps_[0]).all()
    assert fn.convergence_[0]["n_constant_voxels"] == 4


def test_global_mode_is_reported():
    """A mode shared by every voxel is almost removed by centring: warned, recorded."""
    rng = np.random.default_rng(0)
    X = rng.laplace(size=(300, 500)) + 50 * rng.normal(size=(300, 1))
    fn = FunctionalNetworks(4, n_init=2, random_state=0, progress=False)
    with pytest.warns(ICAConvergenceWarning, match="nearly constant over voxels"):
        fn.fit(X)
    assert fn.convergence_[0]["whitening_condition"] < 1e-2


def test_non_convergence_warns_and_is_recorded(planted_data):
    fn = FunctionalNetworks(N_SOURCES, n_groups=2, n_init=2, max_iter=1, random_state=0, progress=False)
    with pytest.warns(ICAConvergenceWarning) as caught:
        fn.fit(planted_data[0])
    messages = [str(w.message) for w in caught if w.category is ICAConvergenceWarning]
    for group in (0, 1):
        assert any(m.startswith(f"layer 0, group {group}: FastICA did not converge in 2 of 2")
                   for m in messages), messages
    assert [r["status"] for r in fn.convergence_] == ["not_converged", "not_converged"]
    assert all(r["converged"] == [False, False] for r in fn.convergence_)
    for r in fn.convergence_:  # the sparsest restart is kept, as in CanICA
        assert r["sparsity"][0] != r["sparsity"][1]
        assert r["selected"] == int(np.argmin(r["sparsity"]))
    assert fn.n_groups_used_ == {0: 2}  # kept (as CanICA), but recorded


def test_nan_run_is_discarded_and_counted(planted_data, monkeypatch):
    import funcprune._fastica as fastica_module

    calls = {"n": 0}
    real = fastica_module.FastICA

    class FirstGroupDiverges(real):  # every restart of group 0 returns NaN
        def fit_transform(self, X, y=None):
            calls["n"] += 1
            out = super().fit_transform(X)
            return np.full_like(out, np.nan) if calls["n"] <= 2 else out

    monkeypatch.setattr(fastica_module, "FastICA", FirstGroupDiverges)
    fn = FunctionalNetworks(N_SOURCES, n_groups=2, n_init=2, random_state=0, progress=False)
    with pytest.warns(ICAConvergenceWarning, match=r"layer 0, group 0: every FastICA restart"):
        fn.fit(planted_data[0])
    assert fn.n_groups_used_ == {0: 1}
    assert fn.maps_[0].shape == (N_SOURCES, N_VOXELS) and set(fn.map_groups_[0]) == {1}
    assert [r["status"] for r in fn.convergence_] == ["discarded", "ok"]


def test_bad_parameters_are_named():
    X = np.zeros((10, 5))
    with pytest.raises(ValueError, match="mode='voxel' is not supported"):
        FunctionalNetworks(mode="voxel", progress=False).fit(X)
    with pytest.raises(ValueError, match="n_components=8 exceeds"):
        FunctionalNetworks(8, progress=False).fit(np.random.default_rng(0).normal(size=(10, 5)))
    with pytest.raises(ValueError, match="window_size=3"):
        FunctionalNetworks(2, mode="window", progress=False).fit(X)


# -- 5. ActivationStore input, both modes, save/load -----------------------------------
WIDTH, KINDS = 50, ("act", "up")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ActivationStore:
    rng = np.random.default_rng(7)
    lengths = rng.integers(20, 60, size=12)
    n_tokens = int(lengths.sum())
    doc_ids = np.repeat(np.arange(12), lengths).astype(np.int32)
    identity = {"model": {"name": "synthetic"}, "dataset": "planted", "text_ids": list(range(12)),
                "dtype": "float32", "kinds": list(KINDS), "layers": [0, 1],
                "widths": {"0": WIDTH, "1": WIDTH}, "max_tokens": 64, "drop_first_token": False}
    writer = ActivationWriter(tmp_path_factory.mktemp("store"), identity)
    data = {layer: planted(seed=10 + layer, n_sources=3, n_voxels=2 * WIDTH, n_tokens=n_tokens)[0]
            for layer in (0, 1)}
    for start in range(0, n_tokens, 100):  # several batches
        rows = slice(start, min(start + 100, n_tokens))
        blocks = {(layer, kind): data[layer][rows, k * WIDTH:(k + 1) * WIDTH]
                  for layer in data for k, kind in enumerate(KINDS)}  # kind-major voxels
        writer.append(blocks, np.zeros(rows.stop - rows.start), doc_ids[rows])
    return writer.finish()


def test_store_layer_mode(store):
    fn = FunctionalNetworks(3, n_groups=2, n_init=2, random_state=0, progress=False).fit(store)
    assert sorted(fn.maps_) == [0, 1] and fn.window_maps_ == {}
    for layer in (0, 1):
        assert fn.maps_[layer].shape == (2 * 3, 2 * WIDTH)
        assert np.array_equal(fn.voxel_channels_[layer], np.tile(np.arange(WIDTH), 2))
        truth = planted(seed=10 + layer, n_sources=3, n_voxels=2 * WIDTH, n_tokens=store.n_tokens)[3]
        _, matched = match_maps(truth, fn.maps_[layer][:3])
        assert matched.min() > 0.8, matched
    docs = store.doc_ids
    for group in fn.groups_:
        start, stop = group["rows"]
        assert set(docs[start:stop]) == set(group["docs"])
    assert fn.input_["kind"] == "store"


def test_store_window_mode(store):
    fn = FunctionalNetworks(3, mode="window", window_size=2, n_init=2, random_state=0,
                            progress=False).fit(store)
    assert fn.maps_ == {} and list(fn.window_maps_) == [0]
    assert fn.window_maps_[0].shape == (3, 4 * WIDTH)
    assert np.array_equal(fn.window_voxel_layers_[0], np.repeat([0, 1], 2 * WIDTH))
    assert np.array_equal(fn.window_voxel_channels_[0], np.tile(np.arange(WIDTH), 4))
    assert fn.convergence_[0]["layers"] == [0, 1]
    X = np.concatenate([store.layer(0), store.layer(1)], axis=1)
    assert fn.transform(X).shape == (store.n_tokens, 3)


def test_save_load_round_trip(store, tmp_path):
    fn = FunctionalNetworks(3, n_groups=2, n_init=2, random_state=0, progress=False).fit(store)
    save_networks(fn, tmp_path / "networks")
    back = load_networks(tmp_path / "networks")
    assert back.get_params() == fn.get_params()
    for name in ("maps_", "voxel_channels_", "map_groups_", "explained_variance_"):
        a, b = getattr(fn, name), getattr(back, name)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert back.n_groups_used_ == fn.n_groups_used_ and back.groups_ == fn.groups_
    assert back.convergence_ == fn.convergence_
    X = np.asarray(store.layer(1))
    np.testing.assert_array_equal(back.time_courses(X, 1), fn.time_courses(X, 1))
    (tmp_path / "networks" / "networks.npz").write_bytes(b"damaged")
    with pytest.raises(ArtefactError, match=r"networks.npz: has 7 bytes where \d+ were written.*re-run stage 2"):
        load_networks(tmp_path / "networks")


def test_rank_deficiency_is_a_warning_and_a_status(planted_fit):
    """k above the data's numerical rank: some maps are noise; the fit says so instead of "ok"."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 2)) @ rng.laplace(size=(2, 60))  # 4 time points of rank 2
    with pytest.warns(ICAConvergenceWarning, match=r"numerical rank [12] < n_components=4"):
        fn = FunctionalNetworks(4, n_init=2, random_state=0, progress=False).fit(X)
    record = fn.convergence_[0]
    assert record["status"] == "rank_deficient" and record["rank"] in (1, 2)
    assert len(fn.warnings_) == 1 and fn.warnings_[0].startswith("layer 0, group 0: rank_deficient: ")
    # a full-rank fit has the rank of its k and no warning sentence
    assert planted_fit.convergence_[0]["rank"] == planted_fit.n_components and planted_fit.warnings_ == []


# -- torch SVD (the device="cuda" path), checked on the CPU -----------------------------
def test_torch_svd_spans_the_same_subspace(planted_data):
    pytest.importorskip("torch")
    from sklearn.utils.extmath import randomized_svd

    X = planted_data[0].copy()
    zscore_time_in_place(X)
    reference = randomized_svd(X, N_SOURCES, random_state=0)[2].T
    ours = _randomized_svd_torch(X, N_SOURCES, "auto", seed=0, device="cpu")
    cosines = np.linalg.svd(reference.T @ ours, compute_uv=False)  # principal angles
    assert cosines.min() > 1 - 1e-8, cosines


def test_fast_cube_equals_sklearn_cube() -> None:
    """Our multiplication-based cube gives scikit-learn's fun="cube" result."""
    from sklearn.decomposition import FastICA

    from funcprune._fastica import _cube, _whiten

    X, *_ = planted(seed=3)
    white, _ = _whiten(np.linalg.svd(X - X.mean(0), full_matrices=False)[2][:N_SOURCES].T)
    ours = FastICA(fun=_cube, whiten=False, random_state=0, max_iter=200).fit_transform(white)
    theirs = FastICA(fun="cube", whiten=False, random_state=0, max_iter=200).fit_transform(white)
    np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=1e-9)


# -- convergence: is a stopped run's map what a longer run gives? ------------------------
def test_convergence_check_continues_the_selected_run(planted_data):
    """factor=1 reruns exactly the fit's selected restart; a longer run converges onto the planted sources."""
    from funcprune.agreement import convergence_check

    X, _, _, sources_z = planted_data
    with pytest.warns(ICAConvergenceWarning):
        stopped = FunctionalNetworks(N_SOURCES, n_groups=2, n_init=3, max_iter=2, random_state=0,
                                     progress=False).fit(X)
    same = convergence_check(stopped, X, factor=1)
    assert list(zip(same["layer"], same["group"])) == [(0, 0), (0, 1)]  # every stopped fit, up to max_fits
    assert (same["status"] == "not_converged").all() and (same["n_iter_longer"] == 2).all()
    assert np.allclose(same["map_corr_min"], 1.0, atol=1e-5) and np.allclose(same["key_overlap"], 1.0)
    longer = convergence_check(stopped, X, factor=100, max_fits=1)
    assert len(longer) == 1 and bool(longer["converged_longer"][0]) and longer["n_iter_longer"][0] < 200
    assert longer["map_corr_min"][0] < 1 - 1e-3  # the stopped maps were still moving: the check shows it
    converged = FunctionalNetworks(N_SOURCES, n_groups=2, n_init=3, max_iter=200, random_state=0,
                                   progress=False).fit(X)
    assert [r["status"] for r in converged.convergence_] == ["ok", "ok"]
    assert convergence_check(converged, X).empty  # nothing stopped: nothing to check by default
    again = convergence_check(converged, X, layers=[0], factor=5)  # a converged run does not move
    assert np.allclose(again["map_corr_min"], 1.0, atol=1e-5)
    assert (again["n_iter_longer"] == [r["n_iter"][r["selected"]] for r in converged.convergence_]).all()
    with pytest.raises(ValueError, match=r"layers \[7\] were not fitted"):
        convergence_check(converged, X, layers=[7])
    with pytest.raises(ValueError, match="factor must be a positive integer; got 0"):
        convergence_check(converged, X, factor=0)


def test_top_overlap_counts_shared_key_neurons():
    from funcprune.agreement import top_overlap

    a = np.arange(10.0)
    assert top_overlap(a, a, 0.2) == 1.0
    assert top_overlap(a, -a, 0.2) == 0.0
    b = a.copy()
    b[[9, 0]] = b[[0, 9]]  # the top channel swapped with the last: one of the top two lost
    assert top_overlap(a, b, 0.2) == 0.5


def test_seed_agreement_puts_converged_and_stopped_layers_side_by_side(planted_data):
    from funcprune.agreement import seed_agreement

    X = planted_data[0]
    arrays = {0: X, 1: planted(seed=3)[0]}
    a = FunctionalNetworks(N_SOURCES, n_init=2, max_iter=200, random_state=0, progress=False).fit(arrays)
    b = FunctionalNetworks(N_SOURCES, n_init=2, max_iter=200, random_state=1, progress=False).fit(arrays)
    table = seed_agreement(a, b)
    assert list(table["layer"]) == [0, 1] and table["converged"].all()
    assert (table["restarts_converged"] == 1.0).all()
    assert (table["map_corr_min"] > 0.95).all() and (table["key_overlap"] > 0.9).all()  # planted: recovered twice
    assert seed_agreement(a, a)["key_overlap"].eq(1.0).all()
    with pytest.warns(ICAConvergenceWarning):
        stopped = FunctionalNetworks(N_SOURCES, n_init=2, max_iter=1, layers=[1], random_state=1,
                                     progress=False).fit(arrays)
    mixed = seed_agreement(a, stopped)
    assert list(mixed["layer"]) == [1] and not mixed["converged"][0]
    assert mixed["restarts_converged"][0] == 0.5  # a's two restarts converged, stopped's two did not


def test_sparsest_converged_restart_beats_a_sparser_stopped_one(planted_data, monkeypatch):
    import funcprune.ica as ica_module

    real = ica_module._fastica_restart
    calls = {"n": 0}

    def first_restart_stopped_and_sparsest(white, seed, max_iter, tol):
        run = real(white, seed, max_iter, tol)
        calls["n"] += 1
        if calls["n"] == 1:  # looks sparsest, but FastICA stopped it
            run.update(converged=False, sparsity=run["sparsity"] / 10, warnings=["ConvergenceWarning: stopped"])
        return run

    monkeypatch.setattr(ica_module, "_fastica_restart", first_restart_stopped_and_sparsest)
    with pytest.warns(ICAConvergenceWarning, match="did not converge in 1 of 3"):
        fn = FunctionalNetworks(N_SOURCES, n_init=3, random_state=0, progress=False).fit(planted_data[0])
    record = fn.convergence_[0]
    assert record["converged"] == [False, True, True] and record["status"] == "ok"
    assert record["selected"] == 1 + int(np.argmin(record["sparsity"][1:]))  # sparsest of the converged
