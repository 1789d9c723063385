"""The comparison across models: contrived runs that agree, differ or cannot be matched; stale and broken bundles."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from funcprune.run.bundle import protocol_fingerprint, read_bundle_manifest, write_bundle
from funcprune.book.crossmodel import (across_answer, describe_across, headline_across, licence_notes, networks_across,
                                  provenance_table)
from funcprune.run.runview import RunView, load_views, network_summary, read_summaries, record_summary, view_of_bundle
from funcprune.provenance import __version__

PROTOCOL = {"eval_dataset": {"name": "wiki", "file": "wiki.txt", "sha256": "ab" * 32, "split": "test", "n_words": 10},
            "eval_stream": {"n_tokens": 1000, "sha256": "cd" * 32}, "bos": {"token_id": 1, "rule": "BOS first"},
            "ppl_seq_lens": [128], "eval_max_tokens": 4096, "zero_shot": {"tasks": [], "harness_version": "0.4"},
            "dtype": "float32"}


def _parts(mlp_removed: float) -> dict[str, Any]:
    """A dense model and fn, flap, random at ratio 0.2, each removing ``mlp_removed`` of 100 MLP parameters."""
    parts = {"dense": {"entry": {"method": "dense", "ratio_requested": 0.0},
                       "efficiency": {"params_mlp": 100.0, "params_total": 200.0}}}
    for method in ("fn", "flap", "random"):
        parts[f"{method}-0.2"] = {"entry": {"method": method, "ratio_requested": 0.2, "seed": 0, "ratio_basis": "mlp"},
                                  "efficiency": {"params_mlp": 100 * (1 - mlp_removed),
                                                 "params_total": 200 - 100 * mlp_removed}}
    return parts


def _comparisons(verdicts: dict[str, tuple[float, bool]]) -> pd.DataFrame:
    """Comparisons of fn against each baseline at 0.2: ``{baseline: (estimate, decided)}``."""
    return pd.DataFrame([{"ratio": 0.2, "method": "fn", "baseline": b, "metric": "ppl@128", "estimate": est,
                          "ci_low": est * (1.1 if decided and est > 1 else 0.5), "ci_high": est * (0.9 if decided and
                                                                                              est < 1 else 1.5),
                          "decided": decided, "interval": "windows"} for b, (est, decided) in verdicts.items()])


def _view(name: str, mlp_removed: float, verdicts: dict[str, tuple[float, bool]], **provenance: Any) -> RunView:
    prov = {"protocol": "p1", "funcprune": __version__, "model": {"name": name, "license": "Apache-2.0"}, **provenance}
    return RunView(name, "contrived", prov, {"protocol": PROTOCOL, "models": _parts(mlp_removed)},
                   _comparisons(verdicts))


WORSE, BETTER, UNDECIDED = (2.0, True), (0.3, True), (1.05, False)


# ----------------------------------------------------------------------------------
# Sentences on contrived runs
# ----------------------------------------------------------------------------------
def test_models_that_agree_are_said_to_agree() -> None:
    views = [_view("small", 0.34, {"flap": WORSE, "random": BETTER}),
             _view("other", 0.345, {"flap": WORSE, "random": BETTER})]  # within MATCH_TOL: one fraction
    headline = headline_across(views)
    assert headline["fraction"].nunique() == 1 and len(headline) == 4
    sentences = describe_across(headline)
    assert all("the models agree" in s for s in sentences[:2]) and len(sentences) == 3
    answer = across_answer(headline, "small")
    assert answer.startswith("On other the answer held:") and "worse at 1 of 1" in answer


def test_opposite_decided_answers_are_said_to_differ() -> None:
    views = [_view("small", 0.34, {"flap": WORSE, "random": BETTER}),
             _view("other", 0.34, {"flap": WORSE, "random": WORSE})]
    sentences = describe_across(headline_across(views))
    assert "the models agree" in sentences[0]
    assert "the models differ" in sentences[1] and "2.00x on other (worse)" in sentences[1]
    assert "did not hold" in across_answer(headline_across(views), "small")


def test_an_undecided_answer_holds_only_in_part() -> None:
    views = [_view("small", 0.34, {"flap": WORSE}), _view("other", 0.34, {"flap": UNDECIDED})]
    headline = headline_across(views)
    assert "holds on one model and is undecided on another" in describe_across(headline)[0]
    assert "held in part" in across_answer(headline, "small")


def test_unmatched_fractions_are_never_compared() -> None:
    views = [_view("small", 0.34, {"flap": WORSE}), _view("other", 0.5, {"flap": BETTER})]
    headline = headline_across(views)
    assert headline["fraction"].nunique() == 2
    assert "no two models were measured at the same fraction" in describe_across(headline)[0]
    assert "at no fraction of MLP parameters" in across_answer(headline, "small")


def test_one_model_alone_says_nothing_is_compared() -> None:
    headline = headline_across([_view("small", 0.34, {"flap": WORSE})])
    assert describe_across(headline)[0].startswith("Only one model has current results")
    assert "not measured here" in across_answer(headline, "small")


def test_stale_views_enter_no_table() -> None:
    views = [_view("small", 0.34, {"flap": WORSE}), _view("other", 0.34, {"flap": BETTER})]
    views[1].stale = ["measured under another protocol"]
    assert set(headline_across(views)["model"]) == {"small"}
    assert networks_across(views).index.tolist() == ["small"]
    status = provenance_table(views).loc["status"]
    assert status["small (contrived)"] == "current"
    assert status["other (contrived)"].startswith("stale: measured under another protocol")


def test_licence_notes_name_models_without_an_open_licence() -> None:
    views = [_view("small", 0.34, {}), _view("gemma", 0.34, {}, model={"name": "gemma", "license": "Gemma Terms"})]
    notes = licence_notes(views)
    assert len(notes) == 1 and notes[0].startswith("gemma's weights are under Gemma Terms")


# ----------------------------------------------------------------------------------
# Summaries chapters record
# ----------------------------------------------------------------------------------
def test_summaries_round_trip_and_unknown_sections_are_refused(tmp_path: Path) -> None:
    record_summary(tmp_path, "lesions", {"n_units": np.int64(5), "harm": {"p": np.float32(0.25)}})
    assert read_summaries(tmp_path) == {"lesions": {"section": "lesions", "n_units": 5, "harm": {"p": 0.25}}}
    with pytest.raises(ValueError, match="accepted: .*networks"):
        record_summary(tmp_path, "lesion", {})


def test_network_summary_counts_key_neurons_of_prunable_layers_only() -> None:
    # two layers of 10 channels, voxels act and up; |z| > 3 in 3 channels of layer 0 and 5 of layer 1
    maps, channels = {}, {}
    for layer, n_key in ((0, 3), (1, 5)):
        z = np.zeros((2, 20))
        z[0, :n_key] = 4.0  # act voxels of the first n_key channels
        z[1, 10] = 3.0  # exactly the threshold: not a key neuron (strictly above)
        maps[layer], channels[layer] = z, np.tile(np.arange(10), 2)
    networks = SimpleNamespace(maps_=maps, voxel_channels_=channels)
    summary = network_summary(networks, {0: 10, 1: 10}, threshold=3.0, split_half_median=0.5, seed_median=0.9,
                              median_channels=4, protected=[0])
    assert summary["key_share"] == pytest.approx(5 / 10)
    assert summary["median_share"] == pytest.approx(0.4) and summary["maps_per_layer"] == 2


# ----------------------------------------------------------------------------------
# Bundles on disk: provenance, round trip, stale, broken, duplicate
# ----------------------------------------------------------------------------------
def _run(tmp_path: Path, name: str, *, protocol: dict[str, Any] = PROTOCOL, verdict: tuple[float, bool] = WORSE,
         licence: str = "Apache-2.0") -> Path:
    run = tmp_path / name
    (run / "results").mkdir(parents=True)
    record = {"protocol": protocol, "protocol_id": "x", "models": _parts(0.34),
              "dense_model": {"name": name, "source": "registry", "license": licence, "path": str(run / "model")},
              "environment": {"funcprune": __version__, "git_commit": "0123456789abcdef", "platform": "Linux"}}
    (run / "results" / "results.json").write_text(json.dumps(record))
    _comparisons({"flap": verdict}).to_csv(run / "results" / "comparisons.csv", index=False)
    record_summary(run, "networks", {"key_share": 0.1, "split_half_median": 0.5})
    return run


def test_bundle_round_trip_keeps_what_the_comparison_reads(tmp_path: Path) -> None:
    run = _run(tmp_path, "other")
    manifest = write_bundle(run, tmp_path / "bundles" / "other.tar.gz")
    provenance = manifest["provenance"]
    assert provenance["protocol"] == protocol_fingerprint(PROTOCOL)
    assert provenance["model"]["path"] == "model" or not provenance["model"]["path"].startswith(str(tmp_path))
    assert provenance["commit"] == "0123456789abcdef" and read_bundle_manifest(tmp_path / "bundles" / "other.tar.gz")
    view = view_of_bundle(tmp_path / "bundles" / "other.tar.gz")
    assert view.label == "other" and view.summaries["networks"]["key_share"] == 0.1
    pd.testing.assert_frame_equal(view.comparisons, pd.read_csv(run / "results" / "comparisons.csv"))


def test_protocol_fingerprint_ignores_the_models_tokens_only() -> None:
    other_tokens = {**PROTOCOL, "eval_stream": {"n_tokens": 7, "sha256": "ef" * 32}, "bos": {"token_id": 2,
                                                                                              "rule": "BOS first"}}
    assert protocol_fingerprint(other_tokens) == protocol_fingerprint(PROTOCOL)
    assert protocol_fingerprint({**PROTOCOL, "ppl_seq_lens": [64]}) != protocol_fingerprint(PROTOCOL)


def test_load_views_marks_stale_names_broken_and_skips_duplicates(tmp_path: Path) -> None:
    here = _run(tmp_path, "small")
    bundles = tmp_path / "bundles"
    write_bundle(_run(tmp_path, "other", verdict=BETTER), bundles / "a-other.tar.gz")
    write_bundle(_run(tmp_path, "third", protocol={**PROTOCOL, "ppl_seq_lens": [64]}), bundles / "b-third.tar.gz")
    write_bundle(_run(tmp_path, "small-again"), bundles / "c-small.tar.gz")
    (bundles / "d-broken.tar.gz").write_bytes(b"not a bundle")
    # the same model as this build's, measured the same way: the build's own run is shown instead
    same = _run(tmp_path / "dup", "small")
    write_bundle(same, bundles / "e-same.tar.gz")
    views, notes = load_views(here, bundles)
    labels = {v.label: v for v in views}
    assert list(labels) == ["small", "other", "third", "small-again"]
    assert labels["other"].stale == [] and labels["third"].stale[0].startswith("measured under protocol")
    assert any(n.startswith("d-broken.tar.gz was left out") for n in notes)
    assert any(n.startswith("e-same.tar.gz holds small measured as this build's run") for n in notes)
    headline = headline_across(views)
    assert set(headline["model"]) == {"small", "other", "small-again"}
    assert "the models differ" in describe_across(headline)[0]


def test_a_tampered_bundle_member_is_named(tmp_path: Path) -> None:
    import io
    import tarfile

    path = tmp_path / "b.tar.gz"
    write_bundle(_run(tmp_path, "other"), path)
    with tarfile.open(path, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w:gz") as tar:
        for member, data in members:
            if member.name == "results/comparisons.csv":
                data = data.replace(b"2.0", b"0.5")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    with pytest.raises(Exception, match="results/comparisons.csv differs from its manifest record"):
        view_of_bundle(path)


def test_chapter_7_runs_again_when_a_bundle_is_added_or_replaced(tmp_path: Path) -> None:
    from funcprune.book.workflow import _read_inputs

    params = {"run_dir": "runs/x", "bundles_dir": str(tmp_path / "bundles")}
    empty = _read_inputs(params)
    write_bundle(_run(tmp_path, "other"), tmp_path / "bundles" / "other.tar.gz")
    added = _read_inputs(params)
    write_bundle(_run(tmp_path / "again", "other", verdict=BETTER), tmp_path / "bundles" / "other.tar.gz")
    replaced = _read_inputs(params)
    assert empty != added != replaced and list(added["bundles_read"]) == ["other.tar.gz"]
    assert _read_inputs({"run_dir": "runs/x"}) == {}  # chapters that read no bundle: keys unchanged


def test_the_comparison_bundle_holds_what_chapter_7_reads_and_no_bulk(tmp_path: Path) -> None:
    from funcprune.run.bundle import COMPARISON, bundle_files

    run = _run(tmp_path, "other")
    for bulky in ("networks/networks.npz", "plans/fn_r0.20.json", "stats/stats.npz"):
        (run / bulky).parent.mkdir(parents=True, exist_ok=True)
        (run / bulky).write_bytes(b"x" * 1000)
    (run / "networks" / "networks.json").write_text("{}")
    assert "plans/fn_r0.20.json" in bundle_files(run)
    small = bundle_files(run, COMPARISON)
    assert small == ["networks/networks.json", "results/comparisons.csv", "results/results.json",
                     "summary/networks.json"]
    manifest = write_bundle(run, tmp_path / "small.tar.gz", only=COMPARISON)
    assert manifest["only"] == list(COMPARISON) and sorted(manifest["files"]) == small
    assert view_of_bundle(tmp_path / "small.tar.gz").summaries["networks"]["key_share"] == 0.1


def test_fractions_of_all_parameters_are_matched_only_where_models_reach_them() -> None:
    views = [_view("small", 0.34, {"flap": WORSE}), _view("other", 0.34, {"flap": WORSE})]
    same_total = describe_across(headline_across(views))
    assert "1 fraction(s) hold more than one model" in same_total[1]
    views[1].record["models"] = {k: {**p, "efficiency": {**p["efficiency"], "params_total": 150.0}}
                                 if k != "dense" else p for k, p in _parts(0.34).items()}
    other_total = describe_across(headline_across(views))
    assert "no two models were measured at the same fraction of all parameters" in other_total[1]
