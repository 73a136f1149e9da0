"""Prompt (prefill) layouts of every mode, as a symbolic plan: CPU only, no tensors, no weights.

Each talker input position is the sum of a text-track vector and a codec-track vector. A ``Slot`` names
both: a text token id (embedded through the text projection) and a codec item (a talker codec id, the
speaker vector, or a reference frame). ``embed.py`` turns a plan into tensors.
"""

from __future__ import annotations

import dataclasses

from .config import ModelConfig
from .errors import InputError, UnsupportedModeError
from .text import TextTokenizer

SPEAKER_VECTOR = "speaker"


@dataclasses.dataclass(frozen=True)
class Slot:
    """One prefill position. ``text``: text token id or None. ``codec``: talker codec id (int), the speaker
    vector (``SPEAKER_VECTOR``), a reference frame index (``("ref", k)``) or None."""

    text: int | None
    codec: int | str | tuple[str, int] | None


@dataclasses.dataclass(frozen=True)
class PromptPlan:
    """Prefill slots plus the text tokens fed one per decode step afterwards (then ``tts_pad``)."""

    slots: tuple[Slot, ...]
    trailing: tuple[int, ...]
    uses_speaker_vector: bool
    ref_frames: int  # number of reference frames referenced by the slots (ICL clone), else 0
    text_tokens: int  # tokens of the target text (drives the default frame budget)


@dataclasses.dataclass(frozen=True)
class VoiceSpec:
    """What the prompt needs to know about the voice.

    ``speaker``: CustomVoice speaker name; ``instruct``: instruction text; ``speaker_vector``: a clone
    x-vector is given; ``ref_text`` + ``ref_frames``: ICL clone transcript and reference length in frames.
    """

    speaker: str | None = None
    instruct: str | None = None
    speaker_vector: bool = False
    ref_text: str | None = None
    ref_frames: int = 0


class PromptBuilder:
    """Builds ``PromptPlan`` s from text, language and voice, exactly as the official package lays them out.

    Text is stripped of leading/trailing whitespace and tokenized on its own between the fixed chat-template
    tokens (the official package tokenizes the whole template and slices fixed offsets; for stripped text
    the two agree).
    """

    def __init__(self, cfg: ModelConfig, tokenizer: TextTokenizer, max_text_tokens: int = 4096) -> None:
        self.cfg, self.tok, self.max_text_tokens = cfg, tokenizer, max_text_tokens
        self.newline = tokenizer.encode("\n")
        self.role = [cfg.im_start_token_id, cfg.assistant_token_id, *self.newline]

    @property
    def languages(self) -> list[str]:
        """Supported language names (lower case), ``auto`` first."""
        return ["auto", *sorted(k for k in self.cfg.talker.codec_language_id if "dialect" not in k)]

    @property
    def speakers(self) -> list[str]:
        return sorted(self.cfg.talker.spk_id)

    def text_ids(self, text: str, what: str = "text") -> list[int]:
        """Token ids of stripped ``text``; clear errors for empty or over-long text."""
        if not isinstance(text, str):
            raise InputError(f"{what} must be a string, got {type(text).__name__}")
        text = text.strip()
        if not text:
            raise InputError(f"{what} is empty")
        ids = self.tok.encode(text)
        if len(ids) > self.max_text_tokens:
            raise InputError(f"{what} is too long: {len(ids)} tokens (limit {self.max_text_tokens})")
        return ids

    def language_id(self, language: str, speaker: str | None) -> int | None:
        """Codec language id for ``language`` (None for auto), with the dialect-speaker override."""
        lang = (language or "auto").lower()
        table = self.cfg.talker.codec_language_id
        if lang not in self.languages:
            raise InputError(f"unknown language {language!r}; valid: {', '.join(self.languages)}")
        lang_id = None if lang == "auto" else table[lang]
        dialect = self.cfg.talker.spk_is_dialect.get(speaker, False) if speaker else False
        if lang in ("chinese", "auto") and dialect is not False and dialect:
            lang_id = table[dialect]
        return lang_id

    def build(self, text: str, language: str, voice: VoiceSpec, non_streaming_mode: bool) -> PromptPlan:
        """The prefill plan for one request (see spec §3.4 for the layouts)."""
        return self.build_ids(self.text_ids(text), language, voice, non_streaming_mode)

    def prefill_tokens(self, voice: VoiceSpec) -> int:
        """Text tokens the streaming layout puts into the prefill (the rest are fed one per frame): 1, or
        for an ICL clone as many as fill the reference frames after the transcript."""
        if voice.ref_frames > 0:
            return max(1, 1 + voice.ref_frames - len(self.text_ids(voice.ref_text or "", "reference text")))
        return 1

    def build_ids(self, txt: list[int], language: str, voice: VoiceSpec, non_streaming_mode: bool,
                  complete: bool = True) -> PromptPlan:
        """The prefill plan for text token ids ``txt``. ``complete=False`` (streaming layout only): more text
        follows, so the text end (``tts_eos``) is not placed; ``txt`` must hold ``prefill_tokens`` tokens."""
        t = self.cfg.talker
        speaker = voice.speaker.lower() if voice.speaker else None
        if speaker is not None and speaker not in t.spk_id:
            raise InputError(f"unknown speaker {voice.speaker!r}; valid: {', '.join(self.speakers) or 'none'}")
        if not txt:
            raise InputError("text is empty")
        if not complete and (non_streaming_mode or len(txt) < self.prefill_tokens(voice)):
            raise ValueError("an incomplete text needs the streaming layout and prefill_tokens tokens")
        slots: list[Slot] = []
        if voice.instruct:
            ins = self.tok.encode(f"<|im_start|>user\n{voice.instruct}<|im_end|>\n")
            slots += [Slot(i, None) for i in ins]
        slots += [Slot(i, None) for i in self.role]
        lang_id = self.language_id(language, speaker)
        codec: list[int | str] = (
            [t.codec_nothink_id, t.codec_think_bos_id, t.codec_think_eos_id] if lang_id is None
            else [t.codec_think_id, t.codec_think_bos_id, lang_id, t.codec_think_eos_id]
        )
        if speaker is not None:
            codec.append(t.spk_id[speaker])
        elif voice.speaker_vector:
            codec.append(SPEAKER_VECTOR)
        codec += [t.codec_pad_id, t.codec_bos_id]
        pad, bos, eos = self.cfg.tts_pad_token_id, self.cfg.tts_bos_token_id, self.cfg.tts_eos_token_id
        texts = [pad] * (len(codec) - 2) + [bos]
        slots += [Slot(tx, c) for tx, c in zip(texts, codec[:-1], strict=True)]
        end = [eos] if complete else []
        if voice.ref_frames > 0:
            tail, trailing = self._icl(txt, end, voice, non_streaming_mode)
        elif non_streaming_mode:
            tail = [Slot(i, t.codec_pad_id) for i in [*txt, eos]] + [Slot(pad, t.codec_bos_id)]
            trailing = []
        else:
            tail, trailing = [Slot(txt[0], t.codec_bos_id)], [*txt[1:], *end]
        slots += tail
        return PromptPlan(tuple(slots), tuple(trailing), voice.speaker_vector and speaker is None,
                          voice.ref_frames, len(txt))

    def _icl(self, txt: list[int], end: list[int], voice: VoiceSpec, non_streaming_mode: bool
             ) -> tuple[list[Slot], list[int]]:
        """ICL clone tail: reference transcript + text on the text track, reference frames on the codec.
        ``end``: ``[tts_eos]`` when the text is complete, else ``[]``."""
        t = self.cfg.talker
        if voice.ref_text is None:
            raise InputError("an ICL voice clone needs the reference transcript (ref_text)")
        pad = self.cfg.tts_pad_token_id
        s_text = [*self.text_ids(voice.ref_text, "reference text"), *txt, *end]
        s_codec: list[int | tuple[str, int]] = [t.codec_bos_id, *(("ref", k) for k in range(voice.ref_frames))]
        if non_streaming_mode:
            return ([Slot(i, t.codec_pad_id) for i in s_text] + [Slot(pad, c) for c in s_codec], [])
        if len(s_text) > len(s_codec):
            n = len(s_codec)
            return [Slot(i, c) for i, c in zip(s_text[:n], s_codec, strict=True)], s_text[n:]
        s_text += [pad] * (len(s_codec) - len(s_text))
        return [Slot(i, c) for i, c in zip(s_text, s_codec, strict=True)], []


def check_mode(cfg: ModelConfig, voice: VoiceSpec) -> None:
    """Reject voice modes the checkpoint kind does not support, with a message saying what to use."""
    kind = cfg.tts_model_type
    if kind == "custom_voice" and voice.speaker is None:
        raise UnsupportedModeError("a CustomVoice checkpoint needs a preset speaker: voice=Speaker(name)")
    if kind != "custom_voice" and voice.speaker is not None:
        raise UnsupportedModeError(f"preset speakers need a CustomVoice checkpoint; this one is {kind!r}")
    if kind == "voice_design" and not voice.instruct:
        raise UnsupportedModeError("a VoiceDesign checkpoint needs a voice description: voice=Design(text)")
    if kind == "base" and not voice.speaker_vector:
        raise UnsupportedModeError("a Base checkpoint clones a voice: voice=Clone(ref_audio, ref_text)")
    if kind != "base" and (voice.speaker_vector or voice.ref_frames):
        raise UnsupportedModeError(f"voice cloning needs a Base checkpoint; this one is {kind!r}")
    if kind == "base" and voice.instruct:
        raise UnsupportedModeError("Base checkpoints take no instruction; use CustomVoice or VoiceDesign")
