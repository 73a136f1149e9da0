"""``ServerSettings``: everything ``qtts serve`` can be told, as one frozen value."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ..accel import parse_accel
from ..errors import InputError


def default_data_dir() -> Path:
    """Voice library folder: ``$QTTS_HOME/voices`` (default ``~/.cache/qtts/voices``)."""
    return Path(os.environ.get("QTTS_HOME", Path.home() / ".cache" / "qtts")) / "voices"


CUDA_MAX_BATCH = 32
CPU_MAX_BATCH = 8


def default_max_batch(device_type: str, free_bytes: int | None = None, stream_bytes: int = 0) -> int:
    """Streams one engine advances together when ``--max-batch`` is not given: on CUDA up to
    ``CUDA_MAX_BATCH`` (an H100 ran 32 graphed 0.6b streams at 12.5 ms per frame against 11.1 ms for 8: 3.5 x
    the audio per second; BENCHMARKS.md, session 10), as many as half of the device's ``free_bytes`` holds at
    ``stream_bytes`` of decode state each (at least 1); elsewhere ``CPU_MAX_BATCH`` (a CPU's frame time grows
    with the batch)."""
    if device_type != "cuda":
        return CPU_MAX_BATCH
    if free_bytes is None or stream_bytes <= 0:
        return CUDA_MAX_BATCH
    return max(1, min(CUDA_MAX_BATCH, free_bytes // 2 // stream_bytes))


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Server configuration.

    ``model``: checkpoint folder or Hugging Face repo id (None: the offline tiny demo checkpoint of ``kind``);
    ``clone_model``: an optional Base checkpoint loaded beside ``model`` (same device, dtype and quantization) that
    speaks clone voices — locked designed voices, saved clones — when ``model`` is not a Base one; ``device`` /
    ``dtype`` / ``quantize``: as ``TTS.from_pretrained``; ``api_key``: when set, ``/v1/*`` needs ``Authorization:
    Bearer <api_key>``; ``max_input_chars``: longest ``input`` (and WebSocket utterance); ``max_upload_bytes``:
    largest request body (voice uploads); ``max_batch`` / ``max_waiting`` / ``wait_timeout``: the engine's admission
    control (streams per frame step, requests queued for a slot, seconds a request may wait for one; ``max_batch``
    None: ``default_max_batch`` of the model's device); ``text_timeout``: seconds a WebSocket utterance may wait for
    its next text before it is cancelled (an idle client must not hold a batch slot forever); ``data_dir``: the
    voice library folder; ``model_name``: the name reported by ``/v1/models`` (default: the checkpoint folder's
    name); ``accel``: the models' acceleration, as ``qtts.accel.parse_accel`` (None: ``auto`` for a model the server
    loads; a model handed in keeps its own); ``warmup``: with a static frame step (compile / CUDA graphs), build
    every batch bucket before serving (``Engine.warm_up``), so that no request waits for compilation.
    """

    model: str | None = None
    clone_model: str | None = None
    kind: str = "custom_voice"
    device: str | None = None
    dtype: str | None = None
    quantize: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_input_chars: int = 4096
    max_upload_bytes: int = 20 * 1024 * 1024
    max_batch: int | None = None
    max_waiting: int = 64
    wait_timeout: float = 30.0
    text_timeout: float = 60.0
    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    model_name: str | None = None
    accel: str | None = None
    warmup: bool = True

    def __post_init__(self) -> None:
        for name in ("max_input_chars", "max_upload_bytes", "max_batch", "max_waiting"):
            value = getattr(self, name)
            if name == "max_batch" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.port, int) or not 0 <= self.port < 65536:
            raise InputError(f"port must be in 0..65535, got {self.port!r}")
        for name in ("wait_timeout", "text_timeout"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.kind not in ("base", "custom_voice", "voice_design"):
            raise InputError(f"kind must be base, custom_voice or voice_design, got {self.kind!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("api_key must not be empty (leave it unset to disable authentication)")
        if self.clone_model is not None and not str(self.clone_model).strip():
            raise InputError("clone_model must not be empty (leave it unset to serve one model)")
        if not isinstance(self.warmup, bool):
            raise InputError(f"warmup must be true or false, got {self.warmup!r}")
        if self.accel is not None:
            parse_accel(self.accel, None)  # the form only; the device is checked when the model is loaded
        object.__setattr__(self, "data_dir", Path(self.data_dir))
