"""Row kernels (``qtts.gemv``): one-row CPU products as a compiled reduction; ``--accel`` parsing."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qtts import TTS, InputError, Sampling, Speaker, SynthesisOptions, gemv, quant
from qtts.accel import AccelOptions, parse_accel
from qtts.quant import Int8Linear

needs_kernels = pytest.mark.skipif(not gemv.available(), reason="torch.compile (inductor) cannot build kernels here")


@pytest.fixture(autouse=True)
def _every_size(monkeypatch):
    """The test layers are small: route them through the kernels too (the default skips cache-sized ones)."""
    monkeypatch.setattr(gemv, "MIN_WEIGHTS", 0)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_product_matches_linear_and_rows_do_not_depend_on_each_other(dtype):
    torch.manual_seed(0)
    layer = nn.Linear(200, 37, bias=True).to(dtype)  # odd sizes: the kernel is not tied to vector widths
    few = gemv.max_rows(dtype, compiling=False)
    x1, xs, many = (torch.randn(1, 1, 200, dtype=dtype), torch.randn(few, 200, dtype=dtype),
                    torch.randn(few + 1, 200, dtype=dtype))
    expected1, expected_many = layer(x1), layer(many)
    assert gemv.use_row_kernels_(layer, True) == 1 and gemv.uses_row_kernels(layer)
    got1, got_few = layer(x1), layer(xs)
    assert got1.shape == (1, 1, 37) and got1.dtype == dtype and got_few.shape == (few, 37)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(got1.float(), expected1.float(), rtol=tol, atol=tol)
    assert not torch.equal(got1, expected1) or dtype == torch.bfloat16  # float32: really another kernel
    assert torch.allclose(got_few.float(), F.linear(xs, layer.weight, layer.bias).float(), rtol=tol, atol=tol)
    # Each of a few rows equals that row alone, bit for bit (batched == single with row kernels); the first
    # row alone and the first of two (the predictor's first step) both go through the kernel.
    assert torch.equal(got_few, torch.cat([layer(xs[i:i + 1]) for i in range(few)]))
    assert torch.equal(layer(many), expected_many)  # more rows: torch's linear, bit for bit
    gemv.use_row_kernels_(layer, False)
    assert not gemv.uses_row_kernels(layer) and torch.equal(layer(x1), expected1)


@pytest.fixture
def avx512_routing(monkeypatch):
    """The routing of a CPU with AVX-512 (the AMD table: 2 int8 rows through the kernel), whatever CPU runs the
    test: without AVX-512 int8 products take no rows (``gemv.NARROW_VECTORS_ROWS``)."""
    for name, table in zip(("MAX_ROWS", "MAX_WIDTH", "MAX_IN"), gemv.default_routing(""), strict=True):
        monkeypatch.setattr(gemv, name, table)


@needs_kernels
def test_int8_row_product_matches_the_dequantized_product(avx512_routing):
    torch.manual_seed(1)
    layer = Int8Linear.from_linear(nn.Linear(96, 50, bias=True), kernel="dequant")
    x = torch.randn(1, 96)
    exact = F.linear(x, layer.dequantized()) + layer.bias
    gemv.use_row_kernels_(layer, True)
    assert torch.allclose(layer(x), exact, rtol=1e-5, atol=1e-5)
    two = torch.cat([x, -x])  # the predictor's first step: through the kernel, each row as if alone
    assert torch.equal(layer(two), torch.cat([layer(x), layer(-x)]))
    assert torch.allclose(layer(two), F.linear(two, layer.dequantized()) + layer.bias, rtol=1e-5, atol=1e-5)
    few = gemv.max_rows(torch.int8, compiling=False)  # 8 on Intel CPUs (16 in compiled code), else 2
    rows = torch.randn(few, 96)
    assert torch.equal(layer(rows), torch.cat([layer(rows[i:i + 1]) for i in range(few)]))
    more = torch.randn(few + 1, 96)
    assert torch.equal(layer(more), Int8Linear.forward(layer, more))  # beyond: the layer's own forward


@pytest.fixture
def intel_int8_routing(monkeypatch):
    """An Intel CPU's routing (``gemv.default_routing("GenuineIntel")``: up to 8 int8 rows through the kernel, 16 in
    compiled code) and 4 int8 weight streams, whatever CPU runs the test."""
    for name, table in zip(("MAX_ROWS", "MAX_WIDTH", "MAX_IN"), gemv.default_routing("GenuineIntel"), strict=True):
        monkeypatch.setattr(gemv, name, table)
    monkeypatch.setattr(gemv, "STREAMS", {torch.int8: 4})


@needs_kernels
def test_eight_int8_rows_go_through_the_kernel_on_intel_each_row_as_if_alone(intel_int8_routing):
    """On Intel CPUs (``default_routing("GenuineIntel")``) 3-8 int8 rows take the kernel (a batch of 8 streams):
    each row's output equals that row alone, bit for bit (so batched int8 frames multiply as single ones do), with
    the weight streams cut to fit ``ACCUMULATORS`` (8 rows x 2 parts: 16 accumulators in one loop, where one row
    keeps 4 parts). Float activations stay float32 there, where int8pack rounds them to bfloat16."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(3)
    layer = Int8Linear.from_linear(nn.Linear(256, 96, bias=True), kernel="dequant")
    x = torch.randn(8, 256)
    gemv.use_row_kernels_(layer, True)
    got = layer(x)
    assert torch.equal(got, torch.cat([layer(x[i:i + 1]) for i in range(8)]))
    assert torch.allclose(got, F.linear(x, layer.dequantized()) + layer.bias, rtol=1e-5, atol=1e-5)
    assert not torch.equal(got, Int8Linear.forward(layer, x))  # really the kernel, not the dequant product
    assert [len(gemv._parts(layer.weight_int8, r)) for r in (1, 2, 4, 8)] == [4, 4, 4, 2]
    torch._dynamo.reset()
    _, code = run_and_get_code(torch.compile(gemv._row_int8), x, layer.weight_int8, layer.scales)
    assert len(set(re.findall(r"tmp_acc\d+_vec", "\n".join(code)))) == 16  # 8 rows x 2 parts, one loop


@needs_kernels
def test_sixteen_int8_rows_take_the_kernel_in_compiled_code_only(intel_int8_routing):
    """On Intel CPUs compiled code sends up to 16 int8 rows through the kernel (8 streams' code predictor first
    step: 2 rows each), one weight part per row (16 accumulators in one loop), each row as if alone; 17 rows, and
    more than 8 outside compiled code, keep the layer's own product."""
    from torch._inductor.utils import run_and_get_code

    from qtts import accel

    torch.manual_seed(7)
    layer = Int8Linear.from_linear(nn.Linear(256, 96, bias=False), kernel="dequant")
    gemv.use_row_kernels_(layer, True)
    x = torch.randn(17, 256)
    options = accel.region_compile_options("cpu", torch.int8)
    torch._dynamo.reset()
    got, code = run_and_get_code(torch.compile(layer, dynamic=False, options=options), x[:16])
    assert len(set(re.findall(r"tmp_acc\d+_vec", "\n".join(code)))) == 16  # 16 rows x 1 part, one loop
    alone = torch.cat([torch.compile(layer, dynamic=False, options=options)(x[i:i + 1]) for i in range(16)])
    assert torch.equal(got, alone)
    assert torch.allclose(got, F.linear(x[:16], layer.dequantized()), rtol=1e-5, atol=1e-5)
    assert not torch.equal(got, Int8Linear.forward(layer, x[:16]))  # really the kernel
    torch._dynamo.reset()
    _, code = run_and_get_code(torch.compile(layer, dynamic=False, options=options), x)
    assert "tmp_acc0_vec" not in "\n".join(code)  # 17 rows: the layer's own product
    assert torch.equal(layer(x[:9]), Int8Linear.forward(layer, x[:9]))  # uncompiled: at most 8 rows


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_weight_streams_read_in_one_loop_and_change_no_value(dtype, monkeypatch):
    """``STREAMS``: a CPU product's output rows cut into parts, each part's reduction run in the same loop as the
    others (an accumulator per part: as many places of the weight read at once), every output the same sum as with
    one part, bit for bit; a row count the parts do not divide keeps one."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(2)
    x = torch.randn(2, 256).to(torch.bfloat16)
    if dtype == torch.int8:
        w, scales = torch.randint(-127, 128, (96, 256), dtype=torch.int8), torch.rand(96) + 0.5
        fn, args = gemv._row_int8, (x, w, scales)
    else:
        w = torch.randn(96, 256).to(dtype)
        fn, args = gemv._row, (x, w)
    out = {}
    for streams in (1, 2, 4):
        monkeypatch.setattr(gemv, "STREAMS", {dtype: streams})
        torch._dynamo.reset()
        out[streams], code = run_and_get_code(torch.compile(fn), *args)
        accumulators = set(re.findall(r"tmp_acc\d+_vec", "\n".join(code)))
        assert len(accumulators) == 2 * streams  # per loop: each of the 2 rows times each part
    assert torch.equal(out[1], out[2]) and torch.equal(out[1], out[4]) and out[2].shape == (2, 96)
    monkeypatch.setattr(gemv, "STREAMS", {dtype: 5})  # 96 rows: not divisible, one part
    assert len(gemv._parts(w)) == 1 and len(gemv._parts(w[:95])) == 5


@needs_kernels
def test_int8_regions_store_the_normed_rows_once_with_the_same_values(intel_int8_routing):
    """Inductor by default recomputes a norm's output (``x * rstd * weight``) inside each consumer's loop; in an int8
    row kernel of 8 rows that is two multiplies per row at every loop step beside the product's own. The regions'
    batch options (``accel.CPU_BATCH_OPTIONS``) store it once: the product's loop multiplies only weights by
    rows (8 rows x 2 weight parts), and the values are bit for bit the same."""
    from torch._inductor.utils import run_and_get_code

    from qtts import accel
    from qtts.model.layers import RMSNorm

    torch.manual_seed(4)
    norm = RMSNorm(256, 1e-6)
    layer = Int8Linear.from_linear(nn.Linear(256, 96, bias=False), kernel="dequant")
    gemv.use_row_kernels_(layer, True)

    def block(x):
        return x[..., :96] + layer(norm(x))

    x = torch.randn(8, 1, 256)
    outs, multiplies = {}, {}
    for name, options in (("default", accel.region_compile_options("cpu")),
                          ("int8", accel.region_compile_options("cpu", torch.int8))):
        torch._dynamo.reset()
        outs[name], code = run_and_get_code(torch.compile(block, dynamic=False, options=options), x)
        source = "\n".join(code)
        start = source.index("tmp_acc15 = 0")  # the product's loop: 16 accumulators, then its body
        multiplies[name] = source[start:source.index("tmp_acc0 = tmp_acc0 +", start)].count(" * ")
    assert torch.equal(outs["int8"], outs["default"])
    assert multiplies == {"default": 32, "int8": 16}


@needs_kernels
def test_eight_float32_rows_take_the_kernel_in_compiled_regions_only(monkeypatch):
    """On Intel CPUs (``default_routing("GenuineIntel")``) up to 8 float32 rows take the kernel inside compiled code
    (a batch of 8 streams in a region): with the regions' batch options (``accel.region_compile_options(..,
    torch.float32)``) the 8 rows x 4 weight parts share one loop of 32 accumulators (``gemv.ACCUMULATORS``;
    inductor's default fusion size would cut it into two loops of 16), and each row equals that row alone, bit for
    bit. Outside compiled code (the standalone kernel, slower there) 8 rows keep torch's linear."""
    from torch._inductor.utils import run_and_get_code

    from qtts import accel
    from qtts.model.layers import RMSNorm

    for name, table in zip(("MAX_ROWS", "MAX_WIDTH", "MAX_IN"), gemv.default_routing("GenuineIntel"), strict=True):
        monkeypatch.setattr(gemv, name, table)
    monkeypatch.setattr(gemv, "STREAMS", {torch.float32: 4})
    monkeypatch.setattr(gemv, "ACCUMULATORS", {torch.float32: 32})
    assert (gemv.max_rows(torch.float32, True), gemv.max_rows(torch.float32, False)) == (8, 4)
    assert gemv.takes_batches(torch.float32) and [len(gemv._parts(torch.zeros(96, 8), r)) for r in (1, 8, 16)] == [
        4, 4, 2]
    torch.manual_seed(5)
    norm, layer = RMSNorm(256, 1e-6), nn.Linear(256, 96, bias=False)
    gemv.use_row_kernels_(layer, True)

    def block(x):
        return x[..., :96] + layer(norm(x))

    x = torch.randn(8, 1, 256)
    options = accel.region_compile_options("cpu", torch.float32)
    loops = {}
    for rows in (8, 1):
        torch._dynamo.reset()
        out, code = run_and_get_code(torch.compile(block, dynamic=False, options=options), x[:rows])
        source = "\n".join(code)
        loops[rows] = [len(set(re.findall(r"tmp_acc\d+_vec", part))) for part in source.split("#pragma omp for")
                       if "tmp_acc0_vec" in part]
        if rows == 8:
            batched = out
    alone = torch.cat([torch.compile(block, dynamic=False, options=options)(x[i:i + 1]) for i in range(8)])
    assert torch.equal(batched, alone)
    assert torch.allclose(batched, x[..., :96] + F.linear(norm(x), layer.weight), rtol=1e-5, atol=1e-5)
    assert 32 in loops[8] and 4 in loops[1]  # the product: 8 rows x 4 parts in one loop; one row, its 4 parts
    assert torch.equal(layer(x), nn.Linear.forward(layer, x))  # uncompiled: torch's linear


def test_routing_follows_the_cpu_vendor(monkeypatch):
    """Which products take the kernel by CPU vendor (session 19's Intel measurements, the AMD table otherwise):
    on Intel up to 8 int8 rows of at most 4096 in_features and 8 x 3072 elements, in compiled code 16 rows of 16 x
    3072 elements (session 21: 8 streams' code predictor first step); elsewhere 2 rows of 4096 elements; in
    compiled code float32 and bfloat16 8 rows of 8 x 3072 elements on Intel (session 20), float32 4 rows of any
    width elsewhere; without AVX-512 (session 22's Zen 3: the int8 kernel read 1.2 GB/s against int8pack's 8-13;
    torch's bfloat16 linear had no oneDNN kernels) no int8 rows and 8 bfloat16 rows in compiled code. Each call
    returns fresh dicts."""
    assert gemv.default_routing(gemv.cpu_vendor(), torch.backends.cpu.get_cpu_capability()) == (
        gemv.MAX_ROWS, gemv.MAX_WIDTH, gemv.MAX_IN)

    def routed(routing, rows, width, dtype=torch.int8, compiling=False):
        for name, table in zip(("MAX_ROWS", "MAX_WIDTH", "MAX_IN"), routing, strict=True):
            monkeypatch.setattr(gemv, name, table)
        return gemv._routed_rows(torch.zeros(rows, width), torch.zeros(8, width, dtype=dtype), compiling)

    intel, other = gemv.default_routing("GenuineIntel"), gemv.default_routing("AuthenticAMD")
    assert other == gemv.default_routing("") and intel != other
    assert [routed(intel, r, w) for r, w in ((8, 1024), (8, 3072), (9, 1024), (1, 6144), (2, 4096))] == [
        True, True, False, False, True]
    assert [routed(intel, r, w, compiling=True) for r, w in ((16, 3072), (17, 1024), (16, 4096), (8, 6144))] == [
        True, False, False, False]
    assert [routed(other, r, w) for r, w in ((8, 1024), (2, 2048), (3, 1024), (1, 4096), (2, 3072))] == [
        False, True, False, True, False]
    assert not routed(other, 3, 1024, compiling=True)
    for routing in (intel, other):  # uncompiled products: float32 up to 4 rows, bfloat16 2 (``EAGER_MAX_ROWS``)
        assert routed(routing, 4, 6144, torch.float32) and not routed(routing, 5, 64, torch.float32)
        assert routed(routing, 2, 1024, torch.bfloat16) and not routed(routing, 3, 64, torch.bfloat16)
    for routing, rows in ((intel, 8), (other, 4)):  # compiled products
        for name, table in zip(("MAX_ROWS", "MAX_WIDTH", "MAX_IN"), routing, strict=True):
            monkeypatch.setattr(gemv, name, table)
        assert gemv.max_rows(torch.float32, compiling=True) == rows
    assert intel[0][torch.bfloat16] == 8 and intel[1][torch.bfloat16] == intel[1][torch.float32] == 8 * 3072
    assert torch.float32 not in other[1] and routed(other, 4, 8192, torch.float32)
    assert not routed(intel, 4, 8192, torch.float32)  # 4 rows of 8192: more than 8 x 3072 elements
    assert gemv.accumulators(torch.bfloat16) == gemv.accumulators(torch.float32) == 32
    assert gemv.accumulators(torch.int8) == gemv.accumulators(torch.float16) == 16
    intel[0][torch.int8] = 1
    assert gemv.default_routing("GenuineIntel")[0][torch.int8] == 16
    for vendor in ("GenuineIntel", "AuthenticAMD"):  # without AVX-512: int8 on int8pack, bfloat16 batches on the
        narrow, wide = gemv.default_routing(vendor, "AVX2"), gemv.default_routing(vendor, "AVX512")  # kernel
        assert narrow[0][torch.int8] == 0 and wide[0].get(torch.int8, gemv.MAX_ROWS_OTHER) >= 2
        assert narrow[0][torch.bfloat16] == 8
        assert narrow[0][torch.float32] == wide[0][torch.float32] and narrow[1:] == wide[1:]
        for name, table in zip(("MAX_ROWS", "MAX_WIDTH", "MAX_IN"), narrow, strict=True):
            monkeypatch.setattr(gemv, name, table)
        assert not any(gemv._routed_rows(torch.zeros(r, 1024), torch.zeros(1024, 1024, dtype=torch.int8), c)
                       for r in (1, 2) for c in (False, True))


def test_weight_streams_follow_the_cpu_vendor():
    """``STREAMS`` defaults by CPU vendor: four parts for every weight dtype on Intel (session 12's A/Bs), the AMD
    table (two for bfloat16 / int8, one for float32) for any other or an unreadable vendor; each call a fresh dict
    (``STREAMS`` is patched by benchmarks and tests)."""
    intel = gemv.default_streams("GenuineIntel")
    assert all(intel[d] == 4 for d in (torch.float32, torch.bfloat16, torch.float16, torch.int8))
    other = gemv.default_streams("AuthenticAMD")
    assert other == gemv.default_streams("") and other[torch.bfloat16] == other[torch.int8] == 2
    assert torch.float32 not in other  # one part
    intel[torch.float32] = 1
    assert gemv.default_streams("GenuineIntel")[torch.float32] == 4
    assert gemv.default_streams(gemv.cpu_vendor()) == gemv.STREAMS


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_stay_independent_under_the_regions_cpu_options(dtype):
    """Inside a compiled region on CPU (static shapes, ``accel.region_compile_options``: FMA contraction, with gcc in
    every loop: its tuning for AMD's Zen 3 otherwise left a lone row without FMAs and contracted a loop of two) each
    of a few rows through the row kernel equals that row alone, bit for bit: batched streams keep single-stream
    values. (The standalone kernel is compiled with dynamic shapes, where contraction parts float32 rows: it keeps
    inductor's defaults.)"""
    from qtts import accel

    torch.manual_seed(3)
    options = accel.region_compile_options("cpu")
    assert options and options.items() >= accel.cpu_fma_options(accel.CPU_FMA_OPTIONS).items()
    w, xs = torch.randn(96, 200).to(dtype), torch.randn(4, 200).to(dtype)
    torch._dynamo.reset()
    row = torch.compile(gemv._row, options=options)
    alone = [row(xs[i:i + 1], w) for i in range(4)]
    for rows in (2, 4):
        assert torch.equal(row(xs[:rows], w), torch.cat(alone[:rows]))
    assert torch.allclose(torch.cat(alone).float(), F.linear(xs, w).float(), rtol=2e-2, atol=2e-2)


@needs_kernels
def test_row_kernels_keep_eager_codes_on_the_tiny_model(tiny_checkpoints):
    """Greedy codes of a single stream with row kernels equal eager's (float32, tiny shape), and switching them
    off restores the model's own forward."""
    tts = TTS.from_pretrained(tiny_checkpoints["custom_voice"], device="cpu")
    opts = SynthesisOptions(sampling=Sampling.greedy(), max_new_tokens=20)
    expected = tts.synthesize("Row kernels give the same codes.", voice=Speaker("ryan"), options=opts)
    tts.accelerate(row_kernels=True)
    assert gemv.uses_row_kernels(tts.model.talker)  # at once, not only when a runner is made
    got = tts.synthesize("Row kernels give the same codes.", voice=Speaker("ryan"), options=opts)
    assert gemv.uses_row_kernels(tts.model.talker)
    assert torch.equal(got.codes, expected.codes)
    assert np.abs(got.audio - expected.audio).max() <= 1e-4
    tts.accelerate()
    tts.synthesize("x", voice=Speaker("ryan"), options=SynthesisOptions(sampling=Sampling.greedy(), max_new_tokens=2))
    assert not gemv.uses_row_kernels(tts.model.talker)


def test_unbuildable_kernels_warn_once_and_fall_back(monkeypatch):
    kernels = gemv._Kernels()

    def broken(*_args):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(kernels, "row", broken)
    monkeypatch.setattr(gemv, "_KERNELS", kernels)
    layer = nn.Linear(16, 8)
    x = torch.randn(1, 16)
    expected = layer(x)
    gemv.use_row_kernels_(layer, True)
    with pytest.warns(RuntimeWarning, match="row kernels are unavailable.*no C\\+\\+ compiler"):
        assert torch.equal(layer(x), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(layer(x), expected)  # decided once: no second warning
    assert not gemv.available()


def test_wide_int8_and_bfloat16_products_keep_torch_kernels(monkeypatch, avx512_routing):
    """Past ``MAX_WIDTH`` activation elements per call the kernel loses to torch's (int8: one 6144-wide row took
    3.8x int8pack's time): those products keep the layer's own forward; a dtype the table does not list (here
    float32) has no such limit."""
    monkeypatch.setattr(gemv, "MAX_WIDTH", {torch.int8: 96, torch.bfloat16: 96})
    monkeypatch.setattr(gemv, "_kernels", lambda: pytest.fail("a too-wide product reached the row kernel"))
    int8 = Int8Linear.from_linear(nn.Linear(64, 8), kernel="dequant")
    bf16 = nn.Linear(64, 8).to(torch.bfloat16)
    for layer, x in ((int8, torch.randn(2, 64)), (bf16, torch.randn(2, 64, dtype=torch.bfloat16))):
        expected = layer(x)
        gemv.use_row_kernels_(layer, True)
        assert torch.equal(layer(x), expected)  # 2 x 64 = 128 > 96
    assert gemv._routed_rows(torch.randn(1, 64), int8.weight_int8)  # 64 <= 96: routed
    assert gemv._routed_rows(torch.randn(3, 2048), torch.zeros(8, 2048))  # float32, not listed: any width


def test_small_matrices_keep_linear(monkeypatch):
    monkeypatch.setattr(gemv, "MIN_WEIGHTS", 64 * 64 + 1)
    layer = nn.Linear(64, 64)
    x = torch.randn(1, 64)
    expected = layer(x)
    gemv.use_row_kernels_(layer, True)
    monkeypatch.setattr(gemv, "_kernels", lambda: pytest.fail("a cache-sized matrix reached the row kernel"))
    assert torch.equal(layer(x), expected)


def test_parse_accel():
    assert parse_accel("auto", "cpu") == parse_accel(None, "cpu") == parse_accel("eager", "cpu")
    auto = parse_accel("auto", "cuda")  # the set measured fastest on an H100 short of compiling
    assert auto.cuda_graphs and auto.fused and auto.codec_stream and not auto.compile and not auto.packed
    opts = parse_accel(" Compile, row-kernels ", "cpu")
    assert opts.compile and opts.row_kernels and not opts.cuda_graphs
    with pytest.raises(InputError, match="cuda-graphs needs a CUDA device"):
        parse_accel("cuda-graphs", "cpu")
    # Parts that would do nothing on the device are refused, naming the part; no device: the form alone.
    for part, device, wanted in (("codec-stream", "cpu", "CUDA"), ("packed", "cuda", "CPU"),
                                 ("row-kernels", "cuda", "CPU"), ("compile,packed", "cuda", "CPU")):
        with pytest.raises(InputError, match=f"accel {part.split(',')[-1]} needs a {wanted} device"):
            parse_accel(part, device)
    assert parse_accel("cuda-graphs,packed", None) == AccelOptions(cuda_graphs=True, packed=True)
    assert parse_accel("auto", None) == AccelOptions()
    for bad in ("fast", "", "compile,warp"):
        with pytest.raises(InputError, match="unknown accel"):
            parse_accel(bad, "cpu")


def test_cli_and_server_take_accel(tiny_checkpoints):
    from qtts.cli import _load, build_parser
    from qtts.server.settings import ServerSettings

    args = build_parser().parse_args(["speak", "hi", "--model", str(tiny_checkpoints["custom_voice"]),
                                      "--device", "cpu", "--accel", "row-kernels"])
    assert _load(args).accel.row_kernels
    with pytest.raises(InputError, match="unknown accel"):
        ServerSettings(accel="turbo")
    assert ServerSettings(accel="compile,cuda-graphs").accel == "compile,cuda-graphs"  # the device is checked at load


@needs_kernels
def test_int8pack_layer_keeps_its_compiled_region_whole_for_one_row(monkeypatch, avx512_routing):
    """The int8pack kernel's alignment check cannot be traced. Several rows (prefill, batches) call it as a custom
    operator, one opaque node of the region's graph; before, the failed trace made dynamo give up on the region
    for good, so the single stream's frames (one row, the row kernel) ran uncompiled as well."""
    monkeypatch.setattr(quant, "CPU_MIN_INT8PACK_WEIGHTS", 0)
    torch.manual_seed(3)
    layer = Int8Linear.from_linear(nn.Linear(64, 48))
    if not layer.uses_int8pack():
        pytest.skip("torch._weight_int8pack_mm is unavailable here")
    gemv.use_row_kernels_(layer, True)
    graphs = []

    def backend(gm, _inputs):
        graphs.append(gm)
        return gm.forward

    def region(x):
        return torch.relu(layer(x)) * 2

    compiled = torch.compile(region, backend=backend)
    many = torch.randn(gemv.MAX_ROWS.get(torch.int8, gemv.MAX_ROWS_OTHER) + 1, 64)
    assert torch.equal(compiled(many), region(many))  # more rows than the kernel takes: int8pack, an opaque node
    assert len(graphs) == 1 and any(node.target is torch.relu for node in graphs[0].graph.nodes)  # no break
    before = len(graphs)
    one = torch.randn(1, 64)
    assert torch.allclose(compiled(one), region(one), rtol=1e-5, atol=1e-5)
    new = graphs[before:]
    assert len(new) == 1, "the one-row call should trace as one graph"
    assert any(node.target is torch.relu for node in new[0].graph.nodes)
