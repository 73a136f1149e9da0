"""Row kernels (``qtts.gemv``) against torch's own products, for 1-4 activation rows, at the model's layer shapes.

    python bench/row_kernels.py [--threads N] [--dtypes float32,bfloat16,int8] [--rows 1,2,3,4] [--mib 400]

For each dtype and row count, the talker / predictor layer shapes of the 0.6b and 1.7b checkpoints (q, k/v,
o, gate/up, down; ``[out, in]``) are multiplied by R activation rows, with enough distinct copies of each
weight (``--mib`` in all) that nothing stays in cache, as in a real frame. Contenders, in one process:

* ``linear``: ``torch.nn.functional.linear`` (float32 / bfloat16), or for int8 ``torch._weight_int8pack_mm``
  with bfloat16 activations (what ``Int8Linear`` runs on CPU);
* ``row kernel``: the compiled reduction ``qtts.gemv`` routes a few rows through.

Reported: weight bytes read per second (each weight once per call, whatever R) and the ratio row kernel ÷
linear in time, plus whether each row of a multi-row call equals that row alone (bit for bit). The machine,
torch version and thread count head the output.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from streaming import cpu_model, git_commit  # noqa: E402

from qtts import gemv  # noqa: E402
from qtts.quant import quantize_weight  # noqa: E402

SHAPES = {  # [out, in] of the talker / predictor linear layers (0.6b: hidden 1024; 1.7b talker: 2048)
    "0.6b q": (2048, 1024), "0.6b k/v": (1024, 1024), "0.6b o": (1024, 2048),
    "0.6b gate/up": (3072, 1024), "0.6b down": (1024, 3072),
    "1.7b q": (2048, 2048), "1.7b gate/up": (6144, 2048), "1.7b down": (2048, 6144),
}


def _time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _contenders(kernels, x: torch.Tensor, weights: list[torch.Tensor], scales: torch.Tensor | None):
    """``(ours, ref)``: callables multiplying ``x`` by every weight (row kernel; torch's product)."""
    if scales is not None:
        xb = x.to(torch.bfloat16)

        def ours() -> list[torch.Tensor]:
            return [kernels.row_int8(x, w, scales) for w in weights]

        def ref() -> list[torch.Tensor]:
            return [torch._weight_int8pack_mm(xb, w, scales) for w in weights]
    else:
        def ours() -> list[torch.Tensor]:
            return [kernels.row(x, w) for w in weights]

        def ref() -> list[torch.Tensor]:
            return [F.linear(x, w) for w in weights]
    return ours, ref


def run(dtypes: list[str], rows: list[int], mib: int, repeats: int) -> list[dict]:
    kernels = gemv._kernels()
    if not kernels.check():
        raise SystemExit("the row kernels cannot be built here (torch.compile / inductor)")
    results = []
    for name, (n, k) in SHAPES.items():
        for dtype_name in dtypes:
            int8 = dtype_name == "int8"
            elem = 1 if int8 else torch.finfo(getattr(torch, dtype_name)).bits // 8
            copies = max(2, (mib << 20) // (n * k * elem))
            base = torch.randn(n, k) * 0.02
            if int8:
                q, scales = quantize_weight(base)
                weights = [q.clone() for _ in range(copies)]
                act = torch.float32
            else:
                weights = [base.to(getattr(torch, dtype_name)).clone() for _ in range(copies)]
                act, scales = weights[0].dtype, None
            for r in rows:
                x = torch.randn(r, k).to(act)
                ours, ref = _contenders(kernels, x, weights, scales)
                alone = torch.cat([_contenders(kernels, x[i:i + 1], weights[:1], scales)[0]()[0]
                                   for i in range(r)])
                together = ours()[0]
                t_ours, t_ref = _time(ours, repeats), _time(ref, repeats)
                nbytes = copies * n * k * elem
                results.append({"shape": name, "dtype": dtype_name, "rows": r, "ours_gbs": nbytes / t_ours / 1e9,
                                "linear_gbs": nbytes / t_ref / 1e9, "ratio": t_ours / t_ref,
                                "rows_independent": bool(torch.equal(alone, together))})
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtypes", default="float32,bfloat16,int8")
    p.add_argument("--rows", default="1,2,3,4")
    p.add_argument("--mib", type=int, default=400, help="distinct weight bytes per shape (beyond any cache)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"Python {platform.python_version()}, qtts {git_commit()}")
    print("| shape [out, in] | dtype | rows | row kernel GB/s | linear GB/s | row kernel ÷ linear (time) | "
          "rows independent |")
    print("|---|---|---|---|---|---|---|")
    for r in run(args.dtypes.split(","), [int(x) for x in args.rows.split(",")], args.mib, args.repeats):
        print(f"| {r['shape']} | {r['dtype']} | {r['rows']} | {r['ours_gbs']:.1f} | {r['linear_gbs']:.1f} | "
              f"{r['ratio']:.2f} | {'yes' if r['rows_independent'] else 'NO'} |")


if __name__ == "__main__":
    main()
