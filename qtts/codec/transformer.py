"""The codec decoder's pre-transformer: causal sliding-window attention with a ring KV cache.

Each frame at absolute position ``p`` attends to the frames at ``p - window + 1 .. p`` (itself and
``window - 1`` previous ones; transformers' ``sliding_window_overlay`` keeps ``kv_idx > q_idx - window``).
RoPE uses absolute positions ``0, 1, 2, ...`` counted from the start of each row's stream, as the official
decoder does (positions only matter through rounding, since RoPE attention is relative).

Streaming keeps, per layer, a ring of the last ``window`` roped keys / values (frame ``p`` lives in slot
``p % window``) and, per row, ``offset`` = frames decoded so far. A chunk attends to ``ring + chunk`` before
its keys are written back, so the ring needs no room beyond ``window`` whatever the chunk size.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CodecDecoderConfig
from ..model.layers import MLP, RMSNorm
from .streaming import State, StreamingModule, param_device_dtype


@dataclasses.dataclass
class RingKV(State):
    """One layer's ring cache: ``k``, ``v [B, H_kv, window, D]`` (keys already roped)."""

    k: torch.Tensor
    v: torch.Tensor


@dataclasses.dataclass
class TransformerState(State):
    """``offset [B]`` (int64): frames seen per row; ``layers``: one :class:`RingKV` per layer."""

    offset: torch.Tensor
    layers: list[RingKV]


class LayerScale(nn.Module):
    """Per-channel residual scale (``.scale [C]``)."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``positions [B, t]`` -> ``cos``, ``sin [B, 1, t, head_dim]`` (computed in float32, half-split layout)."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim
    inv_freq = 1.0 / (theta ** exponent)
    freqs = positions.float()[..., None] * inv_freq  # [B, t, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


class Attention(nn.Module):
    """Multi-head (GQA-capable) attention without QK norm; keys/values optionally from a ring cache."""

    def __init__(self, cfg: CodecDecoderConfig) -> None:
        super().__init__()
        h, kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.heads, self.kv_heads, self.head_dim = h, kv, d
        self.q_proj = nn.Linear(cfg.hidden_size, h * d, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, kv * d, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, kv * d, bias=False)
        self.o_proj = nn.Linear(h * d, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], window: Window,
                cache: RingKV | None) -> torch.Tensor:
        """``x [B, t, C]`` -> ``[B, t, C]``; attends to ``cache`` (if any) then to the chunk itself."""
        B, t, _ = x.shape
        cos, sin = rope
        q = self.q_proj(x).view(B, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        keys, values = k, v
        if cache is not None:
            keys, values = torch.cat([cache.k, k], dim=2), torch.cat([cache.v, v], dim=2)
            window.write(cache, k, v)
        rep = self.heads // self.kv_heads
        if rep > 1:
            keys, values = keys.repeat_interleave(rep, dim=1), values.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=window.mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, t, -1))


@dataclasses.dataclass
class Window:
    """Per-call attention geometry shared by all layers.

    ``mask [B, 1, t, S]`` (bool, True = attend) over ``S = window + t`` keys (ring, then chunk) when
    streaming, or ``S = t`` offline; ``slots [B, n]``: ring slots receiving the chunk's last ``n`` frames.
    """

    mask: torch.Tensor
    slots: torch.Tensor | None = None

    def write(self, cache: RingKV, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the chunk's last ``n`` keys / values ``[B, H_kv, t, D]`` in their ring slots, in place."""
        assert self.slots is not None
        n = self.slots.shape[1]
        index = self.slots[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        cache.k.scatter_(2, index, k[:, :, k.shape[2] - n:])
        cache.v.scatter_(2, index, v[:, :, v.shape[2] - n:])


def make_window(positions: torch.Tensor, size: int, offset: torch.Tensor | None) -> Window:
    """Attention geometry for queries at ``positions [B, t]``; ``offset [B]`` = frames already in the ring."""
    key_pos, valid = positions, None
    slots = None
    if offset is not None:
        last = offset[:, None] - 1  # newest position held by the ring, per row
        ring_pos = last - torch.remainder(last - torch.arange(size, device=offset.device), size)  # [B, W]
        key_pos = torch.cat([ring_pos, positions], dim=1)
        valid = key_pos >= 0
        n = min(positions.shape[1], size)
        slots = torch.remainder(positions[:, positions.shape[1] - n:], size)
    q, k = positions[:, :, None], key_pos[:, None, :]
    mask = (k <= q) & (k > q - size)
    if valid is not None:
        mask = mask & valid[:, None, :]
    return Window(mask[:, None], slots)


class TransformerLayer(nn.Module):
    """Pre-norm block: ``x + ls1 * attn(norm(x))``, then ``x + ls2 * mlp(norm(x))``."""

    def __init__(self, cfg: CodecDecoderConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn_layer_scale = LayerScale(cfg.hidden_size, cfg.layer_scale_initial_scale)
        self.mlp_layer_scale = LayerScale(cfg.hidden_size, cfg.layer_scale_initial_scale)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], window: Window,
                cache: RingKV | None) -> torch.Tensor:
        """``x [B, t, C]`` -> ``[B, t, C]``."""
        x = x + self.self_attn_layer_scale(self.self_attn(self.input_layernorm(x), rope, window, cache))
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class WindowTransformer(StreamingModule):
    """``input_proj`` (latent -> hidden), sliding-window layers, ``norm``, ``output_proj`` (hidden -> latent)."""

    def __init__(self, cfg: CodecDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList([TransformerLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.input_proj = nn.Linear(cfg.latent_dim, cfg.hidden_size)
        self.output_proj = nn.Linear(cfg.hidden_size, cfg.latent_dim)

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> TransformerState:
        """Empty rings (``offset`` 0) for ``batch_size`` rows."""
        device, dtype = param_device_dtype(self, device, dtype)
        shape = (batch_size, self.cfg.num_key_value_heads, self.cfg.sliding_window, self.cfg.head_dim)
        layers = [RingKV(torch.zeros(shape, device=device, dtype=dtype),
                         torch.zeros(shape, device=device, dtype=dtype)) for _ in self.layers]
        return TransformerState(torch.zeros(batch_size, dtype=torch.int64, device=device), layers)

    def forward(self, x: torch.Tensor, state: TransformerState | None = None) -> torch.Tensor:
        """``x [B, t, latent]`` -> ``[B, t, latent]``; with ``state``, continues each row's stream."""
        B, t, _ = x.shape
        steps = torch.arange(t, device=x.device)
        if state is None:
            positions = steps.expand(B, t)
        else:
            assert state.offset.shape[0] == B, "state batch size does not match the input"
            positions = state.offset[:, None] + steps
        window = make_window(positions, self.cfg.sliding_window, None if state is None else state.offset)
        rope = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        h = self.input_proj(x)
        for i, layer in enumerate(self.layers):
            h = layer(h, rope, window, None if state is None else state.layers[i])
        if state is not None:
            state.offset.add_(t)
        return self.output_proj(self.norm(h))
