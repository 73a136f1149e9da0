"""Public API on tiny checkpoints: every kind synthesizes, seeds reproduce, batch == single, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from qtts import (
    TTS,
    Clone,
    ClonePrompt,
    Design,
    InputError,
    Sampling,
    Speaker,
    SynthesisOptions,
    UnsupportedModeError,
)
from qtts.cli import main

TEXT = "A short sentence for the tests."


def _ref_audio() -> tuple[np.ndarray, int]:
    t = np.arange(24000) / 24000
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 24000


def test_every_kind_synthesizes(tiny_tts):
    opts = SynthesisOptions(max_new_tokens=12)
    voices = {"custom_voice": Speaker("ryan"), "voice_design": Design("a calm voice"),
              "base": Clone(_ref_audio(), "Hello there.")}
    for kind, voice in voices.items():
        r = tiny_tts[kind].synthesize(TEXT, voice=voice, seed=3, options=opts)
        assert r.sample_rate == 24000 and r.codes.shape[1] == 16
        assert len(r.audio) == 1920 * len(r.codes) and r.audio.dtype == np.float32
        assert r.finish_reason in ("stop", "length") and np.abs(r.audio).max() <= 1.0
        if r.finish_reason == "length":
            assert len(r.codes) == 11  # the official rule: max_new_tokens - 1 frames


def test_seed_reproduces_and_batch_equals_single(tiny_tts):
    tts = tiny_tts["custom_voice"]
    opts = SynthesisOptions(max_new_tokens=10)
    a = tts.synthesize(TEXT, voice=Speaker("vivian"), seed=11, options=opts)
    b = tts.synthesize(TEXT, voice=Speaker("vivian"), seed=11, options=opts)
    c = tts.synthesize(TEXT, voice=Speaker("vivian"), seed=12, options=opts)
    assert np.array_equal(a.codes, b.codes) and not np.array_equal(a.codes, c.codes)
    texts = [TEXT, "Another, longer line of text to batch with the first one.", "Third."]
    batch = tts.synthesize_batch(texts, voice=[Speaker("vivian"), Speaker("eric"), Speaker("sohee")], seed=40,
                                 options=opts)
    for i, (text, name) in enumerate(zip(texts, ["vivian", "eric", "sohee"], strict=True)):
        single = tts.synthesize(text, voice=Speaker(name), seed=40 + i, options=opts)
        assert np.array_equal(single.codes, batch[i].codes)
        assert np.allclose(single.audio, batch[i].audio, atol=1e-5)


def test_greedy_default_voice_and_design_via_instruct(tiny_tts):
    opts = SynthesisOptions(sampling=Sampling.greedy(), max_new_tokens=6)
    r1 = tiny_tts["custom_voice"].synthesize(TEXT, options=opts)
    r2 = tiny_tts["custom_voice"].synthesize(TEXT, voice=Speaker("Vivian"), options=opts)
    assert np.array_equal(r1.codes, r2.codes)
    r3 = tiny_tts["voice_design"].synthesize(TEXT, instruct="a calm voice", options=opts)
    r4 = tiny_tts["voice_design"].synthesize(TEXT, voice=Design("a calm voice"), options=opts)
    assert np.array_equal(r3.codes, r4.codes)


def test_clone_prompt_roundtrip(tiny_tts, tmp_path):
    tts = tiny_tts["base"]
    prompt = tts.create_clone_prompt(_ref_audio(), "Hello there.")
    assert prompt.ref_codes.shape == (13, 16) and prompt.speaker_embedding.shape == (64,)
    path = prompt.save(tmp_path / "voice.safetensors")
    loaded = ClonePrompt.load(path)
    assert np.array_equal(loaded.ref_codes, prompt.ref_codes) and loaded.ref_text == "Hello there."
    opts = SynthesisOptions(sampling=Sampling.greedy(), max_new_tokens=6)
    a = tts.synthesize(TEXT, voice=Clone(_ref_audio(), "Hello there."), options=opts)
    b = tts.synthesize(TEXT, voice=Clone.load(path), options=opts)
    assert np.array_equal(a.codes, b.codes)
    xvec = tts.create_clone_prompt(_ref_audio(), x_vector_only=True).save(tmp_path / "x.safetensors")
    assert ClonePrompt.load(xvec).x_vector_only
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a clone prompt"):
        ClonePrompt.load(tmp_path / "bad.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors", "voice.safetensors", "x.safetensors"]


@pytest.mark.parametrize(("kind", "kwargs", "error", "match"), [
    ("custom_voice", {"text": ""}, InputError, "empty"),
    ("custom_voice", {"voice": Speaker("nobody")}, InputError, "valid: aiden"),
    ("custom_voice", {"language": "elvish"}, InputError, "valid: auto"),
    ("custom_voice", {"voice": Design("x")}, UnsupportedModeError, "preset speaker"),
    ("custom_voice", {"voice": Clone(_ref_audio(), "hi")}, UnsupportedModeError, "Base"),
    ("base", {}, InputError, "needs a voice"),
    ("base", {"voice": Clone((np.zeros(24000, np.float32), 24000), "hi")}, InputError, "silent"),
    ("base", {"voice": Clone("/no/such/file.wav", "hi")}, InputError, "file.wav"),
    ("voice_design", {}, InputError, "Design"),
    ("custom_voice", {"seed": "abc"}, InputError, "seed"),
])
def test_bad_input(tiny_tts, kind, kwargs, error, match):
    call = {"text": TEXT, **kwargs}
    with pytest.raises(error, match=match):
        tiny_tts[kind].synthesize(**call)


def test_bad_options(tiny_tts):
    tts = tiny_tts["custom_voice"]
    with pytest.raises(InputError, match="temperature"):
        tts.synthesize(TEXT, options=SynthesisOptions(sampling=Sampling(temperature=0.0)))
    with pytest.raises(InputError, match="max_new_tokens"):
        tts.synthesize(TEXT, options=SynthesisOptions(max_new_tokens=0))
    with pytest.raises(InputError, match="ref_text"):
        Clone(_ref_audio())


def test_cli_speak_and_make_checkpoint(tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "out.wav"
    rc = main(["speak", "Hello from the command line.", "--model", str(tiny_checkpoints["custom_voice"]),
               "--voice", "ryan", "--max-frames", "8", "--seed", "1", "--progress", "-o", str(out)])
    assert rc == 0
    audio, sr = sf.read(out)
    assert sr == 24000 and len(audio) == 7 * 1920
    assert "frames" in capsys.readouterr().err
    rc = main(["speak", "x", "--model", str(tiny_checkpoints["custom_voice"]), "--voice", "nobody",
               "-o", str(tmp_path / "bad.wav")])
    assert rc == 2 and "unknown speaker" in capsys.readouterr().err and not (tmp_path / "bad.wav").exists()
    rc = main(["make-checkpoint", "--shape", "tiny", "--kind", "voice_design", "--out", str(tmp_path / "ck")])
    assert rc == 0 and (tmp_path / "ck" / "speech_tokenizer" / "model.safetensors").is_file()
    assert main(["make-checkpoint", "--shape", "tiny", "--kind", "voice_design", "--out", str(tmp_path / "ck")]) == 2


def test_tiny_deep_checkpoint_has_the_0_6b_layer_counts_and_speaks(tmp_path, capsys):
    """``make-checkpoint --shape tiny-deep`` (the host-cost benchmarks' model): 28 talker and 5 predictor blocks of
    the tiny width, and it synthesizes like any checkpoint."""
    out = tmp_path / "deep"
    assert main(["make-checkpoint", "--shape", "tiny-deep", "--kind", "custom_voice", "--out", str(out)]) == 0
    tts = TTS.from_pretrained(out, device="cpu")
    talker = tts.model.talker
    assert len(talker.model.layers) == 28 and len(talker.code_predictor.model.layers) == 5
    assert talker.codec_head.weight.shape[1] == 64  # the tiny talker width
    result = tts.synthesize("Hello.", voice=Speaker(tts.speakers[0]), options=SynthesisOptions(max_new_tokens=3))
    frames = result.codes.shape[0]
    assert 1 <= frames <= 3 and result.codes.shape[1] == 16 and len(result.audio) == frames * 1920
    with pytest.raises(SystemExit):  # argparse names the valid shapes
        main(["make-checkpoint", "--shape", "deep", "--kind", "base", "--out", str(tmp_path / "x")])
    assert "invalid choice: 'deep'" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_default_frame_budget_follows_text_length(tiny_tts):
    from qtts.request import frame_budget

    assert frame_budget(10, 8192) == 64 + 120 and frame_budget(10_000, 8192) == 8192
    tts = tiny_tts["custom_voice"]
    prepared = tts.prepare(TEXT, Speaker("ryan"))
    n = len(tts.prompts.text_ids(TEXT))
    assert prepared.plan.text_tokens == n and prepared.stream.max_new_tokens == 64 + 12 * n


def test_from_pretrained_takes_an_accel(tiny_checkpoints, monkeypatch):
    """``accel`` at load: an ``--accel`` string or ``AccelOptions``; a bad value fails before any weight is read;
    None leaves the eager reference."""
    import qtts.api
    from qtts.accel import AccelOptions

    path = tiny_checkpoints["custom_voice"]
    assert TTS.from_pretrained(path, device="cpu").accel == AccelOptions()
    tts = TTS.from_pretrained(path, device="cpu", accel="fused")
    assert tts.accel.fused and tts.model.talker.model.layers[0].self_attn.qkv_proj is not None
    assert TTS.from_pretrained(path, device="cpu", accel=AccelOptions(fused=True)).accel.fused
    assert TTS.from_pretrained(path, device="cpu", accel="auto").accel == AccelOptions()  # CPU: eager
    monkeypatch.setattr(qtts.api, "read_safetensors", lambda *_: pytest.fail("weights read before the check"))
    with pytest.raises(InputError, match="unknown accel"):
        TTS.from_pretrained(path, device="cpu", accel="cmpile")
    with pytest.raises(InputError, match="cuda-graphs needs a CUDA device"):
        TTS.from_pretrained(path, device="cpu", accel="cuda-graphs")
    with pytest.raises(InputError, match="accel must be"):
        TTS.from_pretrained(path, device="cpu", accel=1)
