"""Will this machine run the workshop? Checks that take under a minute (``make check-setup``).

One line per check, ``ok``, ``warn`` or ``FAIL``, and a verdict: Python version, CPU cores,
memory, free disk beside the repository, the pinned environment, the offline model files, and one
forward pass of the default model (its speed, against what the workshop profile needs).
Nothing is downloaded and nothing is written.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["Check", "run_checks", "main"]

#: What the workshop profile needs (params/workshop.yaml: about 0.8 GB of run directory).
MIN_DISK_GB = 2.0
MIN_MEMORY_GB = 6.0
#: Tokens per second of the default model's forward pass below which the workshop runs too slowly live.
MIN_TOKENS_PER_S = 150.0


@dataclass(frozen=True)
class Check:
    """One check: ``status`` is ``"ok"``, ``"warn"`` or ``"FAIL"``."""

    name: str
    status: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.status:>4}] {self.name}: {self.detail}"


def _python() -> Check:
    ok = sys.version_info >= (3, 10)
    return Check("Python", "ok" if ok else "FAIL", f"{sys.version.split()[0]}" + ("" if ok else " (3.10+ needed)"))


def _cores() -> Check:
    n = os.cpu_count() or 1
    return Check("CPU cores", "ok" if n >= 2 else "warn", f"{n}" + ("" if n >= 2 else " (2 or more advised)"))


def _memory() -> Check:
    try:
        gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return Check("memory", "warn", "could not be read on this system")
    return Check("memory", "ok" if gb >= MIN_MEMORY_GB else "FAIL",
                 f"{gb:.1f} GiB" + ("" if gb >= MIN_MEMORY_GB else f" ({MIN_MEMORY_GB:g} GiB needed)"))


def _disk(root: Path) -> Check:
    gb = shutil.disk_usage(root).free / 2**30
    return Check("free disk", "ok" if gb >= MIN_DISK_GB else "FAIL",
                 f"{gb:.1f} GiB beside {root.name}/" + ("" if gb >= MIN_DISK_GB else f" ({MIN_DISK_GB:g} GiB needed)"))


def _environment() -> Check:
    try:
        import torch
        import transformers
    except ImportError as exc:
        return Check("environment", "FAIL", f"{exc.name} is missing: run `make venv` (a few minutes, once)")
    return Check("environment", "ok", f"torch {torch.__version__}, transformers {transformers.__version__}")


def _model_and_speed() -> list[Check]:
    try:
        import torch

        from ..model_assets import DEFAULT_MODEL
        from ..models import load_model
    except ImportError as exc:
        return [Check("model files", "FAIL", f"cannot import the package ({exc})")]
    try:
        start = time.perf_counter()
        lm, _ = load_model(DEFAULT_MODEL, dtype="float32")
        loaded = time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 (any failure to load is the answer the participant needs)
        return [Check("model files", "FAIL", f"{type(exc).__name__}: {exc} (run `make assets` once)")]
    checks = [Check("model files", "ok", f"{DEFAULT_MODEL} loaded in {loaded:.1f} s")]
    ids = torch.randint(0, lm.config.vocab_size, (4, 128))
    with torch.no_grad():
        lm(ids[:1, :16])  # warm-up
        start = time.perf_counter()
        lm(ids)
        seconds = time.perf_counter() - start
    speed = ids.numel() / seconds
    checks.append(Check("forward pass", "ok" if speed >= MIN_TOKENS_PER_S else "warn",
                        f"{speed:.0f} tokens/s" + ("" if speed >= MIN_TOKENS_PER_S else
                                                   f" (below {MIN_TOKENS_PER_S:g}: run the chapters from a "
                                                   f"precomputed run directory, not live)")))
    return checks


def run_checks(root: str | os.PathLike[str] = ".", *, model: bool = True,
               report: Callable[[Check], None] | None = None) -> list[Check]:
    """Run every check and return them (each is also passed to ``report`` as it finishes).

    Parameters
    ----------
    root : path, default="."
        The repository (free disk is measured there).
    model : bool, default=True
        Load the default model and time a forward pass (most of the minute).
    """
    report = report or (lambda c: None)
    checks: list[Check] = []
    steps: list[Callable[[], Check | list[Check]]] = [_python, _cores, _memory, lambda: _disk(Path(root).resolve()),
                                                      _environment]
    if model:
        steps.append(_model_and_speed)
    for step in steps:
        result = step()
        for check in result if isinstance(result, list) else [result]:
            checks.append(check)
            report(check)
        if checks[-1].name == "environment" and checks[-1].status == "FAIL":
            break
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    """Print every check and a verdict; exit 1 when one fails."""
    start = time.perf_counter()
    checks = run_checks(report=print)
    failed = [c for c in checks if c.status == "FAIL"]
    warned = [c for c in checks if c.status == "warn"]
    took = time.perf_counter() - start
    if failed:
        print(f"NOT READY ({took:.0f} s): fix {', '.join(c.name for c in failed)} (see above), or pair up with "
              f"someone whose machine is ready")
        return 1
    print(f"READY for the workshop ({took:.0f} s)" + (f", with {len(warned)} warning(s) above" if warned else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
