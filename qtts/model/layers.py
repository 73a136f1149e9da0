"""Qwen3 transformer building blocks shared by the talker and the code predictor.

Pure math: no sampling, no loops over frames, no I/O. Positions and caches are explicit arguments.
Parameter names follow the official checkpoints (``self_attn.q_proj``, ``mlp.gate_proj``, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cache import LayerCache

_FLOAT32_NORMED = (torch.float32, torch.bfloat16, torch.float16)  # dtypes torch's rms_norm normalises in float32


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, scaled by ``weight`` after casting back."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * rms_normalise(x, self.eps)


def rms_normalise(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``x [..., D]`` over its last dimension, unscaled, as the official norm does it: in float32, cast back to
    ``x.dtype`` (``x.float() * rsqrt(mean(x^2) + eps)``, then ``.to(x.dtype)``).

    torch's ``rms_norm`` does exactly that for float32 and 16-bit inputs (the same operations on CPU, bit for bit,
    tested), and on CUDA as one fused kernel, casts included, instead of three: a graphed frame step runs ~430
    norms. float64 (which ``rms_norm`` would keep) is cast to float32 first, as officially."""
    h = F.rms_norm(x if x.dtype in _FLOAT32_NORMED else x.float(), (x.shape[-1],), eps=eps)
    return h.to(x.dtype)


class Rotary(nn.Module):
    """NeoX-style ("rotate half") rotary embedding. ``cos_sin(positions [B, S])`` -> two ``[B, 1, S, D]``.

    The talker's multimodal RoPE with identical t/h/w position rows (always the case for text-like
    positions) is mathematically this plain 1-D RoPE.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos`` and the signed ``sin`` (its first half negated, see ``apply_rotary``), ``[B, 1, S, D]``."""
        freqs = positions.float()[..., None] * self.inv_freq.float()  # [B, S, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
        half = sin.shape[-1] // 2
        return cos[:, None], torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, H, S, D]`` by ``cos``/``signed_sin`` ``[B, 1, S, D]`` (from ``Rotary.cos_sin``).

    The textbook ``x * cos + cat(-x2, x1) * sin`` with the sign moved into ``sin`` once per decoder call
    instead of negating ``x2`` in every layer: bit for bit the same (a product's sign is exact)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((x2, x1), dim=-1) * signed_sin


# On CUDA, grouped query heads go to torch's own GQA call (``enable_gqa``). True: stacked per KV head first
# (``grouped_attention``), for torch versions whose GQA call with a mask fell back to the math path. On an H100
# with torch 2.11, cuDNN serves the GQA call (scripts/gpu_attention.py: 62 µs against 121 µs stacked for a talker
# step, same result) and it took the compiled frame from 6.03 to 5.47 ms and the graphed one from 9.38 to 8.77 ms
# (BENCHMARKS.md, session 10). ``bench/frame_speed.py`` mode parts ``gqa`` / ``stacked-heads``.
STACK_GROUPED_HEADS = False


def sdpa_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``q [B, H, S, D]`` over ``keys``/``values`` ``[B, H_kv, K, D]`` (``H`` a multiple of ``H_kv``) with
    ``mask [B or 1, 1, S, K]`` (bool, True = may attend, or additive: 0 / -inf) -> ``[B, H, S, D]``: torch's
    fused kernel (the reference). On CUDA through ``grouped_attention`` where ``STACK_GROUPED_HEADS`` says so."""
    if q.is_cuda and STACK_GROUPED_HEADS and q.shape[1] != keys.shape[1]:
        return grouped_attention(q, keys, values, mask)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)


def grouped_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
                      ) -> torch.Tensor:
    """``sdpa_attention`` with the query heads that share a KV head stacked along the queries (``[B, H_kv,
    H / H_kv * S, D]``; for one query a view), so that torch's SDPA sees as many query as KV heads. On CUDA a
    mask rules out the flash kernel and grouped heads the memory-efficient one, so GQA with a mask falls back
    to the math path (KV heads repeated over the whole cache span, then about ten kernels); stacked, the
    memory-efficient kernel takes it. Same math; rounding may differ in the last bits."""
    B, H, S, D = q.shape
    kv, K = keys.shape[1], keys.shape[2]
    n = H // kv
    stacked = q.reshape(B, kv, n * S, D)  # head h = i * n + j reads KV head i (as GQA does)
    rows = mask[:, :, None].expand(mask.shape[0], 1, n, S, K).reshape(mask.shape[0], 1, n * S, K)
    out = F.scaled_dot_product_attention(stacked, keys, values, attn_mask=rows)
    return out.view(B, kv, n, S, D).reshape(B, H, S, D)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention mask (True = may attend) as the additive one attention uses: 0 where allowed,
    -inf elsewhere, in ``dtype``. Float masks pass through."""
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


# Queries up to this many take the element-wise form in ``matmul_attention`` (one frame step: 1; the code
# predictor's first step: 2); prefill keeps the matrix products.
ROW_QUERIES = 2


def matmul_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
                     ) -> torch.Tensor:
    """``sdpa_attention`` as plain products and a softmax in float32, for compiled regions: inductor fuses
    it with its neighbours, where the fused kernel is an opaque call (~40-100 µs on CPU for one query over a
    few dozen slots, ~100 calls per frame). Up to ``ROW_QUERIES`` queries the products are written as
    element-wise products and sums, which inductor emits inline (a matrix product stays a ``bmm`` call, two
    per block: 4 ms of a 87 ms int8 frame). Same math; rounding differs in the last bits."""
    B, H, S, D = q.shape
    kv = keys.shape[1]
    wide = torch.promote_types(q.dtype, torch.float32)
    keys, values = keys.to(wide), values.to(wide)
    if S <= ROW_QUERIES:
        g = q.to(wide).view(B, kv, H // kv, S, 1, D)  # query heads grouped by their KV head
        scores = (g * keys[:, :, None, None]).sum(-1) * D**-0.5  # [B, kv, H/kv, S, K]
        weights = _masked(scores, mask[:, :, None]).softmax(-1)
        out = (weights[..., None] * values[:, :, None, None]).sum(-2)  # [B, kv, H/kv, S, D]
        return out.reshape(B, H, S, D).to(q.dtype)
    g = q.to(wide).reshape(B, kv, H // kv * S, D)  # the heads sharing a KV head, stacked along the queries
    scores = g @ keys.transpose(-1, -2) * D**-0.5  # [B, kv, H/kv * S, K]
    scores = _masked(scores.view(B, kv, H // kv, S, -1), mask[:, :, None])
    out = scores.softmax(-1).view(B, kv, H // kv * S, -1) @ values
    return out.view(B, H, S, D).to(q.dtype)


def _masked(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``scores`` with ``mask`` applied: -inf where a boolean mask is False, or the additive mask added (adding
    0 leaves a score unchanged, so both give the same result)."""
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, float("-inf"))
    return scores + mask


class Attention(nn.Module):
    """Grouped-query self-attention with per-head QK RMSNorm (before RoPE) and a static KV cache.

    ``attend`` is the attention kernel (``sdpa_attention``; an instance attribute set from outside, e.g. by
    ``qtts.accel.compile_regions``, replaces it)."""

    attend = staticmethod(sdpa_attention)

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)
        self.qkv_proj: nn.Module | None = None  # q, k, v as one product once fused (``qtts.model.fuse``)
        # Once fused, also the q and k heads' norm weights side by side (``norm_weights``), made once.
        self.register_buffer("qk_norm_weight", None, persistent=False)

    def norm_weights(self) -> torch.Tensor:
        """The RMSNorm weights of the q heads then the k heads, ``[heads + kv_heads, head_dim]``."""
        H, H_kv, D = self.heads, self.kv_heads, self.head_dim
        return torch.cat([self.q_norm.weight.expand(H, D), self.k_norm.weight.expand(H_kv, D)])

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: LayerCache,
        positions: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """``x [B, S, hidden]``, ``positions [B, S]`` (cache slots to write), ``mask [B, 1, S, K]`` over the
        first K cache slots: bool (True = may attend) or additive (``additive_mask``). Returns
        ``[B, S, hidden]``."""
        B, S, _ = x.shape
        H, H_kv, D = self.heads, self.kv_heads, self.head_dim
        if self.qkv_proj is not None:
            qkv = self.qkv_proj(x)
            qk, v = qkv[..., :(H + H_kv) * D], qkv[..., (H + H_kv) * D:]
            weight = self.qk_norm_weight
        else:
            qk, v = torch.cat([self.q_proj(x), self.k_proj(x)], dim=-1), self.v_proj(x)
            weight = self.norm_weights()
        # q and k heads side by side through one norm and one rotation (each head on its own, so the same values
        # as q_norm / k_norm and a rotation of each): 6-8 operations instead of 12 per layer, as a graphed frame
        # step runs them (~100 layer steps per frame).
        qk = weight * rms_normalise(qk.view(B, S, H + H_kv, D), self.q_norm.eps)
        q, k = apply_rotary(qk.transpose(1, 2), *rope).split([H, H_kv], dim=1)
        v = v.view(B, S, H_kv, D).transpose(1, 2)
        keys, values = cache.write(positions, k, v, mask.shape[-1])
        out = self.attend(q, keys, values, mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, S, self.heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.gate_up_proj: nn.Module | None = None  # gate and up as one product once fused (``qtts.model.fuse``)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm Qwen3 decoder layer."""

    def __init__(self, hidden: int, intermediate: int, heads: int, kv_heads: int, head_dim: int,
                 eps: float) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(hidden, eps)
        self.self_attn = Attention(hidden, heads, kv_heads, head_dim, eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)
        self.mlp = MLP(hidden, intermediate)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache: LayerCache,
                positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, cache, positions, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """A stack of ``Block`` s with a final norm: the ``model`` submodule of the talker and predictor."""

    def __init__(self, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                 head_dim: int, eps: float, theta: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            Block(hidden, intermediate, heads, kv_heads, head_dim, eps) for _ in range(layers)
        )
        self.norm = RMSNorm(hidden, eps)
        self.rotary = Rotary(head_dim, theta)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, caches: list[LayerCache],
                mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``x [B, S, hidden]`` at ``positions [B, S]`` -> final-normed hidden ``[B, S, hidden]``. ``rope``: the
        ``Rotary.cos_sin`` of ``positions`` if already made (``[B or 1, 1, S, D]`` each)."""
        if rope is None:
            rope = self.rotary.cos_sin(positions, x.dtype)
        mask = additive_mask(mask, x.dtype)  # once for all layers (attention would convert it per layer)
        return self.norm(self.run_layers(x, rope, caches, positions, mask))

    def run_layers(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], caches: list[LayerCache],
                   positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The blocks in turn over ``x [B, S, hidden]`` (``mask`` additive). An instance attribute set from outside
        replaces it (``qtts.accel.BlockRegions``: blocks run a few at a time as one compiled call)."""
        for layer, cache in zip(self.layers, caches, strict=True):
            x = layer(x, rope, cache, positions, mask)
        return x
