"""Audio encoders for ``response_format``: incremental, so a response can stream as audio is generated.

``make_encoder(fmt, sample_rate)`` returns an ``Encoder``: ``feed(audio)`` takes float32 mono samples and
returns the bytes ready so far, ``finish()`` returns the rest. The bytes of every ``feed`` plus ``finish``
concatenated form one valid file (or raw stream) of the whole audio.

* ``pcm``: raw signed 16-bit little-endian mono at the model's rate (24 kHz), no header.
* ``wav``: a RIFF/WAVE header whose sizes say "unknown length" (0xFFFFFFFF, as streaming WAV encoders do),
  then 16-bit PCM; readers take the data up to the end of the stream.
* ``flac``, ``mp3``, ``opus`` (Ogg/Opus), ``aac`` (ADTS): encoded with PyAV (FFmpeg), which writes each
  packet as soon as the codec emits it. The output is written to a non-seekable sink, so muxers never go
  back to patch headers; FLAC's total-sample count is left "unknown", which decoders accept. PyAV is part
  of the ``server`` extra; without it these formats are refused (``FormatError``) and ``pcm`` / ``wav``
  still work.
"""

from __future__ import annotations

import dataclasses
import struct
from fractions import Fraction
from typing import Protocol

import numpy as np

FORMATS = ("wav", "pcm", "flac", "mp3", "opus", "aac")
CONTENT_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac", "mp3": "audio/mpeg",
                 "opus": "audio/ogg", "aac": "audio/aac"}


class FormatError(ValueError):
    """An unknown or unavailable response format."""


class Encoder(Protocol):
    def feed(self, audio: np.ndarray) -> bytes: ...

    def finish(self) -> bytes: ...


def to_s16le(audio: np.ndarray) -> bytes:
    """float32 samples in [-1, 1] -> signed 16-bit little-endian bytes (clipped, rounded)."""
    pcm = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767.0
    return np.round(pcm).astype("<i2").tobytes()


class PcmEncoder:
    """Raw s16le: every chunk is its own bytes."""

    def feed(self, audio: np.ndarray) -> bytes:
        return to_s16le(audio)

    def finish(self) -> bytes:
        return b""


def wav_header(sample_rate: int, data_bytes: int = 0xFFFFFFFF) -> bytes:
    """A 44-byte PCM16 mono WAV header; the default sizes mean "unknown length" (streaming)."""
    riff = 0xFFFFFFFF if data_bytes == 0xFFFFFFFF else 36 + data_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data_bytes))


class WavEncoder:
    """Streaming WAV: header first (unknown length), then PCM16."""

    def __init__(self, sample_rate: int) -> None:
        self._header: bytes | None = wav_header(sample_rate)

    def _take_header(self) -> bytes:
        header, self._header = self._header or b"", None
        return header

    def feed(self, audio: np.ndarray) -> bytes:
        return self._take_header() + to_s16le(audio)

    def finish(self) -> bytes:
        return self._take_header()


class _Sink:
    """A write-only, non-seekable file object collecting what a muxer writes."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


@dataclasses.dataclass(frozen=True)
class _AvSpec:
    container: str
    codec: str
    bit_rate: int | None
    fixed_frames: bool  # the codec needs every frame full (the last one is padded with silence)
    options: tuple[tuple[str, str], ...] = ()


_AV_SPECS = {
    "flac": _AvSpec("flac", "flac", None, False),
    "mp3": _AvSpec("mp3", "libmp3lame", 64000, True),
    # Ogg pages are flushed every 40 ms of audio (FFmpeg's default holds them for one second).
    "opus": _AvSpec("ogg", "libopus", 32000, True, (("page_duration", "40000"),)),
    "aac": _AvSpec("adts", "aac", 64000, True),
}


class AvEncoder:
    """FLAC / MP3 / Ogg-Opus / ADTS-AAC via PyAV; packets are returned as soon as the codec emits them."""

    def __init__(self, fmt: str, sample_rate: int) -> None:
        import av

        spec = _AV_SPECS[fmt]
        self._av = av
        self._sink = _Sink()
        self._container = av.open(self._sink, mode="w", format=spec.container, options=dict(spec.options))
        self._stream = self._container.add_stream(spec.codec, rate=sample_rate, layout="mono")
        if spec.bit_rate:
            self._stream.bit_rate = spec.bit_rate
        self._stream.codec_context.time_base = Fraction(1, sample_rate)
        self._stream.codec_context.open()
        codec = self._stream.codec_context
        self._fifo = av.AudioFifo()
        self._frame_size = codec.frame_size or 1024
        self._resampler = av.AudioResampler(format=codec.format.name, layout="mono", rate=sample_rate)
        self._rate = sample_rate
        self._pad_last = spec.fixed_frames
        self._pts = 0
        self._done = False

    def _encode(self, frame) -> None:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def _drain(self, final: bool) -> None:
        while self._fifo.samples >= self._frame_size or (final and self._fifo.samples):
            frame = self._fifo.read(min(self._frame_size, self._fifo.samples))
            if frame.samples < self._frame_size and self._pad_last:
                frame = self._pad(frame)
            for out in self._resampler.resample(frame):
                out.pts = self._pts
                out.time_base = Fraction(1, self._rate)
                self._pts += out.samples
                self._encode(out)

    def _pad(self, frame):
        """Codecs with a fixed frame size (Opus, AAC, MP3) need a full last frame: pad with silence."""
        data = frame.to_ndarray().reshape(-1)
        padded = np.zeros(self._frame_size, dtype=data.dtype)
        padded[: len(data)] = data
        return self._frame(padded, frame.format.name)

    def _frame(self, samples: np.ndarray, fmt: str):
        frame = self._av.AudioFrame.from_ndarray(samples.reshape(1, -1), format=fmt, layout="mono")
        frame.sample_rate = self._rate
        return frame

    def feed(self, audio: np.ndarray) -> bytes:
        if len(audio):
            pcm = np.round(np.clip(np.asarray(audio, dtype=np.float32), -1, 1) * 32767).astype(np.int16)
            frame = self._frame(pcm, "s16")
            frame.pts = None
            self._fifo.write(frame)
            self._drain(final=False)
        return self._sink.take()

    def finish(self) -> bytes:
        if not self._done:
            self._done = True
            self._drain(final=True)
            self._encode(None)
            self._container.close()
        return self._sink.take()


def av_available() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def check_format(fmt: str) -> None:
    """Raise ``FormatError`` (naming ``response_format``) unless ``fmt`` can be encoded here."""
    if fmt not in FORMATS:
        raise FormatError(f"response_format: unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt in _AV_SPECS and not av_available():
        raise FormatError(f"response_format: {fmt!r} needs PyAV (pip install 'qtts[server]'); "
                          "pcm and wav work without it")


def make_encoder(fmt: str, sample_rate: int) -> Encoder:
    """An incremental encoder for ``fmt`` (one of ``FORMATS``); ``FormatError`` if unknown or unavailable."""
    check_format(fmt)
    if fmt == "pcm":
        return PcmEncoder()
    if fmt == "wav":
        return WavEncoder(sample_rate)
    return AvEncoder(fmt, sample_rate)
