"""Codec encoder: shapes, padding convention, and parity with the official 12 Hz tokenizer's encoder."""

from __future__ import annotations

import math
import os

import pytest
import torch

from qtts.codec.encoder import PAD_CODE, CodecEncoder
from qtts.config import SpeechTokenizerConfig
from qtts.random_init import init_random_
from qtts.shapes import speech_tokenizer_config

from .reference import require_reference

SLOW = pytest.mark.skipif(os.environ.get("QTTS_SLOW") != "1", reason="set QTTS_SLOW=1 to run")


def _ours(shape: str, seed: int = 0) -> CodecEncoder:
    cfg = SpeechTokenizerConfig.from_dict(speech_tokenizer_config(shape)).encoder_config
    return init_random_(CodecEncoder(cfg), seed).eval()


def _official(shape: str, ours: CodecEncoder) -> torch.nn.Module:
    require_reference()
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model

    model = Qwen3TTSTokenizerV2Model(Qwen3TTSTokenizerV2Config(**speech_tokenizer_config(shape))).eval()
    model.encoder.load_state_dict(ours.state_dict(), strict=True)  # same names, no renaming
    return model


def _batch(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [B, max(lengths)] of sine + noise rows and their padding mask (int64, like the wrapper)."""
    g = torch.Generator().manual_seed(seed)
    n = max(lengths)
    t = torch.arange(n) / 24000
    wav = torch.zeros(len(lengths), n)
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for i, length in enumerate(lengths):
        row = 0.4 * torch.sin(2 * math.pi * (150 + 90 * i) * t) + 0.05 * torch.randn(n, generator=g)
        wav[i, :length] = row[:length]
        mask[i, :length] = 1
    return wav, mask


def _check_parity(ours: CodecEncoder, official: torch.nn.Module, lengths: list[int]) -> float:
    """Assert identical codes (valid frames) and latents within 1e-5; return the max latent difference."""
    wav, mask = _batch(lengths)
    with torch.no_grad():
        ref = official.encode(wav, mask).audio_codes  # list of [T_i, 16]
        codes = ours(wav, torch.tensor(lengths))
        enc = official.encoder
        h = enc.encoder(wav[:, None])
        h = enc.encoder_transformer(h.transpose(1, 2))[0].transpose(1, 2)
        latents, ref_latents = ours.latents(wav), enc.downsample(h)
    torch.testing.assert_close(latents, ref_latents, rtol=0, atol=1e-5)
    assert codes.shape == (len(lengths), 16, math.ceil(max(lengths) / 1920))
    for i, r in enumerate(ref):
        t = r.shape[0]
        assert t == math.ceil(lengths[i] / 1920)
        assert torch.equal(codes[i, :, :t], r.T), f"row {i}: codes differ from the official encoder"
        assert (codes[i, :, t:] == PAD_CODE).all()
    return float((latents - ref_latents).abs().max())


def test_shapes_and_padding() -> None:
    enc = _ours("tiny")
    wav = 0.1 * torch.randn(1, 24000, generator=torch.Generator().manual_seed(0))
    for n in (1, 1919, 1920, 1921, 5000):
        codes = enc(wav[:, :n])
        assert codes.dtype == torch.int64 and codes.shape == (1, 16, enc.num_frames(n))
        assert enc.num_frames(n) == math.ceil(n / 1920)
        assert int(codes.min()) >= 0 and int(codes.max()) < 2048
    padded = enc(wav[:, :5000].repeat(2, 1), torch.tensor([5000, 1921]))
    assert (padded[1, :, 2:] == PAD_CODE).all() and (padded[1, :, :2] >= 0).all()
    assert torch.equal(padded[0], enc(wav[:, :5000])[0])


def test_causal_prefix() -> None:
    """The encoder is causal: frames of a prefix do not depend on later audio (all but the last one)."""
    enc = _ours("tiny")
    wav = 0.1 * torch.randn(1, 24000, generator=torch.Generator().manual_seed(0))
    full, prefix = enc(wav), enc(wav[:, : 1920 * 5])
    assert torch.equal(full[..., :5], prefix)


def test_bad_arguments() -> None:
    cfg = SpeechTokenizerConfig.from_dict(speech_tokenizer_config("tiny")).encoder_config
    with pytest.raises(ValueError):
        CodecEncoder(cfg, valid_quantizers=cfg.num_quantizers + 1)
    with pytest.raises(ValueError):
        _ours("tiny")(torch.zeros(2400))


def test_parity_tiny() -> None:
    ours = _ours("tiny")
    _check_parity(ours, _official("tiny", ours), [24000, 17000, 1900])


def test_parity_tiny_bf16(tmp_path) -> None:
    """bf16 through the official from_pretrained(dtype=bf16) path: codes still identical."""
    ours = _ours("tiny")
    official = _official("tiny", ours)
    official.save_pretrained(tmp_path)
    official = type(official).from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    wav, mask = _batch([30000])
    with torch.no_grad():
        ref = official.encode(wav.to(torch.bfloat16), mask).audio_codes[0]
        codes = ours.to(torch.bfloat16)(wav)
    assert torch.equal(codes[0], ref.T)


@pytest.mark.slow
@SLOW
def test_parity_0p6b() -> None:
    ours = _ours("0.6b")
    diff = _check_parity(ours, _official("0.6b", ours), [36000, 24000])
    print(f"0.6b codec encoder: codes identical, latent max abs diff {diff:.2e}")
