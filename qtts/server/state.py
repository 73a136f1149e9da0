"""``ServerState``: what every route needs — the model, the engine thread that owns it, the voice library,
the settings and the metrics; optionally a second (Base) model with its own engine for clone voices
(``--clone-model``: locked designs and saved clones on a VoiceDesign / CustomVoice server)."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch

from ..accel import parse_accel
from ..api import TTS
from ..engine import Engine, EngineConfig
from ..errors import InputError
from ..voices import Clone, Voice
from .metrics import Metrics
from .models import ModelIds, source_names
from .settings import ServerSettings, default_max_batch

log = logging.getLogger("qtts.server")


def open_library(root: Path, reserved: list[str]) -> Any:
    """The voice library (``qtts.server.library.VoiceLibrary``) when that module is installed, else None.
    ``reserved``: the built-in speaker names, which saved voices may not take."""
    try:
        from .library import VoiceLibrary
    except ImportError:
        return None
    return VoiceLibrary(root, reserved=reserved)


def _device_max_batch(tts: TTS, engines: int) -> int:
    """``default_max_batch`` for ``tts`` 's device, with the decode state one stream preallocates there and the
    free memory shared by ``engines`` engines (a clone model's beside the main one)."""
    if tts.device.type != "cuda":
        return default_max_batch(tts.device.type)
    free, _total = torch.cuda.mem_get_info(tts.device)
    return default_max_batch("cuda", free // engines, tts.stream_state_bytes())


@dataclasses.dataclass
class ServerState:
    """The shared state of one server. ``owns_engine``: the engines are closed when the app shuts down.
    ``clone_tts`` / ``clone_engine``: the optional Base model (and its engine thread) that speaks ``Clone``
    voices when the main model is not a Base one (``engine_for``). ``model_ids``: the model names that
    ``/v1/models`` lists and the ``model`` field accepts (default: from ``model_name``). Every engine reports
    its finished streams to ``metrics`` (registered here, once, however the state was made)."""

    tts: TTS
    engine: Engine
    settings: ServerSettings
    metrics: Metrics
    library: Any = None
    model_name: str = "qtts"
    owns_engine: bool = True
    started: float = dataclasses.field(default_factory=time.time)
    clone_tts: TTS | None = None
    clone_engine: Engine | None = None
    model_ids: ModelIds | None = None

    def __post_init__(self) -> None:
        if self.model_ids is None:
            self.model_ids = ModelIds.build(self.model_name, has_clone=self.clone_engine is not None)
        for _, engine in self.engines():
            if self.metrics.observe not in engine.observers:
                engine.observers.append(self.metrics.observe)

    @classmethod
    def create(cls, settings: ServerSettings, tts: TTS | None = None, clone_tts: TTS | None = None) -> ServerState:
        """Load the model (unless ``tts`` is given) and the Base clone model (``settings.clone_model``, unless
        ``clone_tts`` is given), start their engine threads and open the voice library. A clone model that is
        not a Base checkpoint raises ``InputError`` before any engine starts."""
        source_loaded, clone_loaded = tts is None, clone_tts is None and settings.clone_model is not None
        if clone_tts is None and settings.clone_model is not None:
            log.info("loading the clone model %s", settings.clone_model)
            clone_tts = TTS.from_pretrained(settings.clone_model, device=settings.device, dtype=settings.dtype,
                                            quantize=settings.quantize)
        if clone_tts is not None and clone_tts.kind != "base":
            raise InputError(f"--clone-model must be a Base (voice clone) checkpoint; "
                             f"{settings.clone_model or 'the clone model'} is a {clone_tts.kind!r} checkpoint")
        if tts is None:
            from ..checkpoint import default_checkpoint

            model = settings.model
            if model is None:
                model = str(default_checkpoint(settings.kind))
                log.warning("no model given; using the offline demo checkpoint %s (tiny, random, untrained: "
                            "it sounds like noise)", model)
            tts = TTS.from_pretrained(model, device=settings.device, dtype=settings.dtype, quantize=settings.quantize)
            source = str(model)
        else:
            source = settings.model
        name = settings.model_name or (source_names(source)[-1] if source else "qtts")
        if clone_tts is not None and tts.kind == "base":
            log.warning("the main model is already a Base checkpoint; the clone model is not needed (unused)")
            clone_tts = None
        for model_tts, loaded in ((tts, source_loaded), (clone_tts, clone_loaded)):
            if model_tts is not None and (loaded or settings.accel is not None):
                model_tts.set_accel(parse_accel(settings.accel, model_tts.device))
        max_batch = settings.max_batch or _device_max_batch(tts, 1 if clone_tts is None else 2)
        log.info("batching up to %d streams per frame step%s", max_batch,
                 "" if settings.max_batch else f" (the default on {tts.device.type}; --max-batch to change)")
        config = EngineConfig(max_batch, settings.max_waiting, settings.wait_timeout)
        ids = ModelIds.build(name, source, settings.clone_model, has_clone=clone_tts is not None)
        engine = Engine(tts, config)
        clone_engine = Engine(clone_tts, config) if clone_tts is not None else None
        for label, e in (("main", engine), ("clone", clone_engine)):
            if settings.warmup and e is not None and e.runner.step_fn.static:
                log.info("warming up the %s model's frame step (every batch bucket, once)", label)
                log.info("warm-up done in %.1f s", e.warm_up())
        return cls(tts, engine, settings, Metrics(), open_library(settings.data_dir, tts.speakers), name,
                   clone_tts=clone_tts, clone_engine=clone_engine, model_ids=ids)

    def engines(self) -> list[tuple[str, Engine]]:
        """``(label, engine)`` of every engine: ``("main", ...)`` and, with a clone model, ``("clone", ...)``."""
        return [("main", self.engine)] + ([("clone", self.clone_engine)] if self.clone_engine is not None else [])

    def engine_for(self, voice: Voice | None) -> tuple[TTS, Engine]:
        """The model and engine that speak ``voice``: the clone model for ``Clone`` voices when the main model is
        not a Base one, else the main model. A ``Clone`` voice with neither raises ``InputError`` (about ``voice``)."""
        if isinstance(voice, Clone) and self.tts.kind != "base":
            if self.clone_engine is None:
                raise InputError(f"voice: clone voices (saved clones, locked designs) need a Base model; this server "
                                 f"runs a {self.tts.kind!r} checkpoint: start it with --clone-model BASE_CHECKPOINT")
            return self.clone_tts, self.clone_engine
        return self.tts, self.engine

    def close(self) -> None:
        if self.owns_engine:
            self.engine.close()
            if self.clone_engine is not None:
                self.clone_engine.close()
