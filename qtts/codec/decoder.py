"""The 12 Hz codec decoder: codes ``[B, 16, T]`` -> 24 kHz pcm ``[B, 1, 1920 * T]``, offline or streaming.

Pipeline (every stage is causal, which is what makes exact streaming possible):
split-RVQ dequantisation (1 + 15 codebooks) -> causal conv (k=3) -> sliding-window transformer ->
2 x [causal transposed conv x2, ConvNeXt] -> causal conv (k=7) -> 4 x [SnakeBeta, causal transposed conv,
3 dilated residual units] -> SnakeBeta -> causal conv (k=7, 1 channel) -> clamp to [-1, 1].

Parameter names equal the official ``decoder.*`` state-dict keys without the ``decoder.`` prefix, so an
official state dict loads with ``strict=True``. ``quantizer.*.input_proj`` is encoder-side and unused here.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CodecDecoderConfig
from .conv import ConvState, StreamingConv1d, StreamingConvTranspose1d
from .precision import ieee_convolutions
from .streaming import State, StateList, StreamingModule, init_states, run_sequence
from .transformer import TransformerState, WindowTransformer

CODEBOOK_EPS = 1e-5  # floor of cluster_usage, as in the official EuclideanCodebook


class Codebook(nn.Module):
    """EMA codebook: entry ``k`` is ``embedding_sum[k] / max(cluster_usage[k], eps)``."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.cluster_usage = nn.Parameter(torch.ones(size))
        self.embedding_sum = nn.Parameter(torch.zeros(size, dim))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes [B, T]`` (int64) -> entries ``[B, T, dim]`` (look up, then divide: same floats)."""
        usage = self.cluster_usage.clamp(min=CODEBOOK_EPS)[:, None]
        return F.embedding(codes, self.embedding_sum) / F.embedding(codes, usage)


class _CodebookSlot(nn.Module):
    """Holds one codebook under the official name ``_codebook``."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self._codebook = Codebook(size, dim)


class _CodebookList(nn.Module):
    """Holds the codebooks of one group under the official name ``layers``."""

    def __init__(self, count: int, size: int, dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_CodebookSlot(size, dim) for _ in range(count)])


class RVQGroup(nn.Module):
    """A residual group: the sum of its codebooks' entries, projected by ``output_proj`` (1x1 conv)."""

    def __init__(self, count: int, size: int, dim: int, io_dim: int) -> None:
        super().__init__()
        self.input_proj = nn.Conv1d(io_dim, dim, 1, bias=False)  # encoder side; kept for the keys
        self.output_proj = nn.Conv1d(dim, io_dim, 1, bias=False)
        self.vq = _CodebookList(count, size, dim)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes [B, count, T]`` -> ``[B, io_dim, T]``."""
        total = self.vq.layers[0]._codebook(codes[:, 0])
        for i in range(1, len(self.vq.layers)):
            total = total + self.vq.layers[i]._codebook(codes[:, i])
        return self.output_proj(total.transpose(1, 2))


class SplitRVQ(nn.Module):
    """Group 0 (``rvq_first``, the semantic codebook) and groups 1.. (``rvq_rest``), outputs summed."""

    def __init__(self, cfg: CodecDecoderConfig) -> None:
        super().__init__()
        dim = cfg.codebook_dim // 2
        self.rvq_first = RVQGroup(1, cfg.codebook_size, dim, cfg.codebook_dim)
        self.rvq_rest = RVQGroup(cfg.num_quantizers - 1, cfg.codebook_size, dim, cfg.codebook_dim)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes [B, K, T]`` -> ``[B, codebook_dim, T]``."""
        return self.rvq_first(codes[:, :1]) + self.rvq_rest(codes[:, 1:])


class SnakeBeta(nn.Module):
    """``x + sin(x * e^alpha)^2 / (e^beta + 1e-9)``, per channel; ``alpha``, ``beta [C]`` in log space."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, T]`` -> ``[B, C, T]`` (a new tensor; ``x`` is left as it is).

        Without autograd (inference) the steps after ``x * alpha`` run in place on that one new tensor, the same
        operations in the same order, so the same values bit for bit, but one large temporary instead of four (the
        decoder's activations are its largest tensors). On the 2-vCPU development VM, streaming chunks at the real
        shape took 0.962 x the time for 8 frames and 0.978 x for 1 (``bench/snake_ab.py``, session 21)."""
        alpha = torch.exp(self.alpha)[None, :, None]
        inv_beta = 1.0 / (torch.exp(self.beta)[None, :, None] + 1e-9)
        if torch.is_grad_enabled() and (x.requires_grad or self.alpha.requires_grad or self.beta.requires_grad):
            return x + inv_beta * torch.pow(torch.sin(x * alpha), 2)
        t = x * alpha
        t.sin_()
        t.mul_(t)  # pow(t, 2) is t * t, bit for bit
        t.mul_(inv_beta)
        return t.add_(x)


class ConvNeXtBlock(StreamingModule):
    """Causal depthwise conv (k=7) -> LayerNorm -> Linear x4 -> GELU -> Linear -> ``gamma`` -> residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = StreamingConv1d(dim, dim, 7, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> ConvState:
        return self.dwconv.init_state(batch_size, device, dtype)

    def forward(self, x: torch.Tensor, state: ConvState | None = None) -> torch.Tensor:
        """``x [B, C, t]`` -> ``[B, C, t]``."""
        h = self.dwconv(x, state).transpose(1, 2)
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class ResidualUnit(StreamingModule):
    """``x + conv2(snake(conv1(snake(x))))``; conv1: k=7 dilated, conv2: k=1."""

    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__()
        self.act1 = SnakeBeta(dim)
        self.conv1 = StreamingConv1d(dim, dim, 7, dilation=dilation)
        self.act2 = SnakeBeta(dim)
        self.conv2 = StreamingConv1d(dim, dim, 1)

    def _parts(self) -> list[nn.Module]:
        return [self.act1, self.conv1, self.act2, self.conv2]

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> StateList:
        return init_states(self._parts(), batch_size, device, dtype)

    def forward(self, x: torch.Tensor, state: StateList | None = None) -> torch.Tensor:
        """``x [B, C, t]`` -> ``[B, C, t]``."""
        return x + run_sequence(self._parts(), x, state)


class DecoderBlock(StreamingModule):
    """SnakeBeta -> causal transposed conv (kernel 2r, stride r) -> residual units (dilations 1, 3, 9)."""

    def __init__(self, in_dim: int, out_dim: int, rate: int) -> None:
        super().__init__()
        self.block = nn.ModuleList([
            SnakeBeta(in_dim), StreamingConvTranspose1d(in_dim, out_dim, 2 * rate, rate),
            *(ResidualUnit(out_dim, d) for d in (1, 3, 9)),
        ])

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> StateList:
        return init_states(self.block, batch_size, device, dtype)

    def forward(self, x: torch.Tensor, state: StateList | None = None) -> torch.Tensor:
        """``x [B, in_dim, t]`` -> ``[B, out_dim, t * rate]``."""
        return run_sequence(self.block, x, state)


@dataclasses.dataclass
class DecoderState(State):
    """Streaming state of :class:`CodecDecoder` for ``B`` independent rows (all tensors batch-first).

    ``pre_conv``: input tail of the k=3 conv; ``transformer``: per-row frame counter + ring KV caches;
    ``stages``: conv tails / transposed-conv overlaps of the upsample and waveform stages.
    """

    pre_conv: ConvState
    transformer: TransformerState
    stages: StateList

    @property
    def frames(self) -> torch.Tensor:
        """``[B]`` int64: frames decoded so far per row (since its last reset)."""
        return self.transformer.offset


class CodecDecoder(nn.Module):
    """12 Hz codec decoder (official ``Qwen3TTSTokenizerV2Decoder``), offline and streaming."""

    def __init__(self, cfg: CodecDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        latent = cfg.latent_dim
        self.pre_transformer = WindowTransformer(cfg)
        self.quantizer = SplitRVQ(cfg)
        self.pre_conv = StreamingConv1d(cfg.codebook_dim, latent, 3)
        self.upsample = nn.ModuleList([
            nn.ModuleList([StreamingConvTranspose1d(latent, latent, f, f), ConvNeXtBlock(latent)])
            for f in cfg.upsampling_ratios
        ])
        dims = [cfg.decoder_dim // 2**i for i in range(len(cfg.upsample_rates) + 1)]
        self.decoder = nn.ModuleList([
            StreamingConv1d(latent, dims[0], 7),
            *(DecoderBlock(dims[i], dims[i + 1], r) for i, r in enumerate(cfg.upsample_rates)),
            SnakeBeta(dims[-1]), StreamingConv1d(dims[-1], 1, 7),
        ])

    @property
    def samples_per_frame(self) -> int:
        """Output samples per code frame (1920 for the released codec)."""
        return math.prod(self.cfg.upsampling_ratios) * math.prod(self.cfg.upsample_rates)

    def _stages(self) -> list[nn.Module]:
        """Modules after the transformer, in order: upsample stages then waveform decoder."""
        return [m for pair in self.upsample for m in pair] + list(self.decoder)

    def _decode(self, codes: torch.Tensor, state: DecoderState | None) -> torch.Tensor:
        groups, frames = codes.shape[1:]
        assert groups == self.cfg.num_quantizers, f"expected {self.cfg.num_quantizers} code groups, got {groups}"
        assert frames >= 1, "need at least one frame"
        weight = self.pre_conv.conv.weight
        with ieee_convolutions(weight.device, weight.dtype):  # no TF32: chunking must not change the audio
            h = self.pre_conv(self.quantizer(codes), None if state is None else state.pre_conv)
            h = self.pre_transformer(h.transpose(1, 2), None if state is None else state.transformer)
            pcm = run_sequence(self._stages(), h.transpose(1, 2), None if state is None else state.stages)
        return pcm.clamp(min=-1.0, max=1.0)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Offline decode: ``codes [B, 16, T]`` (int64, valid ids >= 0) -> pcm ``[B, 1, 1920 * T]`` in [-1, 1]."""
        return self._decode(codes, None)

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> DecoderState:
        """Fresh streaming state for ``batch_size`` rows (device / dtype default to the weights')."""
        return DecoderState(
            pre_conv=self.pre_conv.init_state(batch_size, device, dtype),
            transformer=self.pre_transformer.init_state(batch_size, device, dtype),
            stages=init_states(self._stages(), batch_size, device, dtype),
        )

    def decode_step(self, codes: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """Streaming decode of the next ``t`` frames of every row: ``codes [B, 16, t]`` -> pcm ``[B, 1, 1920 * t]``.

        Updates ``state`` in place. Concatenating the outputs of successive calls equals :meth:`forward` on
        the concatenated codes. Rows may be at different frame counts (see :meth:`DecoderState.reset`).
        """
        return self._decode(codes, state)
