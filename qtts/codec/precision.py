"""Float32 convolutions at full precision on CUDA.

cuDNN runs float32 convolutions in TF32 by default (10-bit mantissa inputs). In the codec decoder that rounding
depends on the convolution's shape, so decoding a chunk of 7 frames at once or as 4 + 2 + 1 (what the
CUDA-graphed chunk decoder does) gave audio ~1e-2 apart on an H100, where float64 agrees exactly: streaming
would change the audio. Inside ``ieee_convolutions`` float32 convolutions use full IEEE precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def ieee_convolutions(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Within the block, cuDNN's float32 convolutions (and RNNs) do not use TF32 when ``device`` is CUDA and
    ``dtype`` float32 (else nothing changes); the previous settings come back afterwards, also on errors.
    The settings are process-wide: other threads' float32 convolutions meanwhile run at full precision too."""
    if device.type != "cuda" or dtype != torch.float32:
        yield
        return
    cudnn = torch.backends.cudnn
    # Saved through the per-operator settings where torch has them (>= 2.9: the legacy getter raises when a
    # user set conv and RNN apart); switched off through the legacy setter, which keeps both consistent.
    parts = [getattr(cudnn, name, None) for name in ("conv", "rnn")]
    per_op = all(hasattr(p, "fp32_precision") for p in parts)
    saved = [p.fp32_precision for p in parts] if per_op else cudnn.allow_tf32
    cudnn.allow_tf32 = False
    try:
        yield
    finally:
        if per_op:
            for p, value in zip(parts, saved, strict=True):
                p.fp32_precision = value
        else:
            cudnn.allow_tf32 = saved
