"""``qtts.compat.Qwen3TTSModel``: the official API surface on tiny checkpoints (returns, batching, sampling
keywords, clone prompts, the fork's streaming calls, clear errors) and greedy parity with the official class."""

from __future__ import annotations

import base64
import io
import types
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from qtts import Clone, Design, InputError, Speaker, SynthesisOptions, UnsupportedModeError
from qtts.api import TTS
from qtts.compat import Qwen3TTSModel, VoiceClonePromptItem, _device, _dtype

from .reference import require_reference

TEXT = "Compat calls should match the engine."
REF_TEXT = "Reference words for the clone."
FRAMES = 7  # max_new_tokens: at most 6 frames per call keeps the tests fast
GREEDY = {"do_sample": False, "subtalker_dosample": False}


def _ref_audio() -> tuple[np.ndarray, int]:
    t = np.arange(26000) / 24000
    return (0.3 * np.sin(2 * np.pi * 190 * t) * (1 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32), 24000


@pytest.fixture(scope="module")
def compat(tiny_tts):
    return {kind: Qwen3TTSModel(tts) for kind, tts in tiny_tts.items()}


def _check_wavs(wavs, sr, n):
    assert isinstance(wavs, list) and len(wavs) == n and sr == 24000 and isinstance(sr, int)
    for w in wavs:
        assert isinstance(w, np.ndarray) and w.dtype == np.float32 and w.ndim == 1
        assert 0 < len(w) <= 1920 * (FRAMES - 1) and len(w) % 1920 == 0


# ---- loading and info ---------------------------------------------------------------------------------------


def test_from_pretrained_accepts_official_arguments(tiny_checkpoints):
    with pytest.warns(UserWarning, match="low_cpu_mem_usage") as record:
        model = Qwen3TTSModel.from_pretrained(str(tiny_checkpoints["custom_voice"]), device_map="cpu",
                                              torch_dtype=torch.float32, attn_implementation="flash_attention_2",
                                              low_cpu_mem_usage=True)
    assert not any("attn_implementation" in str(w.message) for w in record)
    assert isinstance(model.tts, TTS) and model.tts.dtype == torch.float32 and model.device.type == "cpu"
    assert model.get_supported_speakers() == sorted(s.lower() for s in model.tts.speakers)
    assert "ryan" in model.get_supported_speakers()
    langs = model.get_supported_languages()
    assert langs == sorted(langs) and {"auto", "english", "chinese"} <= set(langs)


def test_load_argument_mapping():
    assert _device("auto") is None and _device(None) is None and _device(1) == "cuda:1"
    assert _device({"": "cpu"}) == "cpu" and _device("cuda:0") == "cuda:0"
    with pytest.raises(InputError, match="one device"):
        _device({"talker": 0, "codec": 1})
    assert _dtype("torch.bfloat16", None) == "bfloat16" and _dtype(None, torch.float16) == torch.float16
    assert _dtype("auto", None) is None
    with pytest.raises(InputError, match="disagree"):
        _dtype(torch.float32, torch.bfloat16)


def test_supported_lists_per_kind(compat):
    assert compat["base"].get_supported_speakers() == []
    assert compat["voice_design"].get_supported_languages() == compat["custom_voice"].get_supported_languages()


# ---- whole utterances ---------------------------------------------------------------------------------------


def test_each_kind_equals_the_engine_with_official_defaults(compat, tiny_tts):
    opts = {"seed": 3, "max_new_tokens": FRAMES}
    cases = {
        "custom_voice": (lambda m: m.generate_custom_voice(TEXT, speaker="Ryan", language="English", **opts),
                         Speaker("ryan"), True),
        "voice_design": (lambda m: m.generate_voice_design(TEXT, instruct="a calm voice", **opts),
                         Design("a calm voice"), True),
        "base": (lambda m: m.generate_voice_clone(TEXT, language="English", ref_audio=_ref_audio(),
                                                  ref_text=REF_TEXT, **opts),
                 Clone(_ref_audio(), REF_TEXT), False),
    }
    for kind, (call, voice, nsm) in cases.items():
        wavs, sr = call(compat[kind])
        _check_wavs(wavs, sr, 1)
        language = "auto" if kind == "voice_design" else "english"
        ref = tiny_tts[kind].synthesize(TEXT, voice=voice, language=language, seed=3, options=SynthesisOptions(
            max_new_tokens=FRAMES, non_streaming_mode=nsm))
        assert np.array_equal(wavs[0], ref.audio), kind


def test_text_list_is_a_batch_with_broadcasting(compat):
    model = compat["custom_voice"]
    texts = [TEXT, "A second, different line."]
    wavs, sr = model.generate_custom_voice(texts, speaker=["ryan", "serena"], language="english", seed=5,
                                           max_new_tokens=FRAMES)
    _check_wavs(wavs, sr, 2)
    single, _ = model.generate_custom_voice(texts[1], speaker="serena", language=["english"], seed=6,
                                            max_new_tokens=FRAMES)
    assert np.allclose(wavs[1], single[0], atol=1e-5)
    with pytest.raises(InputError, match="batch size mismatch"):
        model.generate_custom_voice(texts, speaker=["ryan", "serena", "eric"])
    with pytest.raises(InputError, match="text must be"):
        model.generate_custom_voice([], speaker="ryan")


def test_sampling_keywords_reach_the_engine(compat):
    model = compat["custom_voice"]

    def run(**kw):
        return model.generate_custom_voice(TEXT, speaker="eric", **{"max_new_tokens": FRAMES, **kw})[0][0]

    greedy = run(**GREEDY)
    assert np.array_equal(greedy, run(**GREEDY))  # no seed given: determinism comes from greedy decoding
    assert not np.array_equal(run(seed=1), run(seed=2))  # sampling (the checkpoint default) is random...
    assert np.array_equal(run(seed=1), run(seed=1))  # ...and the seed extension reproduces it
    # top-k of 1 for both code kinds is greedy whatever the seed: top_k and subtalker_top_k arrive
    assert np.array_equal(run(seed=1, top_k=1, subtalker_top_k=1), greedy)
    assert len(run(max_new_tokens=3, **GREEDY)) <= 2 * 1920
    with pytest.raises(InputError, match="temperature"):
        run(temperature=0.0)
    with pytest.raises(InputError, match="min_new_tokens"):
        run(min_new_tokens=2)


@pytest.mark.parametrize(("kind", "method", "kwargs"), [
    ("custom_voice", "generate_voice_design", {"text": TEXT, "instruct": "x"}),
    ("custom_voice", "generate_voice_clone", {"text": TEXT, "ref_audio": _ref_audio(), "ref_text": REF_TEXT}),
    ("voice_design", "generate_custom_voice", {"text": TEXT, "speaker": "ryan"}),
    ("voice_design", "create_voice_clone_prompt", {"ref_audio": _ref_audio(), "ref_text": REF_TEXT}),
    ("base", "stream_generate_custom_voice", {"text": TEXT, "speaker": "ryan"}),
    ("custom_voice", "stream_generate_voice_design", {"text": TEXT, "instruct": "x"}),
    ("voice_design", "stream_generate_voice_clone", {"text": TEXT, "ref_audio": _ref_audio(), "ref_text": "x"}),
])
def test_wrong_checkpoint_kind(compat, kind, method, kwargs):
    with pytest.raises(UnsupportedModeError, match=method):
        getattr(compat[kind], method)(**kwargs)


def test_bad_input_errors(compat):
    cv, base = compat["custom_voice"], compat["base"]
    with pytest.raises(InputError, match="unknown speaker"):
        cv.generate_custom_voice(TEXT, speaker="nobody")
    with pytest.raises(InputError, match="unknown language"):
        cv.generate_custom_voice(TEXT, speaker="ryan", language="klingon")
    with pytest.raises(InputError, match="non-empty voice description"):
        compat["voice_design"].generate_voice_design(TEXT, instruct="")
    with pytest.raises(InputError, match="ref_audio must be provided"):
        base.generate_voice_clone(TEXT)
    with pytest.raises(InputError, match="ref_text is required"):
        base.generate_voice_clone(TEXT, ref_audio=_ref_audio())
    with pytest.raises(InputError, match="URLs are not fetched"):
        base.create_voice_clone_prompt("https://example.com/ref.wav", REF_TEXT)
    with pytest.raises(InputError, match="tuple"):
        base.create_voice_clone_prompt(_ref_audio()[0], REF_TEXT)
    with pytest.raises(InputError, match="base64"):
        base.create_voice_clone_prompt("data:audio/wav;base64,@@@not-base64@@@", REF_TEXT)


# ---- clone prompts ------------------------------------------------------------------------------------------


def test_clone_prompt_items_and_audio_forms(compat, tmp_path):
    base = compat["base"]
    wav, sr = _ref_audio()
    [icl] = base.create_voice_clone_prompt(ref_audio=(wav, sr), ref_text=REF_TEXT)
    assert isinstance(icl, VoiceClonePromptItem) and icl.icl_mode and not icl.x_vector_only_mode
    assert icl.ref_code.dtype == torch.int64 and icl.ref_code.shape[1] == 16 and icl.ref_code.shape[0] > 0
    assert icl.ref_spk_embedding.shape == (base.tts.cfg.talker.hidden_size,) and icl.ref_text == REF_TEXT
    buf = io.BytesIO()
    sf.write(buf, wav, sr, format="WAV", subtype="FLOAT")  # lossless, so every form gives the same prompt
    (tmp_path / "ref.wav").write_bytes(buf.getvalue())
    data_url = "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode()
    items = base.create_voice_clone_prompt([str(tmp_path / "ref.wav"), data_url], ref_text=REF_TEXT)
    for item in items:
        assert torch.equal(item.ref_code, icl.ref_code)
        assert torch.equal(item.ref_spk_embedding, icl.ref_spk_embedding)
    [xvec] = base.create_voice_clone_prompt((wav, sr), x_vector_only_mode=True)
    assert xvec.ref_code is None and xvec.x_vector_only_mode and not xvec.icl_mode
    with pytest.raises(InputError, match="batch size mismatch"):
        base.create_voice_clone_prompt([(wav, sr)] * 2, ref_text=[REF_TEXT] * 3)


def test_voice_clone_prompt_forms_give_the_same_audio(compat):
    base = compat["base"]
    kw = {"language": "english", "seed": 4, "max_new_tokens": FRAMES}
    direct, _ = base.generate_voice_clone(TEXT, ref_audio=_ref_audio(), ref_text=REF_TEXT, **kw)
    items = base.create_voice_clone_prompt(_ref_audio(), REF_TEXT)
    assert np.array_equal(base.generate_voice_clone(TEXT, voice_clone_prompt=items, **kw)[0][0], direct[0])
    assert np.array_equal(base.generate_voice_clone(TEXT, voice_clone_prompt=items[0].to_prompt(), **kw)[0][0],
                          direct[0])
    # x-vector only, as the official dict form (the only dict form that needs no transcript)
    [xvec] = base.create_voice_clone_prompt(_ref_audio(), x_vector_only_mode=True)
    as_dict = {"ref_code": [None], "ref_spk_embedding": [xvec.ref_spk_embedding], "x_vector_only_mode": [True],
               "icl_mode": [False]}
    a, _ = base.generate_voice_clone(TEXT, voice_clone_prompt=as_dict, **kw)
    b, _ = base.generate_voice_clone(TEXT, ref_audio=_ref_audio(), x_vector_only_mode=True, **kw)
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], direct[0])
    icl_dict = {**as_dict, "ref_code": [items[0].ref_code], "x_vector_only_mode": [False], "icl_mode": [True]}
    with pytest.raises(InputError, match="ICL mode needs ref_text"):
        base.generate_voice_clone(TEXT, voice_clone_prompt=icl_dict)
    # one prompt broadcasts over a batch of texts
    wavs, _ = base.generate_voice_clone([TEXT, "Two."], voice_clone_prompt=items, **kw)
    assert len(wavs) == 2 and np.array_equal(wavs[0], direct[0])


# ---- streaming ----------------------------------------------------------------------------------------------


STREAMS = {
    "custom_voice": (lambda m, **kw: m.stream_generate_custom_voice(TEXT, "vivian", language="english", **kw),
                     lambda m, **kw: m.generate_custom_voice(TEXT, "vivian", language="english", **kw)),
    "voice_design": (lambda m, **kw: m.stream_generate_voice_design(TEXT, "a bright voice", **kw),
                     lambda m, **kw: m.generate_voice_design(TEXT, "a bright voice", **kw)),
    "base": (lambda m, **kw: m.stream_generate_voice_clone(TEXT, "english", _ref_audio(), REF_TEXT, **kw),
             lambda m, **kw: m.generate_voice_clone(TEXT, "english", _ref_audio(), REF_TEXT, **kw)),
}


@pytest.mark.parametrize("kind", sorted(STREAMS))
def test_stream_joined_equals_generate(compat, kind):
    stream, whole = STREAMS[kind]
    model = compat[kind]
    chunks = list(stream(model, seed=8, max_new_tokens=FRAMES, emit_every_frames=2, decode_window_frames=10,
                         overlap_samples=512, use_optimized_decode=False))
    wavs, sr = whole(model, seed=8, max_new_tokens=FRAMES)
    assert chunks and all(isinstance(pcm, np.ndarray) and pcm.dtype == np.float32 and rate == sr == 24000
                          for pcm, rate in chunks)
    assert [len(pcm) for pcm, _ in chunks[:-1]] == [2 * 1920] * (len(chunks) - 1)
    assert 0 < len(chunks[-1][0]) <= 2 * 1920
    joined = np.concatenate([pcm for pcm, _ in chunks])
    assert joined.shape == wavs[0].shape and np.abs(joined - wavs[0]).max() <= 1e-4


def test_stream_max_frames_and_errors(compat):
    cv = compat["custom_voice"]
    chunks = list(cv.stream_generate_custom_voice(TEXT, "ryan", max_frames=4, emit_every_frames=1, seed=2))
    assert sum(len(pcm) for pcm, _ in chunks) <= 3 * 1920 and all(len(pcm) == 1920 for pcm, _ in chunks)
    with pytest.raises(InputError, match="unknown speaker"):
        cv.stream_generate_custom_voice(TEXT, "nobody")  # raised at the call, before iterating
    with pytest.raises(InputError, match="one text"):
        cv.stream_generate_custom_voice([TEXT, TEXT], "ryan")
    with pytest.raises(InputError, match="emit_every_frames"):
        cv.stream_generate_custom_voice(TEXT, "ryan", emit_every_frames=0)
    with pytest.raises(InputError, match="repetition_window"):
        cv.stream_generate_custom_voice(TEXT, "ryan", repetition_window=100)


def test_stream_is_lazy_and_closing_stops_generation(compat, monkeypatch):
    engine = compat["custom_voice"].tts
    original = engine.stream
    pulled, closed = [], []

    def counting(*args, **kwargs):
        inner = original(*args, **kwargs)

        def chunks():
            try:
                for chunk in inner:
                    pulled.append(chunk)
                    yield chunk
            finally:
                inner.close()
                closed.append(True)

        return chunks()

    monkeypatch.setattr(engine, "stream", counting)
    it = compat["custom_voice"].stream_generate_custom_voice(TEXT, "ryan", emit_every_frames=1, seed=1,
                                                             max_new_tokens=200)
    assert pulled == []  # validated and prepared, but no chunk is taken before the first next()
    first, _ = next(it)
    assert len(first) == 1920 and len(pulled) == 1
    it.close()
    with pytest.raises(StopIteration):
        next(it)
    assert len(pulled) == 1 and closed == [True]  # closing the compat iterator closed the engine's stream


def test_enable_streaming_optimizations():
    calls = []
    engine = types.SimpleNamespace(device=torch.device("cpu"), accelerate=lambda **kw: calls.append(kw))
    model = Qwen3TTSModel(engine)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model.enable_streaming_optimizations(use_cuda_graphs=False, compile_mode="max-autotune") is model
    assert calls == [{"compile": True, "cuda_graphs": False}]
    bare = Qwen3TTSModel(types.SimpleNamespace(device=torch.device("cpu")))  # type: ignore[arg-type]
    with pytest.warns(UserWarning, match="acceleration is unavailable"):
        assert bare.enable_streaming_optimizations() is bare


# ---- parity with the official class -------------------------------------------------------------------------


@pytest.mark.reference
def test_greedy_custom_voice_matches_official(tiny_checkpoints, tokenizer_dir, compat):
    require_reference()
    from qwen_tts import Qwen3TTSModel as Official

    official = Official.from_pretrained(str(tiny_checkpoints["custom_voice"]), dtype=torch.float32)
    kw = {"speaker": "Vivian", "language": "English", "max_new_tokens": 16, **GREEDY}
    theirs, their_sr = official.generate_custom_voice(TEXT, **kw)
    ours, sr = compat["custom_voice"].generate_custom_voice(TEXT, **kw)
    assert sr == their_sr and len(ours) == len(theirs) == 1
    assert len(ours[0]) > 2 * 1920 and ours[0].shape == theirs[0].shape
    assert np.abs(ours[0] - theirs[0]).max() <= 1e-4
    assert compat["custom_voice"].get_supported_speakers() == official.get_supported_speakers()
    assert compat["custom_voice"].get_supported_languages() == official.get_supported_languages()
