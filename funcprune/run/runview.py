"""What the comparison across models reads of one run: the summaries chapters record, and a run as a view.

Chapters 2, 4 and 6 record their headline statistics in ``summary/<section>.json``
(:func:`record_summary`: the networks' size, stability and key neurons; the first position's weight in
the mean a bias adds; the lesion verdict). A :class:`RunView` is what chapter 7 reads of a run: its
results, comparisons, decomposition choices, summaries and provenance, either from this build's run
directory (:func:`view_of_run`) or from a bundle, verified member by member, without unpacking it
(:func:`view_of_bundle`). :func:`load_views` reads this build's run and every bundle of a folder and
marks a bundle measured another way (another protocol fingerprint or funcprune version) as stale.

Used by :mod:`funcprune.book.crossmodel` and the chapters :doc:`/executed/02_functional_networks`,
:doc:`/executed/04_structured_pruning`, :doc:`/executed/06_ablations` and :doc:`/executed/07_across_models`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .._io import ArtefactError, atomic_write_json, read_json
from .bundle import read_bundle_manifest, run_provenance
from .rundir import RunDir
from ..tables import DENSE_KEY

__all__ = ["SECTIONS", "RunView", "load_views", "network_summary", "read_summaries", "record_summary", "view_of_bundle",
           "view_of_run"]

#: Chapter summaries a run records for this comparison (section -> what writes it).
SECTIONS = {"networks": "chapter 2 (functional networks)", "compensation": "chapter 4 (what a bias compensation adds)",
            "lesions": "chapter 6 (the lesion test)"}
#: How to rebuild a stale or broken bundle.
FIX = "rebuild it with this funcprune: make models (the shipped models) or make bundle PROFILE=... (a run of yours)"


# ----------------------------------------------------------------------------------
# What chapters record
# ----------------------------------------------------------------------------------
def record_summary(run_dir: str | os.PathLike[str], section: str, values: Mapping[str, Any]) -> Path:
    """Write a chapter's headline statistics to ``summary/<section>.json`` (atomically).

    Parameters
    ----------
    run_dir : str or path
        The run directory.
    section : str
        One of :data:`SECTIONS`.
    values : mapping
        JSON-serialisable after ``str`` of anything else (NumPy scalars become numbers).

    Raises
    ------
    ValueError
        An unknown section, naming the accepted ones.
    """
    if section not in SECTIONS:
        raise ValueError(f"unknown summary section {section!r}; accepted: {sorted(SECTIONS)}")
    clean = json.loads(json.dumps(values, default=_plain))
    return atomic_write_json(RunDir(run_dir).summary_path(section), {"section": section, **clean})


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def read_summaries(run_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Every summary a run recorded, by section (missing sections are absent)."""
    run = RunDir(run_dir)
    return {s: read_json(run.summary_path(s)) for s in SECTIONS if run.summary_path(s).exists()}


def network_summary(networks: Any, widths: Mapping[int, int], *, threshold: float, split_half_median: float,
                    seed_median: float, median_channels: float, protected: Sequence[int]) -> dict[str, Any]:
    """Chapter 2's numbers for the comparison across models.

    Parameters
    ----------
    networks : FunctionalNetworks
        The fitted networks (``maps_``, ``voxel_channels_``).
    widths : dict[int, int]
        Channels of every layer.
    threshold : float
        ``|z|`` above which a channel is a key neuron (strictly, as :func:`funcprune.scoring.key_neuron_scores`).
    split_half_median, seed_median : float
        Median map correlation between two halves of the text and between two seeds.
    median_channels : float
        Channels of the median network.
    protected : sequence of int
        Layers never pruned (left out of the key-neuron share).

    Returns
    -------
    dict
        ``n_layers``, ``maps_per_layer``, ``median_channels``, ``median_share`` (of a layer's
        median width), ``key_share`` (key neurons among the prunable layers' channels),
        ``split_half_median``, ``seed_median``, ``threshold``.
    """
    from ..scoring import is_key, key_neuron_scores

    scores = key_neuron_scores(networks.maps_, networks.voxel_channels_, widths)
    prunable = [layer for layer in scores if layer not in set(protected)]
    keys = sum(int(is_key(scores[layer], threshold).sum()) for layer in prunable)
    channels = sum(int(widths[layer]) for layer in prunable)
    maps = [np.asarray(m).shape[0] for m in networks.maps_.values()]
    return {"n_layers": len(networks.maps_), "maps_per_layer": int(np.median(maps)) if maps else 0,
            "median_channels": float(median_channels),
            "median_share": float(median_channels) / float(np.median(list(widths.values()))),
            "key_share": keys / channels if channels else float("nan"),
            "split_half_median": float(split_half_median), "seed_median": float(seed_median),
            "threshold": float(threshold)}


@dataclass
class RunView:
    """What the comparison reads of one run.

    Attributes
    ----------
    label : str
        How the page names the run (the model's name).
    origin : str
        ``"this build"`` or the bundle's file name.
    provenance : dict
        :func:`funcprune.run.bundle.run_provenance` (plus ``funcprune``, the version that wrote the bundle).
    record : dict
        ``results/results.json``.
    comparisons : pandas.DataFrame
        ``results/comparisons.csv``.
    choices : dict or None
        ``pruned/decomposition.json`` (the ridge and the strongest baseline).
    summaries : dict
        :func:`read_summaries`.
    stale : list of str
        Why the run cannot be set beside this build's (empty when it can).
    """

    label: str
    origin: str
    provenance: dict[str, Any]
    record: dict[str, Any]
    comparisons: pd.DataFrame
    choices: dict[str, Any] | None = None
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)

    @property
    def parts(self) -> dict[str, Any]:
        """Per-model records (``results.json["models"]``)."""
        return self.record["models"]

    @property
    def metric(self) -> str:
        """The perplexity at the shortest window, every model's metric."""
        return f"ppl@{min(int(s) for s in self.record['protocol']['ppl_seq_lens'])}"

    def removed(self, key: str) -> dict[str, float]:
        """Fractions of MLP and of all parameters that model ``key`` removed."""
        eff, dense = self.parts[key]["efficiency"], self.parts[DENSE_KEY]["efficiency"]
        return {"mlp_removed": 1 - eff["params_mlp"] / dense["params_mlp"],
                "total_removed": 1 - eff["params_total"] / dense["params_total"]}

    def key_of(self, method: str, ratio: float) -> str | None:
        """The first model of ``method`` at ``ratio`` (seed 0 first), or None."""
        keys = sorted((p["entry"].get("seed") or 0, k) for k, p in self.parts.items()
                      if p["entry"]["method"] == method and abs(float(p["entry"]["ratio_requested"]) - ratio) < 1e-9)
        return keys[0][1] if keys else None


def _label(provenance: Mapping[str, Any]) -> str:
    return str((provenance.get("model") or {}).get("name") or "unknown model")


def view_of_run(run_dir: str | os.PathLike[str]) -> RunView:
    """This build's run, read from its directory (stage 5 must have run)."""
    run = RunDir(run_dir)
    provenance = run_provenance(run)
    if provenance is None:
        raise ArtefactError(run.results_json, "does not exist", "run chapter 5 first (make notebooks)")
    from ..provenance import __version__

    choices = read_json(run.decomposition_record) if run.decomposition_record.exists() else None
    return RunView(_label(provenance), "this build", {**provenance, "funcprune": __version__},
                   run.results_record(), pd.read_csv(run.comparisons_csv), choices, read_summaries(run))


def view_of_bundle(path: str | os.PathLike[str]) -> RunView:
    """A run read from its bundle in memory, every member checked against the manifest's SHA-256.

    Raises
    ------
    ArtefactError
        Not a bundle, a member that differs from its record, or no results in it.
    """
    manifest = read_bundle_manifest(path)
    records = manifest["files"]
    wanted = [RunDir.RESULTS_JSON, RunDir.COMPARISONS_CSV, RunDir.DECOMPOSITION,
              *(f"{RunDir.SUMMARY}/{s}.json" for s in SECTIONS)]
    data: dict[str, bytes] = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            if member.name in wanted and member.name in records:
                raw = tar.extractfile(member).read()  # type: ignore[union-attr]
                record = records[member.name]
                if len(raw) != record["size"] or hashlib.sha256(raw).hexdigest() != record.get("sha256"):
                    raise ArtefactError(path, f"member {member.name} differs from its manifest record", FIX)
                data[member.name] = raw
    if RunDir.RESULTS_JSON not in data or RunDir.COMPARISONS_CSV not in data:
        raise ArtefactError(path, "holds no evaluation results (stage 5 had not run when it was written)", FIX)
    provenance = {**(manifest.get("provenance") or {}), "funcprune": manifest.get("funcprune"),
                  "bundled": manifest.get("created")}
    summaries = {s: json.loads(data[f"{RunDir.SUMMARY}/{s}.json"]) for s in SECTIONS
                 if f"{RunDir.SUMMARY}/{s}.json" in data}
    choices = json.loads(data[RunDir.DECOMPOSITION]) if RunDir.DECOMPOSITION in data else None
    return RunView(_label(provenance), Path(path).name, provenance, json.loads(data[RunDir.RESULTS_JSON]),
                   pd.read_csv(io.BytesIO(data[RunDir.COMPARISONS_CSV])), choices, summaries)


def _staleness(view: RunView, reference: RunView) -> list[str]:
    reasons = []
    if not view.provenance.get("protocol"):
        reasons.append("its manifest records no protocol fingerprint (written before bundles recorded provenance)")
    elif view.provenance["protocol"] != reference.provenance["protocol"]:
        reasons.append(f"measured under protocol {view.provenance['protocol']}, this build under "
                       f"{reference.provenance['protocol']} (windows, texts, tiers or tasks differ)")
    if view.provenance.get("funcprune") != reference.provenance.get("funcprune"):
        reasons.append(f"written by funcprune {view.provenance.get('funcprune')}, this build is "
                       f"{reference.provenance.get('funcprune')}")
    return reasons


def load_views(run_dir: str | os.PathLike[str], bundles_dir: str | os.PathLike[str]) -> tuple[list[RunView], list[str]]:
    """This build's run first, then every bundle of ``bundles_dir`` (sorted), each marked stale or not.

    A bundle of the same model and protocol as this build's run is left out (the run is shown), and an
    unreadable one is named; neither stops the chapter.

    Returns
    -------
    views : list of RunView
    notes : list of str
        One sentence per bundle left out, and why.
    """
    here = view_of_run(run_dir)
    views, notes = [here], []
    for path in sorted(Path(bundles_dir).glob("*.tar.gz")):
        try:
            view = view_of_bundle(path)
        except ArtefactError as exc:
            notes.append(f"{path.name} was left out: {exc}")
            continue
        view.stale = _staleness(view, here)
        if view.label == here.label and not view.stale:
            notes.append(f"{path.name} holds {view.label} measured as this build's run, which is shown instead.")
            continue
        views.append(view)
    return views, notes
