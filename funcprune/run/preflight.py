"""Preflight: check a whole run profile in seconds, before stage 1 spends minutes.

:func:`check_profile` reads the model's ``config.json`` (never its weights), builds the
model on the ``meta`` device (shapes only, no memory) and checks every setting against
it and against the machine:

* every key of the profile is a parameter of some notebook (a misspelt one is named with
  the closest declared name: :func:`funcprune.run.profiles.unknown_keys`);
* the model resolves (alias, local directory, hub id) and funcprune has an adapter for
  its family; ``model_dtype`` and ``device`` are valid and available here (the
  validators of :mod:`funcprune.models`, the ones :func:`funcprune.load_model` uses);
* a local checkpoint's ``config.json`` describes the weights beside it: every tensor shape
  the config implies against the ``*.safetensors`` headers (milliseconds, no weight read;
  :func:`funcprune.models.checkpoint_problems`), so swapped or wrong widths are named with
  the path instead of failing in transformers at stage 1;
* every ratio can be reached on ``ratio_basis`` with the protected layers, counted by
  the same functions the plans use (:func:`funcprune.evaluate.count_parameters`,
  :func:`funcprune.plan.channel_parameters`); an unreachable one is reported with the
  maximum and the three ways out (``ratio_basis: mlp``, lower ratios, fewer protected
  layers), a reachable one that empties most prunable channels with a note;
* pruning methods, zero-shot tasks and datasets are known; the calibration split holds
  ``n_texts`` texts; ICA has more time points than maps;
* the disk the run will write fits in the free space, and a rough runtime.

Every problem is listed at once in one :class:`PreflightError`. ``python -m
funcprune.book.workflow run`` calls it before stage 1; ``make preflight PROFILE=...`` runs
it alone.

Why one module: :func:`check_profile` gathers the problems of every stage's keys into
one list so that a user sees all of them at once; the checks share the resolved model,
its meta-device copy and that list, and split apart they would pass all three around.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

__all__ = ["PreflightError", "PreflightReport", "check_profile", "derive_profile", "empty_model", "max_ratio"]

#: A ratio that removes more than this share of the prunable MLP parameters gets a note.
SENSIBLE_SHARE = 0.75
#: Rough sustained forward throughput, FLOP/s: per two CPU cores (fp32, measured ~470 tokens/s
#: on the 135M default model, README) and per GPU (bf16, a conservative share of an H100's peak).
CPU_FLOPS_PER_2_CORES = 1.2e11
GPU_FLOPS = 1.0e14
#: Rough numpy/BLAS throughput of the ICA (CPU), FLOP/s per two cores.
ICA_FLOPS_PER_2_CORES = 2.0e10
#: Tokens scored per zero-shot item (all choices together), a rough mean over the seven tasks.
TOKENS_PER_ITEM = 300
#: Bytes per kept channel index in a JSON plan (digits, comma, space).
PLAN_BYTES_PER_CHANNEL = 7


class PreflightError(ValueError):
    """A profile that cannot run as written; the message lists every problem and its fix."""

    def __init__(self, report: "PreflightReport") -> None:
        self.report = report
        lines = "\n".join(f"  - {p}" for p in report.problems)
        super().__init__(f"profile {report.profile!r} cannot run ({len(report.problems)} "
                         f"problem{'s' if len(report.problems) != 1 else ''}):\n{lines}")


@dataclass
class PreflightReport:
    """What :func:`check_profile` found.

    Attributes
    ----------
    profile : str
        Profile name.
    model : dict
        Name, source, family, layers, MLP widths and parameter counts (from the config).
    max_ratio : dict
        ``{basis: {"protected": r, "unprotected": r}}``: the largest reachable ratio with
        the protected layers and with none.
    disk : dict
        Bytes the run will write, by artefact, plus ``"total"``, ``"existing"`` (already
        in ``run_dir``) and ``"free"``.
    runtime : dict
        Rough seconds per stage and ``"total"`` (within a factor of about three) for the profile's grid of
        methods, ratios and seeds; chapter 5's decomposition and literature protocol and chapter 6's studies are
        not counted (the printed line says so).
    problems : list of str
        What stops the run, each with its fix.
    notes : list of str
        What the run will do that a reader should know.
    """

    profile: str
    model: dict[str, Any] = field(default_factory=dict)
    max_ratio: dict[str, dict[str, float]] = field(default_factory=dict)
    disk: dict[str, int] = field(default_factory=dict)
    runtime: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problems."""
        return not self.problems

    def __str__(self) -> str:
        m = self.model
        lines = [f"preflight of profile {self.profile!r}: {'ok' if self.ok else f'{len(self.problems)} problem(s)'}"]
        if m.get("n_layers"):
            lines.append(f"  model {m['name']} ({m['model_type']}, {m['source']}): {m['n_layers']} layers, "
                         f"MLP width {m['width']}, {m['params_total'] / 1e6:,.1f}M parameters "
                         f"({100 * m['params_embedding'] / m['params_total']:.0f}% embeddings, "
                         f"{100 * m['params_mlp'] / m['params_total']:.0f}% MLP)")
        for basis, r in self.max_ratio.items():
            lines.append(f"  largest reachable ratio of {basis} parameters: {r['protected']:.4f} "
                         f"(protected layers {m.get('protected_layers')}), {r['unprotected']:.4f} with none")
        if self.disk:
            parts = ", ".join(f"{k} {_gb(v)}" for k, v in self.disk.items() if k not in ("total", "free", "existing"))
            lines.append(f"  disk: {_gb(self.disk['total'])} to write ({parts}); {_gb(self.disk['existing'])} "
                         f"already in run_dir; {_gb(self.disk['free'])} free")
        if self.runtime:
            stages = ", ".join(f"{k} {_duration(v)}" for k, v in self.runtime.items() if k != "total")
            lines.append(f"  rough runtime: {_duration(self.runtime['total'])} ({stages}); the profile's grid only: "
                         "chapter 5's decomposition and literature protocol and chapter 6's studies come on top")
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)


def _gb(n: float) -> str:
    return f"{n / 2**30:,.2f} GB" if n >= 2**28 else f"{n / 2**20:,.1f} MB"


def _duration(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


# ----------------------------------------------------------------------------------
# The model, from its config only
# ----------------------------------------------------------------------------------
def empty_model(config: Any) -> nn.Module:
    """The causal LM of ``config`` on the ``meta`` device: every shape, no memory, no weights read.

    Tied embeddings are tied, so parameter counts equal the real model's
    (:func:`funcprune.models.meta_model`).
    """
    from ..models import meta_model

    return meta_model(config)


def max_ratio(model: nn.Module, basis: str = "total", protected_layers: Sequence[int] | None = None, *,
              min_width: int = 1, round_to: int = 1) -> float:
    """The largest fraction of ``basis`` parameters a plan can remove from ``model``.

    Every prunable layer down to its smallest allowed width, counted with the functions
    :func:`funcprune.plan.select_channels` uses (its error message states the same number).

    Parameters
    ----------
    model : nn.Module
        Dense model, e.g. from :func:`empty_model`.
    basis : {"total", "mlp"}
        What the ratio counts.
    protected_layers : sequence of int, optional
        Default: :func:`funcprune.plan.default_protected_layers`.
    min_width, round_to : int
        As for :func:`funcprune.plan.select_channels`.
    """
    from ..adapters import layer_widths
    from ..evaluate import count_parameters
    from ..plan import channel_parameters, default_protected_layers, kept_sizes

    widths = layer_widths(model)
    cost = channel_parameters(model)
    protected = set(default_protected_layers(len(widths)) if protected_layers is None else protected_layers)
    removable = sum((w - kept_sizes(w, min_width, round_to)[-1]) * cost[i]
                    for i, w in widths.items() if i not in protected)
    return removable / count_parameters(model)[basis]


# ----------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------
def _check(problems: list[str], fn: Any, *args: Any) -> Any:
    """Run a validator; record its one-line message as a problem instead of raising."""
    try:
        return fn(*args)
    except (ValueError, OSError, KeyError, TypeError) as err:
        problems.append(str(err).strip("'\""))
        return None


def _ratio_problems(ratios: Sequence[Any], basis: str, limits: Mapping[str, Mapping[str, float]],
                    protected: list[int]) -> tuple[list[str], list[str]]:
    problems, notes = [], []
    limit = limits[basis]["protected"]
    for r in ratios:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1:
            problems.append(f"ratio {r!r} must be a number in (0, 1)")
        elif r > limit:
            other = "mlp" if basis == "total" else "total"
            fixes = [f"set `ratio_basis: {other}` (ratios then count {other.upper() if other == 'mlp' else 'all'} "
                     f"parameters; largest reachable {limits[other]['protected']:.4f})" if
                     limits[other]["protected"] >= r else None,
                     f"lower the ratios to at most {int(limit * 100) / 100:.2f}",
                     f"protect fewer layers (protected_layers= of funcprune.run.pipeline.prune_all; "
                     f"with none protected the largest is {limits[basis]['unprotected']:.4f})"]
            problems.append(f"ratio {r} of {basis} parameters cannot be reached: the largest with protected layers "
                            f"{protected} is {limit:.4f}; fix: " + "; or ".join(f for f in fixes if f))
        elif r > SENSIBLE_SHARE * limit:
            notes.append(f"ratio {r} of {basis} parameters removes {100 * r / limit:.0f}% of the prunable MLP "
                         "parameters: expect a broken model; compare at lower ratios")
    return problems, notes


def _n_models(methods: Sequence[str], ratios: Sequence[Any], seeds: Sequence[Any]) -> int:
    from ..methods import METHODS

    per_ratio = sum(len(seeds) if METHODS[m].seeded else 1 for m in methods if m in METHODS)
    return per_ratio * len(ratios)


def _evaluation_tokens(p: Mapping[str, Any], n_models: int, budgets: Sequence[Any], items: int) -> float:
    """Tokens stage 5 scores: every model at the first window length; the dense model and the models at
    ``full_ratios`` (all, without it) at every length and on the zero-shot items."""
    per_length = [min(int(b or 60_000), 60_000) for b in budgets]
    ratios = [r for r in p.get("ratios", []) if isinstance(r, (int, float))]
    full = p.get("full_ratios")
    share = 1.0 if full is None or not ratios else len([r for r in ratios if r in full]) / len(ratios)
    n_full = 1 + n_models * share
    return ((n_models + 1 - n_full) * (per_length[0] if per_length else 0)
            + n_full * (sum(per_length) + items * TOKENS_PER_ITEM))


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _free_bytes(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _flops_rate(device_map: Any) -> float:
    on_gpu = device_map not in (None, "cpu") and torch.cuda.is_available()
    if on_gpu:
        return GPU_FLOPS * (torch.cuda.device_count() if device_map in ("auto", "balanced", "sequential") else 1)
    return CPU_FLOPS_PER_2_CORES * max(1, (os.cpu_count() or 2)) / 2


def check_profile(profile: str | os.PathLike[str] | Mapping[str, Any], *, strict: bool = True) -> PreflightReport:
    """Check a run profile against the model's config and this machine, in seconds.

    Parameters
    ----------
    profile : str, path or dict
        Profile name (``params/<name>.yaml``), YAML path, or a loaded profile.
    strict : bool, default=True
        Raise :class:`PreflightError` when a problem is found.

    Returns
    -------
    PreflightReport
        Printable (``print(report)``).

    Raises
    ------
    PreflightError
        Listing every problem, each with its fix (``strict=True``).
    """
    from .. import data, model_assets, models, tasks
    from ..evaluate import count_parameters, flops_per_token
    from ..methods import ALLOCATION_CHOICES
    from ..plan import BASES, default_protected_layers
    from ..store import check_storage_dtype
    from .profiles import load_profile, unknown_keys

    p = dict(profile) if isinstance(profile, Mapping) else load_profile(profile)
    report = PreflightReport(profile=str(p.get("profile", "?")))
    problems, notes = report.problems, report.notes
    problems += unknown_keys(p)

    # -- model, dtype, device --------------------------------------------------------------
    dtype = _check(problems, models.check_dtype, p.get("model_dtype", "float32"))
    n_problems = len(problems)
    device_map = _check(problems, models.check_device, p.get("device", "cpu"))
    if isinstance(device_map, str) and device_map in models.DEVICE_MAPS and not torch.cuda.is_available():
        notes.append(f"device {device_map!r} with no GPU: accelerate keeps the model on the CPU")
    if dtype in (torch.float16, torch.bfloat16) and device_map is None and len(problems) == n_problems:
        notes.append(f"model_dtype {p.get('model_dtype')} on the CPU is slow on most processors; "
                     "float32 is the default")
    found = _check(problems, models.model_config, p.get("model", model_assets.DEFAULT_MODEL))
    model = None
    if found is not None:
        config, path, source = found
        mismatched = _check(problems, models.checkpoint_problems, config, path,
                            models.damaged_checkpoint_fix(source))
        problems += mismatched or []
        if mismatched == []:  # config and weights agree (or no weights to compare): build its shapes
            model = _check(problems, empty_model, config)
    _check(problems, check_storage_dtype, p.get("dtype", "float32"))

    # -- data, methods, tasks ------------------------------------------------------------
    for key in ("dataset", "eval_dataset"):
        if key in p:
            _check(problems, data.check_dataset, p[key])
    if p.get("dataset") in data.DATASETS and isinstance(p.get("n_texts"), int):  # offline corpora: cheap to parse
        _check(problems, lambda: data.load_texts(p["dataset"], "calibration", n_texts=p["n_texts"]))
    from ..methods import get_method

    for m in p.get("methods", []):
        _check(problems, get_method, m)
    unknown_tasks = [t for t in p.get("zero_shot_tasks") or [] if t not in tasks.TASKS]
    if unknown_tasks:
        problems.append(f"zero-shot tasks {unknown_tasks} are unknown; known: {list(tasks.TASKS)}")
    limit = p.get("zero_shot_limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        problems.append(f"zero_shot_limit {limit!r} must be a positive integer or null (every item)")
    n_tokens = int(p.get("n_texts", 0) or 0) * int(p.get("max_tokens", 0) or 0)
    k, groups = p.get("n_components"), int(p.get("n_groups", 1) or 1)
    if isinstance(k, int) and n_tokens and k >= n_tokens // groups:
        problems.append(f"n_components {k} needs more time points per group: at most {n_tokens // groups} tokens "
                        f"({p.get('n_texts')} texts x {p.get('max_tokens')} tokens / {groups} groups); lower "
                        "n_components or raise n_texts or max_tokens")

    grid = p.get("needs_grid")
    if grid and isinstance(k, int) and n_tokens:
        from ..needs import Setting, check_grid

        base = _check(problems, lambda: Setting(n_components=k, n_init=p.get("needs_n_init", 1), n_groups=groups))
        for s in (_check(problems, check_grid, grid, base) or []) if base else []:
            per_text = min(int(p["max_tokens"]), s.max_tokens or int(p["max_tokens"])) - int(s.drop_first_token)
            per_group = int(p["n_texts"]) * per_text // s.n_groups
            if s.n_components >= per_group:
                problems.append(f"needs_grid: the setting {s.changes(base) or 'base'} needs more time points per "
                                f"group than its {per_group} tokens; lower its n_components or n_groups")

    def finite(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    for key, rule, ok, example in (("sweep_weights", "at least 0 (0 is FLAP)", lambda v: v >= 0, "[0, 0.5, 1, 2]"),
                                   ("sweep_protect", "above 0 (a |z| threshold)", lambda v: v > 0, "[3.0, 5.0]")):
        values = p.get(key)
        if values is not None and (not isinstance(values, list) or not all(finite(v) and ok(v) for v in values)):
            problems.append(f"{key} {values!r} must be a list of finite numbers, each {rule}; e.g. {example}")
    weights, protect = p.get("sweep_weights"), p.get("sweep_protect")
    if (isinstance(weights, list) and isinstance(protect, list) and not protect
            and not any(finite(w) and w > 0 for w in weights)):
        problems.append(f"sweep_weights {weights!r} and an empty sweep_protect leave chapter 6 no candidate but FLAP; "
                        "add a positive weight or a protect threshold")

    # -- ratios --------------------------------------------------------------------------
    basis, allocation = p.get("ratio_basis", "total"), p.get("allocation", "global")
    round_to = p.get("round_to", 1)
    if basis not in BASES:
        problems.append(f"ratio_basis {basis!r} invalid; choose one of {list(BASES)}")
    if allocation not in ALLOCATION_CHOICES:
        problems.append(f"allocation {allocation!r} invalid; choose one of {list(ALLOCATION_CHOICES)}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        problems.append(f"round_to {round_to!r} must be a positive integer")
        round_to = 1
    if model is None:
        return _finish(report, strict)

    from ..adapters import get_adapter, layer_widths

    widths = layer_widths(model)
    counts = count_parameters(model)
    protected = default_protected_layers(len(widths))
    report.model = {**source, "n_layers": len(widths), "width": max(widths.values()),
                    "family": get_adapter(model).family, "protected_layers": protected,
                    **{f"params_{k}": v for k, v in counts.items()}}
    report.max_ratio = {b: {"protected": max_ratio(model, b, protected, round_to=round_to),
                            "unprotected": max_ratio(model, b, [], round_to=round_to)} for b in BASES}
    ratios = list(p.get("ratios", []))
    if basis in BASES:
        found_problems, found_notes = _ratio_problems(ratios, basis, report.max_ratio, protected)
        problems += found_problems
        notes += found_notes

    # -- disk and runtime ----------------------------------------------------------------
    import numpy as np

    run_dir = Path(p.get("run_dir", "runs/" + report.profile))
    voxels = 2 * sum(widths.values())
    store_bytes = np.dtype(p.get("dtype", "float32")).itemsize if p.get("dtype") in ("float32", "float16") else 4
    weight_bytes = torch.empty(0, dtype=dtype or torch.float32).element_size()
    methods = list(p.get("methods", []))
    n_models = _n_models(methods, [r for r in ratios if isinstance(r, (int, float))], p.get("random_seeds", [0]))
    report.disk = {
        "activations": n_tokens * voxels * store_bytes,
        "networks": int(2 * groups * int(k or 0) * voxels * 4),  # float32 maps, and another seed's for stability
        "plans": n_models * sum(widths.values()) * PLAN_BYTES_PER_CHANNEL,
        # stage 4 keeps plans and compensation biases (one per layer and model), never checkpoints
        "compensation biases": n_models * len(widths) * int(getattr(model.config, "hidden_size", 0) or 0) * weight_bytes,
    }
    report.disk["total"] = sum(report.disk.values())
    report.disk["existing"] = _dir_bytes(run_dir)
    report.disk["free"] = _free_bytes(run_dir)
    if report.disk["total"] - report.disk["existing"] > report.disk["free"]:
        problems.append(f"the run writes about {_gb(report.disk['total'])} but {run_dir} has "
                        f"{_gb(report.disk['free'])} free; free space, point run_dir elsewhere, lower n_texts or "
                        "max_tokens" + (", store activations as `dtype: float16`" if store_bytes > 2 else "")
                        + ", or run fewer methods/ratios")

    rate = _flops_rate(device_map)
    cores = max(1, os.cpu_count() or 2) / 2
    fpt = flops_per_token(model)
    items = sum(min(limit or spec.n_items, spec.n_items) for name, spec in tasks.TASKS.items()
                if name in (p.get("zero_shot_tasks") or []))
    seq_lens = list(p.get("ppl_seq_lens", []))
    budgets = p.get("eval_max_tokens")
    budgets = budgets if isinstance(budgets, list) else [budgets] * len(seq_lens)  # one budget per length, or one
    calib = n_tokens
    width = max(widths.values())
    ica = len(widths) * groups * (4 * (n_tokens / groups) * 2 * width * int(k or 0)
                                  + int(p.get("n_init", 10)) * 200 * 4 * int(k or 0) ** 2 * 2 * width)
    report.runtime = {
        "stage 1": calib * fpt / rate,
        "stage 2": 1.5 * ica / (ICA_FLOPS_PER_2_CORES * cores),
        "stage 4": (3 * calib * fpt + 2 * len(methods) * int(p.get("quick_eval_tokens", 0)) * fpt) / rate,
        "stage 5": _evaluation_tokens(p, n_models, budgets[:len(seq_lens)], items) * fpt / rate,
    }
    report.runtime["total"] = sum(report.runtime.values())
    return _finish(report, strict)


def _finish(report: PreflightReport, strict: bool) -> PreflightReport:
    report.problems[:] = list(dict.fromkeys(report.problems))  # dataset and eval_dataset may fail alike
    if strict and report.problems:
        raise PreflightError(report)
    return report


# ----------------------------------------------------------------------------------
# A profile for another model
# ----------------------------------------------------------------------------------
def _slug(model: str) -> str:
    name = Path(model).name if ("/" in model and Path(model).expanduser().exists()) else model
    return "".join(c if c.isalnum() or c in "-_." else "--" for c in name).strip("-.") or "model"


def derive_profile(base: Mapping[str, Any], model: str) -> tuple[dict[str, Any], list[str]]:
    """``base`` with the model swapped and the settings that depend on the model adapted to it.

    Reads only the new model's config. Each change is returned as a note, for the caller
    to print (never silent):

    * ``run_dir`` becomes ``runs/<model>`` and ``profile`` ``<base>+<model>``;
    * ``stability_layers`` and ``window_layers`` move to the same relative depths;
    * ratios that would remove more than :data:`SENSIBLE_SHARE` of the prunable MLP
      parameters on ``ratio_basis: total`` (embedding-heavy models) switch the basis to
      ``mlp``; ratios still beyond that share on the new basis are dropped (if none is left,
      half the largest reachable ratio is used);
    * on a machine with a GPU, ``device: cuda`` and ``model_dtype: bfloat16``.

    Parameters
    ----------
    base : dict
        A loaded profile (:func:`funcprune.run.profiles.load_profile`).
    model : str
        Registry alias, local checkpoint directory or hub id.

    Returns
    -------
    profile : dict
    notes : list of str

    Raises
    ------
    funcprune.models.ModelNotFoundError, UnsupportedArchitectureError
        As :func:`funcprune.models.model_config`.
    """
    from .. import models
    from ..adapters import layer_widths
    from ..plan import default_protected_layers
    from ..provenance import REPO_ROOT

    config, _, _ = models.model_config(model)
    empty = empty_model(config)
    n = len(layer_widths(empty))
    slug = _slug(model)
    p = dict(base)
    p.update(model=model, profile=f"{base.get('profile', 'profile')}+{slug}", run_dir=str(REPO_ROOT / "runs" / slug))
    notes = [f"profile derived from {base.get('profile')!r} for model {model!r} ({config.model_type}, {n} layers); "
             f"run_dir {p['run_dir']}"]
    old_layers = {k: p[k] for k in ("stability_layers", "window_layers") if k in p}
    if "stability_layers" in p:
        p["stability_layers"] = sorted({min(3, n - 1), n // 2, max(n - 3, 0)})
    if "window_layers" in p:
        width = min(len(p["window_layers"]) or 5, n)
        p["window_layers"] = list(range(max((n - width) // 2, 0), max((n - width) // 2, 0) + width))
    changed = {k: p[k] for k in old_layers if p[k] != old_layers[k]}
    if changed:
        notes.append("layers at the same relative depth: " + ", ".join(f"{k} {old_layers[k]} -> {v}"
                                                                       for k, v in changed.items()))
    protected = default_protected_layers(n)
    limits = {b: max_ratio(empty, b, protected, round_to=int(p.get("round_to", 1))) for b in ("total", "mlp")}
    ratios, basis = list(p.get("ratios", [])), p.get("ratio_basis", "total")
    if basis == "total" and any(r > SENSIBLE_SHARE * limits["total"] for r in ratios):
        share = max(ratios) / limits["total"]
        why = ("are out of reach" if share > 1 else
               f"would remove up to {100 * share:.0f}% of the prunable MLP parameters")
        notes.append(f"ratio_basis total -> mlp: on {model} the ratios {ratios} of all parameters {why} (largest "
                     f"reachable {limits['total']:.4f}, protected layers {protected}); the ratios now count MLP "
                     "parameters only")
        basis = "mlp"
    kept = [r for r in ratios if r <= SENSIBLE_SHARE * limits[basis]]
    if kept != ratios:
        kept = kept or [round(0.5 * limits[basis], 2)]
        notes.append(f"ratios {ratios} -> {kept}: the others would remove more than {100 * SENSIBLE_SHARE:.0f}% of "
                     f"the prunable MLP parameters (largest reachable {limits[basis]:.4f} of {basis} parameters)")
    p.update(ratios=kept, ratio_basis=basis)
    if torch.cuda.is_available() and p.get("device", "cpu") == "cpu":
        p.update(device="cuda", model_dtype="bfloat16")
        notes.append("a GPU is available: device cuda, model_dtype bfloat16")
    return p, notes
