"""Per-request options and their resolution against checkpoint defaults (no tensors here)."""

from __future__ import annotations

import dataclasses
import secrets

from .config import GenerationConfig
from .errors import InputError
from .generate import SamplingParams, StreamParams

FINISH_REASONS = ("stop", "length", "cancelled")


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Sampling overrides for one request; ``None`` fields take the checkpoint's
    ``generation_config.json`` values (the official package's merge rule).

    ``do_sample`` / ``temperature`` / ``top_k`` / ``top_p`` / ``repetition_penalty`` drive code group 0 (the
    talker); the ``subtalker_*`` fields drive groups 1..15 (the code predictor, which has no penalty).
    """

    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    subtalker_dosample: bool | None = None
    subtalker_temperature: float | None = None
    subtalker_top_k: int | None = None
    subtalker_top_p: float | None = None

    @classmethod
    def greedy(cls, repetition_penalty: float | None = None) -> Sampling:
        """Deterministic decoding of every code group (the mode used for parity with the official package)."""
        return cls(do_sample=False, subtalker_dosample=False, repetition_penalty=repetition_penalty)

    def resolve(self, defaults: GenerationConfig, seed: int | None) -> StreamParams:
        """Merge over ``defaults`` and validate; a ``None`` seed draws a random one."""
        merged = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in list(merged.items()):
            if value is None:
                merged[name] = getattr(defaults, name)
        if seed is None:
            seed = secrets.randbits(63)
        elif not isinstance(seed, int) or isinstance(seed, bool):
            raise InputError(f"seed must be an integer, got {seed!r}")
        talker = SamplingParams(merged["do_sample"], merged["temperature"], merged["top_k"], merged["top_p"],
                                merged["repetition_penalty"])
        predictor = SamplingParams(merged["subtalker_dosample"], merged["subtalker_temperature"],
                                   merged["subtalker_top_k"], merged["subtalker_top_p"], 1.0)
        return StreamParams(talker, predictor, seed)


def frame_budget(text_tokens: int, max_new_tokens: int) -> int:
    """Default runaway guard: ``min(max_new_tokens, 64 + 12 * text_tokens)`` talker steps.

    Speech runs at well under 12 frames (0.96 s) per text token in every supported language, so a stream
    that passes this bound is a runaway (a known failure mode of the model); it ends with ``length``.
    """
    return max(2, min(max_new_tokens, 64 + 12 * text_tokens))
