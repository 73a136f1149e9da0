"""Weight-only int8 quantization: per-channel round trip, ``Int8Linear`` kernels, the engine option end to end."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qtts import InputError, Speaker, SynthesisOptions
from qtts.quant import (
    CPU_MIN_INT8PACK_WEIGHTS,
    Int8Linear,
    dequantize_weight,
    module_bytes,
    parse_quantize,
    quantize_int8_,
    quantize_weight,
)
from qtts.request import Sampling

HAS_INT8PACK = hasattr(torch, "_weight_int8pack_mm")
needs_int8pack = pytest.mark.skipif(not HAS_INT8PACK, reason="this torch has no _weight_int8pack_mm")


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """The int8pack kernel splits even tiny products across threads, which crawls on a busy machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _weight(out_f: int, in_f: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) / in_f**0.5
    w[3] *= 40.0  # an outlier row: per-channel scales must keep the other rows fine
    w[5] = 0.0  # an all-zero row
    return w


def test_round_trip_error_is_at_most_half_a_step_per_channel():
    w = _weight(64, 96)
    q, scales = quantize_weight(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and scales.shape == (64,)
    assert int(q.abs().max()) <= 127
    amax = w.abs().amax(dim=1)
    nonzero = amax > 0
    s = scales.float()
    # Scales are max|row|/127 rounded up to a bfloat16 value: never smaller, at most one bf16 ulp larger.
    assert bool((s[nonzero] >= amax[nonzero] / 127).all())
    assert bool((s[nonzero] <= amax[nonzero] / 127 * (1 + 2**-7)).all())
    assert scales.dtype == torch.bfloat16
    err = (dequantize_weight(q, scales) - w).abs()
    assert bool((err <= s[:, None] / 2 + 1e-9).all())
    assert not bool(q[5].any())
    # Per channel: the ordinary rows' relative error is unaffected by the 40x outlier row.
    rel = err.norm(dim=1) / w.norm(dim=1).clamp(min=1e-12)
    assert float(rel[[i for i in range(64) if i not in (3, 5)]].max()) < 0.02


def test_quantize_weight_rejects_non_matrices():
    with pytest.raises(InputError):
        quantize_weight(torch.zeros(4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel", [pytest.param("int8pack", marks=needs_int8pack), "dequant"])
def test_int8_linear_matches_dequantized_matmul(dtype, kernel):
    linear = nn.Linear(96, 80, bias=True)
    with torch.no_grad():
        linear.weight.copy_(_weight(80, 96))
    layer = Int8Linear.from_linear(linear, kernel=kernel)
    x = torch.randn(2, 3, 96, generator=torch.Generator().manual_seed(1)).to(dtype)
    y = layer(x)
    assert y.shape == (2, 3, 80) and y.dtype == dtype
    w = layer.dequantized()
    fast = layer.uses_int8pack()
    assert fast == (kernel == "int8pack")
    if fast or dtype == torch.bfloat16:
        # bfloat16 activations (the int8pack kernel always takes them) and a bfloat16 result: only the
        # output's rounding and the summation order may differ from the dequantized product.
        ref = F.linear(x.to(torch.bfloat16).float(), w, linear.bias.detach())
        torch.testing.assert_close(y.float(), ref, rtol=2**-7, atol=2e-3 * float(ref.abs().max()))
    else:
        ref = F.linear(x, w, linear.bias.detach())
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_int8_linear_is_close_to_the_float_layer():
    linear = nn.Linear(256, 192, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(192, 256, generator=torch.Generator().manual_seed(2)) / 16)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = linear(x)
    rel = float((layer(x) - ref).norm() / ref.norm())
    assert 0 < rel < 0.02


@needs_int8pack
def test_auto_kernel_choice():
    big = Int8Linear.from_linear(nn.Linear(512, CPU_MIN_INT8PACK_WEIGHTS // 512, bias=False))
    assert big.uses_int8pack()
    assert not Int8Linear.from_linear(nn.Linear(96, 80, bias=False)).uses_int8pack()  # small: dequant on CPU
    with pytest.raises(InputError, match="unavailable"):
        Int8Linear.from_linear(nn.Linear(40, 24, bias=False), kernel="int8pack").uses_int8pack()


@needs_int8pack
def test_int8pack_path_survives_misaligned_and_odd_inputs():
    """The CPU kernel crashes on rows that are not 32-byte aligned and on widths not divisible by 16."""
    layer = Int8Linear.from_linear(nn.Linear(64, 48, bias=False), kernel="int8pack")
    assert layer.uses_int8pack()
    buf = torch.randn(3 * 64 + 8).to(torch.bfloat16)
    x = buf[8:].view(3, 64)  # 16 bytes past an aligned start
    assert x.data_ptr() % 32 != 0
    ref = F.linear(x.float(), layer.dequantized())
    torch.testing.assert_close(layer(x).float(), ref, rtol=2**-7, atol=2e-3 * float(ref.abs().max()))
    narrow = Int8Linear.from_linear(nn.Linear(40, 24, bias=False))
    assert not narrow.uses_int8pack()
    x = torch.randn(2, 40)
    torch.testing.assert_close(narrow(x), F.linear(x, narrow.dequantized()), rtol=1e-5, atol=1e-5)
    assert layer(torch.zeros(0, 64)).shape == (0, 48)


def test_parse_quantize():
    assert parse_quantize(None) is None and parse_quantize("none") is None
    assert parse_quantize("int8") == "int8"
    for bad in ("int4", "INT8", "", True):
        with pytest.raises(InputError, match="valid: none, int8"):
            parse_quantize(bad)


def test_from_pretrained_rejects_unknown_quantize(tiny_checkpoints):
    from qtts import TTS

    with pytest.raises(InputError, match="unknown quantize mode 'int4'"):
        TTS.from_pretrained(tiny_checkpoints["custom_voice"], device="cpu", quantize="int4")


@pytest.fixture(scope="module")
def int8_tts(tiny_checkpoints):
    """The engine option; on the tiny shape every layer is below the CPU int8pack threshold (dequant)."""
    from qtts import TTS

    return TTS.from_pretrained(tiny_checkpoints["custom_voice"], device="cpu", quantize="int8")


@pytest.fixture(scope="module")
def int8pack_tts(tiny_checkpoints):
    """The same model with every layer forced onto ``torch._weight_int8pack_mm``."""
    from qtts import TTS

    if not HAS_INT8PACK:
        pytest.skip("this torch has no _weight_int8pack_mm")
    tts = TTS.from_pretrained(tiny_checkpoints["custom_voice"], device="cpu")
    summary = quantize_int8_(tts.model, kernel="int8pack")
    assert summary.int8pack_layers == summary.layers > 0
    return tts


def test_quantization_replaces_the_talker_and_predictor_linears(int8_tts, tiny_tts):
    talker = int8_tts.model.talker
    t, p = talker.cfg, talker.cfg.code_predictor_config
    projection = 1 if p.hidden_size != t.hidden_size else 0
    expected = 7 * (t.num_hidden_layers + p.num_hidden_layers) + (t.num_code_groups - 1) + projection
    summary = int8_tts.quantization
    assert summary is not None and summary.layers == expected
    int8 = [m for m in int8_tts.model.modules() if isinstance(m, Int8Linear)]
    assert len(int8) == expected
    assert summary.int8pack_layers == 0  # tiny layers: below the CPU threshold
    for root in (talker.model.layers, talker.code_predictor):
        assert not any(type(m) is nn.Linear for m in root.modules())
    # Kept in full precision: the code-0 head and the text projection.
    assert type(talker.codec_head) is nn.Linear and type(talker.text_projection.linear_fc1) is nn.Linear
    assert int8_tts.dtype == torch.float32
    # Memory: the replaced weights shrink ~4x (float32 -> int8 + one bf16 scale per row), the model with them.
    assert summary.bytes_after < summary.bytes_before / 3.5
    saved = module_bytes(tiny_tts["custom_voice"].model) - module_bytes(int8_tts.model)
    assert saved == summary.bytes_before - summary.bytes_after
    assert tiny_tts["custom_voice"].quantization is None
    assert quantize_int8_(int8_tts.model).layers == 0  # idempotent


@pytest.mark.parametrize("which", ["int8_tts", "int8pack_tts"])
def test_quantized_model_synthesizes_and_streams(which, request):
    tts = request.getfixturevalue(which)
    opts = SynthesisOptions(sampling=Sampling.greedy(), max_new_tokens=8)
    voice = Speaker("serena")
    text = "Quantized weights, same engine."
    with _one_thread():
        whole = tts.synthesize(text, voice=voice, options=opts)
        chunks = list(tts.stream(text, voice=voice, options=opts))
    T = len(whole.codes)
    assert T > 0 and whole.codes.shape == (T, 16)
    assert int(whole.codes.min()) >= 0 and int(whole.codes.max()) < 2048
    assert whole.audio.shape == (1920 * T,) and np.isfinite(whole.audio).all()
    joined = np.concatenate([c.audio for c in chunks])
    assert chunks[-1].finish_reason == whole.finish_reason
    assert joined.shape == whole.audio.shape and np.abs(joined - whole.audio).max() <= 1e-4


def test_cli_passes_quantize_through(monkeypatch, tiny_checkpoints):
    from qtts import api, cli

    seen = {}

    class Loaded:
        device = torch.device("cpu")

        def set_accel(self, options):
            seen["accel"] = options

    loaded = Loaded()

    def fake(path, **kwargs):
        seen.update(kwargs)
        return loaded

    monkeypatch.setattr(api.TTS, "from_pretrained", staticmethod(fake))
    parser = cli.build_parser()
    model = str(tiny_checkpoints["custom_voice"])
    args = parser.parse_args(["speak", "hi", "--model", model, "--quantize", "int8", "--dtype", "bfloat16"])
    assert cli._load(args) is loaded and seen["quantize"] == "int8" and seen["dtype"] == "bfloat16"
    assert not seen["accel"].static and not seen["accel"].row_kernels  # --accel auto on CPU: eager
    assert parser.parse_args(["clone-prompt", "--ref-audio", "a.wav", "-o", "p", "--model", model]).quantize == "none"
    with pytest.raises(SystemExit):
        parser.parse_args(["speak", "hi", "--quantize", "int4"])
