"""Request bodies: the OpenAI speech request (plus qtts extensions) and the WebSocket config message.

Validation is strict (no silent coercion of ``"3"`` to 3, unknown fields refused) so a typo gets a 422
naming the field instead of being ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator

from ..request import Sampling
from .formats import FORMATS

SEED_LIMIT = 2**63


class VoiceId(BaseModel):
    """The OpenAI SDK's custom voice reference ``{"id": "..."}``."""

    model_config = ConfigDict(extra="forbid")
    id: StrictStr


class SamplingFields(BaseModel):
    """qtts extensions shared by the HTTP and WebSocket APIs: voice details, seed, sampling, frame budget."""

    model_config = ConfigDict(extra="forbid")

    language: StrictStr = "auto"
    instructions: StrictStr | None = None
    seed: StrictInt | None = Field(default=None, ge=0, lt=SEED_LIMIT)
    temperature: StrictFloat | StrictInt | None = Field(default=None, gt=0, le=10)
    top_p: StrictFloat | StrictInt | None = Field(default=None, gt=0, le=1)
    top_k: StrictInt | None = Field(default=None, ge=0)
    repetition_penalty: StrictFloat | StrictInt | None = Field(default=None, gt=0, le=10)
    do_sample: StrictBool | None = None
    max_new_tokens: StrictInt | None = Field(default=None, ge=1)

    def sampling(self) -> Sampling:
        return Sampling(do_sample=self.do_sample, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                        repetition_penalty=self.repetition_penalty)


class SpeechRequest(SamplingFields):
    """``POST /v1/audio/speech``: OpenAI's fields plus ``SamplingFields``. ``model`` is checked by the route
    against the names the server answers to (``qtts.server.models``).

    ``speed`` must be 1.0: qtts has no pitch-preserving time-stretch, and the request is refused rather than
    the field silently ignored.
    """

    model: StrictStr | None = None
    input: StrictStr
    voice: StrictStr | VoiceId | None = None
    response_format: StrictStr = "mp3"
    speed: StrictFloat | StrictInt = 1.0
    stream_format: Literal["audio", "sse"] = "audio"

    @field_validator("input")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("response_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in FORMATS:
            raise ValueError(f"unknown format {value!r}; valid: {', '.join(FORMATS)}")
        return value

    @field_validator("speed")
    @classmethod
    def _speed_one(cls, value: float) -> float:
        if value != 1.0:
            raise ValueError("only 1.0 is supported (qtts does not time-stretch audio); omit it or send 1.0")
        return float(value)

    @property
    def voice_name(self) -> str | None:
        return self.voice.id if isinstance(self.voice, VoiceId) else self.voice


class StreamConfig(SamplingFields):
    """WebSocket ``{"type": "config", ...}``: the voice and options of the following utterances."""

    type: Literal["config"] = "config"
    model: StrictStr | None = None
    voice: StrictStr | None = None
