"""The 12 Hz speech tokenizer: codec encoder (audio -> codes) + decoder (codes -> audio).

Parameter names equal the keys of ``speech_tokenizer/model.safetensors`` (``encoder.*``, ``decoder.*``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import SpeechTokenizerConfig
from .decoder import CodecDecoder
from .encoder import CodecEncoder


class SpeechTokenizer(nn.Module):
    """Holds the codec encoder and decoder; ``decode`` / ``encode`` are thin, shape-checked wrappers."""

    def __init__(self, cfg: SpeechTokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = CodecEncoder(cfg.encoder_config, cfg.encoder_valid_num_quantizers)
        self.decoder = CodecDecoder(cfg.decoder_config)

    @property
    def samples_per_frame(self) -> int:
        return self.cfg.decode_upsample_rate

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes [B, 16, T]`` (long) -> ``pcm [B, 1, 1920*T]`` in [-1, 1]. Empty T gives empty audio."""
        B, K, T = codes.shape
        if self.cfg.decoder_config.num_quantizers != K:
            raise ValueError(f"codes must have {self.cfg.decoder_config.num_quantizers} groups, got {K}")
        if T == 0:
            w = next(self.decoder.parameters())
            return torch.zeros(B, 1, 0, dtype=w.dtype, device=w.device)
        return self.decoder(codes.clamp(min=0))

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav [B, N]`` at 24 kHz -> ``codes [B, 16, ceil(N / 1920)]``."""
        return self.encoder(wav)
