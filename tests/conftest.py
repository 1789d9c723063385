"""Shared fixtures. Every test runs with the hubs disabled: an accidental download fails loudly."""

from __future__ import annotations

import os

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from tiny_models import FAMILIES, tiny_model  # noqa: E402


@pytest.fixture(params=FAMILIES)
def family_model(request: pytest.FixtureRequest) -> torch.nn.Module:
    """A tiny randomly initialised model of every supported family."""
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def default_model():
    """The real default model (SmolLM2-135M-Instruct) and tokenizer, loaded once."""
    from funcprune import load_model

    return load_model()
