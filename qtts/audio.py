"""Reference-audio input: load (file path, encoded bytes or ``(array, sr)``), mix to mono, validate, resample.

Matches the official wrapper: files are decoded as float32 by soundfile, channels are averaged, and
resampling is soxr "HQ" with the output length fixed to ``ceil(n * sr_to / sr_from)`` (what
``librosa.resample`` does with its default ``res_type="soxr_hq"``). Differences, on purpose: integer PCM
arrays are scaled to [-1, 1] (the official code casts them unscaled), a ``(channels, samples)`` array is
accepted as well as ``(samples, channels)`` (the channel axis is the shorter one), and unusable audio
raises :class:`~qtts.errors.InputError` instead of failing later.
"""

from __future__ import annotations

import io
import math
import os
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from .errors import InputError

AudioSource = str | os.PathLike | bytes | tuple[Any, Any]

MIN_DURATION_S = 0.1
SILENCE_LEVEL = 1e-4  # audio whose every |sample| is below this counts as silent
MAX_CHANNELS = 16


def _to_float32(x: np.ndarray) -> np.ndarray:
    """Float arrays are cast; integer PCM is scaled to [-1, 1] like soundfile does when decoding files."""
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32, copy=False)
    if np.issubdtype(x.dtype, np.unsignedinteger):
        half = float(np.iinfo(x.dtype).max // 2 + 1)
        return ((x.astype(np.float64) - half) / half).astype(np.float32)
    if np.issubdtype(x.dtype, np.signedinteger):
        return (x.astype(np.float64) / -float(np.iinfo(x.dtype).min)).astype(np.float32)
    raise InputError(f"audio array has unsupported dtype {x.dtype} (expected float or integer PCM)")


def _to_mono(x: np.ndarray) -> np.ndarray:
    """``[N]``, ``[N, C]`` or ``[C, N]`` (C = the shorter axis, at most 16) -> ``[N]`` channel mean."""
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise InputError(f"audio array must be 1-D or 2-D (samples, channels), got shape {x.shape}")
    axis = 1 if x.shape[1] <= x.shape[0] else 0
    if x.shape[axis] > MAX_CHANNELS:
        raise InputError(f"audio array of shape {x.shape} has more than {MAX_CHANNELS} channels")
    return x.mean(axis=axis).astype(np.float32, copy=False)


def _read_file(source: str | os.PathLike[str] | bytes) -> tuple[np.ndarray, int]:
    name = "audio bytes" if isinstance(source, bytes) else f"audio file {os.fspath(source)!r}"
    if not isinstance(source, bytes):
        if not os.path.exists(source):
            raise InputError(f"{name} not found")
        if os.path.isdir(source):
            raise InputError(f"{name} is a directory, not an audio file")
    try:
        data, sr = sf.read(io.BytesIO(source) if isinstance(source, bytes) else source,
                           dtype="float32", always_2d=True)
    except (RuntimeError, TypeError, ValueError) as e:  # soundfile.LibsndfileError is a RuntimeError
        raise InputError(f"{name} could not be decoded as audio ({e})") from None
    except OSError as e:
        raise InputError(f"{name} could not be read ({e})") from None
    return data.mean(axis=1).astype(np.float32, copy=False), int(sr)


def _check_rate(sr: Any) -> int:
    if isinstance(sr, bool) or not isinstance(sr, (int, float, np.integer, np.floating)):
        raise InputError(f"sample rate must be a number, got {type(sr).__name__}")
    if not math.isfinite(sr) or sr <= 0 or int(sr) != sr:
        raise InputError(f"sample rate must be a positive integer, got {sr!r}")
    return int(sr)


def _from_tuple(source: tuple[Any, ...]) -> tuple[np.ndarray, int]:
    if len(source) != 2:
        raise InputError("audio tuple must be (waveform array, sample_rate)")
    data, sr = source
    try:
        arr = np.asarray(data)
    except (TypeError, ValueError) as e:
        raise InputError(f"audio waveform is not an array ({e})") from None
    if arr.dtype == object or arr.dtype.kind not in "fiu":
        raise InputError(f"audio waveform must be a numeric array, got dtype {arr.dtype}")
    return _to_mono(_to_float32(arr)), _check_rate(sr)


def validate_audio(x: np.ndarray, sr: int) -> None:
    """Raise :class:`InputError` unless mono ``x`` is finite, at least 0.1 s long and not silent."""
    if x.size == 0:
        raise InputError("audio is empty")
    if not np.all(np.isfinite(x)):
        raise InputError("audio contains NaN or infinite samples")
    if x.size < MIN_DURATION_S * sr:
        raise InputError(f"audio is too short: {x.size / sr:.3f} s (minimum {MIN_DURATION_S} s)")
    if float(np.max(np.abs(x))) < SILENCE_LEVEL:
        raise InputError(f"audio is silent (every |sample| < {SILENCE_LEVEL})")


def load_audio(source: AudioSource) -> tuple[np.ndarray, int]:
    """Load and validate audio -> (float32 mono ``[N]``, sample rate).

    ``source``: a file path (anything soundfile decodes), the bytes of such a file, or a tuple
    ``(array, sample_rate)`` with ``array`` ``[N]``, ``[N, C]`` or ``[C, N]``. A bare array has no sample
    rate and is rejected.
    """
    if isinstance(source, np.ndarray):
        raise InputError("a bare waveform array has no sample rate: pass a tuple (array, sample_rate)")
    if isinstance(source, tuple):
        x, sr = _from_tuple(source)
    elif isinstance(source, (str, bytes, os.PathLike)):
        x, sr = _read_file(source)
    else:
        raise InputError(f"unsupported audio input type {type(source).__name__}: "
                         "expected a file path, file bytes or (array, sample_rate)")
    validate_audio(x, sr)
    return x, sr


def resample(x: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """Resample float32 ``[N]`` with soxr HQ -> ``[ceil(N * sr_to / sr_from)]`` float32 (== librosa's default)."""
    x = np.asarray(x, dtype=np.float32)
    if sr_from == sr_to:
        return x
    n_out = int(np.ceil(x.shape[-1] * (float(sr_to) / sr_from)))
    y = soxr.resample(x, sr_from, sr_to, quality="HQ")
    if y.shape[-1] >= n_out:
        return np.ascontiguousarray(y[:n_out], dtype=np.float32)
    return np.pad(y, (0, n_out - y.shape[-1])).astype(np.float32, copy=False)


def prepare_reference(source: AudioSource, target_sr: int = 24000) -> np.ndarray:
    """Load, mix to mono, validate and resample to ``target_sr`` -> float32 ``[N]``."""
    x, sr = load_audio(source)
    return resample(x, sr, target_sr)
