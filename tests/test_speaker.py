"""Speaker encoder and its log-mel front end vs librosa and the official package."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from qtts.config import ModelConfig
from qtts.errors import InputError
from qtts.model.speaker import SpeakerEncoder, mel_filterbank, mel_spectrogram
from qtts.random_init import init_random_
from qtts.shapes import model_config

from .reference import require_reference

SLOW = pytest.mark.skipif(os.environ.get("QTTS_SLOW") != "1", reason="set QTTS_SLOW=1 to run")


def _wav(n: int = 36000, batch: int = 1, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 24000
    return 0.5 * torch.sin(2 * math.pi * 200 * t) + 0.1 * torch.randn(batch, n, generator=g)


def _ours(shape: str) -> SpeakerEncoder:
    cfg = ModelConfig.from_dict(model_config(shape, "base")).speaker_encoder_config
    assert cfg is not None
    return init_random_(SpeakerEncoder(cfg), 0).eval()


def _official(shape: str, ours: SpeakerEncoder) -> torch.nn.Module:
    require_reference()
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSSpeakerEncoderConfig
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSSpeakerEncoder

    cfg = Qwen3TTSSpeakerEncoderConfig(**model_config(shape, "base")["speaker_encoder_config"])
    model = Qwen3TTSSpeakerEncoder(cfg).eval()
    model.load_state_dict(ours.state_dict(), strict=True)
    return model


def _official_mel(wav: torch.Tensor) -> torch.Tensor:
    require_reference()
    from qwen_tts.core.models.modeling_qwen3_tts import mel_spectrogram as ref_mel

    return ref_mel(wav, n_fft=1024, num_mels=128, sampling_rate=24000, hop_size=256, win_size=1024,
                   fmin=0, fmax=12000).transpose(1, 2)


@pytest.mark.parametrize("args", [(24000, 1024, 128, 0.0, 12000.0), (16000, 512, 80, 20.0, None),
                                  (22050, 2048, 64, 50.0, 8000.0)])
def test_filterbank_equals_librosa(args: tuple) -> None:
    librosa = pytest.importorskip("librosa")
    sr, n_fft, n_mels, fmin, fmax = args
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    ours = mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)


def test_mel_shape_and_errors() -> None:
    mel = mel_spectrogram(_wav(5000, batch=2))
    assert mel.shape == (2, 5000 // 256, 128) and mel.dtype == torch.float32
    with pytest.raises(InputError):
        mel_spectrogram(_wav(384))
    with pytest.raises(InputError):
        mel_spectrogram(torch.zeros(5000))


def test_mel_matches_official() -> None:
    wav = _wav(36000, batch=2)
    ref = _official_mel(wav)
    torch.testing.assert_close(mel_spectrogram(wav), ref, rtol=1e-5, atol=1e-5)


def _check_embedding(shape: str) -> float:
    ours = _ours(shape)
    official = _official(shape, ours)
    wav = _wav()
    with torch.no_grad():
        ref = official(_official_mel(wav))
        emb = ours.embed(wav)
    assert emb.shape == (1, ours.cfg.enc_dim)
    err = float((emb - ref).abs().max() / ref.abs().max())
    assert err < 1e-4
    return err


def test_embedding_matches_official_tiny() -> None:
    _check_embedding("tiny")


def test_embedding_bf16_matches_official() -> None:
    """bf16 weights: mel in float32, cast to bf16, like the official extract_speaker_embedding."""
    ours = _ours("tiny")
    official = _official("tiny", ours).to(torch.bfloat16)
    wav = _wav()
    with torch.no_grad():
        ref = official(_official_mel(wav).to(torch.bfloat16))
        emb = ours.to(torch.bfloat16).embed(wav)
    assert emb.dtype == torch.bfloat16
    torch.testing.assert_close(emb.float(), ref.float(), rtol=0, atol=1e-6)


def test_batched_rows_are_independent() -> None:
    ours = _ours("tiny")
    wav = _wav(12000, batch=2)
    both = ours.embed(wav)
    torch.testing.assert_close(both[1:], ours.embed(wav[1:]), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@SLOW
def test_embedding_matches_official_0p6b() -> None:
    err = _check_embedding("0.6b")
    print(f"0.6b speaker embedding max rel err {err:.2e}")
