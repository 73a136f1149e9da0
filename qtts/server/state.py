"""``ServerState``: what every route needs — the model, the engine thread that owns it, the voice library,
the settings and the metrics."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from ..api import TTS
from ..engine import Engine, EngineConfig
from .metrics import Metrics
from .settings import ServerSettings

log = logging.getLogger("qtts.server")


def open_library(root: Path, reserved: list[str]) -> Any:
    """The voice library (``qtts.server.library.VoiceLibrary``) when that module is installed, else None.
    ``reserved``: the built-in speaker names, which saved voices may not take."""
    try:
        from .library import VoiceLibrary
    except ImportError:
        return None
    return VoiceLibrary(root, reserved=reserved)


@dataclasses.dataclass
class ServerState:
    """The shared state of one server. ``owns_engine``: the engine is closed when the app shuts down."""

    tts: TTS
    engine: Engine
    settings: ServerSettings
    metrics: Metrics
    library: Any = None
    model_name: str = "qtts"
    owns_engine: bool = True
    started: float = dataclasses.field(default_factory=time.time)

    @classmethod
    def create(cls, settings: ServerSettings, tts: TTS | None = None) -> ServerState:
        """Load the model (unless ``tts`` is given), start its engine thread and open the voice library."""
        if tts is None:
            from ..checkpoint import default_checkpoint

            model = settings.model
            if model is None:
                model = str(default_checkpoint(settings.kind))
                log.warning("no model given; using the offline demo checkpoint %s (tiny, random, untrained: "
                            "it sounds like noise)", model)
            tts = TTS.from_pretrained(model, device=settings.device, dtype=settings.dtype, quantize=settings.quantize)
            name = settings.model_name or Path(str(model).rstrip("/")).name
        else:
            name = settings.model_name or "qtts"
        engine = Engine(tts, EngineConfig(settings.max_batch, settings.max_waiting, settings.wait_timeout))
        metrics = Metrics()
        engine.observers.append(metrics.observe)
        return cls(tts, engine, settings, metrics, open_library(settings.data_dir, tts.speakers), name)

    def close(self) -> None:
        if self.owns_engine:
            self.engine.close()
