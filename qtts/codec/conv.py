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

    def forward(self, x: torch.Tensor, state: ConvState | None = None) -> torch.Tensor:
        """``x [B, C_in, t]`` -> ``[B, C_out, t]``; with ``state``, ``x`` continues the stream."""
        if state is None:
            return self.conv(F.pad(x, (self.context, 0)))
        x = torch.cat([state.previous, x], dim=-1)
        state.previous.copy_(x[..., x.shape[-1] - self.context:])
        return self.conv(x)


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

    def forward(self, x: torch.Tensor, state: ConvTransposeState | None = None) -> torch.Tensor:
        """``x [B, C_in, t]`` -> ``[B, C_out, t * stride]``; with ``state``, ``x`` continues the stream."""
        n = x.shape[-1] * self.stride
        if state is None:
            return self.conv(x)[..., :n]
        y = F.conv_transpose1d(x, self.conv.weight, None, stride=self.stride)  # [B, C_out, n + overlap]
        if self.overlap:
            y[..., :self.overlap] += state.partial
            state.partial.copy_(y[..., n:])
        out = y[..., :n]
        return out if self.conv.bias is None else out + self.conv.bias[:, None]
