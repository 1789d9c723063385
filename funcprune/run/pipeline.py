"""Stage 4, high level: prune a model with every method at every ratio, and rebuild any pruned model.

The methods themselves (scorers, allocations, compensation; :func:`~funcprune.methods.make_plan`
and :func:`~funcprune.methods.build_pruned`) are defined in :mod:`funcprune.methods`, the
calibration texts and statistics in :mod:`funcprune.run.calibration`. :func:`prune_all` runs
a grid of methods, ratios and seeds over one run directory (its layout:
:class:`funcprune.run.rundir.RunDir`): it reads the stage-1 manifest (which calibration
texts), the functional networks of stage 2 and the cached activation statistics, and
writes one plan per ``(method, ratio[, seed])``, the compensation biases of ``fn-bias``
and ``flap`` (safetensors and a record) and the index of what was made (ratios,
parameters, widths, digests, seconds).

Plans, not checkpoints: a plan is a few kB, the biases of one compensated model a few
hundred kB, where a checkpoint is the whole model. :func:`rebuild_pruned` turns the dense
model, a plan and its biases back into the pruned model in seconds (equal to what
:func:`~funcprune.methods.build_pruned` gave); :func:`funcprune.checkpoint.save_pruned` exports one as an HF
checkpoint when wanted.

Keys read ``fn_r0.20`` or ``random-s1_r0.10``. Work already done is reused: a plan on
disk equal to the new plan (provenance aside), with its bias file intact (SHA-256
checked against its record), is not recomputed.

Used in the chapter :doc:`/executed/04_structured_pruning`.
"""

from __future__ import annotations

import copy
import gc
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from torch import nn
from tqdm.auto import tqdm

from .._io import ArtefactError, atomic_write_json, canonical_safetensors, json_round_trip, json_sha256, verify_file
from ..adapters import layer_widths
from ..checkpoint import PLAN_FILE
from ..compensation import down_input_moments, set_down_weights
from ..data import Text
from ..evaluate import count_parameters
from ..methods import METHODS, Method, build_pruned, get_method, make_plan, method_key
from ..models import LoadedModel, load_model
from ..plan import PruningPlan, model_identity
from ..prune import prune
from .artefacts import BIASES, load_networks
from .calibration import calibration_data, calibration_statistics, calibration_texts, texts_record
from .rundir import RunDir

__all__ = [
    "INDEX_FORMAT",
    "prune_all",
    "read_index",
    "rebuild_pruned",
]

INDEX_FORMAT = "funcprune-pruned-index/1"
#: The ``format`` in a bias file's own (safetensors) metadata.
BIASES_FILE_FORMAT = "funcprune-biases/1"


# ----------------------------------------------------------------------------------
# Pruning a grid of methods, ratios and seeds
# ----------------------------------------------------------------------------------
def _plan_content(plan: PruningPlan) -> dict[str, Any]:
    """The plan minus its provenance, JSON-normalised: what must match for reuse."""
    data = plan.to_dict()
    data.pop("provenance", None)
    return json_round_trip(data)


def _plan_sha(plan: PruningPlan) -> str:
    return json_sha256(_plan_content(plan))


def read_index(run_dir: str | os.PathLike[str]) -> "Any":
    """The pruned-model index of a run (``run_dir/pruned/index.json``) as a DataFrame.

    One row per pruned model; columns as listed in :func:`prune_all`. Empty (with no
    columns) when nothing was pruned yet.
    """
    import pandas as pd

    run = RunDir(run_dir)
    if not run.index_path.exists():
        return pd.DataFrame()
    return pd.DataFrame(run.index()["entries"])


@dataclass
class _Job:
    key: str
    method: Method
    ratio: float
    seed: int | None
    plan: PruningPlan | None = None


def _check_grid(methods: Sequence[str], ratios: Sequence[float], seeds: Sequence[int]) -> list[Method]:
    if isinstance(methods, str):
        methods = [methods]
    resolved = [get_method(m) for m in dict.fromkeys(methods)]
    if not resolved:
        raise ValueError(f"no methods given; accepted methods: {list(METHODS)}")
    if not ratios:
        raise ValueError("no ratios given")
    for r in ratios:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < float(r) < 1.0:
            raise ValueError(f"ratio {r!r} must be a number in (0, 1)")
    if any(m.seeded for m in resolved) and not seeds:
        raise ValueError("the random method needs at least one seed (seeds=[0, 1, 2])")
    return resolved


def prune_all(model: str | os.PathLike[str] | nn.Module, run_dir: str | os.PathLike[str],
              methods: Sequence[str], ratios: Sequence[float], seeds: Sequence[int] = (0,), *,
              texts: Sequence[str | Text] | None = None, tokenizer: Any = None, networks: Any = None,
              basis: Literal["total", "mlp"] = "total",
              allocation: Literal["per-method", "global", "uniform"] | None = "per-method",
              protected_layers: Sequence[int] | None = None, round_to: int = 1, batch_size: int = 4,
              max_tokens: int = 512, progress: bool = True, source: Mapping[str, Any] | None = None,
              moments: Any = None, replace: bool = False) -> "Any":
    """Prune the dense model with every method at every ratio (and seed); save plans and biases.

    For each ``(method, ratio[, seed])`` the plan is made (all plans first, so a bad
    ratio fails before any work) and written to ``run_dir/plans/<key>.json``; it is
    applied to a fresh copy of the dense model to count its parameters, and for methods
    with bias compensation the down-projection biases of the pruned layers are saved to
    ``run_dir/pruned/biases/<key>.safetensors`` with a record (size, SHA-256). No
    checkpoint is written: :func:`rebuild_pruned` rebuilds any model in seconds. A plan
    on disk equal to the new one (provenance aside), with intact biases, is reused; a
    corrupt bias file is recomputed with a warning naming it. After each model
    ``run_dir/pruned/index.json`` is rewritten atomically. Checkpoint directories an
    earlier version wrote to ``run_dir/pruned/<key>/`` for these keys are deleted.

    Parameters
    ----------
    model : str, path-like or nn.Module
        The dense model: a name for :func:`funcprune.models.load_model`, or a loaded
        model (then pass ``tokenizer`` and ``source``; it is never modified).
    run_dir : str or path-like
        Run directory (see the module docstring).
    methods : sequence of str
        Keys of :data:`funcprune.methods.METHODS`.
    ratios : sequence of float
        Fractions of ``basis`` parameters to remove, each in ``(0, maximum)``.
    seeds : sequence of int, default=(0,)
        Seeds of the ``random`` method (one model per seed).
    texts : sequence of str or Text, optional
        Calibration texts for statistics and progressive compensation; default the
        texts of stage 1 (:func:`funcprune.run.calibration.calibration_texts`).
    tokenizer : transformers tokenizer, optional
        Needed when ``model`` is a module and a method uses texts.
    networks : FunctionalNetworks, optional
        Default: loaded from ``run_dir/networks`` when a method needs them.
    basis, protected_layers, round_to
        Selection settings shared by every method (see :func:`make_plan`).
    allocation : {"per-method", "global", "uniform"}, default="per-method"
        Each method's own allocation (the headline), or one override for all (an ablation).
    batch_size : int, default=4
        Texts per forward pass for statistics and compensation.
    max_tokens : int, default=512
        Truncation length of each calibration text.
    progress : bool, default=True
        Progress bars.
    source : dict, optional
        Where a loaded ``model`` came from (``LoadedModel.source`` of
        :func:`funcprune.models.load_model`): the plans, the statistics cache and the index
        record its name and revision, and every model is pruned against that revision.
        Without it they record no revision (a model built from a config). Ignored when
        ``model`` is a name (the source of the model loaded here is used).
    replace : bool, default=False
        Start a new index: the entries of earlier calls are dropped, so the index lists exactly the models
        of this call (and of later calls with ``replace=False``, such as the decomposition's grid points). Their
        plans and biases stay on disk and are reused when planned again. Stage 4 starts with it, so a model
        that a changed profile no longer asks for (a seed, a ratio) is not evaluated by stage 5.
    moments : funcprune.compensation.DownMoments, optional
        The dense model's down-projection moments on ``texts`` for least-squares grid points
        (``"fn+ls"``); measured here when one is asked for and none is given.

    Returns
    -------
    pandas.DataFrame
        The rows of this call, in grid order (ratio, method, seed). Columns: ``key``,
        ``method``, ``seed``, ``ratio_requested``, ``ratio_reached`` (plan, on
        ``ratio_basis``), ``ratio_basis``, ``allocation``, ``protected_layers``,
        ``params_total_before``/``_after``, ``params_mlp_before``/``_after``,
        ``ratio_total``, ``ratio_mlp`` (measured on the models, compensation biases
        counted), ``widths`` (per layer), ``plan`` (relative to ``run_dir``),
        ``plan_sha256``, ``biases`` (``None``, or the bias file's ``path``, ``size``,
        ``sha256``, ``plan_sha256`` and ``layers``), ``allocation_source``,
        ``seconds`` (build) and ``status`` (``"built"`` or ``"reused"``).

    Raises
    ------
    ValueError
        Unknown method (the accepted ones are listed), a ratio outside ``(0, maximum)``,
        no seed for ``random``.
    FileNotFoundError
        Functional networks or the stage-1 manifest are needed but missing.
    """
    import pandas as pd
    resolved = _check_grid(methods, ratios, seeds)
    run = RunDir(run_dir)
    if isinstance(model, nn.Module):
        dense = model
    else:
        loaded = load_model(str(model))
        dense, source = loaded.model, loaded.source
        tokenizer = tokenizer if tokenizer is not None else loaded.tokenizer
    dense.eval()
    inputs = _stage_inputs(run, dense, resolved, texts=texts, tokenizer=tokenizer, networks=networks,
                           batch_size=batch_size, max_tokens=max_tokens, progress=progress, source=source,
                           moments=moments)
    jobs = [_Job(method_key(m.name, r, s if m.seeded else None), m, float(r), s if m.seeded else None)
            for r in ratios for m in resolved for s in (seeds if m.seeded else [None])]
    for job in jobs:  # every plan first, so that a bad ratio fails before any work
        extra = {"calibration": inputs.record} if job.method.needs_texts else {}
        job.plan = make_plan(job.method, dense, job.ratio, networks=inputs.networks, stats=inputs.stats,
                             seed=job.seed or 0, basis=basis, allocation=allocation,
                             protected_layers=protected_layers, round_to=round_to, settings=extra,
                             source=source)

    previous = run.entries()
    before = count_parameters(dense)
    base_widths = layer_widths(dense)
    entries: dict[str, dict[str, Any]] = {} if replace else {k: e for k, e in previous.items()
                                                             if run.resolve(e["plan"]).exists()}
    rows = []
    bar = tqdm(jobs, desc="pruning", unit="model", disable=not progress)
    for job in bar:
        bar.set_postfix_str(job.key)
        plan = job.plan
        assert plan is not None
        sha = _plan_sha(plan)
        report, biases, seconds, status = _build_or_reuse(run, job, sha, dense, inputs, previous.get(job.key),
                                                          (source or {}).get("revision"))
        entry = {
            "key": job.key, "method": job.method.name, "seed": job.seed,
            "ratio_requested": job.ratio, "ratio_reached": plan.ratio_reached, "ratio_basis": plan.ratio_basis,
            "allocation": plan.allocation, "allocation_source": plan.settings.get("allocation_source"),
            "protected_layers": plan.protected_layers,
            "params_total_before": before["total"], "params_mlp_before": before["mlp"], **report,
            "ratio_total": (before["total"] - report["params_total_after"]) / before["total"],
            "ratio_mlp": (before["mlp"] - report["params_mlp_after"]) / before["mlp"],
            "widths": [len(plan.kept[i]) for i in sorted(base_widths)],
            "plan": run.plan_ref(job.key), "plan_sha256": sha, "biases": biases,
            "seconds": seconds, "status": status,
        }
        entries[job.key] = entry
        rows.append(entry)
        _write_index(run, dense, source, entries)
    bar.close()
    _remove_legacy_checkpoints(run, [job.key for job in jobs])
    return pd.DataFrame(rows)


@dataclass
class _Inputs:
    """What stage 4's methods read besides the dense model (each ``None`` when no method asked for it)."""

    networks: Any
    calibration: Any
    stats: Any
    moments: Any
    record: dict[str, Any] | None  # the calibration texts' record, kept in each plan that used them


def _stage_inputs(run: RunDir, dense: nn.Module, resolved: Sequence[Method], *, texts: Sequence[str | Text] | None,
                  tokenizer: Any, networks: Any, batch_size: int, max_tokens: int, progress: bool,
                  source: Mapping[str, Any] | None, moments: Any) -> _Inputs:
    """Load or measure what the methods need: networks, calibration texts, statistics, down-projection moments."""
    if networks is None and any(m.needs_networks for m in resolved):
        net_dir = run.networks
        if not net_dir.exists():
            raise FileNotFoundError(f"{net_dir} does not exist: methods "
                                    f"{[m.name for m in resolved if m.needs_networks]} need the functional "
                                    "networks of stage 2 (notebooks/02_*.ipynb)")
        networks = load_networks(net_dir)
    calib_texts: list[str] = []
    calibration = None
    stats = None
    if any(m.needs_texts for m in resolved):
        if tokenizer is None:
            raise ValueError("a tokenizer is needed to read the calibration texts: pass tokenizer=")
        chosen = calibration_texts(run) if texts is None else texts
        calib_texts = [t.text if isinstance(t, Text) else str(t) for t in chosen]
        calibration = calibration_data(tokenizer, calib_texts, batch_size=batch_size, max_tokens=max_tokens)
    if any(m.needs_statistics for m in resolved):
        stats = calibration_statistics(run, dense, tokenizer, calib_texts, batch_size=batch_size,
                                       max_tokens=max_tokens, progress=progress, source=source)
    if moments is None and any(m.compensation and m.compensation.needs_moments for m in resolved):
        moments = down_input_moments(dense, tokenizer, calib_texts, batch_size=batch_size, max_tokens=max_tokens,
                                     progress=progress)
    record = texts_record(calib_texts, batch_size, max_tokens) if calib_texts else None
    return _Inputs(networks, calibration, stats, moments, record)


def _build_or_reuse(run: RunDir, job: _Job, sha: str, dense: nn.Module, inputs: _Inputs,
                    old: Mapping[str, Any] | None,
                    revision: str | None) -> tuple[dict[str, int], dict[str, Any] | None, float | None, str]:
    """Write the job's plan (its digest ``sha``) unless the same plan is on disk, and build its model unless it can
    be reused.

    Reused: the same plan (provenance aside) is on disk and, for a compensated method, its biases are a current
    :data:`~funcprune.run.artefacts.BIASES` artefact made from that plan. Returns the parameter counts after
    pruning, the biases' record (or ``None``), the build's seconds and ``"built"`` or ``"reused"``.
    """
    plan = job.plan
    assert plan is not None
    plan_path = run.plan_path(job.key)
    plan_on_disk = plan_path.exists() and _plan_sha(PruningPlan.load(plan_path)) == sha
    if not plan_on_disk:
        plan.save(plan_path)
    biases = _saved_biases(run, job.key, sha) if job.method.compensation else None
    if plan_on_disk and (job.method.compensation is None or biases is not None):
        same = old is not None and old.get("plan_sha256") == sha and (
            biases is None or (old.get("biases") or {}).get("sha256") == biases["sha256"])
        if same:  # the index already holds the counts
            counts = {k: old[k] for k in ("params_total_after", "params_mlp_after")}
            return counts, biases, old.get("seconds"), "reused"
        counts = _count_after(_apply(dense, plan, _read_biases(run, job.key, biases), revision))
        return counts, biases, None, "reused"
    start = time.perf_counter()
    pruned = build_pruned(job.method, dense, plan, calibration=inputs.calibration, stats=inputs.stats,
                          moments=inputs.moments, revision=revision)
    report = _count_after(pruned)
    if job.method.compensation:
        biases = _write_biases(run, job.key, sha, pruned, plan)
    del pruned
    gc.collect()
    return report, biases, round(time.perf_counter() - start, 2), "built"


# ----------------------------------------------------------------------------------
# Plans and biases on disk; rebuilding a pruned model
# ----------------------------------------------------------------------------------


def _count_after(model: nn.Module) -> dict[str, int]:
    counted = count_parameters(model)
    return {"params_total_after": counted["total"], "params_mlp_after": counted["mlp"]}


def _write_biases(run: RunDir, key: str, plan_sha: str, pruned: nn.Module, plan: PruningPlan) -> dict[str, Any]:
    """Save the down-projection biases (and refitted weights) of the layers a compensated plan prunes.

    The file and its record are a :data:`~funcprune.run.artefacts.BIASES` artefact made from the plan
    (``inputs``: its SHA-256); the index's record of them is returned.
    """
    from safetensors.torch import save

    from ..adapters import get_adapter

    adapter = get_adapter(pruned)
    comp = get_method(plan.method).compensation
    refitted = bool(comp and comp.refits)
    tensors = {}
    for i, layer in enumerate(adapter.get_layers(pruned)):
        bias = adapter.module(layer, "mlp.down").bias
        if plan.removed(i) and bias is not None:
            tensors[f"layers.{i}.mlp.down.bias"] = bias.detach().to("cpu").contiguous().clone()
        if plan.removed(i) and refitted:
            weight = adapter.mlp_weight(layer, "mlp.down")
            tensors[f"layers.{i}.mlp.down.weight"] = weight.detach().to("cpu").contiguous().clone()
    path, sidecar = run.bias_paths(key)
    # bytes that depend only on the content: safetensors writes the metadata in a random order
    raw = canonical_safetensors(save(tensors, metadata={"format": BIASES_FILE_FORMAT, "plan_sha256": plan_sha}))
    record = BIASES.write(sidecar, {"biases": (path.name, lambda fh: fh.write(raw))},
                          {"layers": sorted(int(k.split(".")[1]) for k in tensors)}, inputs={"plan_sha256": plan_sha})
    return _index_record(run, sidecar, record)


def _index_record(run: RunDir, sidecar: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """The index's record of a model's biases: the file's path in the run, size, digest, plan and layers."""
    entry = dict(record["biases"])
    path = sidecar.parent / entry.pop("file")
    return {"path": run.relative(path), **entry, "plan_sha256": record["inputs"]["plan_sha256"],
            "layers": record["layers"]}


def _saved_biases(run: RunDir, key: str, plan_sha: str) -> dict[str, Any] | None:
    """The index's record of biases saved for this plan, if intact (:meth:`~funcprune.run.artefacts.Artefact.current`)."""
    sidecar = run.bias_paths(key)[1]
    found = BIASES.current(sidecar, ["biases"], {"plan_sha256": plan_sha})
    return None if found is None else _index_record(run, sidecar, found[0])


def _read_biases(run: RunDir, key: str, record: Mapping[str, Any] | None) -> dict[int, Any]:
    if not record:
        return {}
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = run.resolve(record["path"])
    verify_file(path, record, digest=True, fix=BIASES.fix)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ArtefactError(path, f"cannot be read ({exc})", BIASES.fix) from None
    return dict(tensors)


def _apply(dense: nn.Module, plan: PruningPlan, tensors: Mapping[str, Any], revision: str | None) -> nn.Module:
    """A deep copy of ``dense`` (at ``revision``) pruned by ``plan`` with the saved down biases (and, for
    least-squares compensation, the refitted down weights) set."""
    biases = {int(k.split(".")[1]): v for k, v in tensors.items() if k.endswith(".bias")}
    weights = {int(k.split(".")[1]): v for k, v in tensors.items() if k.endswith(".weight")}
    model = copy.deepcopy(dense)
    prune(model, plan, revision=revision, bias_compensation=biases or None, progress=False)
    if weights:
        set_down_weights(model, weights)
    return model.eval()


def rebuild_pruned(run_dir: str | os.PathLike[str], key: str, dense: nn.Module, *,
                   source: Mapping[str, Any] | None) -> LoadedModel:
    """A pruned model of a run, rebuilt in seconds from the dense model, its plan and its biases.

    Stage 4 (:func:`prune_all`) stores plans and compensation biases, not checkpoints.
    This deep-copies ``dense``, sets the saved down-projection biases and slices the
    channels the plan drops (:func:`funcprune.prune.prune`): the result equals what
    :func:`~funcprune.methods.build_pruned` gave when the plan was made. Export it as an HF checkpoint
    with :func:`funcprune.checkpoint.save_pruned`.

    Parameters
    ----------
    run_dir : str or path-like
        Run directory with ``pruned/index.json``.
    key : str
        The model's key (:func:`~funcprune.methods.method_key`), e.g. ``"fn-bias_r0.20"``.
    dense : nn.Module
        The dense model the plans were made for (any device and dtype; left untouched).
    source : dict or None
        Where ``dense`` came from (``LoadedModel.source`` of :func:`funcprune.models.load_model`),
        required: its revision is checked against the plan's, and it is recorded as the
        pruned model's ``source["dense"]``. ``None`` only for a dense model with no
        recorded provenance (built from a config), whose plans then record no revision.

    Returns
    -------
    funcprune.models.LoadedModel
        ``model`` (in eval mode), ``tokenizer`` ``None`` (the dense model's applies),
        ``source`` (``name`` the key, ``source="rebuilt"``, the plan and bias digests,
        ``dense`` the dense model's source, ``dtype``) and ``plan``. Unpacks as
        ``model, tokenizer``.

    Raises
    ------
    KeyError
        ``key`` is not in the index (the message lists the keys).
    funcprune._io.ArtefactError
        The plan or the bias file is missing, changed or unreadable, naming the file and the fix.
    funcprune.prune.PlanMismatchError
        The plan was made for another model.
    """
    run = RunDir(run_dir)
    entries = run.entries()
    if key not in entries:
        raise KeyError(f"{key!r} is not in {run.index_path}; keys: {sorted(entries)}")
    entry = entries[key]
    plan_path = run.resolve(entry["plan"])
    fix = "delete it and re-run stage 4 (prune_all)"
    if not plan_path.exists():
        raise ArtefactError(plan_path, "is missing", fix)
    plan = PruningPlan.load(plan_path)
    if _plan_sha(plan) != entry["plan_sha256"]:
        raise ArtefactError(plan_path, "differs from the plan the index records (plan_sha256)", fix)
    dense_source = dict(source or {})
    model = _apply(dense, plan, _read_biases(run, key, entry.get("biases")), dense_source.get("revision"))
    return LoadedModel(model, None, {
        "name": key, "source": "rebuilt", "plan_sha256": entry["plan_sha256"],
        "biases_sha256": (entry.get("biases") or {}).get("sha256"),
        "dense": dense_source,
        "dtype": str(next(dense.parameters()).dtype).replace("torch.", ""),
    }, plan)


def _remove_legacy_checkpoints(run: RunDir, keys: Sequence[str]) -> None:
    """Delete checkpoints an earlier layout of stage 4 saved for these keys (they can take gigabytes)."""
    import shutil

    for key in keys:
        folder = run.legacy_checkpoint(key)
        if folder.is_dir() and (folder / PLAN_FILE).exists():
            shutil.rmtree(folder)


def _write_index(run: RunDir, dense: nn.Module, source: Mapping[str, Any] | None,
                 entries: Mapping[str, dict[str, Any]]) -> None:
    order = {name: i for i, name in enumerate(METHODS)}
    ordered = sorted(entries.values(), key=lambda e: (e["ratio_requested"], order.get(e["method"], 99),
                                                      -1 if e["seed"] is None else e["seed"], e["key"]))
    atomic_write_json(run.index_path, {"format": INDEX_FORMAT, "base_model": model_identity(dense, source),
                             "base_widths": list(layer_widths(dense).values()), "entries": ordered})
