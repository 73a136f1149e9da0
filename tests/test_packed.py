"""Packed oneDNN weights (``qtts.packed``, ``--accel packed``): bfloat16 bit for bit torch's linear, float32 close,
stale or freed weights never used packed, composition with row kernels, fusing and compilation."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from qtts import Sampling, Speaker, SynthesisOptions, packed
from qtts.accel import parse_accel
from qtts.checkpoint import random_tts
from qtts.gemv import use_row_kernels_

pytestmark = pytest.mark.skipif(not packed.available(), reason="torch built without oneDNN")
needs_bf16 = pytest.mark.skipif(torch.bfloat16 not in packed.dtypes(),
                                reason="oneDNN has no bfloat16 kernels for this CPU (AVX2 only)")


def _layer(out: int, inp: int, dtype: torch.dtype, bias: bool = False) -> nn.Linear:
    layer = nn.Linear(inp, out, bias=bias).to(dtype)
    with torch.no_grad():
        layer.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(out + inp))
        if bias:
            layer.bias.normal_(0, 0.1)
    return layer.requires_grad_(False)


@needs_bf16
@pytest.mark.parametrize("bias", [False, True])
def test_bfloat16_products_equal_torch_linear_bit_for_bit(bias):
    layers = nn.ModuleList([_layer(1536, 512, torch.bfloat16, bias), _layer(512, 1536, torch.bfloat16, bias)])
    assert packed.pack_linear_weights_(layers) == 2 and all(packed.is_packed(m) for m in layers)
    assert packed.packed_bytes() >= 2 * 1536 * 512 * 2
    try:
        for rows in (1, 2, 3, 8, 37, 128):
            x = torch.randn(rows, 512).to(torch.bfloat16)
            for shape in ((rows, 512), (1, rows, 512)):
                h = x.view(shape)
                expected = nn.functional.linear(nn.functional.linear(h, layers[0].weight, layers[0].bias),
                                                layers[1].weight, layers[1].bias)
                assert torch.equal(layers[1](layers[0](h)), expected)
    finally:
        assert packed.pack_linear_weights_(layers, False) == 2
    assert not any(packed.is_packed(m) for m in layers) and "forward" not in layers[0].__dict__


def test_float32_products_are_close_and_routed():
    layer = nn.ModuleList([_layer(1024, 512, torch.float32)])
    calls = []
    original = packed._product
    packed._product = lambda *a: calls.append(1) or original(*a)
    try:
        packed.pack_linear_weights_(layer)
        x = torch.randn(8, 512)
        out = layer[0](x)
        assert calls and torch.allclose(out, nn.functional.linear(x, layer[0].weight), rtol=1e-5, atol=1e-5)
    finally:
        packed._product = original
        packed.pack_linear_weights_(layer, False)


@pytest.mark.parametrize("dtype", packed.dtypes())
def test_small_int8_and_changed_weights_are_not_used_packed(dtype):
    small = _layer(64, 64, torch.float32)  # below MIN_WEIGHTS: stays in cache, not worth a reorder
    big = _layer(1024, 512, dtype)
    assert packed.pack_linear_weights_(nn.ModuleList([small, big])) == 1
    assert not packed.is_packed(small) and packed.is_packed(big)
    x = torch.randn(4, 512).to(dtype)
    with torch.no_grad():
        big.weight.mul_(-2)  # changed in place after packing: the packed copy is stale
    assert not packed.is_packed(big)
    assert torch.equal(big(x), nn.functional.linear(x, big.weight))
    packed.pack_linear_weights_(nn.ModuleList([big]), False)


@pytest.mark.parametrize("dtype", packed.dtypes())
def test_a_freed_weight_leaves_the_registry(dtype):
    layer = _layer(1024, 512, dtype)
    packed.pack_linear_weights_(layer)
    key = layer.weight.data_ptr()
    assert key in packed._PACKED
    del layer
    gc.collect()
    assert key not in packed._PACKED


def test_row_kernels_keep_few_rows_and_packed_takes_the_rest():
    from qtts import gemv

    if not gemv.available():
        pytest.skip("row kernels unavailable (no C++ compiler for inductor)")
    layer = _layer(1024, 512, torch.float32)
    module = nn.ModuleList([layer])
    packed.pack_linear_weights_(module)
    use_row_kernels_(module, True)
    calls = []
    original = packed._product
    packed._product = lambda *a: calls.append(a[0].shape[0]) or original(*a)
    try:
        layer(torch.randn(1, 512))  # one row: the row kernel
        layer(torch.randn(8, 512))  # beyond gemv.MAX_ROWS: packed
        assert calls == [8]
        use_row_kernels_(module, False)  # packing stays routed without row kernels
        layer(torch.randn(1, 512))
        assert calls == [8, 1] and "forward" in layer.__dict__
    finally:
        packed._product = original
        packed.pack_linear_weights_(module, False)
    assert "forward" not in layer.__dict__


def test_parse_packed():
    assert parse_accel("packed", "cpu").packed and parse_accel("compile,row-kernels,packed", "cpu").packed
    assert not parse_accel("auto", "cpu").packed


@pytest.fixture
def small_packing(monkeypatch):
    """Pack every layer of the tiny test model (its matrices are below ``MIN_WEIGHTS``)."""
    monkeypatch.setattr(packed, "MIN_WEIGHTS", 0)


def test_bfloat16_stays_on_linear_where_onednn_lacks_its_kernels(monkeypatch, small_packing):
    """On a CPU without oneDNN's bfloat16 kernels (AVX2 only: the reorder would raise), bfloat16 layers are not
    packed, a warning says why, float32 layers still are, and a bfloat16 model with ``packed`` synthesizes the
    codes it gives without it."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
    assert packed.dtypes() == (torch.float32,)
    layers = nn.ModuleList([_layer(1024, 512, torch.bfloat16), _layer(1024, 512, torch.float32)])
    with pytest.warns(UserWarning, match="bfloat16 linear layers keep torch's linear"):
        assert packed.pack_linear_weights_(layers) == 1
    assert not packed.is_packed(layers[0]) and packed.is_packed(layers[1])
    packed.pack_linear_weights_(layers, False)
    tts = random_tts("tiny", "custom_voice", "cpu", torch.bfloat16)
    options = SynthesisOptions(max_new_tokens=8, sampling=Sampling.greedy())
    expected = tts.synthesize("No bfloat16 kernels here.", Speaker(tts.speakers[0]), seed=1, options=options).codes
    with pytest.warns(UserWarning):
        tts.accelerate(packed=True)
    assert not any(packed.is_packed(m) for m in tts.model.talker.modules() if isinstance(m, nn.Linear))
    codes = tts.synthesize("No bfloat16 kernels here.", Speaker(tts.speakers[0]), seed=1, options=options).codes
    assert torch.equal(codes, expected)


@needs_bf16
@pytest.mark.parametrize("accel", [{}, dict(fused=True), dict(compile=True, compile_backend="aot_eager")])
def test_packed_bfloat16_model_gives_the_same_codes(small_packing, accel):
    """A bfloat16 model with packed weights gives exactly the codes of the same acceleration without packing
    (greedy and sampled): eager, fused, compiled (the custom operator traced; the static path's attention
    differs from eager's in bfloat16, so compared with itself). Going back to eager unpacks every weight."""
    tts = random_tts("tiny", "custom_voice", "cpu", torch.bfloat16)
    text, voice = "Packed weights give the same codes.", Speaker(tts.speakers[0])
    runs = [SynthesisOptions(max_new_tokens=12, sampling=Sampling.greedy()),
            SynthesisOptions(max_new_tokens=12)]
    tts.accelerate(**accel)
    expected = [tts.synthesize(text, voice, seed=3, options=o).codes for o in runs]
    tts.accelerate(**accel, packed=True)
    layers = [m for m in tts.model.talker.modules() if isinstance(m, nn.Linear)]
    assert all(packed.is_packed(m) for m in layers)
    for options, codes in zip(runs, expected, strict=True):
        assert torch.equal(tts.synthesize(text, voice, seed=3, options=options).codes, codes)
    tts.accelerate()
    assert not any(packed.is_packed(m) for m in tts.model.talker.modules() if isinstance(m, nn.Linear))
