"""The environment descriptions agree: pyproject, environment.yml, the lock file and the Makefile."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for req in requirements:
        name, _, version = req.partition("==")
        pins[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
    return pins


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return _pins(reqs)


def test_environment_yml_names_the_same_pinned_packages() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins([r for r in pip_section if not r.startswith("-e")]) == _pyproject_pins()


def test_every_direct_dependency_is_pinned_exactly_and_locked() -> None:
    pins = _pyproject_pins()
    assert all(pins.values()), f"unpinned: {[k for k, v in pins.items() if not v]}"
    lock = _pins([line for line in (ROOT / "requirements.lock").read_text().splitlines()
                  if line and not line.startswith("#")])
    for name, version in pins.items():
        if name == "torch":  # the CPU wheel is installed by the Makefile, outside the lock
            continue
        assert lock.get(name) == version, f"{name}: pyproject {version}, lock {lock.get(name)}"


def test_torch_pin_is_the_local_cpu_wheel() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "TORCH := torch==2.13.0" in makefile
    assert _pyproject_pins()["torch"] == "2.13.0"


def test_asset_packages_agree_between_makefile_and_registries() -> None:
    from funcprune.data import DATASETS
    from funcprune.model_assets import MODELS

    makefile = (ROOT / "Makefile").read_text()
    for spec in [*MODELS.values(), *DATASETS.values()]:
        assert f"{spec.package}=={spec.package_version}" in makefile
