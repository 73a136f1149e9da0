"""Streaming encoders: output starts with the first chunks and the joined bytes decode to the whole audio."""

from __future__ import annotations

import io

import numpy as np
import pytest

from qtts.server.formats import FORMATS, FormatError, check_format, make_encoder, to_s16le, wav_header

av = pytest.importorskip("av")
sf = pytest.importorskip("soundfile")

RATE = 24000


def _audio(seconds: float = 1.3) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _decode(fmt: str, data: bytes) -> np.ndarray:
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767
    if fmt == "wav":
        return sf.read(io.BytesIO(data), dtype="float32")[0]
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
        rate = container.streams.audio[0].sample_rate
    audio = np.concatenate(frames)
    if audio.dtype == np.int16:
        audio = audio.astype(np.float32) / 32767
    return audio[:: rate // RATE]


@pytest.mark.parametrize("fmt", FORMATS)
def test_streaming_encoders_start_early_and_decode_whole(fmt):
    audio = _audio()
    encoder = make_encoder(fmt, RATE)
    step = 1920 * 4  # chunks of 4 frames (320 ms)
    pieces = [encoder.feed(audio[i:i + step]) for i in range(0, len(audio), step)]
    pieces.append(encoder.finish())
    assert pieces[0], "nothing to send after the first chunk"
    assert sum(bool(p) for p in pieces[:-1]) >= len(pieces) - 2  # output keeps flowing, not held to the end
    decoded = _decode(fmt, b"".join(pieces))
    exact = fmt in ("pcm", "wav", "flac")
    assert len(audio) <= len(decoded) <= len(audio) + (0 if exact else 2400)
    if exact:
        assert np.abs(decoded[: len(audio)] - audio).max() <= 1.5 / 32767


def test_pcm_wav_bytes():
    audio = np.array([0.0, 1.0, -1.0, 2.0], dtype=np.float32)
    assert to_s16le(audio) == np.array([0, 32767, -32767, 32767], dtype="<i2").tobytes()
    header = wav_header(RATE)
    assert len(header) == 44 and header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt "
    assert make_encoder("wav", RATE).finish() == header  # an empty stream is still a valid file


def test_unknown_format():
    with pytest.raises(FormatError, match="response_format"):
        check_format("ogg")
