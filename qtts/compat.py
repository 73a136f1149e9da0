"""Drop-in for scripts written against the official ``qwen_tts`` package and its streaming fork.

Switch by changing one import::

    from qtts.compat import Qwen3TTSModel          # was: from qwen_tts import Qwen3TTSModel

    model = Qwen3TTSModel.from_pretrained("Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice", device_map="cuda:0",
                                          dtype=torch.bfloat16, attn_implementation="flash_attention_2")
    wavs, sr = model.generate_custom_voice("Hello.", speaker="ryan", language="English")
    for pcm, sr in model.stream_generate_custom_voice("Hello.", speaker="ryan", emit_every_frames=4):
        ...

The official surface (``qwen-tts`` 0.1.1) is mirrored: method and argument names, defaults (including
``non_streaming_mode``: True for CustomVoice/VoiceDesign, False for clones), ``text`` as a string or a list
(a batch), list arguments broadcast from length 1, and the return value ``(list of float32 [N] arrays,
sample_rate)``. The official sampling keywords (``do_sample``, ``top_k``, ``top_p``, ``temperature``,
``repetition_penalty``, ``subtalker_*``, ``max_new_tokens``) map onto ``qtts.Sampling`` and
``SynthesisOptions``; any other keyword is an error (the official package forwards it to Hugging Face
``generate``, which qtts does not use).

Differences, on purpose:

* every method takes an optional keyword ``seed`` (the official API has none); in a batch item ``i`` gets
  ``seed + i``. Without it each call draws a fresh random seed;
* errors are ``qtts.InputError`` / ``qtts.UnsupportedModeError`` (both ``ValueError`` subclasses, as the
  official ones are), including for reference-audio URLs, which are not fetched: download the file first;
* VoiceDesign needs a non-empty ``instruct`` (the official package accepts an empty one).

Streaming (the fork's calls, generalised to every checkpoint kind): ``stream_generate_voice_clone``,
``stream_generate_custom_voice`` and ``stream_generate_voice_design`` yield ``(pcm float32 [M], sample_rate)``
tuples. ``emit_every_frames`` frames (80 ms each) make one chunk. ``decode_window_frames``,
``overlap_samples`` and ``use_optimized_decode`` are accepted and ignored: the qtts codec decoder is
stateful and decodes every frame exactly once with its full left context, so there is no window to size
and no seam to cross-fade; joined chunks equal the non-streamed audio for the same seed. Unlike the fork,
``repetition_penalty`` and ``max_new_tokens`` are honoured when streaming, and ``max_frames`` defaults to
qtts's text-length runaway guard instead of 10000 frames. The fork's ``stream_generate_pcm`` is not
offered: it is a method of the inner Hugging Face module taking token ids, with no text-level equivalent
beyond the three calls above (or ``TTS.stream``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from .api import TTS, SynthesisOptions
from .errors import InputError, UnsupportedModeError
from .request import Sampling
from .stream import AudioChunk, ChunkPolicy
from .voices import Clone, ClonePrompt, Design, Speaker, Voice

__all__ = ["Qwen3TTSModel", "VoiceClonePromptItem", "SAMPLING_KWARGS"]

AudioLike = str | os.PathLike | bytes | tuple[np.ndarray, int]

SAMPLING_KWARGS = tuple(f.name for f in dataclasses.fields(Sampling))
_IGNORED_LOAD_KWARGS = ("attn_implementation",)


@dataclasses.dataclass(frozen=True)
class VoiceClonePromptItem:
    """One voice-clone prompt, field for field as the official item.

    ``ref_code [T, 16]`` int64 (None in x-vector-only mode), ``ref_spk_embedding [D]`` float32,
    ``x_vector_only_mode`` / ``icl_mode`` (exactly one is True) and ``ref_text`` (the transcript).
    """

    ref_code: torch.Tensor | None
    ref_spk_embedding: torch.Tensor
    x_vector_only_mode: bool
    icl_mode: bool
    ref_text: str | None = None

    @classmethod
    def from_prompt(cls, prompt: ClonePrompt, ref_text: str | None = None) -> VoiceClonePromptItem:
        """Wrap a qtts ``ClonePrompt`` (``ref_text`` defaults to the prompt's)."""
        return cls(prompt.ref_codes, prompt.speaker_embedding, prompt.x_vector_only, not prompt.x_vector_only,
                   ref_text if ref_text is not None else prompt.ref_text)

    def to_prompt(self) -> ClonePrompt:
        """The qtts ``ClonePrompt`` for this item."""
        return _prompt_from_fields(self.ref_code, self.ref_spk_embedding, self.x_vector_only_mode, self.ref_text)


def _prompt_from_fields(ref_code: Any, embedding: Any, x_vector_only: Any, ref_text: Any) -> ClonePrompt:
    if not isinstance(embedding, torch.Tensor) or embedding.dim() != 1:
        raise InputError("voice clone prompt: ref_spk_embedding must be a 1-D tensor")
    embedding = embedding.detach().float().cpu()
    if x_vector_only or ref_code is None:
        return ClonePrompt(embedding)
    if not isinstance(ref_code, torch.Tensor) or ref_code.dim() != 2:
        raise InputError("voice clone prompt: ref_code must be a [T, 16] tensor")
    if not isinstance(ref_text, str) or not ref_text.strip():
        raise InputError("voice clone prompt: ICL mode needs ref_text; pass the items returned by "
                         "create_voice_clone_prompt (a voice_clone_prompt dict carries no ref_text)")
    return ClonePrompt(embedding, ref_code.detach().long().cpu(), ref_text.strip())


# ---- argument normalisation (official conventions) ------------------------------------------------------


def _texts(text: Any) -> list[str]:
    if isinstance(text, str):
        return [text]
    if isinstance(text, (list, tuple)) and text and all(isinstance(t, str) for t in text):
        return list(text)
    raise InputError("text must be a string or a non-empty list of strings")


def _per_item(value: Any, n: int, name: str) -> list[Any]:
    """Official broadcasting: a scalar or a 1-list is repeated ``n`` times; other lists must have length n."""
    items = list(value) if isinstance(value, list) else [value]
    if len(items) == 1:
        items = items * n
    if len(items) != n:
        raise InputError(f"batch size mismatch: text={n}, {name}={len(items)}")
    return items


def _languages(language: Any, n: int) -> list[str]:
    langs = _per_item(language, n, "language")
    for lang in langs:
        if lang is not None and not isinstance(lang, str):
            raise InputError(f"language must be a string, got {type(lang).__name__}")
    return [lang if lang is not None else "auto" for lang in langs]


def _single(text: Any, what: str) -> str:
    if not isinstance(text, str):
        raise InputError(f"{what} streams one text at a time: text must be a string")
    return text


def _audio_source(audio: Any) -> str | os.PathLike | bytes | tuple[np.ndarray, int]:
    """Official ``ref_audio`` forms -> a ``qtts.audio.load_audio`` source. Base64 strings (``data:audio...``
    or long strings without a path separator, the official rule) are decoded; URLs are refused."""
    if isinstance(audio, str):
        parsed = urlparse(audio)
        if parsed.scheme in ("http", "https") and parsed.netloc:
            raise InputError(f"ref_audio URLs are not fetched by qtts ({audio}); download the file and pass its path")
        if audio.startswith("data:audio") or ("/" not in audio and "\\" not in audio and len(audio) > 256):
            payload = audio.split(",", 1)[1] if audio.startswith("data:") and "," in audio else audio
            try:
                return base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise InputError("ref_audio looks like base64 audio but does not decode") from None
        return audio
    if isinstance(audio, np.ndarray):
        raise InputError("for a numpy waveform pass a tuple (audio, sample_rate) as ref_audio")
    if isinstance(audio, (os.PathLike, bytes, tuple)):
        return audio
    raise InputError(f"unsupported ref_audio type {type(audio).__name__}: expected a path, base64 string or "
                     "(waveform, sample_rate)")


def _options(kwargs: dict[str, Any], non_streaming_mode: bool | None, chunks: ChunkPolicy | None = None,
             max_frames: int | None = None) -> SynthesisOptions:
    """Official generation keywords -> ``SynthesisOptions``; unknown keywords are an error."""
    unknown = sorted(set(kwargs) - set(SAMPLING_KWARGS) - {"max_new_tokens"})
    if unknown:
        raise InputError(f"unsupported keyword argument(s) {', '.join(unknown)}; qtts accepts "
                         f"{', '.join(SAMPLING_KWARGS)}, max_new_tokens and seed")
    sampling = Sampling(**{k: v for k, v in kwargs.items() if k in SAMPLING_KWARGS})
    budget = kwargs.get("max_new_tokens")
    if budget is None:
        budget = max_frames
    if non_streaming_mode is not None and not isinstance(non_streaming_mode, bool):
        raise InputError(f"non_streaming_mode must be True or False, got {non_streaming_mode!r}")
    return SynthesisOptions(sampling=sampling, max_new_tokens=budget, non_streaming_mode=non_streaming_mode,
                            chunks=chunks)


def _chunk_policy(emit_every_frames: Any) -> ChunkPolicy:
    if isinstance(emit_every_frames, bool) or not isinstance(emit_every_frames, int) or emit_every_frames < 1:
        raise InputError(f"emit_every_frames must be a positive integer, got {emit_every_frames!r}")
    return ChunkPolicy(first=emit_every_frames, largest=emit_every_frames)


def _device(device_map: Any) -> str | torch.device | None:
    if device_map is None or device_map == "auto":
        return None
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        return f"cuda:{device_map}"
    if isinstance(device_map, (str, torch.device)):
        return device_map
    if isinstance(device_map, dict) and set(device_map) == {""}:
        return _device(device_map[""])
    raise InputError(f"device_map {device_map!r} is not supported: qtts puts the whole model on one device "
                     "(pass e.g. 'cuda:0' or 'cpu')")


def _dtype(dtype: Any, torch_dtype: Any) -> torch.dtype | str | None:
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise InputError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree")
    value = dtype if dtype is not None else torch_dtype
    if value == "auto":
        return None
    if isinstance(value, str):
        return value.removeprefix("torch.")
    return value


def _pcm(chunks: Iterator[AudioChunk]) -> Iterator[tuple[np.ndarray, int]]:
    """``AudioChunk`` s -> ``(pcm float32 [M], sample_rate)``, skipping empty ones; closing stops generation."""
    try:
        for chunk in chunks:
            if len(chunk.audio):
                yield chunk.audio, chunk.sample_rate
    finally:
        chunks.close()  # type: ignore[attr-defined]


class Qwen3TTSModel:
    """The official ``qwen_tts.Qwen3TTSModel`` surface on a qtts ``TTS`` engine (exposed as ``.tts``)."""

    def __init__(self, tts: TTS) -> None:
        self.tts = tts
        self.device = tts.device

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, device_map: Any = None,
                        dtype: torch.dtype | str | None = None, torch_dtype: torch.dtype | str | None = None,
                        **kwargs: Any) -> Qwen3TTSModel:
        """Load a checkpoint folder or Hub repo id. ``device_map``: ``'cuda:0'``, ``'cpu'``, an int, ``'auto'``
        or ``{'': device}``; ``dtype``/``torch_dtype``: a torch dtype or its name. ``attn_implementation`` is
        accepted and ignored (qtts has its own attention); other Hugging Face loading keywords are ignored
        with a warning."""
        other = sorted(k for k in kwargs if k not in _IGNORED_LOAD_KWARGS)
        if other:
            warnings.warn(f"qtts ignores these from_pretrained arguments: {', '.join(other)}", stacklevel=2)
        tts = TTS.from_pretrained(pretrained_model_name_or_path, device=_device(device_map),
                                  dtype=_dtype(dtype, torch_dtype))
        return cls(tts)

    # ---- info -------------------------------------------------------------------------------------------

    def get_supported_speakers(self) -> list[str]:
        """Preset speaker names, lower case, sorted (empty for Base and VoiceDesign checkpoints)."""
        return sorted(s.lower() for s in self.tts.speakers)

    def get_supported_languages(self) -> list[str]:
        """Language names, lower case, sorted (``auto`` included)."""
        return sorted(self.tts.languages)

    def _require(self, kind: str, method: str) -> None:
        if self.tts.kind != kind:
            raise UnsupportedModeError(f"{method} needs a {kind} checkpoint; this one is {self.tts.kind!r}")

    # ---- voice clone prompts ----------------------------------------------------------------------------

    def create_voice_clone_prompt(self, ref_audio: AudioLike | list[AudioLike],
                                  ref_text: str | list[str | None] | None = None,
                                  x_vector_only_mode: bool | list[bool] = False) -> list[VoiceClonePromptItem]:
        """Encode reference audio into prompt items (Base checkpoints), one per ``ref_audio`` entry.
        ``ref_text`` (required unless ``x_vector_only_mode``) and the mode broadcast from scalars."""
        self._require("base", "create_voice_clone_prompt")
        audios = ref_audio if isinstance(ref_audio, list) else [ref_audio]
        if not audios:
            raise InputError("ref_audio is an empty list")
        texts = ref_text if isinstance(ref_text, list) else [ref_text] * len(audios)
        modes = x_vector_only_mode if isinstance(x_vector_only_mode, list) else [x_vector_only_mode] * len(audios)
        if len(texts) != len(audios) or len(modes) != len(audios):
            raise InputError(f"batch size mismatch: ref_audio={len(audios)}, ref_text={len(texts)}, "
                             f"x_vector_only_mode={len(modes)}")
        items = []
        for i, (audio, text, xvec) in enumerate(zip(audios, texts, modes, strict=True)):
            if not xvec and not (isinstance(text, str) and text.strip()):
                raise InputError(f"ref_text is required when x_vector_only_mode=False (ICL mode); missing at "
                                 f"index {i}")
            prompt = self.tts.create_clone_prompt(_audio_source(audio), text, bool(xvec))
            items.append(VoiceClonePromptItem.from_prompt(prompt, text))
        return items

    def _clone_voices(self, n: int, ref_audio: Any, ref_text: Any, x_vector_only_mode: Any,
                      voice_clone_prompt: Any) -> list[Voice]:
        if voice_clone_prompt is None:
            if ref_audio is None:
                raise InputError("either voice_clone_prompt or ref_audio must be provided")
            prompts = [item.to_prompt() for item in self.create_voice_clone_prompt(ref_audio, ref_text,
                                                                                    x_vector_only_mode)]
        elif isinstance(voice_clone_prompt, dict):
            try:
                fields = [voice_clone_prompt[k] for k in ("ref_code", "ref_spk_embedding", "x_vector_only_mode")]
            except KeyError as e:
                raise InputError(f"voice_clone_prompt dict lacks {e.args[0]!r}") from None
            if len({len(f) for f in fields}) != 1:
                raise InputError("voice_clone_prompt dict: its lists differ in length")
            prompts = [_prompt_from_fields(c, e, x, None) for c, e, x in zip(*fields, strict=True)]
        else:
            items = voice_clone_prompt if isinstance(voice_clone_prompt, list) else [voice_clone_prompt]
            prompts = [_as_prompt(item) for item in items]
        return [Clone(prompt=p) for p in _per_item(prompts, n, "voice_clone_prompt")]

    # ---- whole utterances -------------------------------------------------------------------------------

    def _synthesize(self, texts: list[str], voices: list[Voice], language: Any, seed: int | None,
                    options: SynthesisOptions) -> tuple[list[np.ndarray], int]:
        results = self.tts.synthesize_batch(texts, voices, _languages(language, len(texts)), None, seed, options)
        return [r.audio for r in results], self.tts.sample_rate

    def generate_custom_voice(self, text: str | list[str], speaker: str | list[str],
                              language: str | list[str] | None = None, instruct: str | list[str] | None = None,
                              non_streaming_mode: bool = True, *, seed: int | None = None,
                              **kwargs: Any) -> tuple[list[np.ndarray], int]:
        """Preset-speaker speech (CustomVoice) -> ``(wavs: list of float32 [N], sample_rate)``, one per text."""
        self._require("custom_voice", "generate_custom_voice")
        texts = _texts(text)
        voices = _speakers(speaker, instruct, len(texts))
        return self._synthesize(texts, voices, language, seed, _options(kwargs, non_streaming_mode))

    def generate_voice_design(self, text: str | list[str], instruct: str | list[str],
                              language: str | list[str] | None = None, non_streaming_mode: bool = True, *,
                              seed: int | None = None, **kwargs: Any) -> tuple[list[np.ndarray], int]:
        """Speech in a voice described by ``instruct`` (VoiceDesign) -> ``(wavs, sample_rate)``."""
        self._require("voice_design", "generate_voice_design")
        texts = _texts(text)
        voices = [Design(d) for d in _per_item(instruct, len(texts), "instruct")]
        return self._synthesize(texts, voices, language, seed, _options(kwargs, non_streaming_mode))

    def generate_voice_clone(self, text: str | list[str], language: str | list[str] | None = None,
                             ref_audio: AudioLike | list[AudioLike] | None = None,
                             ref_text: str | list[str | None] | None = None,
                             x_vector_only_mode: bool | list[bool] = False,
                             voice_clone_prompt: Any = None, non_streaming_mode: bool = False, *,
                             seed: int | None = None, **kwargs: Any) -> tuple[list[np.ndarray], int]:
        """Speech in a cloned voice (Base) -> ``(wavs, sample_rate)``. The voice comes from ``ref_audio``
        (+ ``ref_text`` unless ``x_vector_only_mode``) or from ``voice_clone_prompt``: the list returned by
        ``create_voice_clone_prompt``, one item, an official-style dict, or a qtts ``ClonePrompt``."""
        self._require("base", "generate_voice_clone")
        texts = _texts(text)
        options = _options(kwargs, non_streaming_mode)
        voices = self._clone_voices(len(texts), ref_audio, ref_text, x_vector_only_mode, voice_clone_prompt)
        return self._synthesize(texts, voices, language, seed, options)

    # ---- streaming (the fork's calls) -------------------------------------------------------------------

    def _stream(self, text: str, voice: Voice, language: Any, seed: int | None,
                options: SynthesisOptions) -> Iterator[tuple[np.ndarray, int]]:
        if language is not None and not isinstance(language, str):
            raise InputError("streaming takes one language (a string or None)")
        return _pcm(self.tts.stream(text, voice, language or "auto", None, seed, options))

    def stream_generate_voice_clone(self, text: str, language: str | None = None, ref_audio: AudioLike | None = None,
                                    ref_text: str | None = None, x_vector_only_mode: bool = False,
                                    voice_clone_prompt: Any = None, non_streaming_mode: bool = False,
                                    emit_every_frames: int = 8, decode_window_frames: int = 80,
                                    overlap_samples: int = 0, max_frames: int | None = None,
                                    use_optimized_decode: bool = True, *, seed: int | None = None,
                                    **kwargs: Any) -> Iterator[tuple[np.ndarray, int]]:
        """Stream a cloned voice (Base): yields ``(pcm float32 [1920 * frames], sample_rate)`` every
        ``emit_every_frames`` frames. The request is validated (and the clone prompt built) before this
        returns; window/overlap/optimized-decode arguments are ignored (see the module notes)."""
        self._require("base", "stream_generate_voice_clone")
        text = _single(text, "stream_generate_voice_clone")
        options = _options(kwargs, non_streaming_mode, _chunk_policy(emit_every_frames), max_frames)
        voice = self._clone_voices(1, ref_audio, ref_text, x_vector_only_mode, voice_clone_prompt)[0]
        return self._stream(text, voice, language, seed, options)

    def stream_generate_custom_voice(self, text: str, speaker: str, language: str | None = None,
                                     instruct: str | None = None, non_streaming_mode: bool = True,
                                     emit_every_frames: int = 8, decode_window_frames: int = 80,
                                     overlap_samples: int = 0, max_frames: int | None = None,
                                     use_optimized_decode: bool = True, *, seed: int | None = None,
                                     **kwargs: Any) -> Iterator[tuple[np.ndarray, int]]:
        """Stream a preset speaker (CustomVoice); chunks as ``stream_generate_voice_clone``. The
        ``non_streaming_mode`` default is the official ``generate_custom_voice`` one (True)."""
        self._require("custom_voice", "stream_generate_custom_voice")
        text = _single(text, "stream_generate_custom_voice")
        options = _options(kwargs, non_streaming_mode, _chunk_policy(emit_every_frames), max_frames)
        return self._stream(text, _speakers(speaker, instruct, 1)[0], language, seed, options)

    def stream_generate_voice_design(self, text: str, instruct: str, language: str | None = None,
                                     non_streaming_mode: bool = True, emit_every_frames: int = 8,
                                     decode_window_frames: int = 80, overlap_samples: int = 0,
                                     max_frames: int | None = None, use_optimized_decode: bool = True, *,
                                     seed: int | None = None, **kwargs: Any) -> Iterator[tuple[np.ndarray, int]]:
        """Stream a described voice (VoiceDesign); chunks as ``stream_generate_voice_clone``."""
        self._require("voice_design", "stream_generate_voice_design")
        text = _single(text, "stream_generate_voice_design")
        if not isinstance(instruct, str):
            raise InputError("instruct must be a string")
        options = _options(kwargs, non_streaming_mode, _chunk_policy(emit_every_frames), max_frames)
        return self._stream(text, Design(instruct), language, seed, options)

    def enable_streaming_optimizations(self, decode_window_frames: int = 80, use_compile: bool = True,
                                       use_cuda_graphs: bool = True, compile_mode: str = "reduce-overhead",
                                       use_fast_codebook: bool = False, compile_codebook_predictor: bool = True,
                                       ) -> Qwen3TTSModel:
        """Turn on qtts's acceleration (``TTS.accelerate(compile=use_compile, cuda_graphs=use_cuda_graphs)``);
        the window, compile mode and codebook switches have no qtts counterpart and are ignored. Warns when
        this qtts build has no acceleration. Returns ``self`` for chaining, as the fork does."""
        accelerate = getattr(self.tts, "accelerate", None)
        if accelerate is None:
            warnings.warn("acceleration is unavailable in this qtts build; running without compile or CUDA graphs",
                          stacklevel=2)
        else:
            accelerate(compile=bool(use_compile), cuda_graphs=bool(use_cuda_graphs))
        return self


def _speakers(speaker: Any, instruct: Any, n: int) -> list[Voice]:
    names = _per_item(speaker, n, "speaker")
    instructs = _per_item(instruct, n, "instruct")
    voices: list[Voice] = []
    for name, ins in zip(names, instructs, strict=True):
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"speaker must be a non-empty string, got {name!r}")
        if ins is not None and not isinstance(ins, str):
            raise InputError(f"instruct must be a string, got {type(ins).__name__}")
        voices.append(Speaker(name, ins or None))
    return voices


def _as_prompt(item: Any) -> ClonePrompt:
    """A qtts ``ClonePrompt``, our ``VoiceClonePromptItem`` or the official item (same field names)."""
    if isinstance(item, ClonePrompt):
        return item
    if isinstance(item, VoiceClonePromptItem):
        return item.to_prompt()
    if hasattr(item, "ref_spk_embedding"):
        return _prompt_from_fields(getattr(item, "ref_code", None), item.ref_spk_embedding,
                                   getattr(item, "x_vector_only_mode", False), getattr(item, "ref_text", None))
    raise InputError(f"voice_clone_prompt items must come from create_voice_clone_prompt, got {type(item).__name__}")
