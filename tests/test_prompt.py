"""Prompt layouts per mode: lengths, token order, and the official worked examples (spec §3.4)."""

from __future__ import annotations

import pytest

from qtts import shapes
from qtts.config import ModelConfig
from qtts.errors import InputError, UnsupportedModeError
from qtts.prompt import SPEAKER_VECTOR, PromptBuilder, Slot, VoiceSpec, check_mode
from qtts.text import TextTokenizer

TEXT = "Nice to meet you."  # 5 tokens
INSTRUCT = "A deep voice"  # instruct template: 8 tokens
REF_TEXT = "Good morning to all"  # 4 tokens
PAD, BOS, EOS = 151671, 151672, 151673


@pytest.fixture(scope="module")
def builders(tokenizer_dir) -> dict[str, PromptBuilder]:
    tok = TextTokenizer.from_dir(tokenizer_dir)
    out = {kind: PromptBuilder(ModelConfig.from_dict(shapes.model_config("tiny", kind)), tok)
           for kind in ("base", "custom_voice", "voice_design")}
    assert len(tok.encode(TEXT)) == 5 and len(tok.encode(REF_TEXT)) == 4
    assert len(tok.encode(f"<|im_start|>user\n{INSTRUCT}<|im_end|>\n")) == 8
    return out


# (kind, language, voice, non_streaming_mode) -> (prefill positions, trailing text vectors); the
# official package gives these numbers (spec §3.4, verified by running its generate).
WORKED = [
    ("custom_voice", "english", VoiceSpec(speaker="vivian"), True, 16, 0),
    ("custom_voice", "english", VoiceSpec(speaker="vivian"), False, 10, 5),
    ("custom_voice", "auto", VoiceSpec(speaker="vivian"), True, 15, 0),
    ("custom_voice", "auto", VoiceSpec(speaker="eric"), True, 16, 0),
    ("custom_voice", "english", VoiceSpec(speaker="vivian", instruct=INSTRUCT), True, 24, 0),
    ("voice_design", "english", VoiceSpec(instruct=INSTRUCT), True, 23, 0),
    ("base", "english", VoiceSpec(speaker_vector=True, ref_text=REF_TEXT, ref_frames=6), True, 26, 0),
    ("base", "english", VoiceSpec(speaker_vector=True, ref_text=REF_TEXT, ref_frames=6), False, 16, 3),
    ("base", "auto", VoiceSpec(speaker_vector=True), False, 9, 5),
]


@pytest.mark.parametrize(("kind", "language", "voice", "nsm", "positions", "trailing"), WORKED)
def test_worked_prefill_lengths(builders, kind, language, voice, nsm, positions, trailing):
    plan = builders[kind].build(TEXT, language, voice, nsm)
    assert len(plan.slots) == positions
    # "trailing" counts vectors other than tts_pad; the official pads an empty trailing with one tts_pad.
    assert len(plan.trailing) == trailing


def test_custom_voice_english_layout(builders):
    b = builders["custom_voice"]
    plan = b.build(TEXT, "English", VoiceSpec(speaker="Vivian"), True)
    txt = b.tok.encode(TEXT)
    role = [Slot(151644, None), Slot(77091, None), Slot(198, None)]
    control = [Slot(PAD, 2154), Slot(PAD, 2156), Slot(PAD, 2050), Slot(PAD, 2157), Slot(PAD, 3065), Slot(BOS, 2148)]
    body = [Slot(i, 2148) for i in txt] + [Slot(EOS, 2148), Slot(PAD, 2149)]
    assert list(plan.slots) == role + control + body
    streaming = b.build(TEXT, "english", VoiceSpec(speaker="vivian"), False)
    assert list(streaming.slots[-1:]) == [Slot(txt[0], 2149)]
    assert list(streaming.trailing) == txt[1:] + [EOS]


def test_dialect_speaker_overrides_language(builders):
    b = builders["custom_voice"]
    plan = b.build(TEXT, "auto", VoiceSpec(speaker="eric"), True)
    assert [s.codec for s in plan.slots[3:7]] == [2154, 2156, 2062, 2157]  # think form, sichuan dialect
    english = b.build(TEXT, "english", VoiceSpec(speaker="dylan"), True)
    assert english.slots[5].codec == 2050  # explicit non-Chinese language is kept
    chinese = b.build(TEXT, "chinese", VoiceSpec(speaker="dylan"), True)
    assert chinese.slots[5].codec == 2074  # beijing dialect


def test_icl_streaming_overlay(builders):
    b = builders["base"]
    voice = VoiceSpec(speaker_vector=True, ref_text=REF_TEXT, ref_frames=6)
    plan = b.build(TEXT, "english", voice, False)
    tail = plan.slots[-7:]
    assert tail[0].codec == 2149 and [s.codec for s in tail[1:]] == [("ref", k) for k in range(6)]
    assert plan.slots[3 + 4].codec == SPEAKER_VECTOR
    # a long reference: text shorter than the codec track is padded with tts_pad, nothing trails
    long_ref = b.build(TEXT, "english", VoiceSpec(speaker_vector=True, ref_text=REF_TEXT, ref_frames=20), False)
    assert long_ref.trailing == () and long_ref.slots[-1].text == PAD and len(long_ref.slots) == 3 + 6 + 21


def test_bad_inputs(builders):
    b = builders["custom_voice"]
    with pytest.raises(InputError, match="empty"):
        b.build("   ", "auto", VoiceSpec(speaker="vivian"), True)
    with pytest.raises(InputError, match="valid: auto, chinese"):
        b.build(TEXT, "klingon", VoiceSpec(speaker="vivian"), True)
    with pytest.raises(InputError, match="aiden"):
        b.build(TEXT, "auto", VoiceSpec(speaker="nobody"), True)
    short = PromptBuilder(b.cfg, b.tok, max_text_tokens=3)
    with pytest.raises(InputError, match="too long"):
        short.build(TEXT, "auto", VoiceSpec(speaker="vivian"), True)
    with pytest.raises(InputError, match="transcript"):
        builders["base"].build(TEXT, "auto", VoiceSpec(speaker_vector=True, ref_frames=3), True)


@pytest.mark.parametrize(("kind", "voice", "match"), [
    ("custom_voice", VoiceSpec(instruct="x"), "preset speaker"),
    ("base", VoiceSpec(speaker="vivian"), "CustomVoice"),
    ("voice_design", VoiceSpec(), "description"),
    ("base", VoiceSpec(), "clones"),
    ("custom_voice", VoiceSpec(speaker="vivian", speaker_vector=True), "Base"),
])
def test_mode_checks(builders, kind, voice, match):
    with pytest.raises(UnsupportedModeError, match=match):
        check_mode(builders[kind].cfg, voice)


def test_languages_and_speakers(builders):
    b = builders["custom_voice"]
    assert b.languages[0] == "auto" and "english" in b.languages and "beijing_dialect" not in b.languages
    assert len(b.speakers) == 9 and builders["base"].speakers == []
