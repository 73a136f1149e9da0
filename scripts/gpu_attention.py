"""Which SDPA kernel serves one query over a masked, grouped-head KV cache on this GPU, and at what cost:
torch's GQA call (``enable_gqa=True``) against ``qtts.model.layers.grouped_attention`` (query heads stacked per
KV head). Part of ``scripts/gpu_check.sh``; prints one line per variant.

    python3 scripts/gpu_attention.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from qtts.model.layers import additive_mask, grouped_attention


def timed(fn, repeats: int = 200) -> float:
    """Median µs per call (CUDA events)."""
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    return sorted(times)[len(times) // 2]


def kernels(fn) -> int:
    """CUDA kernels one call launches (each a node of a CUDA graph)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def measure(name: str, heads: int, kv: int, slots: int, queries: int) -> None:
    dev, dtype = torch.device("cuda"), torch.bfloat16
    q = torch.randn(1, heads, queries, 128, device=dev, dtype=dtype)
    keys, values = torch.randn(2, 1, kv, slots, 128, device=dev, dtype=dtype)
    positions = torch.arange(100, 100 + queries, device=dev)[None] % slots
    mask = additive_mask(torch.arange(slots, device=dev)[None, None, None] <= positions[:, None, :, None], dtype)

    def gqa():
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)

    def stacked():
        return grouped_attention(q, keys, values, mask)

    err = (gqa().float() - stacked().float()).abs().max().item()
    usable = []
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.MATH):
        try:
            with sdpa_kernel(backend):
                stacked()
            usable.append(backend.name)
        except RuntimeError:
            pass
    print(f"{name}: GQA call {timed(gqa):.1f} us in {kernels(gqa)} kernels, stacked {timed(stacked):.1f} us in "
          f"{kernels(stacked)} kernels, max diff {err:.2e}, backends able to run the stacked call: "
          f"{', '.join(usable) or 'none'}", flush=True)


def main() -> None:
    for case in (("talker step", 16, 8, 2048, 1), ("predictor step", 16, 8, 16, 1), ("prefill", 16, 8, 2048, 40)):
        measure(*case)


if __name__ == "__main__":
    main()
