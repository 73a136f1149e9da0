"""Audio input helpers: loading, mono mix, validation errors, and resampling equal to librosa's default."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf

from qtts.audio import load_audio, prepare_reference, resample
from qtts.errors import InputError


def _tone(sr: int, seconds: float = 0.5, channels: int = 1) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    chans = [0.3 * np.sin(2 * math.pi * (220 + 110 * c) * t) for c in range(channels)]
    x = np.stack(chans, axis=1) if channels > 1 else chans[0]
    return x.astype(np.float32)


@pytest.mark.parametrize("sr_from", [8000, 16000, 22050, 44100, 48000])
def test_resample_equals_librosa(sr_from: int) -> None:
    librosa = pytest.importorskip("librosa")
    x = _tone(sr_from, 0.37) + 0.01 * np.random.default_rng(0).standard_normal(int(sr_from * 0.37)).astype(np.float32)
    ref = librosa.resample(y=x, orig_sr=sr_from, target_sr=24000)
    out = resample(x, sr_from, 24000)
    assert out.dtype == np.float32 and out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)


def test_resample_identity() -> None:
    x = _tone(24000)
    np.testing.assert_array_equal(resample(x, 24000, 24000), x)


def test_load_file_matches_official_loader(tmp_path) -> None:
    """Stereo file -> channel mean, like librosa.load(sr=None, mono=True) used by the official wrapper."""
    librosa = pytest.importorskip("librosa")
    path = tmp_path / "stereo.wav"
    sf.write(path, _tone(44100, channels=2), 44100, subtype="PCM_16")
    x, sr = load_audio(str(path))
    ref, ref_sr = librosa.load(str(path), sr=None, mono=True)
    assert sr == ref_sr == 44100 and x.dtype == np.float32
    np.testing.assert_array_equal(x, ref)
    expected = librosa.resample(y=ref, orig_sr=44100, target_sr=24000)
    np.testing.assert_array_equal(prepare_reference(path), expected)
    x_bytes, _ = load_audio(path.read_bytes())
    np.testing.assert_array_equal(x_bytes, x)


def test_tuple_inputs() -> None:
    stereo = _tone(16000, channels=2)
    x, sr = load_audio((stereo, 16000))
    np.testing.assert_allclose(x, stereo.mean(axis=-1))
    x_t, _ = load_audio((stereo.T, np.int64(16000)))  # (channels, samples) layout
    np.testing.assert_allclose(x_t, x)
    pcm = (stereo[:, 0] * 32767).astype(np.int16)
    x_i, _ = load_audio((pcm, 16000.0))
    np.testing.assert_allclose(x_i, stereo[:, 0], atol=1e-4)
    assert prepare_reference((stereo, 16000)).shape == (12000,)


@pytest.mark.parametrize("source, message", [
    (_tone(24000), "sample rate"),
    ((np.zeros(0, np.float32), 24000), "empty"),
    ((_tone(24000, 0.05), 24000), "too short"),
    ((np.full(4800, 5e-5, np.float32), 24000), "silent"),
    ((np.array([0.1, np.nan] * 2400, np.float32), 24000), "NaN"),
    ((np.array([0.1, np.inf] * 2400, np.float32), 24000), "NaN or infinite"),
    ((_tone(24000), 0), "positive integer"),
    ((_tone(24000), 44100.5), "positive integer"),
    ((_tone(24000), "24000"), "must be a number"),
    ((np.zeros((2, 2, 2400), np.float32), 24000), "1-D or 2-D"),
    ((["a", "b"], 24000), "numeric"),
    ((_tone(24000),), "tuple must be"),
    (12345, "unsupported audio input"),
    (b"definitely not audio", "could not be decoded"),
])
def test_bad_inputs(source: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_audio(source)  # type: ignore[arg-type]


def test_bad_files(tmp_path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(InputError, match="directory"):
        load_audio(tmp_path)
    text = tmp_path / "notes.wav"
    text.write_text("hello, not a wav file")
    with pytest.raises(InputError, match="could not be decoded"):
        prepare_reference(str(text))
