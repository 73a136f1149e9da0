"""Causal 1-D convolutions that run offline or streaming with exactly the same result.

Offline they match the official 12 Hz decoder's causal convs: ``Conv1d`` is zero-padded by
``(kernel - 1) * dilation`` on the left (stride 1, so no right padding), and ``ConvTranspose1d`` drops the
last ``kernel - stride`` samples, so ``T`` input frames give ``T`` (conv) or ``T * stride`` (transposed)
output frames. Streaming carries the state that makes chunked output equal the offline output:

* conv: ``previous`` — the last ``(kernel - 1) * dilation`` input frames (zeros for a fresh stream);
* transposed conv: ``partial`` — the ``kernel - stride`` output frames already touched by past inputs but
  still waiting for contributions of future ones (bias not yet added).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .streaming import State, StreamingModule, param_device_dtype


@dataclasses.dataclass
class ConvState(State):
    """``previous [B, C_in, (kernel - 1) * dilation]``: the input tail seen so far."""

    previous: torch.Tensor


@dataclasses.dataclass
class ConvTransposeState(State):
    """``partial [B, C_out, kernel - stride]``: overlap-add output of past frames, without bias."""

    partial: torch.Tensor


class StreamingConv1d(StreamingModule):
    """Causal stride-1 ``Conv1d`` (weights at ``.conv``): ``x [B, C_in, T] -> [B, C_out, T]``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1,
                 groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, groups=groups)
        self.context = (kernel_size - 1) * dilation

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> ConvState:
        device, dtype = param_device_dtype(self, device, dtype)
        shape = (batch_size, self.conv.in_channels, self.context)
        return ConvState(torch.zeros(shape, device=device, dtype=dtype))

    def _valid(self, x: torch.Tensor, fast: bool) -> torch.Tensor:
        """The convolution over ``x [B, C_in, context + t]`` (left context included) -> ``[B, C_out, t]``.

        ``fast`` (streaming) and a short input on CPU (``t <= C_in``, no groups): one matrix product of the weight
        as stored (``[C_out, C_in * K]``) with the unfolded input (``[C_in * K, t]``); torch's CPU convolution
        takes several times longer on a few frames of many channels (a streaming chunk). Otherwise, and always
        offline (which so stays the official computation exactly), ``conv1d``. They round differently (~1e-6
        relative)."""
        conv = self.conv
        t = x.shape[-1] - self.context
        if not fast or t > conv.in_channels or conv.groups != 1 or x.device.type != "cpu":
            return conv(x)
        k, d = conv.kernel_size[0], conv.dilation[0]
        cols = x.unfold(-1, self.context + 1, 1)[..., ::d]  # [B, C_in, t, K]
        cols = cols.transpose(2, 3).reshape(x.shape[0], conv.in_channels * k, t)
        y = torch.matmul(conv.weight.reshape(conv.out_channels, -1), cols)
        return y if conv.bias is None else y + conv.bias[:, None]

    def forward(self, x: torch.Tensor, state: ConvState | None = None) -> torch.Tensor:
        """``x [B, C_in, t]`` -> ``[B, C_out, t]``; with ``state``, ``x`` continues the stream."""
        if state is None:
            return self._valid(F.pad(x, (self.context, 0)), fast=False)
        x = torch.cat([state.previous, x], dim=-1)
        state.previous.copy_(x[..., x.shape[-1] - self.context:])
        return self._valid(x, fast=True)


class StreamingConvTranspose1d(StreamingModule):
    """Causal ``ConvTranspose1d`` (weights at ``.conv``): ``x [B, C_in, T] -> [B, C_out, T * stride]``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        assert kernel_size >= stride, "a causal transposed conv needs kernel_size >= stride"
        self.conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride=stride)
        self.stride = stride
        self.overlap = kernel_size - stride

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> ConvTransposeState:
        device, dtype = param_device_dtype(self, device, dtype)
        shape = (batch_size, self.conv.out_channels, self.overlap)
        return ConvTransposeState(torch.zeros(shape, device=device, dtype=dtype))

    def _full(self, x: torch.Tensor, fast: bool) -> torch.Tensor:
        """The whole transposed convolution without bias: ``[B, C_in, t] -> [B, C_out, (t - 1) * stride + K]``.

        ``fast`` (streaming) and a short input on CPU (``t <= C_in``: a chunk's first stages): one matrix product
        ``x^T @ W`` (``W [C_in, C_out * K]`` as stored, read row by row), then an overlap-add of the
        ``K / stride`` phases; torch's CPU ``conv_transpose1d`` takes ~10x longer there (115 ms instead of 11
        for the first waveform block on a 1-frame chunk at the real shape). Otherwise, and always offline,
        ``conv_transpose1d``. They round differently (~1e-6 relative)."""
        B, c_in, t = x.shape
        w = self.conv.weight  # [C_in, C_out, K]
        c_out, k = w.shape[1], w.shape[2]
        if not fast or t > c_in or k % self.stride or x.device.type != "cpu":
            return F.conv_transpose1d(x, w, None, stride=self.stride)
        phases, s = k // self.stride, self.stride
        z = torch.matmul(x.transpose(1, 2), w.reshape(c_in, c_out * k)).view(B, t, c_out, phases, s)
        out = x.new_zeros(B, c_out, t + phases - 1, s)
        for p in range(phases):
            out[:, :, p:p + t] += z[:, :, :, p].permute(0, 2, 1, 3)
        return out.reshape(B, c_out, (t + phases - 1) * s)

    def forward(self, x: torch.Tensor, state: ConvTransposeState | None = None) -> torch.Tensor:
        """``x [B, C_in, t]`` -> ``[B, C_out, t * stride]``; with ``state``, ``x`` continues the stream."""
        n = x.shape[-1] * self.stride
        if state is None:
            y = self._full(x, fast=False)[..., :n]
            return y if self.conv.bias is None else y + self.conv.bias[:, None]
        y = self._full(x, fast=True)  # [B, C_out, n + overlap]
        if self.overlap:
            y[..., :self.overlap] += state.partial
            state.partial.copy_(y[..., n:])
        out = y[..., :n]
        return out if self.conv.bias is None else out + self.conv.bias[:, None]
