"""FunctionalNetworks as a scikit-learn transformer: scikit-learn's estimator checks and the array contract."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import parametrize_with_checks

from funcprune.ica import FunctionalNetworks
from funcprune.run.artefacts import load_networks, save_networks

#: Every check this estimator is expected to fail, and why; all others must pass (xfail_strict: a check
#: listed here that starts passing fails the test, so the list cannot go stale).
EXPECTED_FAILED_CHECKS = {
    "check_methods_subset_invariance": "transform z-scores every voxel over the tokens it is given (CanICA's "
                                       "time course, the method's definition), so a row's output depends on the "
                                       "other rows: one row alone z-scores to 0",
}
# Not listed, because scikit-learn itself skips it: check_array_api_input runs only when SCIPY_ARRAY_API=1 is set
# before scipy is imported (the estimator declares no array-API support, so only numpy is tried; it passes then).


# scikit-learn's toy data (2 to 10 voxels) hold no networks: the estimator says so with ICAConvergenceWarning
@pytest.mark.filterwarnings("ignore::funcprune.ica.ICAConvergenceWarning")
@parametrize_with_checks([FunctionalNetworks(2, n_init=1, random_state=0, progress=False)],
                         expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS, xfail_strict=True)
def test_scikit_learn_estimator_checks(estimator, check) -> None:
    """Each of scikit-learn's checks for a transformer, on a small fit (the whole set runs in about a second)."""
    check(estimator)


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    """120 tokens of 300 voxels: three sparse sources mixed, plus noise (every fit here converges)."""
    rng = np.random.default_rng(0)
    sources = rng.laplace(size=(3, 300)) * (rng.random((3, 300)) < 0.1)
    return rng.normal(size=(120, 3)) @ sources + 0.05 * rng.normal(size=(120, 300))


def small(**params) -> FunctionalNetworks:
    return FunctionalNetworks(3, n_init=2, random_state=0, progress=False, **params)


def test_array_fit_follows_the_transformer_contract(X) -> None:
    fn = small().fit(X)
    assert fn.n_features_in_ == 300 and not hasattr(fn, "feature_names_in_")
    assert 1 <= fn.n_iter_ <= fn.max_iter
    assert fn.n_iter_ == max(r["n_iter"][r["selected"]] for r in fn.convergence_)
    courses = fn.transform(X)
    assert courses.shape == (120, 3) and courses.dtype == np.float64
    np.testing.assert_array_equal(courses, fn.time_courses(X, 0))
    np.testing.assert_array_equal(courses, small().fit_transform(X))
    np.testing.assert_array_equal(fn.transform(X.astype(np.float32)), fn.time_courses(X.astype(np.float32)))
    assert get_tags(fn).transformer_tags.preserves_dtype == ["float64"]
    with pytest.raises(ValueError, match="X has 299 features, but FunctionalNetworks is expecting 300 features"):
        fn.transform(X[:, 1:])
    with pytest.raises(ValueError, match="Reshape your data"):
        fn.transform(X[0])
    with pytest.raises(ValueError, match="Input X contains NaN"):
        fn.transform(np.where(np.eye(120, 300) > 0, np.nan, X))
    assert list(fn.get_feature_names_out()) == ["functionalnetworks0", "functionalnetworks1", "functionalnetworks2"]


def test_set_output_and_feature_names(X) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(X, columns=[f"voxel{i}" for i in range(300)])
    fn = small().set_output(transform="pandas").fit(frame)
    assert list(fn.feature_names_in_) == list(frame.columns)
    out = fn.transform(frame)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == list(fn.get_feature_names_out())
    # the same numbers as the frame's array (np.asarray of a frame is column-major: the fit follows the layout)
    np.testing.assert_array_equal(out.to_numpy(), small().fit(np.asarray(frame)).transform(np.asarray(frame)))
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        fn.transform(X)


def test_several_layers_are_projected_one_at_a_time(X) -> None:
    """transform(X) needs one fitted layer; time_courses(X, layer) picks one of several."""
    fn = small(n_groups=2).fit(X)  # an array first: then a mapping, whose layers have their own widths
    fn.fit({0: X, 2: X[:, ::-1]})
    assert not hasattr(fn, "n_features_in_")
    with pytest.raises(ValueError, match=r"several layers \(or windows\) were fitted \(\[0, 2\]\).*time_courses"):
        fn.transform(X)
    with pytest.raises(ValueError, match="several layers"):
        fn.get_feature_names_out()
    both = fn.time_courses(X[:, ::-1], 2)
    assert both.shape == (120, 6)
    with pytest.raises(TypeError):
        fn.transform(X[:, ::-1], 2)  # a layer is chosen by time_courses, not by scikit-learn's transform
    group = fn.time_courses(X[:, ::-1], 2, group=1)
    assert group.shape == (120, 3) and not np.array_equal(group, fn.time_courses(X[:, ::-1], 2, group=0))
    assert fn.time_courses(X, 0, group=1).shape == (120, 3)
    with pytest.raises(ValueError, match=r"X has 299 features, but the maps of 2 have 300 voxels"):
        fn.time_courses(X[:, 1:], 2)
    with pytest.raises(KeyError, match="1 was not fitted"):
        fn.time_courses(X, 1)
    one = small().fit({5: X})  # one layer of a mapping (or a store): transform(X) is that layer's
    np.testing.assert_array_equal(one.transform(X), one.time_courses(X, 5))


def test_loaded_fit_transforms_as_the_fit(X, tmp_path) -> None:
    fn = small().fit(X)
    back = load_networks(save_networks(fn, tmp_path / "networks"))
    np.testing.assert_array_equal(back.transform(X), fn.transform(X))
    assert back.n_iter_ == fn.n_iter_
