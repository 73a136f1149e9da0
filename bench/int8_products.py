"""int8 weight products on CPU: the weight-only kernels we run against the int8 × int8 kernels PyTorch ships.

    python bench/int8_products.py [--threads 2] [--mib 64,400] [--rows 1] [--shapes "0.6b gate/up,0.6b down"]

Each layer shape of the 0.6b checkpoint (``[out, in]``, as in ``bench/row_kernels.py``) is quantized per output
channel (``qtts.quant.quantize_weight``) and multiplied by R activation rows, over enough distinct copies of the
weight to fill each ``--mib`` working set: a set that stays in the last-level cache (the code predictor's 79 MB
of int8 weights, read 15 times per frame, on a CPU with a large L3) and one that does not (the talker's 440 MB,
read once). Contenders, in one process:

* ``row kernel`` (weight-only; what ``--accel row-kernels`` runs for int8): ``qtts.gemv`` 's compiled reduction,
  float32 activations, each int8 weight converted to float32 in the loop;
* ``row kernel, static``: the same reduction compiled for the call's fixed shapes with the compiled regions'
  options (``qtts.accel.CPU_COMPILE_OPTIONS``), as inductor writes it inside a compiled frame step;
* ``int8pack`` (weight-only; ``Int8Linear`` 's CPU kernel otherwise): ``torch._weight_int8pack_mm``, bfloat16
  activations;
* ``int_mm`` (W8A8): activations quantized per row to int8 (symmetric), ``torch._int_mm`` (int8 × int8 → int32,
  oneDNN), rescaled;
* ``fbgemm`` (W8A8): ``torch.ops.quantized.linear_dynamic`` (activations quantized per call to uint8 with a
  7-bit range on x86, int8 dot products). Its weights are quantized tensors (``torch.qint8``), which torch 2.13
  deprecates ("will be removed in a future PyTorch release"): a reference, not a candidate (left out where the
  quantized engine is not x86 / fbgemm).

The W8A8 kernels multiply int8 by int8 (a dot-product instruction does 4 multiply-adds per 32-bit lane) where
the weight-only ones convert every weight to float first; they change the numerics: activations keep ~7-8 bits.
So each contender's relative error against the float32 product of the same int8 weights is reported too, for
Gaussian activations and for activations with a few large channels (``--outlier``: 4 channels that many times
the others' scale, as real transformer activations have; per-tensor activation quantization suffers most).

Reported: weight bytes read per second (each weight once per call) and the relative error; the machine, torch
version and thread count head the output.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from row_kernels import SHAPES  # noqa: E402
from row_kernels import _time as best_time  # noqa: E402
from streaming import cpu_model, git_commit  # noqa: E402

from qtts import accel, gemv  # noqa: E402
from qtts.quant import quantize_weight  # noqa: E402

WEIGHT_ONLY = ("row kernel", "row kernel, static", "int8pack")
# fbgemm's dynamic product needs an x86 quantized engine (ARM builds have qnnpack only).
CONTENDERS = (*WEIGHT_ONLY, "int_mm") + (
    ("fbgemm",) if {"x86", "fbgemm"} & set(torch.backends.quantized.supported_engines) else ())


def _rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [R, K]`` float32 -> (int8 ``[R, K]``, per-row scales ``[R, 1]``): symmetric, 127 levels a side."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
    return torch.round(x / scale).clamp(-127, 127).to(torch.int8), scale


def products(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, copies: list[torch.Tensor]
             ) -> dict[str, Callable[[], list[torch.Tensor]]]:
    """Per contender, a callable multiplying ``x [R, K]`` (float32) by every int8 weight in ``copies`` (each
    ``[N, K]``, equal to ``q``, per-output ``scales [N]``) -> a list of ``[R, N]`` float32 products."""
    kernels = gemv._kernels()
    static = torch.compile(gemv._row_int8, dynamic=False, options=accel.region_compile_options("cpu"))
    xb, sb = x.to(torch.bfloat16), scales.to(torch.bfloat16)
    transposed = [c.t() for c in copies]  # [K, N] views: _int_mm's right operand

    def int_mm() -> list[torch.Tensor]:
        xq, xs = _rows_int8(x)
        return [torch._int_mm(xq, w).float() * xs * scales for w in transposed]

    fns = {
        "row kernel": lambda: [kernels.row_int8(x, c, scales) for c in copies],
        "row kernel, static": lambda: [static(x, c, scales) for c in copies],
        "int8pack": lambda: [torch._weight_int8pack_mm(xb, c, sb).float() for c in copies],
        "int_mm": int_mm,
    }
    if "fbgemm" in CONTENDERS:
        with warnings.catch_warnings():  # quantized tensors are deprecated (see the module docstring)
            warnings.simplefilter("ignore", UserWarning)
            packed = [torch.ops.quantized.linear_prepack(torch._make_per_channel_quantized_tensor(
                c, scales.double(), torch.zeros_like(scales, dtype=torch.long), 0), None) for c in copies]
        reduce_range = torch.backends.quantized.engine in ("fbgemm", "x86")
        fns["fbgemm"] = lambda: [torch.ops.quantized.linear_dynamic(x, p, reduce_range) for p in packed]
    return fns


def activations(rows: int, k: int, outlier: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Two kinds of activation rows ``[rows, k]``: Gaussian, and Gaussian with 4 channels ``outlier`` times larger."""
    x = torch.randn(rows, k, generator=gen)
    spiky = x.clone()
    spiky[:, torch.randperm(k, generator=gen)[:4]] *= outlier
    return {"gaussian": x, f"outliers x{outlier:g}": spiky}


def run(shapes: list[str], mibs: list[int], rows: list[int], outlier: float, repeats: int) -> list[dict]:
    """One result per shape, working set, row count and contender: GB/s and the relative errors."""
    if not gemv._kernels().check():
        raise SystemExit("the row kernels cannot be built here (torch.compile / inductor)")
    gen = torch.Generator().manual_seed(0)
    results = []
    for name in shapes:
        n, k = SHAPES[name]
        q, scales = quantize_weight(torch.randn(n, k, generator=gen) * 0.02)
        exact = q.float() * scales[:, None]  # what every contender multiplies by, in float32
        for mib in mibs:
            copies = [q.clone() for _ in range(max(2, (mib << 20) // (n * k)))]
            for r in rows:
                errors: dict[str, dict[str, float]] = {c: {} for c in CONTENDERS}
                for kind, x in activations(r, k, outlier, gen).items():
                    want = x @ exact.t()
                    for c, fn in products(x, q, scales, copies[:1]).items():
                        errors[c][kind] = float((fn()[0] - want).norm() / want.norm())
                x = torch.randn(r, k, generator=gen)
                for c, fn in products(x, q, scales, copies).items():
                    seconds = best_time(fn, repeats)
                    results.append({"shape": name, "mib": len(copies) * n * k / 2**20, "rows": r, "contender": c,
                                    "gbs": len(copies) * n * k / seconds / 1e9, "errors": errors[c]})
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--mib", default="64,400", help="weight working sets, MiB (in and beyond the cache)")
    p.add_argument("--rows", default="1")
    p.add_argument("--shapes", default="0.6b q,0.6b gate/up,0.6b down", help=f"of: {', '.join(SHAPES)}")
    p.add_argument("--outlier", type=float, default=20.0)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    shapes = [s.strip() for s in args.shapes.split(",")]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise SystemExit(f"unknown shape(s) {unknown}: use {', '.join(SHAPES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"Python {platform.python_version()}, qtts {git_commit()}, quantized engine "
          f"{torch.backends.quantized.engine}")
    results = run(shapes, [int(m) for m in args.mib.split(",")], [int(r) for r in args.rows.split(",")],
                  args.outlier, args.repeats)
    kinds = list(results[0]["errors"])
    print(f"| shape [out, in] | working set MiB | rows | kernel | kind | GB/s | "
          f"{' | '.join(f'rel. error, {k}' for k in kinds)} |")
    print("|---|---|---|---|---|---|" + "---|" * len(kinds))
    for r in results:
        kind = "weight-only" if r["contender"] in WEIGHT_ONLY else "W8A8"
        print(f"| {r['shape']} | {r['mib']:.0f} | {r['rows']} | {r['contender']} | {kind} | {r['gbs']:.1f} | "
              + " | ".join(f"{r['errors'][k]:.1e}" for k in kinds) + " |")


if __name__ == "__main__":
    main()
