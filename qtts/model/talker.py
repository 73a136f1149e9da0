"""The talker: a Qwen3 decoder over dual-track inputs (text vector + codec vector per position).

Pure math. It also owns the code predictor as a submodule, because the checkpoints name it
``talker.code_predictor.*``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TalkerConfig
from .cache import LayerCache
from .layers import Decoder
from .predictor import CodePredictor


class TalkerModel(Decoder):
    """Transformer of the talker plus its text and codec embedding tables."""

    def __init__(self, cfg: TalkerConfig) -> None:
        super().__init__(cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers,
                         cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                         cfg.rms_norm_eps, cfg.rope_theta)
        self.text_embedding = nn.Embedding(cfg.text_vocab_size, cfg.text_hidden_size)
        self.codec_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)


class TextProjection(nn.Module):
    """Two-layer SiLU MLP mapping text embeddings (2048) to the talker width."""

    def __init__(self, text_hidden: int, hidden: int) -> None:
        super().__init__()
        self.linear_fc1 = nn.Linear(text_hidden, text_hidden, bias=True)
        self.linear_fc2 = nn.Linear(text_hidden, hidden, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.silu(self.linear_fc1(x)))


class Talker(nn.Module):
    """Talker weights and math: embeddings, transformer, ``codec_head`` (code group 0 logits)."""

    def __init__(self, cfg: TalkerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = TalkerModel(cfg)
        self.text_projection = TextProjection(cfg.text_hidden_size, cfg.hidden_size)
        self.codec_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.code_predictor = CodePredictor(cfg.code_predictor_config, cfg.hidden_size)

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Text-track vectors ``[..., H]`` of text token ``ids [...]``."""
        return self.text_projection(self.model.text_embedding(ids))

    def embed_codec(self, ids: torch.Tensor) -> torch.Tensor:
        """Codec-track vectors ``[..., H]`` of talker codec ids (codes of group 0 or control ids)."""
        return self.model.codec_embedding(ids)

    def embed_frame(self, codes: torch.Tensor) -> torch.Tensor:
        """Codec-track vector of whole frames: ``codes [..., G]`` -> ``[..., H]`` (sum of G embeddings)."""
        x = self.embed_codec(codes[..., 0])
        for g in range(1, codes.shape[-1]):
            x = x + self.code_predictor.embed_group(g, codes[..., g])
        return x

    def forward(self, x: torch.Tensor, positions: torch.Tensor, caches: list[LayerCache],
                mask: torch.Tensor) -> torch.Tensor:
        """``x [B, S, H]`` at ``positions [B, S]`` -> final-normed hidden ``[B, S, H]``."""
        return self.model(x, positions, caches, mask)
