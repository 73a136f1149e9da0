"""The 12 Hz codec encoder (24 kHz waveform -> 16 x 2048-way codes at 12.5 Hz): a Mimi encoder.

Pipeline: causal SEANet conv stack (strides 4·5·6·8 = 960 samples -> 25 Hz) -> causal transformer ->
causal stride-2 conv (12.5 Hz) -> split residual VQ (1 "semantic" + N-1 acoustic codebooks, both fed the
same latent) keeping the first ``valid_quantizers`` codebooks.

Parameter and buffer names equal the official speech tokenizer's ``encoder.*`` state-dict keys without the
leading ``encoder.``, so the official encoder state dict loads with ``strict=True``.

Behaviour of the official code (transformers 4.57.3 ``MimiModel.encode``) reproduced here on purpose:

* the encoder transformer uses **full causal attention**: the config's ``sliding_window`` is ignored by
  the mask transformers builds (it only matters past 250 frames = 10 s at 25 Hz);
* a batch is encoded as one padded tensor without any mask; the padding mask only decides how many frames
  of each row are kept, so a padded row's last valid frame can see a little of the (zero) padding;
* codebook search is ``argmin`` of ``torch.cdist`` in float32, whatever the module dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CodecEncoderConfig
from ..errors import InputError

PAD_CODE = -1  # value of frames past a row's valid length (what the codec decoder treats as padding)


class _CausalConv(nn.Module):
    """Conv1d with causal left padding (``k_eff - stride``) plus right padding to complete the last frame.

    ``[B, C_in, L] -> [B, C_out, ceil(L / stride)]``.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1,
                 bias: bool = True, pad_mode: str = "constant") -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride, dilation=dilation, bias=bias)
        self.stride = stride
        self.pad_left = (kernel - 1) * dilation + 1 - stride
        self.pad_mode = pad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = -x.shape[-1] % self.stride
        return self.conv(F.pad(x, (self.pad_left, extra), mode=self.pad_mode))


class _ResnetBlock(nn.Module):
    """SEANet residual block: x + Conv1(ELU(Conv_k(ELU(x)))), bottleneck ``dim // compress``."""

    def __init__(self, cfg: CodecEncoderConfig, dim: int, dilation: int) -> None:
        super().__init__()
        hidden = dim // cfg.compress
        self.block = nn.ModuleList([
            nn.ELU(), _CausalConv(dim, hidden, cfg.residual_kernel_size, dilation=dilation, pad_mode=cfg.pad_mode),
            nn.ELU(), _CausalConv(hidden, dim, 1, pad_mode=cfg.pad_mode),
        ])
        self.shortcut = _CausalConv(dim, dim, 1, pad_mode=cfg.pad_mode) if cfg.use_conv_shortcut else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.block:
            h = layer(h)
        return self.shortcut(x) + h


class _SeaNetEncoder(nn.Module):
    """Conv stack ``[B, audio_channels, N] -> [B, hidden_size, ceil(N / prod(ratios))]``."""

    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        mode = cfg.pad_mode
        layers: list[nn.Module] = [_CausalConv(cfg.audio_channels, cfg.num_filters, cfg.kernel_size, pad_mode=mode)]
        dim = cfg.num_filters
        for ratio in reversed(cfg.upsampling_ratios):
            for j in range(cfg.num_residual_layers):
                layers.append(_ResnetBlock(cfg, dim, cfg.dilation_growth_rate ** j))
            layers += [nn.ELU(), _CausalConv(dim, dim * 2, ratio * 2, stride=ratio, pad_mode=mode)]
            dim *= 2
        layers += [nn.ELU(), _CausalConv(dim, cfg.hidden_size, cfg.last_kernel_size, pad_mode=mode)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class _Attention(nn.Module):
    """Causal multi-head attention with rotate-half RoPE; ``[B, T, C] -> [B, T, C]``."""

    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        h, kv, d, bias = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.attention_bias
        self.heads, self.kv_heads, self.head_dim = h, kv, d
        self.q_proj = nn.Linear(cfg.hidden_size, h * d, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, kv * d, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, kv * d, bias=bias)
        self.o_proj = nn.Linear(h * d, cfg.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        rep = self.heads // self.kv_heads
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class _MLP(nn.Module):
    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        if cfg.hidden_act != "gelu":
            raise ValueError(f"codec encoder: hidden_act {cfg.hidden_act!r} is not supported (only 'gelu')")
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _LayerScale(nn.Module):
    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((cfg.hidden_size,), cfg.layer_scale_initial_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class _TransformerLayer(nn.Module):
    """Pre-LayerNorm block with per-channel layer scales on both residual branches."""

    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        self.self_attn = _Attention(cfg)
        self.mlp = _MLP(cfg)
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.self_attn_layer_scale = _LayerScale(cfg)
        self.mlp_layer_scale = _LayerScale(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn_layer_scale(self.self_attn(self.input_layernorm(x), cos, sin))
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class _Transformer(nn.Module):
    """``[B, T, C] -> [B, T, C]`` with positions 0..T-1 (full causal attention, see module docstring)."""

    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_TransformerLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.head_dim = cfg.head_dim
        self.rope_theta = cfg.rope_theta

    def _cos_sin(self, t: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=x.device).float() / self.head_dim
        inv_freq = 1.0 / (self.rope_theta ** exponent)
        freqs = torch.arange(t, device=x.device, dtype=torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)  # [T, D]
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cos, sin = self._cos_sin(x.shape[1], x)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return x


class _Codebook(nn.Module):
    """Euclidean codebook stored as running sums: centroids = ``embed_sum / max(cluster_usage, eps)``."""

    def __init__(self, size: int, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("initialized", torch.ones(1))
        self.register_buffer("cluster_usage", torch.ones(size))
        self.register_buffer("embed_sum", torch.zeros(size, dim))

    def centroids(self) -> torch.Tensor:
        """``[size, dim]`` in the buffers' dtype."""
        return self.embed_sum / self.cluster_usage.clamp(min=self.eps)[:, None]

    def encode(self, x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """Nearest centroid (float32 L2) of each ``[B, dim, T]`` vector -> ``[B, T]`` int64."""
        b, d, t = x.shape
        flat = x.permute(0, 2, 1).reshape(-1, d)
        dists = torch.cdist(flat[None].float(), centroids[None].float(), p=2)[0]
        return dists.argmin(dim=-1).view(b, t)


class _VQ(nn.Module):
    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        self.codebook = _Codebook(cfg.codebook_size, cfg.codebook_dim)


class _ResidualVQ(nn.Module):
    """Residual VQ with optional 1x1 input/output projections (present when VQ width != hidden size)."""

    def __init__(self, cfg: CodecEncoderConfig, num_quantizers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_VQ(cfg) for _ in range(num_quantizers))
        self.input_proj: nn.Conv1d | None = None
        self.output_proj: nn.Conv1d | None = None
        vq_dim = cfg.vector_quantization_hidden_dimension
        if vq_dim != cfg.hidden_size:
            self.input_proj = nn.Conv1d(cfg.hidden_size, vq_dim, 1, bias=False)
            self.output_proj = nn.Conv1d(vq_dim, cfg.hidden_size, 1, bias=False)  # decoding only

    def encode(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """``[B, hidden, T] -> [n, B, T]`` codes of the first ``n`` codebooks."""
        residual = self.input_proj(x) if self.input_proj is not None else x
        codes = []
        for vq in self.layers[:n]:
            centroids = vq.codebook.centroids()
            idx = vq.codebook.encode(residual, centroids)
            residual = residual - F.embedding(idx, centroids).permute(0, 2, 1)
            codes.append(idx)
        return torch.stack(codes)


class _SplitResidualVQ(nn.Module):
    """Semantic RVQ (first codebooks) and acoustic RVQ (the rest), both quantizing the same latent."""

    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        self.num_semantic = cfg.num_semantic_quantizers
        self.semantic_residual_vector_quantizer = _ResidualVQ(cfg, cfg.num_semantic_quantizers)
        self.acoustic_residual_vector_quantizer = _ResidualVQ(cfg, cfg.num_quantizers - cfg.num_semantic_quantizers)

    def encode(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """``[B, hidden, T] -> [B, n, T]``."""
        codes = self.semantic_residual_vector_quantizer.encode(x, self.num_semantic)
        if n > self.num_semantic:
            acoustic = self.acoustic_residual_vector_quantizer.encode(x, n - self.num_semantic)
            codes = torch.cat([codes, acoustic], dim=0)
        return codes.transpose(0, 1)


class CodecEncoder(nn.Module):
    """Mimi encoder of the 12 Hz speech tokenizer; see the module docstring for the exact behaviour."""

    def __init__(self, cfg: CodecEncoderConfig, valid_quantizers: int = 16) -> None:
        super().__init__()
        if not cfg.num_semantic_quantizers <= valid_quantizers <= cfg.num_quantizers:
            raise ValueError(f"valid_quantizers must be in [{cfg.num_semantic_quantizers}, {cfg.num_quantizers}],"
                             f" got {valid_quantizers}")
        latent_rate = cfg.sampling_rate / math.prod(cfg.upsampling_ratios)
        stride = round(latent_rate / cfg.frame_rate)
        if stride < 2 or abs(latent_rate / cfg.frame_rate - stride) > 1e-6:
            raise ValueError(f"codec encoder: frame_rate {cfg.frame_rate} must be {latent_rate} / an integer >= 2")
        self.cfg = cfg
        self.valid_quantizers = valid_quantizers
        self.hop = math.prod(cfg.upsampling_ratios) * stride  # samples per code frame (1920)
        self.encoder = _SeaNetEncoder(cfg)
        self.encoder_transformer = _Transformer(cfg)
        # Mimi builds this with kernel 2 * int(latent_rate / frame_rate) and stride 2.
        self.downsample = _CausalConv(cfg.hidden_size, cfg.hidden_size, 2 * stride, stride=2, bias=False,
                                      pad_mode="replicate")
        self.quantizer = _SplitResidualVQ(cfg)

    def latents(self, wav: torch.Tensor) -> torch.Tensor:
        """Continuous pre-quantizer latents: wav ``[B, N]`` -> ``[B, hidden_size, ceil(N / hop)]``."""
        if wav.dim() != 2 or wav.shape[-1] == 0:
            raise InputError(f"codec encoder expects a non-empty waveform batch [B, N], got shape {tuple(wav.shape)}")
        dtype = self.downsample.conv.weight.dtype
        h = self.encoder(wav[:, None].to(dtype))
        h = self.encoder_transformer(h.transpose(1, 2)).transpose(1, 2)
        return self.downsample(h)

    def quantize(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, hidden_size, T] -> [B, valid_quantizers, T]`` int64 codes."""
        return self.quantizer.encode(latents, self.valid_quantizers)

    @torch.no_grad()
    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Encode 24 kHz audio: wav ``[B, N]`` -> codes ``[B, valid_quantizers, ceil(N / hop)]`` (int64).

        ``lengths [B]`` (valid samples per row, right padding assumed): frames at and past
        ``ceil(lengths[i] / hop)`` of row ``i`` are set to ``PAD_CODE`` (-1). The batch is encoded as one
        padded tensor exactly like the official batched ``encode``; valid frames are unaffected by padding
        except that a row's last valid frame may see up to ``hop - 1`` samples of it, as in the official code.
        """
        codes = self.quantize(self.latents(wav))
        if lengths is not None:
            frames = (lengths.to(codes.device).long() + self.hop - 1) // self.hop
            pad = torch.arange(codes.shape[-1], device=codes.device)[None, :] >= frames[:, None]
            codes = codes.masked_fill(pad[:, None, :], PAD_CODE)
        return codes

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` samples: ``ceil(num_samples / hop)``."""
        return -(-num_samples // self.hop)
