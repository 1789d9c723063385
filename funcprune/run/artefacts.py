"""The one artefact contract of a run: data files, and a record written last that names them.

An artefact of a run is one or more data files and a JSON record beside them, written after
them, that holds the artefact's ``format``, its own fields, the ``inputs`` it was made from
(digests and settings, when it is reused by them) and, for each data file, its name, size and
SHA-256 (:func:`funcprune._io.file_record`). Every file is written atomically and the record
last, so an interrupted write leaves whole files, and a record that no longer matches its files is
refused when read: half an artefact is never used.

:meth:`Artefact.read` checks the record's format and every file's size and digest, and names a
bad file with the fix. :meth:`Artefact.stale` is **the one reuse rule** of the run and book layers:
an artefact is reused when its record is of this format, records exactly these inputs and every
file matches its record; a missing one is built, and a damaged one is built again
(:meth:`Artefact.current` warns, naming the file).

The artefacts of a run that follow the contract: the functional networks of stage 2
(:func:`save_networks`, :func:`load_networks`), the dense model's channel statistics
(:func:`save_statistics`, :func:`load_statistics`, reused by
:func:`funcprune.run.calibration.calibration_statistics`) and the compensation of each pruned
model (:data:`BIASES`, in :mod:`funcprune.run.pipeline`) and each model's measurements of stage 5
(:func:`save_part`, :func:`load_part`, reused by :func:`funcprune.run.results.evaluate_run` for the same
protocol, model and tier). The core objects only turn themselves into plain data and back
(:meth:`funcprune.ica.FunctionalNetworks.to_dict`, ``arrays`` and ``from_record``; the fields of
:class:`funcprune.scoring.ChannelStatistics`): they know no file, digest or reuse rule. The stage
runner of the book, :func:`funcprune.book.buildcache.run_stage`, records each executed notebook
as an artefact made from its stage key, and reuses it by the same rule.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, Sequence, overload

import numpy as np

from .._io import (ArtefactError, atomic_open, atomic_write_json, file_record, json_round_trip, json_text, read_json,
                   verify_file)
from ..ica import NETWORKS_FORMAT, FunctionalNetworks
from ..scoring import ChannelStatistics

__all__ = ["Artefact", "BIASES", "NETWORKS", "PART", "STATISTICS", "load_networks", "load_part", "load_statistics",
           "part_record", "save_networks", "save_part", "save_statistics"]

#: Writes one data file's bytes to an open binary file.
Writer = Callable[[BinaryIO], None]


@dataclass(frozen=True)
class Artefact:
    """One kind of artefact: its format, what it is called in messages, and how to recover it.

    Parameters
    ----------
    format : str
        The ``format`` its record declares; a record of another format is refused.
    what : str
        What it is, a plural noun for messages ("networks": "no networks saved there", "building networks again").
    fix : str
        What to do when it is missing or damaged ("re-run stage 2 ...").
    """

    format: str
    what: str
    fix: str

    def write(self, record_path: str | os.PathLike[str], files: Mapping[str, tuple[str, Writer]],
              fields: Mapping[str, Any], inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write the data files, then the record: ``format``, ``fields``, ``inputs``, one entry per file.

        Parameters
        ----------
        record_path : str or path-like
            The JSON record; the data files go beside it (its folder is created).
        files : mapping of str to (str, callable)
            ``role -> (file name, writer)``; the record holds ``role: {"file", "size", "sha256"}``.
        fields : mapping
            The artefact's own fields, recorded after ``format``.
        inputs : mapping, optional
            What it was made from, compared by :meth:`current`; not recorded when ``None``.

        Returns
        -------
        dict
            The record as written.
        """
        record_path = Path(record_path)
        record_path.parent.mkdir(parents=True, exist_ok=True)
        for name, writer in files.values():
            with atomic_open(record_path.parent / name) as fh:
                writer(fh)
        return self.record(record_path, {role: name for role, (name, _) in files.items()}, fields, inputs)

    def record(self, record_path: str | os.PathLike[str], files: Mapping[str, str], fields: Mapping[str, Any],
               inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Record data files already written beside ``record_path`` (atomically, e.g. by papermill); see :meth:`write`.

        Parameters
        ----------
        files : mapping of str to str
            ``role -> file name`` (in the record's folder).

        Returns
        -------
        dict
            The record as written (atomically, after the files).
        """
        record_path = Path(record_path)
        entries = {role: {"file": name, **file_record(record_path.parent / name)} for role, name in files.items()}
        record = {"format": self.format, **fields, **({} if inputs is None else {"inputs": json_round_trip(inputs)}),
                  **entries}
        atomic_write_json(record_path, record)
        return record

    def read(self, record_path: str | os.PathLike[str], roles: Sequence[str]) -> tuple[dict[str, Any], dict[str, Path]]:
        """The record, checked, and the path of each data file, each checked against its size and SHA-256.

        Raises
        ------
        FileNotFoundError
            There is no record (nothing was written there).
        funcprune._io.ArtefactError
            The record is not valid JSON or of another format, records no size for a file, or a
            file is missing, truncated or changed: the message names the file and :attr:`fix`.
        """
        record_path = Path(record_path)
        if not record_path.exists():
            raise FileNotFoundError(f"{record_path} does not exist: no {self.what} saved there; {self.fix}")
        record = read_json(record_path, fix=self.fix)
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        if found != self.format:
            raise ArtefactError(record_path, f"has format {found!r}, expected {self.format!r} (another version of "
                                             "funcprune)", self.fix)
        paths = {}
        for role in roles:
            entry = record.get(role)
            if not isinstance(entry, dict) or "size" not in entry or "file" not in entry:
                raise ArtefactError(record_path, f"records no size for its {role} file (written by an older "
                                                 "funcprune)", self.fix)
            paths[role] = record_path.parent / entry["file"]
            verify_file(paths[role], entry, digest=True, fix=self.fix)
        return record, paths

    def stale(self, record_path: str | os.PathLike[str], roles: Sequence[str], inputs: Mapping[str, Any]) -> str | None:
        """The one reuse rule: ``None`` when the artefact was made from exactly ``inputs`` and is intact, else why not.

        The reasons: no record (never built, or its build was interrupted), a record made from other
        inputs, or a damaged or foreign artefact (the :class:`~funcprune._io.ArtefactError`, naming the file).
        """
        return self._check(record_path, roles, inputs)[1]

    def reusable(self, record_path: str | os.PathLike[str], roles: Sequence[str],
                 inputs: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """:meth:`stale` and the checked record in one reading: ``(record, None)`` or ``(None, reason)``."""
        found, reason, _ = self._check(record_path, roles, inputs)
        return (found[0] if found else None), reason

    def current(self, record_path: str | os.PathLike[str], roles: Sequence[str],
                inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Path]] | None:
        """The checked artefact if :meth:`stale` finds nothing against it, else ``None`` (build it).

        A damaged artefact also gives ``None``, with a warning that names the file (build it again).
        """
        found, _, damage = self._check(record_path, roles, inputs)
        if damage is not None:
            warnings.warn(f"building {self.what} again: {damage}", stacklevel=2)
        return found

    def _check(self, record_path: str | os.PathLike[str], roles: Sequence[str], inputs: Mapping[str, Any]
               ) -> tuple[tuple[dict[str, Any], dict[str, Path]] | None, str | None, ArtefactError | None]:
        if not Path(record_path).exists():
            return None, f"no record of {self.what}", None
        try:
            record, paths = self.read(record_path, roles)
        except ArtefactError as exc:
            return None, f"{self.what} unusable ({exc})", exc
        if record.get("inputs") != json_round_trip(inputs):
            return None, f"{self.what} made from other inputs", None
        return (record, paths), None, None


def _npz(arrays: Mapping[str, np.ndarray]) -> Writer:
    return lambda fh: np.savez(fh, **arrays)


# ----------------------------------------------------------------------------------
# The functional networks (stage 2)
# ----------------------------------------------------------------------------------
NETWORKS = Artefact(NETWORKS_FORMAT, "networks",
                    "re-run stage 2 (notebooks/02_functional_networks.ipynb) to fit the networks again")
#: The record and the arrays file of a networks folder.
NETWORKS_RECORD, NETWORKS_ARRAYS = "networks.json", "networks.npz"


def save_networks(networks: FunctionalNetworks, path: str | os.PathLike[str]) -> Path:
    """Write a fit to a folder: ``networks.npz``, then ``networks.json`` (its summary and the arrays' record).

    Parameters
    ----------
    networks : FunctionalNetworks
        A fitted estimator.
    path : str or path-like
        The folder (created if needed).

    Returns
    -------
    pathlib.Path
        The folder.
    """
    summary = networks.to_dict()
    summary.pop("format")
    NETWORKS.write(Path(path) / NETWORKS_RECORD, {"arrays": (NETWORKS_ARRAYS, _npz(networks.arrays()))}, summary)
    return Path(path)


def load_networks(path: str | os.PathLike[str]) -> FunctionalNetworks:
    """Read a fit written by :func:`save_networks`, its arrays checked against their size and SHA-256.

    Raises
    ------
    FileNotFoundError
        No ``networks.json`` in ``path``.
    funcprune._io.ArtefactError
        The record is corrupt or of another format, or the arrays file is missing, truncated
        or changed, naming the file and the fix.
    """
    record, paths = NETWORKS.read(Path(path) / NETWORKS_RECORD, ["arrays"])
    with np.load(paths["arrays"]) as npz:
        arrays = {name: npz[name] for name in npz.files}
    return FunctionalNetworks.from_record(record, arrays)


# ----------------------------------------------------------------------------------
# The dense model's channel statistics (stages 3 and 4)
# ----------------------------------------------------------------------------------
STATISTICS = Artefact("funcprune-stats/1", "channel statistics",
                      "delete it and re-run the stage that measured them (stage 3, notebooks/03_key_neurons.ipynb, "
                      "or channel_statistics)")
STATISTICS_RECORD, STATISTICS_ARRAYS = "stats.json", "stats.npz"
_MOMENTS = ("mean", "var", "sq_norm")


def save_statistics(stats: ChannelStatistics, path: str | os.PathLike[str],
                    inputs: Mapping[str, Any] | None = None) -> Path:
    """Write statistics to a folder: ``stats.npz``, then ``stats.json`` (with ``inputs`` when given)."""
    arrays = {f"{name}_{i}": getattr(stats, name)[i] for name in _MOMENTS for i in stats.layers}
    STATISTICS.write(Path(path) / STATISTICS_RECORD, {"arrays": (STATISTICS_ARRAYS, _npz(arrays))},
                     {"layers": stats.layers, "n_tokens": stats.n_tokens, "source": stats.source}, inputs)
    return Path(path)


@overload
def load_statistics(path: str | os.PathLike[str]) -> ChannelStatistics: ...


@overload
def load_statistics(path: str | os.PathLike[str], inputs: Mapping[str, Any]) -> ChannelStatistics | None: ...


def load_statistics(path: str | os.PathLike[str], inputs: Mapping[str, Any] | None = None) -> ChannelStatistics | None:
    """Statistics written by :func:`save_statistics`, checked; with ``inputs``, only if made from them.

    Parameters
    ----------
    path : str or path-like
        The folder.
    inputs : mapping, optional
        When given, the reuse rule (:meth:`Artefact.current`): ``None`` unless the statistics were
        made from exactly these inputs and are intact (a damaged file is named in a warning).

    Raises
    ------
    FileNotFoundError, funcprune._io.ArtefactError
        Without ``inputs``: no record, or a damaged or foreign one (naming the file and the fix).
    """
    record_path = Path(path) / STATISTICS_RECORD
    if inputs is None:
        found: tuple[dict[str, Any], dict[str, Path]] | None = STATISTICS.read(record_path, ["arrays"])
    else:
        found = STATISTICS.current(record_path, ["arrays"], inputs)
    if found is None:
        return None
    record, paths = found
    with np.load(paths["arrays"]) as data:
        moments = {name: {int(i): data[f"{name}_{i}"] for i in record["layers"]} for name in _MOMENTS}
    return ChannelStatistics(**moments, n_tokens=int(record["n_tokens"]), source=record["source"])


# ----------------------------------------------------------------------------------
# The compensation of a pruned model (stage 4)
# ----------------------------------------------------------------------------------
#: A bias file's record (version 2: the file's record and the plan it was made from, as for every artefact).
BIASES = Artefact("funcprune-biases/2", "compensation biases",
                  "delete it and re-run stage 4 (prune_all recomputes the biases)")


# ----------------------------------------------------------------------------------
# One model's measurements (stage 5)
# ----------------------------------------------------------------------------------
#: A results part's record: the part file, made from the evaluation protocol, the model's identity and its tier.
PART = Artefact("funcprune-part-record/1", "results of this model",
                "run stage 5 again (evaluate_run evaluates the model again)")


def part_record(path: str | os.PathLike[str]) -> Path:
    """The record of the part ``results/parts/<key>.json``: ``results/parts/<key>.record.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.record.json")


def save_part(path: str | os.PathLike[str], part: Mapping[str, Any], inputs: Mapping[str, Any]) -> Path:
    """Write one model's part (indented JSON, as it is copied into ``results.json``), then its record."""
    data = json_text(part).encode("utf-8")
    PART.write(part_record(path), {"part": (Path(path).name, lambda fh: fh.write(data))}, {"key": part.get("key")},
               inputs)
    return Path(path)


def load_part(path: str | os.PathLike[str], inputs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The part at ``path`` if it was made from exactly ``inputs`` and is intact (the reuse rule), else ``None``.

    A damaged part (edited, truncated, or its record lost its file) is named in a warning and evaluated again.
    """
    found = PART.current(part_record(path), ["part"], inputs)
    return None if found is None else read_json(found[1]["part"])
