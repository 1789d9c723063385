"""What the faithful method needs: store views equal a second capture, the base is the book's fn, changes are named."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import CharTokenizer, tiny_model

from funcprune import capture_activations
from funcprune.ablation import window_nll
from funcprune.ica import FunctionalNetworks
from funcprune.methods import build_pruned, make_plan
from funcprune.needs import Setting, describe_needs, needs_facts, needs_sweep, plot_needs, setting_scores
from funcprune.store import StoreView, text_positions

TEXTS = ["the cat sat on the mat and looked at the dog", "functional networks in a digital brain",
         "tokens are time points and channels are voxels", "a model is pruned by removing channels",
         "independent components of activations over tokens", "every text is a sequence of characters"]


@pytest.fixture(scope="module")
def store_and_model(tmp_path_factory: pytest.TempPathFactory):
    model = tiny_model("llama")
    store = capture_activations(model, CharTokenizer(), TEXTS, tmp_path_factory.mktemp("s") / "act",
                                progress=False)
    return store, model


def test_text_positions_restart_at_every_text() -> None:
    np.testing.assert_array_equal(text_positions(np.array([3, 3, 5, 5, 5, 7])), [0, 1, 0, 1, 2, 0])
    assert text_positions(np.array([], dtype=np.int32)).size == 0


def test_a_view_of_fewer_tokens_equals_a_second_capture(tmp_path: Path, store_and_model) -> None:
    """Tokens 1..4 of every text, read through a view, are what a capture with those settings stores."""
    store, model = store_and_model
    short = capture_activations(model, CharTokenizer(), TEXTS, tmp_path / "short", max_tokens=5,
                                drop_first_token=True, progress=False)
    position = text_positions(store.doc_ids)
    view = StoreView(store, rows=np.flatnonzero((position > 0) & (position < 5)))
    assert view.n_tokens == short.n_tokens
    np.testing.assert_array_equal(view.token_ids, short.token_ids)
    np.testing.assert_array_equal(view.doc_ids, short.doc_ids)
    for layer in store.layers:
        for kind in store.kinds:
            np.testing.assert_allclose(view.layer(layer, kind)[:], short.layer(layer, kind), rtol=1e-5, atol=1e-6)


def test_the_product_view_is_the_down_projections_input(tmp_path: Path, store_and_model) -> None:
    store, model = store_and_model
    product = capture_activations(model, CharTokenizer(), TEXTS, tmp_path / "p", kinds=("product",),
                                  progress=False)
    view = StoreView(store, kinds=("product",))
    assert view.voxel_channels(0).tolist() == list(range(store.width(0)))
    for layer in store.layers:
        np.testing.assert_allclose(view.layer(layer, "product")[:], product.layer(layer, "product"),
                                   rtol=1e-5, atol=1e-6)


def test_a_full_view_fits_exactly_as_the_store(store_and_model) -> None:
    store, _ = store_and_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = FunctionalNetworks(4, n_init=2, random_state=0, progress=False).fit(store)
        viewed = FunctionalNetworks(4, n_init=2, random_state=0, progress=False).fit(StoreView(store))
    for layer in store.layers:
        np.testing.assert_array_equal(direct.maps_[layer], viewed.maps_[layer])
    assert viewed.input_["kind"] == "view"


def test_bad_views_are_named(store_and_model) -> None:
    store, _ = store_and_model
    with pytest.raises(ValueError, match="cannot be read from this store"):
        StoreView(store, kinds=("down",))
    with pytest.raises(ValueError, match="increasing array of row indices"):
        StoreView(store, rows=np.array([3, 1]))
    with pytest.raises(ValueError, match=r"increasing array of row indices in \[0, "):
        StoreView(store, rows=np.array([store.n_tokens]))


def _windows() -> torch.Tensor:
    return torch.randint(1, 97, (8, 16), generator=torch.Generator().manual_seed(3))


def test_the_base_is_the_books_fn_method_and_the_threshold_rule_changes_nothing(store_and_model) -> None:
    store, model = store_and_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stage2 = FunctionalNetworks(4, n_init=2, random_state=0, progress=False).fit(store)
        base = Setting.of(stage2)
        table = needs_sweep(model, store, _windows(), base=base, ratio=0.1, protected_layers=[], progress=False,
                            fitted={base: stage2}, n_boot=500,
                            grid={"rule": ["threshold"], "n_components": [3, 4],
                                  "combine": [{"n_seeds": 2, "combine": "min"}], "n_groups": [2], "seed": [1]})
    assert list(table["label"]) == ["base", "rule = threshold", "k = 3", "combine = min, seeds = 2", "groups = 2",
                                    "ICA seed = 1"]
    # the base is the stage-2 fit; the threshold rule needs no fit; the two-seed row refits only its second seed,
    # which is the ICA seed row's one fit (reused)
    assert list(table["new_fits"]) == [0, 0, 1, 1, 1, 0]
    # another ICA seed alone: the fit of seed 1 with the base's other settings, scored like any other row
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seed_fit = FunctionalNetworks(4, n_init=2, random_state=1, progress=False).fit(store)
    seed_plan = make_plan("fn", model, 0.1, networks=seed_fit, protected_layers=[])
    np.testing.assert_allclose(table.attrs["window_nll"]["ICA seed = 1"],
                               window_nll(build_pruned("fn", model, seed_plan), _windows()), rtol=1e-12)
    assert table["fit_seconds"].iloc[0] == 0.0 and (table["fit_seconds"].iloc[2:5] > 0).all()
    assert table["fit_seconds"].iloc[5] == 0.0  # reused, not fitted again
    plan = make_plan("fn", model, 0.1, networks=stage2, protected_layers=[])
    reference = window_nll(build_pruned("fn", model, plan), _windows())
    np.testing.assert_allclose(table.attrs["window_nll"]["base"], reference, rtol=1e-12)
    threshold = table.iloc[1]
    assert threshold["channels_changed"] == 0.0 and threshold["estimate"] == pytest.approx(1.0)
    assert (table["ratio_reached"] - 0.1).abs().max() < 0.02  # every variant at the same budget
    assert set(table["better"]) <= {"base", "model", "baseline", "undecided"}
    assert table["changes"].iloc[3] == {"combine": "min", "n_seeds": 2}
    sentences = describe_needs(table, {"FLAP": reference + 0.01})
    assert sentences[0].startswith("At 10% removed the base setting scores perplexity")
    assert any(s.startswith("FLAP at the same ratio scores") for s in sentences)
    assert "rule = threshold keeps exactly the base's channels: the same model." in sentences
    assert any(s.startswith("Of 4 other one-axis changes") for s in sentences)
    assert ((table["converged"] >= 0) & (table["converged"] <= 1)).all()
    fig = plot_needs(table, {"FLAP": reference})
    assert len(fig.axes[0].get_yticklabels()) == len(table) - 1


def test_stability_selection_scores_are_the_lowest_over_fits(store_and_model) -> None:
    store, _ = store_and_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits = [FunctionalNetworks(3, n_init=1, random_state=s, progress=False).fit(store) for s in (0, 1)]
    widths = {layer: store.width(layer) for layer in store.layers}
    union = setting_scores(fits, Setting(n_seeds=2), widths)
    stable = setting_scores(fits, Setting(n_seeds=2, combine="min"), widths)
    one = setting_scores(fits[:1], Setting(), widths)
    for layer in widths:
        assert np.all(stable[layer] <= one[layer] + 1e-12) and np.all(one[layer] <= union[layer] + 1e-12)
        assert np.any(stable[layer] < union[layer])


@pytest.mark.parametrize(("grid", "message"), [
    ({"k": [64]}, r"unknown sweep axes \['k'\]; the axes are \['n_components'"),
    ({"voxels": ["down"]}, r"voxels='down' is not accepted; choose one of \['copies', 'product'\]"),
    ({"n_components": [0]}, "n_components=0 must be a positive integer"),
    ({"seed": [-1]}, "seed=-1 must be an integer >= 0"),
    ({"drop_first_token": ["yes"]}, "drop_first_token='yes' must be true or false"),
    ({"n_components": 16}, r"needs_grid\['n_components'\] must be a list of values"),
    ({"combine": [{"seeds": 2}]}, r"unknown fields \['seeds'\]"),
])
def test_bad_grids_are_named_before_any_fit(store_and_model, grid, message) -> None:
    store, model = store_and_model
    with pytest.raises(ValueError, match=message):
        needs_sweep(model, store, _windows(), base=Setting(n_components=3), grid=grid, ratio=0.1,
                    protected_layers=[], progress=False)


def test_a_store_without_first_tokens_cannot_drop_them_again(tmp_path: Path, store_and_model) -> None:
    _, model = store_and_model
    dropped = capture_activations(model, CharTokenizer(), TEXTS, tmp_path / "d", drop_first_token=True,
                                  progress=False)
    with pytest.raises(ValueError, match="captured without each text's first token already"):
        needs_sweep(model, dropped, _windows(), base=Setting(n_components=3), ratio=0.1, protected_layers=[],
                    grid={"drop_first_token": [True]}, progress=False)
    assert dataclasses.replace(Setting(), rule="threshold").fit_key == Setting()


def test_needs_facts_state_the_sweep_or_why_it_did_not_run() -> None:
    import pandas as pd

    nll = {"base": np.array([3.0, 3.2, 2.9, 3.1]), "k = 3": np.array([3.1, 3.3, 3.0, 3.2])}
    table = pd.DataFrame([
        {"axis": "base", "label": "base", "new_fits": 0, "fit_seconds": 0.0, "converged": 1.0, "ppl": 21.0,
         "channels_changed": 0.0, "estimate": 1.0, "ci_low": 1.0, "ci_high": 1.0, "better": "base"},
        {"axis": "n_components", "label": "k = 3", "new_fits": 1, "fit_seconds": 90.0, "converged": 0.5, "ppl": 23.0,
         "channels_changed": 0.2, "estimate": 1.105, "ci_low": 1.1, "ci_high": 1.11, "better": "baseline"}])
    table.attrs.update({"ratio": 0.2, "window_nll": nll})
    base = Setting(n_components=4, n_init=2)
    references = {"FLAP": nll["base"] - 0.05}
    assert needs_facts(table, references, base=base, ratio=0.2, grid={"n_components": [3]}) == {
        "needs_fit_text": "The refitted rows took 1.5 minutes of ICA.", "needs_ratio": "20%", "needs_n_init": "2",
        "needs_base": "k = 4, 1 group(s), every stored token, both voxel copies",
        "needs_sentences": " ".join(describe_needs(table, references))}
    assert needs_facts(None, base=base, ratio=0.2, grid={})["needs_sentences"] == (
        "This run's profile sweeps no setting (needs_grid is empty; the sweep profile, params/sweep.yaml, runs it).")
    missing = needs_facts(None, base=base, ratio=0.2, grid={"n_components": [3]})
    assert missing["needs_fit_text"] == "No setting was refitted."
    assert missing["needs_sentences"].startswith("The activations of stage 1 are not in this run directory")
