"""Few-row matrix products on CPU as a compiled reduction (opt-in: ``tts.accelerate(row_kernels=True)``).

A single stream's frame step multiplies one activation row by every weight matrix (two rows in the code
predictor's first step): a matrix-vector product whose speed is the rate at which the weights stream from
memory. PyTorch's CPU ``linear`` for one row reads float32 weights at ~16 GB/s and bfloat16 ones at ~10 GB/s
on one core of the development machine (about 27 GB/s copy bandwidth), for two rows it halves (each row
reads the weights again), and ``torch._weight_int8pack_mm`` is compute-bound. The same product written as an
element-wise multiply and a row sum with float32 accumulation, compiled by ``torch.compile`` (inductor emits
one vectorised reduction loop), streams at ~20 GB/s in every dtype and reads the weights once for a few rows
(``bench/row_kernels.py``). Beyond ``MAX_ROWS`` rows it becomes compute-bound and ``linear`` keeps those.
On Intel CPUs batches of up to 8 rows take it too: int8 (the kernel converts each weight once for all rows and
beats ``torch._weight_int8pack_mm``; up to 16 rows inside compiled regions), and inside compiled regions float32
and bfloat16 (one loop of 32 accumulators beats oneDNN there): see ``MAX_ROWS_BY_VENDOR`` and ``ACCUMULATORS``.

The kernel sums in a different order than the BLAS ``linear``, so results differ in the last bits (float32:
~1e-6 relative) and greedy codes can part from the eager reference at near-ties; the eager path, which
matches the official package exactly, stays the default.

``use_row_kernels_(module, True)`` overrides ``forward`` on the module's ``nn.Linear`` and ``Int8Linear``
instances (an instance attribute: the modules, their parameters and state-dict names are untouched);
``use_row_kernels_(module, False)`` removes the override. If the compiled kernel cannot be built (no C++
compiler for inductor, for instance) the first call warns once and every layer falls back to ``linear``.
"""

from __future__ import annotations

import threading
import types
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from . import packed
from .compile_limits import raise_recompile_limit
from .quant import Int8Linear

# Each activation row is its own reduction over the same weight: inductor fuses the R reductions into one loop
# over the weight (R accumulators), so the weights are read once for all rows, and each row's result is the
# same K-long reduction as when it is alone (bit for bit, tested). The rows are unrolled at trace time (R is
# part of the compiled graph's guard: one graph per row count).


# Weight streams per loop on CPU, by weight dtype: the weight's output rows are cut into that many equal parts, one
# reduction each; inductor runs reductions of equal ranges over the same input in one loop, so each thread reads as
# many places of the weight at once (each output is the same K-long sum as before: the same values). How many pay
# depends on the CPU (``bench/frame_ab.py``, 0.6b frame, ``compile,row-kernels``, 2 threads; BENCHMARKS.md):
# - on the AMD EPYC VM of session 11, two took a bfloat16 frame from 109.6 to 94.1 ms when the machine read ~56
#   GB/s and from 120.4 to 112.9 ms at ~36 GB/s, int8 from 76.5 to 72.5 ms; four were worse for int8 (1.066 against
#   two); float32 moved by ±1 % with two;
# - on the Intel Xeon (AVX-512) VM of session 12 four took a float32 frame from 279 to 243 ms (6 rounds, 0.85-0.89
#   each) and int8 from 94 to 87 ms against two; bfloat16 from 210 to 197 ms with four against two (0.958, 5 of 6
#   rounds faster; eight: 0.968).
# CUDA keeps one (Triton picks its own tiling). ``STREAMS`` is read when a product is traced.
STREAMS_BY_VENDOR = {
    "GenuineIntel": {torch.float32: 4, torch.bfloat16: 4, torch.float16: 4, torch.int8: 4},
    "": {torch.bfloat16: 2, torch.float16: 2, torch.int8: 2},  # AMD and any other CPU
}


def cpu_vendor() -> str:
    """The CPU's vendor string (``/proc/cpuinfo``'s ``vendor_id``: ``GenuineIntel``, ``AuthenticAMD``...), or ""
    where it cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def default_streams(vendor: str) -> dict[torch.dtype, int]:
    """Weight streams per loop by weight dtype for a CPU of ``vendor`` (``STREAMS_BY_VENDOR``; unknown: "")."""
    return dict(STREAMS_BY_VENDOR.get(vendor, STREAMS_BY_VENDOR[""]))


STREAMS = default_streams(cpu_vendor())


# Most accumulators (activation rows x weight streams) one loop keeps, by weight dtype (others:
# ``ACCUMULATORS_OTHER``): a loop has one vector accumulator per row and stream, and an AVX-512 core has 32 vector
# registers. ``STREAMS`` parts are cut down to fit; one to four rows keep every part. Inductor fuses at most
# ``cpp.max_horizontal_fusion_size`` (default 16) reductions into one loop, so regions whose products take more set
# that option (``accel.region_compile_options``). On the Intel VM (``bench/frame_ab.py``, 0.6b, 2 threads):
# - float32, 8 rows x 4 parts in one loop: an 8-stream step 370.3 -> 344.5 ms against oneDNN's packed products
#   (session 20; 20 float32 MLP blocks of 8 rows: 42.9 ms with 16 accumulators, 39.3 with 32, oneDNN 42.2-44.5);
# - bfloat16, 8 rows: 32 accumulators stepped 0.963 x the time of 16 (320.7 -> 309.2 ms, session 20);
# - int8, 8 rows: 32 accumulators stepped 1.4 % slower than 16 (session 20), whose weights convert in the loop too;
#   in session 19, 4 parts in two loops of 16 (without the fusion option) 1.9 % slower than 2 parts.
# Each output is the same K-long sum whatever the parts.
ACCUMULATORS: dict[torch.dtype, int] = {torch.float32: 32, torch.bfloat16: 32}
ACCUMULATORS_OTHER = 16


def accumulators(dtype: torch.dtype) -> int:
    """Most accumulators per loop for products of ``dtype`` weights (``ACCUMULATORS``)."""
    return ACCUMULATORS.get(dtype, ACCUMULATORS_OTHER)


def _parts(w: torch.Tensor, rows: int = 1) -> tuple[torch.Tensor, ...]:
    """``w [N, K]`` as float32, on CPU in ``STREAMS[w.dtype]`` parts along N (at most ``accumulators(w.dtype) //
    rows``) when they divide it (else whole)."""
    wf = w.float()
    n, streams = w.shape[0], min(STREAMS.get(w.dtype, 1), max(1, accumulators(w.dtype) // max(rows, 1)))
    if w.is_cuda or streams < 2 or n % streams:
        return (wf,)
    return wf.split(n // streams)


def _sums(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x [R, K] @ w[N, K]^T -> [R, N]`` in float32: per row and weight part, a float32-accumulated reduction."""
    parts = _parts(w, x.shape[0])
    rows = []
    for i in range(x.shape[0]):
        xf = x[i].float()
        rows.append(torch.cat([(xf * p).sum(-1) for p in parts]) if len(parts) > 1 else (xf * parts[0]).sum(-1))
    return torch.stack(rows)


def _row(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x [R, K] @ w[N, K]^T -> [R, N]`` as float32-accumulated reductions, cast to ``x.dtype``."""
    return _sums(x, w).to(x.dtype)


def _row_int8(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``x [R, K]`` times int8 ``q [N, K]`` with per-output ``scales [N]`` -> ``[R, N]`` in ``x.dtype``."""
    return (_sums(x, q) * scales.float()).to(x.dtype)


class _Kernels:
    """The compiled kernels (built lazily, once per process; dynamic shapes, so one build serves all)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok: bool | None = None  # None: not tried yet
        # One graph per dtype and shape class (sizes of 1, equal sizes): dynamo's default limit of 8 graphs per
        # function would be reached by a process using several dtypes, after which it runs the reduction
        # eagerly (materialising float32 copies of the weights: several times slower than linear). Raised here
        # for this thread; a runner raises it in the thread that steps it (``FrameStep.enter``).
        raise_recompile_limit()
        self.row = torch.compile(_row, dynamic=True)
        self.row_int8 = torch.compile(_row_int8, dynamic=True)

    def check(self) -> bool:
        """Build and check both kernels on a small product; on failure warn once and disable them."""
        if self.ok is not None:
            return self.ok
        with self.lock:
            if self.ok is None:
                try:
                    x = torch.linspace(-1, 1, 40)[None]
                    w = torch.cos(torch.arange(24 * 40, dtype=torch.float32) * 0.7).view(24, 40)
                    q = torch.arange(24 * 40).remainder(255).sub(127).to(torch.int8).view(24, 40)
                    s = torch.linspace(0.5, 1.5, 24)  # no global RNG draws: users' seeds stay untouched
                    ok = torch.allclose(self.row(x, w), F.linear(x, w), rtol=1e-4, atol=1e-5)
                    ok &= torch.allclose(self.row_int8(x, q, s), F.linear(x, q.float()) * s, rtol=1e-4, atol=1e-3)
                    self.ok = bool(ok)
                    reason = "its result did not match torch.nn.functional.linear"
                except Exception as error:  # e.g. inductor cannot find a C++ compiler
                    self.ok = False
                    reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                if not self.ok:
                    warnings.warn(f"qtts row kernels are unavailable ({reason}); using torch linear",
                                  RuntimeWarning, stacklevel=3)
            return self.ok


_KERNELS: _Kernels | None = None
_KERNELS_LOCK = threading.Lock()


def _kernels() -> _Kernels:
    global _KERNELS
    if _KERNELS is not None:
        return _KERNELS
    with _KERNELS_LOCK:
        if _KERNELS is None:
            _KERNELS = _Kernels()
        return _KERNELS


def available() -> bool:
    """Whether the compiled row kernels build and pass their check on this machine (builds them once)."""
    return _kernels().check()


# Smaller matrices stay in cache, where torch's linear is fast and the compiled call's fixed cost (~30 µs of
# guards and dispatch) would dominate: the tiny demo model ran 2x slower with every layer routed here.
MIN_WEIGHTS = 1 << 18


# Which products go through the kernel, by CPU vendor (as ``STREAMS``) and weight dtype:
# - ``MAX_ROWS``: most activation rows (dtypes not listed: ``MAX_ROWS_OTHER``). On the AMD EPYC VM
#   (``bench/row_kernels.py``, 1 and 2 threads, 3072x1024 and 1024x3072 weights) float32 two rows read at 14-18
#   GB/s where linear reads 9-11, four rows at 12-21 GB/s where linear reads 8-11 (torch's float32 products of a
#   few rows are slow on that CPU), eight rows tie; bfloat16 and int8 two rows about tie with torch's kernels, and
#   from 3-4 rows the conversions make the kernel compute-bound and torch's kernels win. On the Intel Xeon VM
#   (session 19) the kernel converts each int8 weight once for all rows: 8 rows of 1024 ran 60 GMAC/s against
#   ``torch._weight_int8pack_mm`` 's 37 (``bench/int8_products.py``, static contender; rows of 3072: 56 against 52
#   in the cache, 45 against 48 from memory), and in the frame, where int8pack is also an external call with
#   bfloat16 activations, 8 int8 streams stepped 17 % and 4 streams 36 % faster (0.6b, ``bench/frame_ab.py``).
#   Float32 on the Intel VM (session 20): 8 rows in one loop of 32 accumulators (``ACCUMULATORS``), with the
#   regions' batch options (``accel.CPU_BATCH_OPTIONS``), beat oneDNN's packed product (20 MLP blocks of 8 rows:
#   37.9-39.3 against 42.2 ms) and in the frame took an 8-stream step from 370.3 to 344.5 ms (every round faster).
#   bfloat16 too (session 20): 20 MLP blocks of 8 rows 46.4 against oneDNN's 52.6 ms, 4 rows 31.3 against 36.9;
#   8 streams stepped 324.7 -> 309.2 ms with 16 accumulators (0.955, every round faster), then 0.963 x that with 32
#   (rows of up to 8 x 3072 elements, ``MAX_WIDTH``); at 1.7b 8 bfloat16 streams made 4.39 x one (4.24 x before).
#   Two rows is the code predictor's first step of every frame; four and eight, batches of streams. int8 takes up
#   to 16 rows there (session 21): the code predictor's first step of 8 streams (2 rows each) had been int8pack's,
#   ~12 % of an 8-stream int8 step; through the kernel (16 rows x 1 weight part per loop) the step took 217.1 ->
#   207.8 ms (0.958, 7 of 8 rounds faster).
# - ``MAX_WIDTH``: most activation elements (rows x in_features) per call (dtypes not listed: no limit): beyond
#   these the kernel lost to torch's kernels (AMD: int8 1 row of 6144 took 3.8x int8pack's time, 2 rows of 3072
#   1.5x; bfloat16: 2 rows of 6144 1.8x linear). float32 won or tied at every measured width there. On the Intel
#   VM (session 20) 8 float32 rows of 6144 (1.7b's down projection) read 8.7 GB/s in the kernel against oneDNN's
#   19.4 (the rows no longer fit the L1 cache), and the 1.7b suite's 8 float32 streams fell from 5.05 x one to
#   4.48 x: float32 takes at most 8 x 3072 elements there (the 0.6b's rows all fit; one to four rows of 6144 too).
# - ``MAX_IN``: longest row (in_features) per dtype: on the Intel VM int8pack won at 6144 (1.7b's down
#   projection, ``bench/int8_products.py``) for 1 row (27.6 against 15.3 GB/s) and 8 rows (7.6 against 2.5).
MAX_ROWS_BY_VENDOR = {"GenuineIntel": {torch.float32: 8, torch.bfloat16: 8, torch.int8: 16},
                      "": {torch.float32: 4}}
MAX_WIDTH_BY_VENDOR = {
    "GenuineIntel": {torch.float32: 8 * 3072, torch.int8: 16 * 3072, torch.bfloat16: 8 * 3072},
    "": {torch.int8: 4096, torch.bfloat16: 8192},
}
MAX_IN_BY_VENDOR = {"GenuineIntel": {torch.int8: 4096}, "": {}}
MAX_ROWS_OTHER = 2
# Outside compiled code a product takes the standalone kernel (dynamic shapes, inductor's default options), which
# for float32 loses beyond 4 rows: 8 rows of the 0.6b's layer shapes 39.3 ms against oneDNN's packed 27.2 ms (32
# products, session 20), where inside a compiled region 8 rows win. So uncompiled products of more rows than this
# keep torch's kernels (int8 8 rows: the standalone kernel 44.4 ms against int8pack's 54.9; 16 rows of 3072 lost,
# 3.2 against 4.0 GB/s, so 8; bfloat16 keeps the 2 rows it had before session 20, unmeasured beyond).
EAGER_MAX_ROWS = {torch.float32: 4, torch.bfloat16: MAX_ROWS_OTHER, torch.int8: 8}


# Most rows by weight dtype where inductor's vectors are narrower than 512 bits (ATen's capability not
# ``AVX512...``), over the vendor's table. On the AMD EPYC Zen 3 VM of session 22 (AVX2; ``bench/frame_ab.py``, 0.6b,
# 2 threads, ``compile,row-kernels,packed,fused``):
# - int8 none: the int8 kernel read 1.2-1.8 GB/s where ``torch._weight_int8pack_mm`` read 8-13
#   (``bench/int8_products.py``, 0.6b gate/up and down, 1 and 2 rows); one int8 stream 917.8 -> 219.2 ms per frame;
# - bfloat16 8 in compiled code: without AVX-512 oneDNN has no bfloat16 kernels, so torch's bfloat16 ``linear`` (and
#   ``packed``, which cannot pack them) ran 4 streams no faster than one; through the kernel a 4-stream step took
#   804.9 -> 453.8 ms (0.549, every round 0.55-0.61), 8 streams 1565.6 -> 1079.4 ms (0.716, 3 rounds 0.67-0.73).
NARROW_VECTORS_ROWS = {torch.int8: 0, torch.bfloat16: 8}


def default_routing(vendor: str, capability: str = "AVX512"
                    ) -> tuple[dict[torch.dtype, int], dict[torch.dtype, int], dict[torch.dtype, int]]:
    """``(MAX_ROWS, MAX_WIDTH, MAX_IN)`` for a CPU of ``vendor`` (unknown: the "" entries) and ATen vector
    ``capability`` (without AVX-512 ``NARROW_VECTORS_ROWS`` override the rows); fresh dicts."""
    rows, width, longest = (dict(table.get(vendor, table[""]))
                            for table in (MAX_ROWS_BY_VENDOR, MAX_WIDTH_BY_VENDOR, MAX_IN_BY_VENDOR))
    if not capability.startswith("AVX512"):
        rows.update(NARROW_VECTORS_ROWS)
    return rows, width, longest


MAX_ROWS, MAX_WIDTH, MAX_IN = default_routing(cpu_vendor(), torch.backends.cpu.get_cpu_capability())


# On CUDA the kernel is only traced into compiled regions, where inductor writes each product as one Triton
# reduction over the weight with its neighbours (norm, activation, residual) fused in, instead of a cuBLAS call:
# ``accel.CUDA_PRODUCTS = "rows"``, the default since an H100 measured it faster (BENCHMARKS.md, session 17). Up
# to two rows: a single stream's talker step and the code predictor's first step.
CUDA_MAX_ROWS = 2


def max_rows(dtype: torch.dtype, compiling: bool) -> int:
    """Most activation rows of a CPU product of ``dtype`` weights that take the kernel: ``MAX_ROWS`` inside
    compiled code, also capped by ``EAGER_MAX_ROWS`` outside it."""
    most = MAX_ROWS.get(dtype, MAX_ROWS_OTHER)
    return most if compiling else min(most, EAGER_MAX_ROWS.get(dtype, most))


def takes_batches(dtype: torch.dtype) -> bool:
    """Whether CPU products of ``dtype`` weights take the kernel for more rows than one stream's (2: the code
    predictor's first step), i.e. for batches of streams (``MAX_ROWS``)."""
    return MAX_ROWS.get(dtype, MAX_ROWS_OTHER) > 2


def weight_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of ``module``'s linear weights as the row kernels see them: ``torch.int8`` if it has an
    ``Int8Linear``, else its first ``nn.Linear``'s weight dtype; None without either."""
    first = None
    for layer in module.modules():
        if isinstance(layer, Int8Linear):
            return torch.int8
        if first is None and isinstance(layer, nn.Linear):
            first = layer.weight.dtype
    return first


def cuda_rows(rows: int, compiling: bool) -> bool:
    """Whether a CUDA product of ``rows`` activation rows goes through the kernel (compiled code only)."""
    return compiling and 1 <= rows <= CUDA_MAX_ROWS


def _routed_rows(x: torch.Tensor, weight: torch.Tensor, compiling: bool = False) -> bool:
    """Whether the product of ``x [..., K]`` with ``weight`` goes through the kernel, inside compiled code
    (``compiling``) or outside it."""
    if weight.numel() < MIN_WEIGHTS or x.shape[-1] == 0:
        return False
    rows = x.numel() // x.shape[-1]
    if x.is_cuda and weight.is_cuda:
        return cuda_rows(rows, compiling)
    if not (x.is_cpu and weight.is_cpu):
        return False
    width, longest = MAX_WIDTH.get(weight.dtype), MAX_IN.get(weight.dtype)
    return (1 <= rows <= max_rows(weight.dtype, compiling)
            and (width is None or x.numel() <= width) and (longest is None or x.shape[-1] <= longest))


def _routed_forward(self: nn.Linear | Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """``forward`` of a routed layer: with row kernels on, a few CPU rows (``MAX_ROWS``) through the row kernel
    (inlined into the graph inside a compiled region, e.g. ``accelerate(compile=True)``), or on CUDA a compiled
    region's one or two rows (``CUDA_MAX_ROWS``); anything else through
    ``qtts.packed.linear`` if the weight is packed, else the layer's own ``forward``."""
    int8 = isinstance(self, Int8Linear)
    weight = self.weight_int8 if int8 else self.weight
    compiling = torch.compiler.is_compiling()
    routed = self.__dict__.get("row_kernels") and _routed_rows(x, weight, compiling)
    if not (routed and (compiling or _kernels().check())):
        if not int8 and self.__dict__.get("packed"):
            return packed.linear(x, weight, self.bias)
        return (Int8Linear if int8 else nn.Linear).forward(self, x)
    row = x.reshape(-1, x.shape[-1])
    if not compiling:
        # A fresh row (views of other tensors guard on their base and offset: a recompile per kind of view) and
        # the weight as a plain tensor (a parameter's shape would be static: a recompile per layer shape).
        row, weight = row.clone(), weight.detach()
    if int8:
        y = (_row_int8 if compiling else _kernels().row_int8)(row, weight, self.scales)
    else:
        y = (_row if compiling else _kernels().row)(row, weight)
    if self.bias is not None:
        y = y + self.bias.to(y.dtype)
    return y.reshape(*x.shape[:-1], self.out_features)


def sync_forward_(layer: nn.Module) -> None:
    """Install ``_routed_forward`` on ``layer`` if its products are routed (row kernels on, or a packed weight:
    ``qtts.packed``), else remove it (an instance attribute: the module, its parameters and state-dict names are
    untouched)."""
    if not isinstance(layer, (nn.Linear, Int8Linear)):
        return
    layer.__dict__["packed"] = packed.is_packed(layer)
    if layer.__dict__.get("row_kernels") or layer.__dict__["packed"]:
        layer.forward = types.MethodType(_routed_forward, layer)
    else:
        layer.__dict__.pop("forward", None)


def use_row_kernels_(module: nn.Module, enabled: bool = True) -> int:
    """Route few-row CPU products of every ``nn.Linear`` / ``Int8Linear`` in ``module`` through the compiled
    row kernels (``enabled``) or back to their own ``forward``. Returns the number of layers switched."""
    count = 0
    for layer in module.modules():
        if not isinstance(layer, (nn.Linear, Int8Linear)):
            continue
        layer.__dict__["row_kernels"] = enabled
        sync_forward_(layer)
        count += 1
    return count


def uses_row_kernels(module: nn.Module) -> bool:
    """Whether ``use_row_kernels_(module, True)`` is in effect (judged on its first linear layer)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, Int8Linear)):
            return bool(layer.__dict__.get("row_kernels"))
    return False
