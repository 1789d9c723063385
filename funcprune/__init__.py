"""funcprune: prune LLMs by identifying and preserving functional networks.

A reference implementation of Liu et al. (2025): MLP channels are voxels, tokens
are time points; spatial ICA finds functional networks; their key neurons are
kept and the other channels are physically removed.
"""

from .adapters import ArchitectureAdapter, UnsupportedArchitectureError, get_adapter, register_adapter
from .capture import MLPRecorder, capture_activations
from .models import DEFAULT_MODEL, describe_model, load_model
from .provenance import __version__, environment_info
from .store import ActivationStore

__all__ = [
    "DEFAULT_MODEL",
    "ActivationStore",
    "ArchitectureAdapter",
    "MLPRecorder",
    "UnsupportedArchitectureError",
    "__version__",
    "capture_activations",
    "describe_model",
    "environment_info",
    "get_adapter",
    "load_model",
    "register_adapter",
]
