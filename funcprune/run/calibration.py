"""The calibration texts of a run: which texts stage 1 read, and what stages 4 and 5 make of them.

Stage 1 records its texts in the activation manifest (``run_dir/activations/manifest.json``,
see :class:`funcprune.run.rundir.RunDir`). Stage 4 reloads them (:func:`calibration_texts`) for
the activation statistics of ``wanda-sp`` and ``flap`` (:func:`calibration_statistics`,
cached in ``run_dir/stats``) and for progressive bias compensation
(:func:`calibration_data`); every plan made with texts records their checksum
(:func:`texts_record`). Stage 5 reads the same record back (:func:`calibration_record`)
to check each plan against the manifest and the held-out texts against the calibration
texts (:func:`funcprune.heldout.check_disjoint`).

Used in the chapters :doc:`/executed/04_structured_pruning` and :doc:`/executed/06_ablations`.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping, Sequence

from torch import nn

from .._io import read_json
from ..data import DATASETS, HUB_DATASETS, Text, check_dataset, dataset_info, load_texts
from ..plan import model_identity
from ..prune import CalibrationData
from ..scoring import ChannelStatistics, channel_statistics
from .artefacts import load_statistics, save_statistics
from .rundir import RunDir

__all__ = [
    "calibration_data",
    "calibration_record",
    "calibration_statistics",
    "calibration_texts",
    "texts_digest",
    "texts_record",
]


def calibration_texts(run_dir: str | os.PathLike[str]) -> list[Text]:
    """The calibration texts stage 1 used, reloaded through :mod:`funcprune.data`.

    Parameters
    ----------
    run_dir : str or path-like
        Run directory holding ``activations/manifest.json``.

    Returns
    -------
    list of Text
        In the order of the manifest's text ids.

    Raises
    ------
    FileNotFoundError
        No stage-1 manifest.
    ValueError
        The manifest names no registered dataset, its dataset checksum differs from the
        registered one (the texts would not be the same), or an id is not in the corpus.
    """
    manifest = RunDir(run_dir).activation_manifest()
    dataset = manifest.get("dataset") or {}
    name = dataset.get("name")
    if name not in DATASETS and name not in HUB_DATASETS:
        raise ValueError(f"the stage-1 manifest of {run_dir} names dataset {name!r}; registered datasets: "
                         f"{sorted({*DATASETS, *HUB_DATASETS})} (texts passed by hand cannot be reloaded: "
                         "pass texts=)")
    check_dataset(name)  # a hub corpus must be readable now (offline: from the datasets cache)
    expected = dataset_info(name, dataset.get("split", "calibration"), [])["sha256"]
    if dataset.get("sha256") != expected:
        raise ValueError(f"dataset {name!r}: the stage-1 manifest records checksum {dataset.get('sha256')!r}, "
                         f"the registered file has {expected!r}; the calibration texts cannot be reproduced "
                         "(run stage 1 again)")
    ids = [str(i) for i in dataset.get("ids") or manifest.get("text_ids") or []]
    if manifest.get("text_ids") is not None and [str(i) for i in manifest["text_ids"]] != ids:
        raise ValueError("the stage-1 manifest's text_ids differ from its dataset ids")
    if not ids:
        raise ValueError(f"the stage-1 manifest of {run_dir} lists no text ids")
    by_id = {t.id: t for t in load_texts(name, dataset.get("split", "calibration"))}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"text ids {missing[:5]} of the stage-1 manifest are not in the "
                         f"{dataset.get('split')!r} split of {name!r}")
    return [by_id[i] for i in ids]


def calibration_data(tokenizer: Any, texts: Sequence[str | Text], *, batch_size: int = 4,
                     max_tokens: int = 512) -> CalibrationData:
    """Calibration texts for progressive bias compensation, longest first.

    The compensation (like the statistics) sums over tokens, so the order of the texts
    does not matter; grouping texts of similar length into a batch wastes less compute
    on padding (about a fifth less on the default calibration set).

    Returns
    -------
    CalibrationData
    """
    return CalibrationData(tokenizer, _by_length(texts), batch_size=batch_size, max_tokens=max_tokens)


def _by_length(texts: Sequence[str | Text]) -> list[str]:
    """Texts as strings, longest first (ties keep their order): less padding per batch."""
    strings = [t.text if isinstance(t, Text) else str(t) for t in texts]
    return sorted(strings, key=len, reverse=True)


def texts_digest(texts: Sequence[str]) -> str:
    """SHA-256 of calibration texts in order (each UTF-8 encoded and closed by a NUL byte), as plans record it."""
    digest = hashlib.sha256()
    for t in texts:
        digest.update(t.encode("utf-8") + b"\0")
    return digest.hexdigest()


def texts_record(texts: Sequence[str], batch_size: int, max_tokens: int) -> dict[str, Any]:
    """What a plan records of the calibration texts it was made with (``settings["calibration"]``).

    Returns
    -------
    dict
        ``n_texts``, ``sha256`` (:func:`texts_digest`), ``max_tokens`` and ``batch_size``.
    """
    return {"n_texts": len(texts), "sha256": texts_digest(texts), "max_tokens": int(max_tokens),
            "batch_size": int(batch_size)}


def calibration_statistics(run_dir: str | os.PathLike[str], model: nn.Module, tokenizer: Any,
                           texts: Sequence[str | Text], *, batch_size: int = 4, max_tokens: int = 512,
                           progress: bool = True, source: Mapping[str, Any] | None = None) -> ChannelStatistics:
    """Activation statistics of the dense model on the calibration texts, cached in ``run_dir/stats``.

    Computed with :func:`funcprune.scoring.channel_statistics` once (texts batched
    longest first, see :func:`calibration_data`); later calls with the same model
    (name, revision), texts and ``max_tokens`` read the cache.

    Parameters
    ----------
    run_dir : str or path-like
        Run directory; the cache is ``run_dir/stats``.
    model : nn.Module
        The dense model.
    tokenizer : transformers tokenizer
    texts : sequence of str or Text
        The calibration texts.
    batch_size, max_tokens : int
        Texts per forward pass and truncation length of each text.
    progress : bool, default=True
        Progress bar.
    source : dict, optional
        Where ``model`` came from (``LoadedModel.source`` of :func:`funcprune.models.load_model`):
        its name and revision key the cache. Without it only what the model tells (no revision).

    Returns
    -------
    ChannelStatistics
        ``source["calibration"]`` and ``source["model"]`` identify what they were measured on.
    """
    texts = [t.text if isinstance(t, Text) else t for t in texts]
    path = RunDir(run_dir).stats
    ident = model_identity(model, source)
    key = {"model": {k: ident[k] for k in ("name", "model_type", "revision")},
           "calibration": texts_record(texts, batch_size, max_tokens)}
    key["calibration"].pop("batch_size")  # padding is excluded: the batch size does not matter
    cached = load_statistics(path, inputs=key)
    if cached is not None:
        cached.check_model(model)
        return cached
    stats = channel_statistics(model, tokenizer, _by_length(texts), batch_size=batch_size,
                               max_tokens=max_tokens, progress=progress)
    stats.source.update(key)
    save_statistics(stats, path, inputs=key)
    return stats



def calibration_record(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Which texts the run used for calibration, from the stage-1 manifest.

    Also checks every pruning plan of the run's index (``pruned/index.json``) that records
    calibration texts (statistics, bias compensation): their checksum must equal the
    checksum of the manifest's texts, else those models were calibrated on other
    texts and the record says so (``plans_unverified``).

    Returns
    -------
    dict or None
        ``dataset`` (name), ``split``, ``sha256`` (corpus file), ``ids``,
        ``plans_verified`` and ``plans_unverified`` (keys); ``None`` when the run has
        no stage-1 manifest.
    """
    run = RunDir(run_dir)
    manifest_path = run.activation_manifest_path
    if not manifest_path.exists():
        return None
    manifest = run.activation_manifest()
    dataset = manifest.get("dataset") or {}
    ids = [str(i) for i in (dataset.get("ids") or manifest.get("text_ids") or [])]
    record: dict[str, Any] = {"dataset": dataset.get("name"), "split": dataset.get("split"),
                              "sha256": dataset.get("sha256"), "ids": ids, "manifest": str(manifest_path),
                              "plans_verified": [], "plans_unverified": []}
    if not run.index_path.exists():
        return record
    expected = None
    for entry in run.index()["entries"]:
        plan_path = run.resolve(entry.get("plan", ""))
        if not plan_path.is_file():
            continue
        calib = (read_json(plan_path).get("settings") or {}).get("calibration")
        if not calib:
            continue
        if expected is None:
            expected = _manifest_texts_digest(run)
        bucket = "plans_verified" if calib.get("sha256") == expected else "plans_unverified"
        record[bucket].append(entry["key"])
    return record


def _manifest_texts_digest(run: RunDir) -> str | None:
    """Checksum of the stage-1 calibration texts, as plans record it (:func:`texts_record`)."""
    try:
        return texts_digest([t.text for t in calibration_texts(run)])
    except (ValueError, FileNotFoundError):
        return None

