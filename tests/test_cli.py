"""``qtts speak --stream``: the progressive WAV equals a non-streamed run, TTFA/RTF are printed, nothing
half-written survives an interrupt, and playback goes to the sound device when one exists."""

from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest
import soundfile as sf

from qtts import SynthesisOptions
from qtts.api import TTS
from qtts.cli import main

TEXT = "Streaming from the command line."
ARGS = ["--seed", "3", "--max-frames", "9"]


def _speak(model, *extra: str) -> int:
    return main(["speak", TEXT, "--model", str(model), *ARGS, *extra])


def test_stream_to_file_equals_non_streamed(tiny_checkpoints, tmp_path, capsys):
    model = tiny_checkpoints["custom_voice"]
    assert _speak(model, "-o", str(tmp_path / "whole.wav")) == 0
    capsys.readouterr()
    assert _speak(model, "--stream", "--chunk-frames", "2", "-o", str(tmp_path / "streamed.wav")) == 0
    err = capsys.readouterr().err
    whole, sr = sf.read(tmp_path / "whole.wav", dtype="int16")
    streamed, sr2 = sf.read(tmp_path / "streamed.wav", dtype="int16")
    assert sr == sr2 == 24000 and len(whole) > 0 and len(whole) % 1920 == 0
    assert streamed.shape == whole.shape
    assert np.abs(streamed.astype(int) - whole.astype(int)).max() <= 1  # float audio within 1e-4 -> 1 LSB
    ttfa = re.search(r"^time to first audio: ([0-9.]+) s$", err, re.M)
    rtf = re.search(r"^real-time factor: ([0-9.]+) \(wall ([0-9.]+) s / audio ([0-9.]+) s", err, re.M)
    assert ttfa and rtf, err
    assert 0 < float(ttfa.group(1)) <= float(rtf.group(2)) + 0.01
    assert float(rtf.group(3)) == pytest.approx(len(whole) / 24000, abs=0.01)
    assert re.search(rf"wrote .*streamed\.wav: .* {len(whole) // 1920} frames, finish=(stop|length)", err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.wav", "whole.wav"]  # no temp files left


def test_interrupted_stream_leaves_no_file(tiny_checkpoints, tmp_path, monkeypatch):
    real_stream = TTS.stream

    def interrupted(self, *args, **kwargs):
        chunks = real_stream(self, *args, **kwargs)

        def gen():
            yield next(chunks)
            raise KeyboardInterrupt

        return gen()

    monkeypatch.setattr(TTS, "stream", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _speak(tiny_checkpoints["custom_voice"], "--stream", "-o", str(tmp_path / "out.wav"))
    assert list(tmp_path.iterdir()) == []


def test_bad_chunk_frames(tiny_checkpoints, tmp_path, capsys):
    assert _speak(tiny_checkpoints["custom_voice"], "--stream", "--chunk-frames", "0",
                  "-o", str(tmp_path / "x.wav")) == 2
    assert "--chunk-frames" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def _fake_sounddevice(has_output: bool) -> tuple[types.ModuleType, list[np.ndarray]]:
    played: list[np.ndarray] = []

    def query_devices(kind=None):
        if not has_output:
            raise RuntimeError("no default output device")
        return {"name": "fake", "max_output_channels": 2}

    class OutputStream:
        def __init__(self, samplerate, channels, dtype):
            assert (samplerate, channels, dtype) == (24000, 1, "float32")

        def start(self):
            pass

        def write(self, data):
            assert data.shape[1] == 1
            played.append(data[:, 0].copy())

        def stop(self):
            pass

        def abort(self):
            pass

        def close(self):
            pass

    return types.SimpleNamespace(query_devices=query_devices, OutputStream=OutputStream), played


def test_stream_plays_on_the_sound_device(tiny_checkpoints, tiny_tts, tmp_path, monkeypatch, capsys):
    fake, played = _fake_sounddevice(has_output=True)
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    monkeypatch.chdir(tmp_path)
    assert _speak(tiny_checkpoints["custom_voice"], "--stream") == 0
    err = capsys.readouterr().err
    assert "played:" in err and "time to first audio" in err and "real-time factor" in err
    assert list(tmp_path.iterdir()) == []  # played, not written
    expected = tiny_tts["custom_voice"].synthesize(TEXT, seed=3, options=SynthesisOptions(max_new_tokens=9)).audio
    assert [len(p) for p in played[:2]] == [1920, 2 * 1920]  # default chunks: 1, 2, 4, 8 frames
    joined = np.concatenate(played)
    assert joined.shape == expected.shape and np.abs(joined - expected).max() <= 1e-4


def test_stream_without_device_falls_back_to_file(tiny_checkpoints, tmp_path, monkeypatch, capsys):
    fake, played = _fake_sounddevice(has_output=False)
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    monkeypatch.chdir(tmp_path)
    assert _speak(tiny_checkpoints["custom_voice"], "--stream") == 0
    err = capsys.readouterr().err
    assert "note: no sound device" in err and "wrote out.wav" in err and played == []
    assert sf.info(str(tmp_path / "out.wav")).frames > 0
