"""The whole Qwen3-TTS language model: talker (+ code predictor) and, for Base checkpoints, the
speaker encoder. Parameter names equal the checkpoint's ``model.safetensors`` keys."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from .talker import Talker


class TTSModel(nn.Module):
    """Container of the checkpoint's modules; the math lives in the submodules."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.talker = Talker(cfg.talker)
        self.speaker_encoder: nn.Module | None = None
        if cfg.speaker_encoder_config is not None:
            from .speaker import SpeakerEncoder

            self.speaker_encoder = SpeakerEncoder(cfg.speaker_encoder_config)
