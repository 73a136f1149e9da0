"""A small moshi-style streaming-state protocol for the codec.

Each stateful module subclasses :class:`StreamingModule`: ``init_state(batch_size)`` allocates its
:class:`State` (fixed-shape tensors, batch first) and ``forward(x, state)`` reads and updates that state in
place; ``forward(x)`` without a state is the offline computation, and feeding a sequence chunk by chunk
through one state gives the offline result. States are explicit values owned by the caller (never module
attributes), so one module can serve many independent streams.

Every state tensor is laid out ``[B, ...]`` and the all-zero row is the fresh-stream value, so one generic
:meth:`State.reset` serves every state: it zeroes the selected rows in place (no host sync, no reallocation,
safe inside a CUDA graph).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn


def _reset_value(value: Any, mask: torch.Tensor) -> None:
    """Zero rows ``mask [B]`` of every tensor reachable from ``value`` (tensor, State, list, tuple)."""
    if isinstance(value, torch.Tensor):
        value.masked_fill_(mask.view(-1, *([1] * (value.dim() - 1))), 0)
    elif isinstance(value, State):
        value.reset(mask)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _reset_value(item, mask)


@dataclasses.dataclass
class State:
    """Base of all streaming states: dataclass fields are tensors ``[B, ...]``, child states or lists."""

    def reset(self, mask: torch.Tensor) -> None:
        """Return rows ``mask`` (bool ``[B]``, on the state's device) to the fresh-stream state, in place."""
        assert mask.dtype == torch.bool and mask.dim() == 1, "mask must be a 1-D bool tensor [B]"
        for field in dataclasses.fields(self):
            _reset_value(getattr(self, field.name), mask)


@dataclasses.dataclass
class StateList(State):
    """States of a sequence of modules; ``None`` for stateless ones."""

    children: list[State | None]


class StreamingModule(nn.Module):
    """An ``nn.Module`` whose ``forward(x, state=None)`` runs offline (no state) or streaming (with state)."""

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> State:
        """Allocate the fresh-stream state for ``batch_size`` rows (device / dtype default to the weights')."""
        raise NotImplementedError


def param_device_dtype(module: nn.Module, device: torch.device | str | None,
                       dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    """``device`` / ``dtype`` if given, else those of the module's first parameter."""
    p = next(module.parameters())
    return torch.device(device) if device is not None else p.device, dtype or p.dtype


def init_states(modules: Iterable[nn.Module], batch_size: int, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> StateList:
    """A :class:`StateList` for ``modules`` run in sequence (``None`` for non-streaming modules)."""
    return StateList([
        m.init_state(batch_size, device, dtype) if isinstance(m, StreamingModule) else None for m in modules
    ])


def run_sequence(modules: Sequence[nn.Module], x: torch.Tensor, state: StateList | None) -> torch.Tensor:
    """Apply ``modules`` in order, offline (``state is None``) or with their states from ``state``."""
    if state is None:
        for m in modules:
            x = m(x)
        return x
    for m, s in zip(modules, state.children, strict=True):
        x = m(x) if s is None else m(x, s)
    return x
