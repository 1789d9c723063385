"""make check-setup: the quick checks report one line each and a verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from funcprune.run import setupcheck


def test_quick_checks_without_the_model(tmp_path: Path) -> None:
    seen = []
    checks = setupcheck.run_checks(tmp_path, model=False, report=seen.append)
    assert [c.name for c in checks] == ["Python", "CPU cores", "memory", "free disk", "environment"]
    assert seen == checks and all(c.status in ("ok", "warn", "FAIL") for c in checks)
    assert checks[-1].status == "ok"  # the test environment has torch and transformers


def test_too_little_disk_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(setupcheck, "MIN_DISK_GB", 1e9)
    checks = {c.name: c for c in setupcheck.run_checks(tmp_path, model=False)}
    assert checks["free disk"].status == "FAIL" and "needed" in checks["free disk"].detail
