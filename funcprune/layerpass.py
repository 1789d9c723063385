"""Passes through a model's decoder layers that skip work whose result is known.

Two tools, each exact to the bit, for passes that would otherwise compute layers again:

* :func:`layer_calls` records how every decoder layer is called on each batch (masks,
  position embeddings ...) with every layer replaced by a stub: no layer is computed. The
  progressive compensation (:func:`funcprune.prune.prune_progressively`) then runs the layers
  one at a time on these calls.
* :class:`LayerInputs` records the input of one layer on a pass and hands it on in later
  passes over the same batches, which skip the layers before it. A lesion of that layer
  (:func:`funcprune.lesion.lesion_study`) recomputes the model from that layer on only.

Both rest on one fact, tested on every supported family: a model computes what it hands its
layers before the first of them, from the input ids alone.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .adapters import ArchitectureAdapter, get_adapter
from .capture import StopForward
from .models import input_device

__all__ = ["LayerInputs", "layer_calls"]


@contextmanager
def _layers_replaced(layers: Sequence[nn.Module], forwards: Mapping[int, Callable[..., Any]]) -> Iterator[None]:
    """Within the context, decoder layer ``i`` runs ``forwards[i]`` instead of its own forward (restored on exit)."""
    saved = {i: layers[i].__dict__.get("forward") for i in forwards}
    try:
        for i, forward in forwards.items():
            layers[i].forward = forward
        yield
    finally:
        for i, own in saved.items():
            if own is None:
                del layers[i].forward
            else:
                layers[i].forward = own


def _split_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, tuple[Any, ...], dict[str, Any]]:
    """A decoder layer's call as (hidden states, other positional arguments, keyword arguments)."""
    kwargs = dict(kwargs)
    return (args[0], args[1:], kwargs) if args else (kwargs.pop("hidden_states"), (), kwargs)


def layer_calls(model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]], *,
                adapter: ArchitectureAdapter | None = None
                ) -> tuple[list[torch.Tensor], list[list[tuple[tuple[Any, ...], dict[str, Any]]]]]:
    """How every decoder layer is called on each batch, and the first layer's input, without computing a layer.

    Every layer is replaced by a stub that records its call (masks, position embeddings ...)
    and passes the hidden states through; the pass ends at the last layer (no final norm, no
    LM head). The model computes what it hands its layers before the first of them, from the
    input ids alone, so these are the calls of a real pass (tested against one on every
    supported family).

    Returns
    -------
    inputs : list of Tensor
        The first layer's input (the embeddings), one per batch.
    calls : list of list of (tuple, dict)
        ``calls[b][i]``: layer ``i``'s other positional and keyword arguments on batch ``b``.
    """
    layers = (adapter or get_adapter(model)).get_layers(model)
    device = input_device(model)
    inputs: list[torch.Tensor] = []
    calls: list[list[tuple[tuple[Any, ...], dict[str, Any]]]] = []

    def stub(i: int, *args: Any, **kwargs: Any) -> torch.Tensor:
        hidden, rest, kw = _split_call(args, kwargs)
        if i == 0:
            inputs.append(hidden)
        calls[-1].append((rest, kw))
        if i == len(layers) - 1:
            raise StopForward
        return hidden

    with _layers_replaced(layers, {i: functools.partial(stub, i) for i in range(len(layers))}):
        for batch in batches:
            calls.append([])
            try:
                model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
            except StopForward:
                pass
    return inputs, calls


class LayerInputs:
    """The hidden states entering decoder layer ``layer`` on each batch of one pass, replayed on later passes.

    :meth:`record` keeps them during a pass; inside :meth:`replay`, passes over the same
    batches skip the layers before ``layer``: they hand the recorded states on instead of
    computing them again. The result is the same to the bit as long as those layers are
    unchanged (a lesion or a hook at ``layer`` or later); the model still computes its
    embeddings, masks and position embeddings, its later layers and its head.

    Parameters
    ----------
    model : nn.Module
        A causal LM with a registered adapter.
    layer : int
        The first layer computed in a replayed pass (0: nothing is skipped).
    """

    def __init__(self, model: nn.Module, layer: int) -> None:
        self.layers = get_adapter(model).get_layers(model)
        if not 0 <= layer < len(self.layers):
            raise ValueError(f"layer must be in [0, {len(self.layers) - 1}], got {layer}")
        self.layer = int(layer)
        self.states: list[torch.Tensor] = []

    @contextmanager
    def record(self) -> Iterator["LayerInputs"]:
        """Keep the input of ``layer`` on every forward pass inside the context (in call order)."""
        self.states = []

        def keep(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.states.append(_split_call(args, kwargs)[0])

        handle = self.layers[self.layer].register_forward_pre_hook(keep, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Passes inside the context take the recorded inputs of ``layer``, in the recorded order.

        Raises
        ------
        RuntimeError
            A pass beyond the recorded ones, or a batch of another shape than the recorded one.
        """
        if self.layer == 0:
            yield
            return
        states = iter(self.states)

        def skip(hidden_states: torch.Tensor, *_args: Any, **_kwargs: Any) -> torch.Tensor:
            return hidden_states

        def hand_on(hidden_states: torch.Tensor, *_args: Any, **_kwargs: Any) -> torch.Tensor:
            state = next(states, None)
            if state is None:
                raise RuntimeError(f"more passes than the {len(self.states)} recorded inputs of layer {self.layer}")
            if state.shape != hidden_states.shape:
                raise RuntimeError(f"a batch of shape {tuple(hidden_states.shape)}, recorded "
                                   f"{tuple(state.shape)} at layer {self.layer}: replay the recorded batches")
            return state

        forwards = {i: skip for i in range(self.layer - 1)} | {self.layer - 1: hand_on}
        with _layers_replaced(self.layers, forwards):
            yield
