"""Acceleration applied from outside the model: the frame step as eager, ``torch.compile`` d or CUDA-graphed.

A *frame step* runs ``generate.decode_frame`` on slots ``0..b-1`` of a ``FrameState`` and returns
``[b, G + 1]`` (the completed frames' codes and each slot's next code-0) on the device. The runner calls
it once per frame. Three implementations, chosen by ``AccelOptions``:

- ``FrameStep`` (eager): the reference. Attention reads exactly the cache slots in use (``span``).
- ``compile=True``: regional ``torch.compile`` of the transformer blocks and the sampling functions (one
  graph per block shape, reused by every layer: fast to compile) on preallocated state. Without CUDA graphs
  attention reads the cache slots in use rounded up to ``SPAN_STEP`` (masked beyond; the span is a dynamic
  dimension, so nothing recompiles per frame); with graphs, as the next item says.
- ``cuda_graphs=True`` (CUDA only): one CUDA graph per batch-size bucket (1, 2, 4, 8, ... up to
  ``max_batch``), captured once per runner over its preallocated state and replayed every frame; rows
  beyond the live ones are free slots (inactive: computed, never advanced). A graph replays fixed shapes, so
  talker attention reads a fixed number of cache slots: by default (``GRAPH_SPANS = "buckets"``) the slots in
  use rounded up to a power of two (``graph_spans``: one graph per batch bucket and span, all captured on the
  bucket's first frame), or the whole cache (``"whole"``). A reallocated cache or text buffer (rare: only past
  ``max_frames``) triggers a re-capture.

Warm-up and capture happen on the first frame of each bucket, once per runner (an ``Engine`` keeps its
runner for its lifetime); ``capture_seconds`` records their cost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
import time
from collections.abc import Iterator

import torch

from . import gemv
from .compile_limits import raise_recompile_limit
from .errors import InputError
from .gemv import use_row_kernels_, uses_row_kernels
from .generate import EAGER, FrameState, Kernels, decode_frame
from .model.layers import matmul_attention
from .model.talker import Talker
from .quant import Int8Linear
from .sampling import frame_exponentials, process_code0_logits, sample


@dataclasses.dataclass(frozen=True)
class AccelOptions:
    """``compile``: ``torch.compile`` the frame step; ``cuda_graphs``: capture it in CUDA graphs (CUDA only);
    ``max_frames``: cache slots preallocated per stream when shapes are static (prompt + generated frames);
    ``row_kernels``: CPU products of a few activation rows (``qtts.gemv.MAX_ROWS``: 1-2, float32 1-4, on Intel
    CPUs int8 1-8, and in compiled regions int8 1-16, float32 and bfloat16 1-8) as a compiled reduction that
    reads the weights once (a single stream's frame on CPU, and batches on Intel CPUs; independent of
    ``compile``);
    ``fused``: each block's q/k/v and gate/up projections as one product each (4 products per block instead of
    7; ``qtts.model.fuse``; fewer kernels for a GPU; on CPU no gain for one stream under ``compile``, 6-8 %
    faster for 8 streams with ``packed``);
    ``codec_stream`` (CUDA): chunk decodes on their own CUDA stream, overlapping the next frame step;
    ``packed`` (CPU): linear weights reordered once for oneDNN (``qtts.packed``: bfloat16 bit for bit, float32
    last bits differ; faster products of any row count, a second copy of the weights in memory)."""

    compile: bool = False
    cuda_graphs: bool = False
    max_frames: int = 2048
    compile_backend: str = "inductor"  # "eager" / "aot_eager" trace without code generation (tests)
    pipelined: bool | None = None  # launch frame t+1 before reading frame t (None: on CUDA only)
    row_kernels: bool = False
    fused: bool = False
    codec_stream: bool = False
    packed: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_frames, int) or self.max_frames < 64:
            raise InputError(f"max_frames must be an integer >= 64, got {self.max_frames!r}")

    @property
    def static(self) -> bool:
        return self.compile or self.cuda_graphs


ACCEL_PARTS = ("compile", "cuda-graphs", "row-kernels", "fused", "codec-stream", "packed")
ACCEL_HELP = ("acceleration: auto (cuda-graphs,fused,codec-stream on CUDA, eager on CPU), eager, or a "
              "comma-separated set of compile, cuda-graphs (CUDA only), row-kernels (CPU, one stream; see "
              "qtts.gemv), fused (one product for q/k/v and one for gate/up per block), codec-stream (CUDA: chunk "
              "decodes overlap the next frame), packed (CPU: weights reordered once for oneDNN; see qtts.packed)")


def check_device(options: AccelOptions, device: torch.device | str) -> AccelOptions:
    """``options`` if each part it turns on works on ``device``, else an ``InputError`` naming the part: CUDA
    graphs and the codec stream need CUDA; packed weights and row kernels are CPU products (on a GPU they would
    do nothing)."""
    kind = torch.device(device).type
    needs = {"cuda-graphs": (options.cuda_graphs, "cuda"), "codec-stream": (options.codec_stream, "cuda"),
             "packed": (options.packed, "cpu"), "row-kernels": (options.row_kernels, "cpu")}
    for part, (on, wanted) in needs.items():
        if on and kind != wanted:
            raise InputError(f"accel {part} needs a {wanted.upper()} device; the model is on {kind}")
    return options


def parse_accel(value: str | None, device: torch.device | str | None) -> AccelOptions:
    """Options for an ``--accel`` value: ``auto`` (or None), ``eager``, or a comma-separated set of
    ``compile``, ``cuda-graphs``, ``row-kernels``, ``fused``, ``codec-stream``, ``packed``. ``auto`` means
    ``cuda-graphs,fused,codec-stream`` on a CUDA device (the fastest set that builds in about a second; each part
    measured faster on an H100, BENCHMARKS.md), else eager. Each part is checked against ``device``
    (``check_device``); ``device=None`` checks the form only."""
    text = "auto" if value is None else str(value).strip().lower()
    if text == "auto":
        cuda = device is not None and torch.device(device).type == "cuda"
        return AccelOptions(cuda_graphs=cuda, fused=cuda, codec_stream=cuda)
    if text == "eager":
        return AccelOptions()
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in ACCEL_PARTS]
    if unknown or not parts:
        raise InputError(f"unknown accel {value!r}: use auto, eager, or a comma-separated set of "
                         f"{', '.join(ACCEL_PARTS)}")
    options = AccelOptions(compile="compile" in parts, cuda_graphs="cuda-graphs" in parts,
                           row_kernels="row-kernels" in parts, fused="fused" in parts,
                           codec_stream="codec-stream" in parts, packed="packed" in parts)
    return options if device is None else check_device(options, device)


STATIC = Kernels(fixed_span=True)
SPAN_STEP = 64  # compiled frame step without CUDA graphs: attention span granularity (cache slots)

# How many cache slots talker attention reads under CUDA graphs, whose replays repeat fixed shapes: "whole" (the
# whole static cache, ``max_frames`` slots: one graph per batch bucket) or "buckets" (the slots in use rounded up
# to a power of two from ``GRAPH_SPAN_MIN``, the last one the whole cache: one graph per batch bucket and span, all
# captured on the bucket's first frame, so that no stream waits for a capture mid-way). The library caches 2048
# slots per stream, while a stream of 20 s of audio uses ~300. On an H100 (session 17, bfloat16, 0.6b, compiled +
# graphed, 2048 slots; ``bench/frame_speed.py`` mode part ``span-buckets`` / ``whole-cache``) "buckets" took one
# stream's frame from 5.19 to 5.12 ms and 8 streams' from 6.28 to 5.69 ms. Read at every graphed frame.
GRAPH_SPANS = "buckets"
GRAPH_SPAN_MIN = 256


def graph_spans(max_len: int) -> list[int]:
    """The attention spans (cache slots) frame graphs are captured for over a cache of ``max_len`` slots, in
    increasing order; the last is ``max_len`` (see ``GRAPH_SPANS``)."""
    if GRAPH_SPANS not in ("whole", "buckets"):
        raise ValueError(f"GRAPH_SPANS must be 'whole' or 'buckets', not {GRAPH_SPANS!r}")
    spans, span = [], GRAPH_SPAN_MIN
    while GRAPH_SPANS == "buckets" and span < max_len:
        spans.append(span)
        span *= 2
    return [*spans, max_len]


def graph_span(needed: int, max_len: int) -> int:
    """The span a graphed frame reads when its slots use ``needed`` cache slots (``needed <= max_len``)."""
    return next(span for span in graph_spans(max_len) if span >= needed)


def _frame(talker: Talker, state: FrameState, span: int, kernels: Kernels = EAGER) -> torch.Tensor:
    codes = decode_frame(talker, state, span, kernels)
    return torch.cat([codes, state.code0[:, None]], dim=1)


def _blocks(talker: Talker) -> list[torch.nn.Module]:
    return [*talker.model.layers, *talker.code_predictor.model.layers]


def _regions(talker: Talker) -> list[torch.nn.Module]:
    """The modules compiled as regions: each talker block (the code predictor's ``step`` is the other region)."""
    return [*talker.model.layers]


# Attention inside compiled regions, per decoder: "matmul" (``matmul_attention``: plain products and a softmax,
# which inductor fuses with their neighbours) or "sdpa" (torch's fused kernel). On CPU both decoders take
# "matmul" (torch's SDPA is an opaque ~40-100 µs call there for one query). On CUDA the code predictor, which
# attends over at most 16 slots, takes "matmul": an H100 spent ~8 µs per cuDNN call on it, and "matmul" took the
# compiled frame from 6.03 to 5.68 ms (1 stream) and 6.22 to 5.87 ms (8; BENCHMARKS.md, session 10). The talker
# keeps the fused kernel (its cache spans up to thousands of slots). ``bench/frame_speed.py`` A/Bs both (mode
# parts ``predictor-matmul`` / ``predictor-sdpa``, ``talker-matmul`` / ``talker-sdpa``). Read when a compiled
# frame step is made.
CUDA_ATTENTION: dict[str, str] = {"talker": "sdpa", "predictor": "matmul"}


# How compiled regions multiply on CUDA: "linear" (cuBLAS, through torch's linear) or "rows" (one or two activation
# rows as the Triton reductions inductor writes: ``qtts.gemv``, ``CUDA_MAX_ROWS``). An H100 spent 2.5 ms of a
# 4.8 ms compiled frame in one-row cuBLAS products at ~45 % of its memory bandwidth (BENCHMARKS.md, session 10);
# with "rows" one stream's compiled, graphed frame took 4.51 ms against 5.12 (8 streams, whose products keep
# cuBLAS: 5.70 and 5.69), and a stream of 19 s of audio ran at 16.6 x real time against 14.9 (session 17,
# bfloat16, 0.6b, 2048 slots; ``bench/frame_speed.py`` mode part ``row-products`` / ``linear-products``). Read
# when a compiled frame step is made.
CUDA_PRODUCTS = "rows"
# Inductor options for the compiled regions on CUDA, e.g. ``{"max_autotune_gemm": True}`` (inductor times
# Triton templates against cuBLAS for every product shape: slower to build; ``bench/frame_speed.py`` mode part
# ``autotune``). Empty: inductor's defaults.
CUDA_COMPILE_OPTIONS: dict[str, object] = {}
# Inductor options for the compiled regions on CPU: FMA contraction (``-ffp-contract=fast``: a multiply and the add
# that consumes it become one instruction, rounded once), which the row kernels' multiply-and-accumulate loops are
# made of. In-process A/Bs (``bench/frame_ab.py`` method, 0.6b, 2 threads, session 11): float32 frame 233 -> 226 ms
# and 222 -> 217 ms at ~35 GB/s, 161.7 -> 144.8 ms at ~62 GB/s; bfloat16 97.7 -> 91.9 ms. The sums differ from
# separate multiplies and adds in the last bits, as the row kernels' already do from torch's ``linear``; rows stay
# independent at the regions' static shapes (tested; ``qtts.gemv`` 's standalone kernel, compiled for dynamic
# shapes, keeps the defaults: there contraction parts float32 rows).
# gcc's tuning for some CPUs (``-march=native``) avoids chains of FMAs in a loop whose sum has one chain and makes
# them where it has several: on the AMD EPYC Zen 3 VM of session 22 (AVX2, gcc 12) a row alone was summed with
# separate multiplies and adds and the same row in a loop of two rows with FMAs, so batched streams parted from
# single-stream values in the last bits. With gcc the regions therefore also pass ``--param=avoid-fma-max-bits=0``
# (``GCC_FMA_PARAM``, through the contraction option's value: inductor splits its command line on spaces), so every
# such loop contracts. On that VM (``bench/frame_ab.py``, 0.6b float32, 2 threads, 6 rounds each; noisy) against no
# contraction: one stream 316.0 against 327.0 ms (1.071), 4 streams 370.6 against 389.5 ms (1.037); gcc's own
# choice gave 4 streams 377.8 against 412.6 ms. Other compilers keep contraction only with 512-bit vectors
# (``AVX512``), where the rows were measured to agree; elsewhere they get none. ``cpu_fma_options`` resolves this
# when a region is compiled.
CPU_FMA_OPTIONS: dict[str, object] = {"cpp.enable_floating_point_contract_flag": "fast"}
GCC_FMA_PARAM = "--param=avoid-fma-max-bits=0"


@functools.cache
def _compiles_with_gcc() -> bool:
    """Whether inductor's CPU code is compiled by gcc here (Linux; looked up once: it searches for the compiler)."""
    try:
        from torch._inductor import cpp_builder

        return sys.platform.startswith("linux") and cpp_builder.is_gcc()
    except Exception:  # no compiler: inductor cannot compile CPU code anyway
        return False


def cpu_fma_options(options: dict[str, object], gcc: bool | None = None, capability: str | None = None
                    ) -> dict[str, object]:
    """``options`` with their contraction made safe for this CPU and compiler: ``"fast"`` contraction with
    ``GCC_FMA_PARAM`` under gcc, kept as it is with 512-bit vectors under other compilers, dropped otherwise.
    ``gcc`` / ``capability``: for tests (default: this machine's)."""
    key = "cpp.enable_floating_point_contract_flag"
    if options.get(key) != "fast":
        return dict(options)
    gcc = _compiles_with_gcc() if gcc is None else gcc
    capability = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    if gcc:
        return {**options, key: f"fast {GCC_FMA_PARAM}"}
    return dict(options) if capability.startswith("AVX512") else {k: v for k, v in options.items() if k != key}


# Inductor's run-time checks in the Python code that calls a compiled graph's kernels, off on CPU: the sizes and
# strides of the graph's inputs and of every external call's output (~1,500 checks in an 8-stream 0.6b step with
# packed products), input alignment and symbolic sizes' ranges. Dynamo's guards check the inputs before a graph
# runs; these checks would catch a lowering bug of inductor's, never a value of ours, and change no value.
# In-process A/Bs (``bench/frame_ab.py``, 2 threads, session 18): ``tiny-deep`` float32 (``compile,row-kernels,
# packed,fused``, ``@min-weights=0``) one stream 10.4 -> 9.6 ms, 8 streams 27.7 -> 26.4 ms (every round faster);
# 0.6b int8 ``compile,row-kernels,packed`` 76.5 -> 75.0 ms (12 rounds, 10 faster). CUDA keeps them: graph replays
# do not run that Python.
CPU_HOST_OPTIONS: dict[str, object] = {"size_asserts": False, "alignment_asserts": False, "scalar_asserts": False}
# What compiled regions on CPU take; the sampling functions take ``CPU_HOST_OPTIONS`` only (without contraction
# their values stay those of inductor's default code, bit for bit).
CPU_COMPILE_OPTIONS: dict[str, object] = {**CPU_FMA_OPTIONS, **CPU_HOST_OPTIONS}
# Added for the regions of a model whose batches of streams take the row kernels on CPU (``gemv.takes_batches``:
# on the Intel VM up to 8 rows of every weight dtype, 16 of int8; ``CPU_COMPILE_OPTIONS`` win where both set a key),
# with inductor's ``cpp.max_horizontal_fusion_size`` raised to the weight dtype's ``gemv.accumulators`` where that
# is more than inductor's 16, so that a product's reductions (rows x weight streams) share one loop.
# ``realize_reads_threshold`` 1 (inductor's default 4): every computed buffer read by another kernel is stored once.
# By default inductor recomputes a cheap element-wise producer inside its consumer's loop: the normed activation
# (``x * rstd * weight``) inside every row kernel's reduction, once per row and loop step, and a batch's row kernels
# are bound by vector work. In-process A/Bs (``bench/frame_ab.py``, 0.6b, 2 threads):
# - int8 (session 19): 8 streams 334.9 -> 223.6 ms per step (every round, 0.653-0.692), one stream 73.2 -> 72.8 ms
#   (0.995); 20 int8 MLP blocks of 8 rows 54.1 -> 22.1 ms, 4 rows 21.3 -> 12.9 ms, one row unchanged;
# - float32 (session 20): one stream 226.8 -> 225.1 ms (0.982), 4 streams 325.4 -> 313.7 ms (0.975); with 8 rows
#   through the kernel and 32 accumulators per loop, 8 streams 370.3 -> 344.5 ms (0.927, every round faster);
# - bfloat16 (session 20): 8 streams 324.7 -> 309.2 ms with 8 rows through the kernel (0.955, every round faster).
# Float32 batches whose products are oneDNN calls stepped 2.4 % slower with it (8 streams, session 19): models whose
# batches keep torch's kernels (row kernels off; on other CPUs bfloat16 and int8) keep the default. Storing a value
# and reading it back changes no value; a fusion's size changes no reduction's order.
CPU_BATCH_OPTIONS: dict[str, object] = {"realize_reads_threshold": 1}
INDUCTOR_HORIZONTAL_FUSION = 16  # inductor's default ``cpp.max_horizontal_fusion_size``


# Talker blocks per compiled region in frame steps (one query row per stream), by device type: 1 calls each block's
# own compiled graph (28 calls per 0.6b frame); N > 1 runs N blocks in turn as one compiled call (``BlockRegions``:
# one graph, shared by every run of N blocks). Prefill keeps one call per block. On CPU, 7 (4 calls per frame) took
# an int8 0.6b frame from 84.5 to 81.9 ms (in-process A/B, 10 rounds, 9 faster; 28 blocks in one region gave
# nothing more: 0.998 against 7) and costs ~18 s more compilation on a cold inductor cache (85 -> 103 s for the
# first frames; BENCHMARKS.md, session 15). CUDA keeps 1 until measured there (a graphed frame replays its kernels
# whatever the regions; ``bench/frame_speed.py`` mode part ``seven-block-regions``). Read when a compiled frame step
# is made.
TALKER_REGION_BLOCKS: dict[str, int] = {"cpu": 7, "cuda": 1}

# Frame regions (the talker's blocks, in runs or one by one, and the code predictor's step) compiled for static shapes
# (``torch.compile(dynamic=False)``) by device type: one graph per batch bucket and step shape, with only the
# dimensions ``BlockRegions`` marks dynamic (a frame's attention span, a prefill's length). Left to dynamo's
# automatic dynamic shapes (False), a size seen to change makes a graph dynamic in it: the code predictor's later
# steps (one position after the first step's two) and the larger batch buckets get dynamic graphs, and more of them
# (on CPU, warming buckets 1, 2, 4 and 8: 12 predictor and 7 block graphs instead of 8 and 4; one from guards that
# duck sizing tied between unrelated sizes). On CPU, True compiled a first int8 request in 92.7 s instead of 99.8 s
# (13 graphs instead of 14) but ran its frames 0.7-1.6 % slower (two in-process A/Bs, 10 rounds each; 8 float32
# streams 0.984, noise; BENCHMARKS.md, session 16): not kept. Under CUDA graphs static kernels per bucket might
# beat dynamic ones: ``bench/frame_speed.py`` mode part ``static-regions``. Read when a compiled frame step is made.
STATIC_REGIONS: dict[str, bool] = {"cpu": False, "cuda": False}


def region_blocks(device_type: str) -> int:
    """Talker blocks per compiled region in frame steps on a device type (``TALKER_REGION_BLOCKS``; others: 1)."""
    blocks = TALKER_REGION_BLOCKS.get(device_type, 1)
    if not (isinstance(blocks, int) and blocks >= 1):
        raise ValueError(f"TALKER_REGION_BLOCKS[{device_type!r}] must be a whole number >= 1, not {blocks!r}")
    return blocks


def _run_blocks(blocks: tuple[torch.nn.Module, ...], x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                caches: list, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``blocks`` in turn over ``x [B, S, hidden]``, each with its layer cache (``Decoder.run_layers`` 's loop)."""
    for block, cache in zip(blocks, caches, strict=True):
        x = block.forward(x, rope, cache, positions, mask)
    return x


class BlockRegions:
    """The talker's layer loop under compiled regions: an instance attribute over ``Decoder.run_layers`` from
    ``compile_regions`` until ``uncompile_regions``. It sets which dimensions the compiled code takes as dynamic,
    and runs a frame step's blocks (one position) ``size`` at a time as one compiled call.

    * ``size`` > 1: the blocks are arguments of one compiled function, so one graph (per input shape class) serves
      every run of ``size`` blocks (and one more a shorter last run). ``size`` 1: each block's own region.
    * Prefill (more than one position) runs the blocks' own regions with the prompt length dynamic from the first
      prompt, so one graph serves every length (without it the first graph is built for the first prompt's length
      and the first prompt of another length, a request, waits for a second, dynamic one).
    * ``static``: the compiled call takes static shapes but for the dimensions marked here (``STATIC_REGIONS``).
    * ``dynamic_span``: a frame's attention span (the mask's last dimension, the cache slots attention reads) is
      dynamic from the first frame, so one graph serves every span (without it dynamo builds a static graph for
      the first span and a dynamic one when the span first changes: the blocks compiled twice per batch bucket).
      For frame steps compiled without CUDA graphs, whose spans grow with the streams. Under graphs (a few fixed
      spans) it is not marked: with one block per call (CUDA's default) the frames' graph is dynamic in the span
      from the first frame anyway, since the prefill's graph of the same block code saw another size there
      (dynamo's automatic dynamic shapes; tested); runs of several blocks get a static graph for the first span."""

    def __init__(self, decoder: torch.nn.Module, size: int, backend: str, options: dict | None,
                 dynamic_span: bool = False, static: bool = False) -> None:
        self.decoder = decoder
        layers = list(decoder.layers)
        self.size = size
        self.runs = [tuple(layers[i:i + size]) for i in range(0, len(layers), size)]
        self.compiled = torch.compile(_run_blocks, backend=backend, options=options, dynamic=False if static else None)
        self.dynamic_span = dynamic_span

    def __call__(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], caches: list,
                 positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 1:
            _mark_length_dynamic(x, rope, positions, mask)
            return type(self.decoder).run_layers(self.decoder, x, rope, caches, positions, mask)
        if self.dynamic_span:
            torch._dynamo.maybe_mark_dynamic(mask, mask.dim() - 1)
        if self.size == 1:
            return type(self.decoder).run_layers(self.decoder, x, rope, caches, positions, mask)
        start = 0
        for blocks in self.runs:
            x = self.compiled(blocks, x, rope, caches[start:start + len(blocks)], positions, mask)
            start += len(blocks)
        return x


def _mark_length_dynamic(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], positions: torch.Tensor,
                         mask: torch.Tensor) -> None:
    """Mark a prefill's length dynamic in every input that has it: ``x [B, S, hidden]``, ``positions [B, S]``,
    ``rope`` ``[B or 1, 1, S, D]`` each, ``mask [B, 1, S, span]`` (the span of a prefill is its length too)."""
    mark = torch._dynamo.maybe_mark_dynamic
    mark(x, 1)
    mark(positions, positions.dim() - 1)
    for table in rope:
        mark(table, table.dim() - 2)
    mark(mask, mask.dim() - 2)
    mark(mask, mask.dim() - 1)


def region_products(device_type: str) -> str:
    """How compiled regions multiply on a device type (see ``CUDA_PRODUCTS``; CPUs: as ``row_kernels`` says)."""
    if device_type != "cuda":
        return "linear"
    if CUDA_PRODUCTS not in ("linear", "rows"):
        raise ValueError(f"CUDA_PRODUCTS must be 'linear' or 'rows', not {CUDA_PRODUCTS!r}")
    return CUDA_PRODUCTS


def region_compile_options(device_type: str, batches: torch.dtype | None = None) -> dict[str, object] | None:
    """The inductor options compiled regions take on a device type: ``CUDA_COMPILE_OPTIONS`` on CUDA,
    ``CPU_COMPILE_OPTIONS`` on CPU (their contraction resolved by ``cpu_fma_options``), None when empty (inductor's
    defaults) and elsewhere. ``batches``: the weight dtype of a model whose batches take the row kernels
    (``gemv.takes_batches``); on CPU its regions also take ``CPU_BATCH_OPTIONS`` and a horizontal fusion size that
    holds ``gemv.accumulators(batches)`` reductions."""
    options = {"cuda": CUDA_COMPILE_OPTIONS, "cpu": CPU_COMPILE_OPTIONS}.get(device_type)
    if device_type == "cpu" and batches is not None:
        fusion = gemv.accumulators(batches)
        wider = {"cpp.max_horizontal_fusion_size": fusion} if fusion > INDUCTOR_HORIZONTAL_FUSION else {}
        options = {**CPU_BATCH_OPTIONS, **wider, **CPU_COMPILE_OPTIONS}
    if device_type == "cpu" and options:
        options = cpu_fma_options(options)
    return dict(options) if options else None


def region_attention(device_type: str) -> dict[str, str]:
    """The attention each decoder's compiled blocks use on a device type (see ``CUDA_ATTENTION``)."""
    if device_type == "cpu":
        return {"talker": "matmul", "predictor": "matmul"}
    unknown = {k: v for k, v in CUDA_ATTENTION.items() if v not in ("sdpa", "matmul")}
    if unknown or set(CUDA_ATTENTION) != {"talker", "predictor"}:
        raise ValueError(f"CUDA_ATTENTION needs 'talker' and 'predictor', each 'sdpa' or 'matmul': {CUDA_ATTENTION}")
    return dict(CUDA_ATTENTION)


def compile_regions(talker: Talker, backend: str, dynamic_span: bool = False) -> Kernels:
    """Regional compilation: every talker block (one compiled graph per block shape, shared by all the layers
    of that shape; frame steps call ``region_blocks`` blocks at a time: ``BlockRegions``), the code predictor's
    step as one region (its few layers, RoPE, final norm and the group's output head, passed in so that one graph
    serves all groups; 15 calls per frame instead of 75 block calls, 15 head products and the eager glue between
    them), and the sampling functions.
    Fuses the many small element-wise ops of norms, RoPE, SwiGLU and sampling; compiles in a fraction of the
    time of the whole frame. Attention is chosen per decoder by ``region_attention`` (on CPU ``matmul_attention``
    everywhere; undone by ``uncompile_regions``), and int8 layers choose their kernel before any trace.
    ``dynamic_span``: frame steps whose attention span changes from frame to frame (compiled without CUDA graphs)
    get ``BlockRegions`` built for any span from their first graph."""
    # Region shapes: talker prefill / frame sequence lengths, predictor first / later steps, batch buckets (in this
    # thread; the thread running the step raises it again: ``FrameStep.enter``).
    raise_recompile_limit()
    device_type = talker.codec_head.weight.device.type
    kinds, per_call = region_attention(device_type), region_blocks(device_type)
    for name, blocks in (("talker", talker.model.layers), ("predictor", talker.code_predictor.model.layers)):
        if kinds[name] == "matmul":
            for block in blocks:
                block.self_attn.attend = matmul_attention
    if region_products(device_type) == "rows":
        use_row_kernels_(talker, True)  # until the next ``set_accel``
    dtype = gemv.weight_dtype(talker)
    batches = dtype if dtype is not None and uses_row_kernels(talker) and gemv.takes_batches(dtype) else None
    options = region_compile_options(device_type, batches) if backend == "inductor" else None  # others take none
    static = STATIC_REGIONS.get(device_type, False)
    for region in _regions(talker):  # frames with one block per call run these too
        region.compile(backend=backend, options=options, dynamic=False if static else None)
    talker.model.run_layers = BlockRegions(talker.model, per_call, backend, options, dynamic_span, static)
    predictor = talker.code_predictor  # an instance attribute over the method, until ``uncompile_regions``
    predictor.step = torch.compile(predictor.step, backend=backend, options=options,
                                   dynamic=False if static else None)
    for layer in talker.modules():
        if isinstance(layer, Int8Linear):
            layer.uses_int8pack()  # decide the kernel now, outside any trace
    # A pick's filter takes its rows' top-k bound, an int, where the step knows it (``Kernels.top_k_bound``). On CPU
    # ``sample`` is compiled for dynamic shapes, so one graph serves every bound a request brings (bounds are at
    # least 2: dynamo specialises 0 and 1); the warm-up builds it (``StaticFrameStep._warm_sampling``). CUDA keeps
    # static graphs and sorts (under CUDA graphs, or filtering pairwise, a bound would not be used anyway).
    cpu = device_type == "cpu"
    host = dict(CPU_HOST_OPTIONS) if cpu and backend == "inductor" and CPU_HOST_OPTIONS else None
    return Kernels(sample=torch.compile(sample, backend=backend, options=host, dynamic=True if cpu else None),
                   code0_logits=torch.compile(process_code0_logits, backend=backend, options=host),
                   noise=torch.compile(frame_exponentials, backend=backend, options=host), fixed_span=True,
                   top_k_bound=cpu)


def uncompile_regions(talker: Talker) -> None:
    """Undo ``compile_regions`` (the modules run eagerly again)."""
    for region in _regions(talker):
        region._compiled_call_impl = None
    talker.code_predictor.__dict__.pop("step", None)
    talker.model.__dict__.pop("run_layers", None)
    for block in _blocks(talker):
        block.self_attn.__dict__.pop("attend", None)


class FrameStep:
    """Eager frame step (the reference path)."""

    static = False

    def __init__(self, talker: Talker) -> None:
        self.talker = talker
        self.capture_seconds = 0.0

    def allocate(self, batch: int, min_len: int) -> FrameState:
        """The runner's frame state: ``batch`` slots, at least ``min_len`` cache slots each."""
        return FrameState(self.talker, batch, min_len)

    def enter(self) -> None:
        """Ready the calling thread to run the model's compiled code (the compiled regions, the row kernels):
        dynamo's recompile limit is per thread (``qtts.compile_limits``). The runner calls it before each step."""
        raise_recompile_limit()

    def rows(self, n: int, batch: int) -> int:
        """Slots the step runs for ``n`` live slots (eager: exactly ``n``)."""
        return n

    def span(self, state: FrameState, needed: int) -> int:
        """Cache slots attention reads (eager: those in use)."""
        return needed

    @torch.no_grad()
    def __call__(self, state: FrameState, rows: int, span: int) -> torch.Tensor:
        return _frame(self.talker, state.head(rows), span)


@contextlib.contextmanager
def _paused(view: FrameState) -> Iterator[None]:
    """Every slot of ``view`` paused inside (a frame computes but no stream advances; the cache slot it writes is
    written again by the next frame), each slot's own state back after."""
    active = view.active.clone()
    view.active.zero_()
    try:
        yield
    finally:
        view.active.copy_(active)


class StaticFrameStep(FrameStep):
    """Fixed shapes: attention over a few span sizes (``span``), batch-size buckets, preallocated state; optionally
    compiled and/or CUDA-graphed."""

    static = True

    def __init__(self, talker: Talker, options: AccelOptions) -> None:
        super().__init__(talker)
        device = talker.codec_head.weight.device
        if options.cuda_graphs and device.type != "cuda":
            raise InputError(f"CUDA graphs need a CUDA device; the model is on {device.type}")
        self.options = options
        kernels = (compile_regions(talker, options.compile_backend, dynamic_span=not options.cuda_graphs)
                   if options.compile else STATIC)
        if options.cuda_graphs:
            kernels = dataclasses.replace(kernels, greedy_shortcut=False)
        self.kernels = kernels
        self.fn = functools.partial(_frame, kernels=kernels)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple]] = {}  # (rows, span)
        self._warm: set[int] = set()  # buckets already run (compiled) without graphs

    def allocate(self, batch: int, min_len: int) -> FrameState:
        return FrameState(self.talker, batch, max(min_len, self.options.max_frames), text_cap=512)

    def rows(self, n: int, batch: int) -> int:
        bucket = 1
        while bucket < n:
            bucket *= 2
        return min(bucket, batch)

    def span(self, state: FrameState, needed: int) -> int:
        if self.options.cuda_graphs:  # a graph replays fixed shapes: the whole cache or a span bucket (masked)
            return graph_span(needed, state.cache.max_len)
        # Compiled without graphs: read the slots in use, rounded up to a multiple of SPAN_STEP (the extra
        # slots are masked), so attention cost follows the stream's length; the talker's blocks are compiled for
        # a dynamic span (``BlockRegions.dynamic_span``), one graph for every span.
        return min(state.cache.max_len, -(-needed // SPAN_STEP) * SPAN_STEP)

    @torch.no_grad()
    def __call__(self, state: FrameState, rows: int, span: int) -> torch.Tensor:
        if not self.options.cuda_graphs:
            if rows in self._warm:
                return self.fn(self.talker, state.head(rows), span)
            t0 = time.perf_counter()  # the first call of a bucket compiles: its time is the warm-up cost
            out = self.fn(self.talker, state.head(rows), span)
            if self.options.compile:
                self._warm_sampling(state.head(rows))
            if out.is_cuda:
                torch.cuda.synchronize(out.device)
            self._warm.add(rows)
            self.capture_seconds += time.perf_counter() - t0
            return out
        key = (state.cache.k.data_ptr(), state.text.data_ptr())
        entry = self.graphs.get((rows, span))
        if entry is None or entry[2] != key:
            # This bucket's graphs for every span at once: a stream crossing into a longer span later replays
            # a graph captured now instead of pausing every stream for a capture.
            for old in [k for k in self.graphs if k[0] == rows]:
                del self.graphs[old]
            for s in graph_spans(state.cache.max_len):
                self.graphs[(rows, s)] = self._capture(state, rows, s, key)
            entry = self.graphs[(rows, span)]
        graph, out, _ = entry
        graph.replay()
        return out

    def _warm_sampling(self, view: FrameState) -> None:
        """Compile ``sample`` for this bucket now, with the warm-up, even if the first streams are greedy (and
        took ``greedy``): else the first sampled stream would wait for the compilation mid-request."""
        cfg = self.talker.cfg
        vocabs = (cfg.vocab_size, cfg.code_predictor_config.vocab_size)
        # The calls decode_frame makes: the frame's race variates, a code-0 pick, a predictor pick (each also with
        # a top-k bound where picks take one: ``Kernels.top_k_bound``).
        race0, race = self.kernels.noise(view.seed_keys, view.steps, view.offsets, view.tokens, vocabs)
        bounds = (None, 2) if self.kernels.greedy_shortcut and self.kernels.top_k_bound else (None,)
        for kind, (vocab, params, variates) in enumerate(
                ((vocabs[0], view.talker_params, race0), (vocabs[1], view.predictor_params, race[:, 0]))):
            logits = torch.zeros(view.batch, vocab, device=view.seeds.device)
            for width in bounds:
                self.kernels.sample(logits, params, view.seeds, view.steps, kind, variates, width=width)

    def _capture(self, state: FrameState, rows: int, span: int, key: tuple
                 ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple]:
        """Warm up (with every slot paused, so no stream advances) and capture the step for ``rows`` slots."""
        t0 = time.perf_counter()
        view = state.head(rows)
        with _paused(view):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self.fn(self.talker, view, span)
            torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (e.g. an HTTP layer copying audio) may use CUDA while this one captures.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = self.fn(self.talker, view, span)
        torch.cuda.synchronize()
        self.capture_seconds += time.perf_counter() - t0
        return graph, out, key


def make_frame_step(talker: Talker, options: AccelOptions | None) -> FrameStep:
    """The frame step for ``options`` (None or all off: eager; compiled blocks are switched back to eager).
    Row kernels are a model-wide switch, set by ``TTS.set_accel``."""
    if options is None or not options.compile:
        uncompile_regions(talker)
    if options is None or not options.static:
        return FrameStep(talker)
    return StaticFrameStep(talker, options)
