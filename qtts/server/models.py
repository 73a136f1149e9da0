"""Model ids: what ``GET /v1/models`` lists and what the ``model`` field of ``POST /v1/audio/speech`` (and of
the WebSocket ``config`` message) accepts.

The main model answers to its id (``--model-name``, default the checkpoint folder's name), the name it was
loaded from (folder path or Hugging Face repo id, as given) and that name's last part, ``"qwen3-tts"``, and the
OpenAI model names (``tts-1``, ``tts-1-hd``, ``gpt-4o-mini-tts``) so that OpenAI SDK code keeps working: all of
them mean "the loaded model". The optional clone model (``--clone-model``) answers to its id, its source and
the source's last part; it speaks only clone voices (saved clones, locked designs), so naming it with any other
voice is refused instead of being silently spoken by the main model. Names compare case-insensitively.
"""

from __future__ import annotations

import dataclasses
from pathlib import PurePath
from typing import Literal

from .errors import ApiError

OPENAI_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
QWEN_ALIAS = "qwen3-tts"
CLONE_SUFFIX = "-clone"

Role = Literal["main", "clone"]


def source_names(source: str | None) -> tuple[str, ...]:
    """The names a checkpoint loaded from ``source`` answers to: ``source`` as given (without a trailing
    slash) and its last path part (a folder's name, or the name part of an ``owner/name`` repo id)."""
    if source is None or not str(source).strip():
        return ()
    full = str(source).strip().rstrip("/\\") or str(source).strip()
    return _unique((full, PurePath(full).name or full))


def _unique(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for name in names:
        if name and name.casefold() not in seen:
            seen[name.casefold()] = name
    return tuple(seen.values())


@dataclasses.dataclass(frozen=True)
class ModelIds:
    """The ids of the served model(s). ``main`` / ``clone``: the ids ``/v1/models`` lists (``clone`` None
    without a clone model); ``main_names`` / ``clone_names``: every name accepted for each (id first)."""

    main: str
    main_names: tuple[str, ...]
    clone: str | None = None
    clone_names: tuple[str, ...] = ()

    @classmethod
    def build(cls, main_id: str, main_source: str | None = None, clone_source: str | None = None,
              has_clone: bool = False) -> ModelIds:
        """Ids for a server whose main model is ``main_id`` (loaded from ``main_source``) and, with
        ``has_clone``, a clone model loaded from ``clone_source`` (its id: the source's last part, or
        ``<main_id>-clone`` when there is no source or that name is already the main model's)."""
        main_names = _unique([main_id, *source_names(main_source), QWEN_ALIAS, *OPENAI_ALIASES])
        if not has_clone:
            return cls(main_id, main_names)
        taken = {n.casefold() for n in main_names}
        clone_names = [n for n in source_names(clone_source) if n.casefold() not in taken]
        clone_id = source_names(clone_source)[-1] if clone_source else ""
        if not clone_id or clone_id.casefold() in taken:
            clone_id = main_id + CLONE_SUFFIX
        return cls(main_id, main_names, clone_id, _unique([clone_id, *clone_names]))

    def role(self, name: str) -> Role | None:
        """``"main"`` or ``"clone"`` for an accepted name, None for any other."""
        folded = name.strip().casefold()
        if folded in {n.casefold() for n in self.main_names}:
            return "main"
        if folded in {n.casefold() for n in self.clone_names}:
            return "clone"
        return None

    def accepted(self) -> tuple[str, ...]:
        return self.main_names + self.clone_names

    def check(self, name: str | None) -> Role | None:
        """The role ``name`` asks for (None: no ``model`` given); an unknown name is a 400 naming ``model``
        that lists the accepted values."""
        if name is None:
            return None
        role = self.role(name)
        if role is None:
            raise ApiError(400, f"model: unknown model {name!r}; this server accepts "
                           f"{', '.join(self.accepted())} (see GET /v1/models)", "model", code="model_not_found")
        return role

    def check_engine(self, role: Role | None, spoken_by_clone: bool, voice: str | None) -> None:
        """Refuse (400 naming ``model``) a request that names the clone model for a voice it does not speak."""
        if role == "clone" and not spoken_by_clone:
            what = f"voice {voice!r}" if voice else "the default voice"
            raise ApiError(400, f"model: {self.clone!r} (the clone model) speaks only clone voices (saved clones, "
                           f"locked designs); {what} is spoken by {self.main!r}: send model {self.main!r} "
                           "(or leave it out)", "model")
