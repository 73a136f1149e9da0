"""Packed oneDNN weights (``qtts.packed``) against torch's ``linear``, by dtype and row count, at the 0.6b layer shapes.

    python bench/packed.py [--threads N] [--dtypes bfloat16,float32] [--rows 1,2,4,8,16,128] [--mib 240]

For each dtype, a chain of the 0.6b talker's gate/up and down shapes (``[3072, 1024]`` and ``[1024, 3072]``,
alternating; ``--mib`` of distinct weights, beyond any cache, as in a real frame) is applied to R activation
rows, three ways in one process: torch's ``linear``; ``qtts.packed.linear`` with the weights packed for
``PACK_ROWS`` rows (what ``--accel packed`` does); and packed for exactly R rows. Reported: weight bytes read
per second (each weight once per call), the time ratio packed ÷ linear, and whether the outputs equal
``linear`` 's bit for bit. The machine, torch version and thread count head the output.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from row_kernels import _time as best_time  # noqa: E402
from streaming import cpu_model, git_commit  # noqa: E402

from qtts import packed  # noqa: E402

SHAPES = ((3072, 1024), (1024, 3072))


def _chain(weights: list[torch.Tensor], x: torch.Tensor, product) -> torch.Tensor:
    for w in weights:
        x = product(x, w)
    return x


def _own_product(x: torch.Tensor, packed_weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight, None, "none", [], "")


def _time(fn, repeats: int) -> tuple[float, torch.Tensor]:
    """Best of ``repeats`` timed calls (``row_kernels._time``) and the output of one more."""
    return best_time(fn, repeats), fn()


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--rows", default="1,2,4,8,16,128")
    p.add_argument("--mib", type=int, default=240, help="distinct weight bytes per dtype (beyond any cache)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not packed.available():
        sys.exit("this torch build has no oneDNN (torch.backends.mkldnn)")
    print(f"# {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"Python {platform.python_version()}, qtts {git_commit()}, PACK_ROWS = {packed.PACK_ROWS}")
    print("| dtype | rows | linear GB/s | packed GB/s | packed ÷ linear (time) | packed for R rows GB/s | "
          "equal to linear |")
    print("|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        per = SHAPES[0][0] * SHAPES[0][1] * torch.finfo(dtype).bits // 8
        count = max(2, 2 * (args.mib * 2**20 // per // 2))
        weights = [(torch.randn(*SHAPES[i % 2], generator=gen) * 0.03).to(dtype) for i in range(count)]
        nbytes = sum(w.numel() * w.element_size() for w in weights)
        layers = [torch.nn.Linear(1, 1, bias=False) for _ in weights]
        for layer, w in zip(layers, weights, strict=True):
            layer.weight = torch.nn.Parameter(w, requires_grad=False)
        for rows in (int(r) for r in args.rows.split(",")):
            x = (torch.randn(rows, SHAPES[0][1], generator=gen) * 0.5).to(dtype)
            t_lin, ref = _time(lambda: _chain(weights, x, F.linear), args.repeats)  # noqa: B023
            packed.pack_linear_weights_(torch.nn.ModuleList(layers), True)
            t_pack, out = _time(lambda: _chain(weights, x, packed.linear), args.repeats)  # noqa: B023
            packed.pack_linear_weights_(torch.nn.ModuleList(layers), False)
            own = [torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in weights]
            t_own, _ = _time(lambda: _chain(own, x, _own_product), args.repeats)  # noqa: B023
            own.clear()
            print(f"| {name} | {rows} | {nbytes / t_lin / 1e9:.1f} | {nbytes / t_pack / 1e9:.1f} | "
                  f"{t_pack / t_lin:.2f} | {nbytes / t_own / 1e9:.1f} | {'yes' if torch.equal(out, ref) else 'no'} |",
                  flush=True)


if __name__ == "__main__":
    main()
