"""Seeded random weights for test and demo checkpoints (they are untrained: the audio is noise).

Values are chosen so that random models stay numerically tame (no overflow, logits spread enough that
greedy decoding has few near-ties): matrices ~ N(0, 1/fan_in), norms ~ 1, layer scales small.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _fill(name: str, p: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    leaf = name.rsplit(".", 1)[-1]
    shape = tuple(p.shape)
    if leaf in ("alpha", "beta"):  # SnakeBeta parameters live in log space
        return torch.randn(shape, generator=g) * 0.1
    if leaf == "cluster_usage":
        return torch.rand(shape, generator=g) * 1.5 + 0.5
    if leaf in ("scale", "gamma") or "layer_scale" in name:
        return torch.full(shape, 0.01) + torch.randn(shape, generator=g) * 0.001
    if p.dim() == 1:
        is_norm = "norm" in name or leaf == "weight"
        base = torch.ones(shape) if is_norm and leaf == "weight" else torch.zeros(shape)
        return base + torch.randn(shape, generator=g) * 0.02
    fan_in = math.prod(shape[1:])
    if "embed" in name or "codebook" in name or "embedding" in name:
        return torch.randn(shape, generator=g)
    return torch.randn(shape, generator=g) / math.sqrt(max(fan_in, 1))


@torch.no_grad()
def init_random_(module: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter and persistent float buffer of ``module`` with seeded random values.

    Deterministic for a given ``seed`` and parameter names/shapes (independent of the device).
    """
    g = torch.Generator().manual_seed(seed)
    state = module.state_dict(keep_vars=True)  # parameters + persistent buffers, by official name
    for name in sorted(state):
        p = state[name]
        if p.is_floating_point():
            p.data.copy_(_fill(name, p, g).to(p.dtype))
    return module
