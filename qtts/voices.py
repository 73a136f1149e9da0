"""Voices as values: ``Speaker`` (preset), ``Design`` (described in words) and ``Clone`` (reference audio).

A clone is turned once into a ``ClonePrompt`` (reference codes + speaker embedding) that can be saved to
and loaded from disk as safetensors (no pickle): tensors ``speaker_embedding [D]`` (float32) and, for
ICL clones, ``ref_codes [T, 16]`` (int64); metadata ``format``, ``version``, ``ref_text``,
``x_vector_only``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError

PROMPT_FORMAT = "qtts-clone-prompt"
PROMPT_VERSION = "1"


@dataclasses.dataclass(frozen=True)
class Speaker:
    """A preset speaker of a CustomVoice checkpoint (case-insensitive name), optionally with an
    instruction (ignored by 0.6B CustomVoice checkpoints, as in the official package)."""

    name: str
    instruct: str | None = None


@dataclasses.dataclass(frozen=True)
class Design:
    """A voice described in words, for VoiceDesign checkpoints."""

    description: str


@dataclasses.dataclass(frozen=True)
class ClonePrompt:
    """A computed voice-clone prompt. ``ref_codes [T, 16]`` is None for x-vector-only clones."""

    speaker_embedding: torch.Tensor
    ref_codes: torch.Tensor | None = None
    ref_text: str | None = None

    @property
    def x_vector_only(self) -> bool:
        return self.ref_codes is None

    def save(self, path: str | Path) -> Path:
        """Write the prompt atomically to ``path`` (a ``.safetensors`` file)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {"speaker_embedding": self.speaker_embedding.detach().float().cpu().contiguous()}
        if self.ref_codes is not None:
            tensors["ref_codes"] = self.ref_codes.detach().long().cpu().contiguous()
        meta = {"format": PROMPT_FORMAT, "version": PROMPT_VERSION, "x_vector_only": str(self.x_vector_only),
                "ref_text": self.ref_text or ""}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o644)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> ClonePrompt:
        """Read a prompt written by ``save``; errors name the file and the problem."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: clone prompt file not found")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"{path}: not a clone prompt file ({e})") from None
        if meta.get("format") != PROMPT_FORMAT:
            raise InputError(f"{path}: not a qtts clone prompt (format {meta.get('format')!r})")
        emb = tensors.get("speaker_embedding")
        if emb is None or emb.dim() != 1:
            raise InputError(f"{path}: missing or malformed 'speaker_embedding'")
        codes = tensors.get("ref_codes")
        if codes is not None and (codes.dim() != 2 or codes.shape[1] != 16 or codes.dtype != torch.int64):
            raise InputError(f"{path}: 'ref_codes' must be int64 of shape [T, 16]")
        if codes is None and meta.get("x_vector_only") != "True":
            raise InputError(f"{path}: an ICL clone prompt must contain 'ref_codes'")
        return cls(emb, codes, meta.get("ref_text") or None)


@dataclasses.dataclass(frozen=True)
class Clone:
    """A voice cloned from reference audio, for Base checkpoints.

    ``ref_audio``: a file path or ``(samples, sample_rate)``; ``ref_text``: its transcript (ICL mode, the
    default and best quality); ``x_vector_only=True`` uses only the speaker embedding (no transcript).
    ``prompt``: a precomputed ``ClonePrompt`` (see ``Clone.load``), used instead of the audio.
    """

    ref_audio: str | Path | tuple[np.ndarray, int] | None = None
    ref_text: str | None = None
    x_vector_only: bool = False
    prompt: ClonePrompt | None = None

    def __post_init__(self) -> None:
        if self.prompt is None and self.ref_audio is None:
            raise InputError("Clone needs ref_audio (or a saved prompt: Clone.load(path))")
        if self.prompt is None and not self.x_vector_only and not (self.ref_text or "").strip():
            raise InputError("Clone needs ref_text (the transcript of ref_audio), or x_vector_only=True")

    @classmethod
    def load(cls, path: str | Path) -> Clone:
        """A clone from a prompt file written by ``ClonePrompt.save``."""
        prompt = ClonePrompt.load(path)
        return cls(ref_text=prompt.ref_text, x_vector_only=prompt.x_vector_only, prompt=prompt)


Voice = Speaker | Design | Clone


def describe(voice: Any) -> str:
    """Short human-readable description of a voice (for logs and errors)."""
    if isinstance(voice, Speaker):
        return f"speaker {voice.name!r}"
    if isinstance(voice, Design):
        return "designed voice"
    if isinstance(voice, Clone):
        return "cloned voice (x-vector only)" if voice.x_vector_only else "cloned voice"
    return repr(voice)
