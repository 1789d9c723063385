"""funcprune: prune LLMs by identifying and preserving functional networks.

A reference implementation of Liu et al. (2025): MLP channels are voxels, tokens
are time points; spatial ICA finds functional networks; their key neurons are
kept and the other channels are physically removed.

The public surface follows the stages: :func:`load_model`, :func:`capture_activations`
(stage 1), :class:`FunctionalNetworks` (stage 2), :func:`key_neuron_scores` and
:func:`select_channels` giving a :class:`PruningPlan` (stage 3), :func:`prune`,
:func:`save_pruned` and :func:`load_pruned` (stage 4), :func:`perplexity` and
:func:`run_zero_shot` (stage 5). Everything else lives in the submodules.
"""

from .adapters import ArchitectureAdapter, UnsupportedArchitectureError, get_adapter, register_adapter
from .capture import MLPRecorder, capture_activations
from .checkpoint import load_pruned, save_pruned
from .evaluate import perplexity
from .ica import FunctionalNetworks
from .model_assets import DEFAULT_MODEL
from .models import describe_model, load_model
from .plan import PruningPlan, select_channels
from .provenance import __version__, environment_info
from .prune import prune
from .scoring import key_neuron_scores
from .store import ActivationStore
from .tasks import run_zero_shot

__all__ = [
    "DEFAULT_MODEL",
    "ActivationStore",
    "ArchitectureAdapter",
    "FunctionalNetworks",
    "MLPRecorder",
    "PruningPlan",
    "UnsupportedArchitectureError",
    "__version__",
    "capture_activations",
    "describe_model",
    "environment_info",
    "get_adapter",
    "key_neuron_scores",
    "load_model",
    "load_pruned",
    "perplexity",
    "prune",
    "register_adapter",
    "run_zero_shot",
    "save_pruned",
    "select_channels",
]
