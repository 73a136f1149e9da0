"""How a request's ``voice`` / ``instructions`` become a ``qtts.voices.Voice``, per checkpoint kind.

* ``custom_voice``: ``voice`` is a built-in speaker (case-insensitive, see ``GET /v1/models``) or a saved
  voice from the library; ``instructions`` is the speaking instruction (1.7B checkpoints; 0.6B ignore it, as
  the official package does). No ``voice``: the default speaker.
* ``voice_design``: ``voice`` names a saved (designed) voice; otherwise ``instructions`` is the voice
  description (``voice`` is then only a label, so OpenAI clients that must send a voice still work).
  A saved voice carries its own description, so ``instructions`` must then be absent.
* ``base`` (cloning): ``voice`` names a saved clone voice; ``instructions`` are refused.

Unknown voices are a 400 naming ``voice``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import QttsError
from ..voices import Design, Speaker, Voice
from .errors import ApiError


async def _saved(library: Any, name: str) -> Voice | None:
    if library is None:
        return None
    try:
        return await asyncio.to_thread(library.resolve, name)
    except QttsError as e:
        raise ApiError(400, f"voice: {e}", "voice") from None


async def resolve_voice(tts: Any, library: Any, name: str | None, instructions: str | None
                        ) -> tuple[Voice | None, str | None]:
    """``(voice, instruct)`` for ``tts.prepare``; raises ``ApiError`` (400) naming the field at fault."""
    instructions = instructions if instructions and instructions.strip() else None
    saved = await _saved(library, name) if name else None
    kind = tts.kind
    if kind == "custom_voice":
        if saved is not None:
            return saved, instructions
        if name is None:
            return None, instructions
        speakers = {s.lower(): s for s in tts.speakers}
        if name.lower() in speakers:
            return Speaker(speakers[name.lower()]), instructions
        raise ApiError(400, f"voice: unknown voice {name!r}; built-in speakers: {', '.join(tts.speakers)} "
                       "(or a saved voice, see GET /v1/audio/voices)", "voice")
    if kind == "voice_design":
        if saved is not None:
            if instructions is not None:
                raise ApiError(400, f"instructions: the saved voice {name!r} carries its own description; "
                               "omit instructions (or name no saved voice to design one)", "instructions")
            return saved, None
        if instructions is not None:
            return Design(instructions), None
        raise ApiError(400, "voice: a voice_design model needs a saved voice name in voice, or a voice "
                       "description in instructions" + (f" ({name!r} is not a saved voice)" if name else ""),
                       "voice")
    if instructions is not None:
        raise ApiError(400, "instructions: base (voice clone) models take no instructions", "instructions")
    if saved is not None:
        return saved, None
    raise ApiError(400, "voice: a base model clones saved voices; " + (
        f"{name!r} is not a saved voice" if name else "name one") + " (see GET /v1/audio/voices)", "voice")
