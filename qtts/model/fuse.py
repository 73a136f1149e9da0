"""Fused projections: each block's q, k, v projections as one matrix product, and its gate and up
projections as another (``fuse_projections_``; ``unfuse_projections_`` undoes it).

Per block a frame step then runs 4 products instead of 7. For one stream each product is a matrix-vector
product, so on a GPU the cost is mostly the kernel count (a frame is ~100 block steps, each kernel a launch
or a graph node). On CPU, for one stream: 11 % faster per frame with row kernels alone, the same eagerly, and
under ``compile`` ~8-20 % slower on an AMD VM and neutral on an Intel one (inductor already reads the separate
weights in shared loops). For 8 batched streams with packed weights (``qtts.packed``) the larger products read
faster: a compiled step 6-8 % faster (BENCHMARKS.md, session 13).

The fused weight is the row concatenation of the separate ones (int8 layers: their codes and per-row scales,
so the quantization is the same either way). The layout is changed in place after loading (checkpoints keep
their names); the separate layers are dropped, so memory does not grow. A fused ``Attention`` also keeps its
q and k heads' norm weights side by side (``qk_norm_weight``, a few KiB), which it otherwise concatenates at
every call. Derived state: weights changed while fused are not seen; unfuse, change, fuse. It is applied
from outside as an acceleration option (``AccelOptions.fused``, ``--accel fused``), reversibly.
"""

from __future__ import annotations

import torch
from torch import nn

from ..quant import Int8Linear
from .layers import MLP, Attention

_GROUPS = ((Attention, "qkv_proj", ("q_proj", "k_proj", "v_proj")), (MLP, "gate_up_proj", ("gate_proj", "up_proj")))


def _concat(layers: list[nn.Module]) -> nn.Module:
    """One bias-free layer whose output is the outputs of ``layers`` side by side (all ``nn.Linear`` or all
    ``Int8Linear`` with one kernel choice)."""
    if all(type(m) is Int8Linear for m in layers):
        return Int8Linear(torch.cat([m.weight_int8 for m in layers]), torch.cat([m.scales for m in layers]),
                          kernel=layers[0].kernel)
    return _linear(torch.cat([m.weight for m in layers]))


def _linear(weight: torch.Tensor) -> nn.Linear:
    """A bias-free ``nn.Linear`` holding ``weight [out, in]`` (built on the meta device: nothing allocated or
    initialised before the weight is set)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    layer.weight = nn.Parameter(weight, requires_grad=False)
    return layer


def _split(fused: nn.Module, sizes: list[int]) -> list[nn.Module]:
    """``_concat`` undone: layers of ``sizes`` output rows, each owning its weights."""
    if type(fused) is Int8Linear:
        return [Int8Linear(q.clone(), s.clone(), kernel=fused.kernel)
                for q, s in zip(fused.weight_int8.split(sizes), fused.scales.split(sizes), strict=True)]
    return [_linear(w.clone()) for w in fused.weight.split(sizes)]


def _fusable(layers: list[nn.Module]) -> bool:
    plain = all(type(m) is nn.Linear and m.bias is None for m in layers)
    int8 = all(type(m) is Int8Linear and m.bias is None and m.kernel == layers[0].kernel for m in layers)
    return plain or int8


@torch.no_grad()
def fuse_projections_(module: nn.Module) -> int:
    """Fuse, in place, every ``Attention`` 's q/k/v and every ``MLP`` 's gate/up projections under ``module``
    (bias-free ``nn.Linear`` or ``Int8Linear`` layers; fused blocks are left alone). Returns how many fused
    layers were made."""
    made = 0
    for m in module.modules():
        for kind, fused_name, names in _GROUPS:
            if isinstance(m, kind) and getattr(m, fused_name) is None:
                layers = [getattr(m, n) for n in names]
                if _fusable(layers):
                    setattr(m, fused_name, _concat(layers))
                    for n in names:
                        delattr(m, n)
                    if isinstance(m, Attention):
                        m.qk_norm_weight = m.norm_weights()
                    made += 1
    return made


@torch.no_grad()
def unfuse_projections_(module: nn.Module) -> int:
    """Undo ``fuse_projections_`` in place (the separate layers come back under their checkpoint names).
    Returns how many fused layers were split."""
    split = 0
    for m in module.modules():
        for kind, fused_name, names in _GROUPS:
            fused = getattr(m, fused_name, None) if isinstance(m, kind) else None
            if fused is not None:
                for n, layer in zip(names, _split(fused, _sizes(m)), strict=True):
                    setattr(m, n, layer)
                setattr(m, fused_name, None)
                if isinstance(m, Attention):
                    m.qk_norm_weight = None
                split += 1
    return split


def _sizes(m: Attention | MLP) -> list[int]:
    """Output rows of the separate layers of ``m`` 's fused layer."""
    if isinstance(m, Attention):
        kv = m.kv_heads * m.head_dim
        return [m.heads * m.head_dim, kv, kv]
    half = m.gate_up_proj.out_features // 2
    return [half, half]


def is_fused(module: nn.Module) -> bool:
    """Whether any block under ``module`` runs fused projections."""
    return any(getattr(m, name, None) is not None for m in module.modules() for kind, name, _ in _GROUPS
               if isinstance(m, kind))
