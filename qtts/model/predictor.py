"""The code predictor: per frame, predicts code groups 1..15 from the talker's hidden state and code 0.

Pure math, no loop and no sampling: ``generate.py`` runs the 15 sequential steps.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import PredictorConfig
from .cache import LayerCache
from .layers import Decoder


class PredictorModel(Decoder):
    """Transformer of the predictor plus the 15 group embeddings (in *talker* width)."""

    def __init__(self, cfg: PredictorConfig, talker_hidden: int) -> None:
        super().__init__(cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers,
                         cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
                         cfg.rms_norm_eps, cfg.rope_theta)
        self.codec_embedding = nn.ModuleList(
            nn.Embedding(cfg.vocab_size, talker_hidden) for _ in range(cfg.num_code_groups - 1)
        )


class CodePredictor(nn.Module):
    """Predicts code groups 1..G-1. Group ``g`` uses embedding ``g-1`` (input) and head ``g-1`` (output)."""

    def __init__(self, cfg: PredictorConfig, talker_hidden: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = PredictorModel(cfg, talker_hidden)
        self.lm_head = nn.ModuleList(
            nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False) for _ in range(cfg.num_code_groups - 1)
        )
        self.small_to_mtp_projection: nn.Module = (
            nn.Linear(talker_hidden, cfg.hidden_size, bias=True)
            if cfg.hidden_size != talker_hidden else nn.Identity()
        )

    def embed_group(self, group: int, codes: torch.Tensor) -> torch.Tensor:
        """Embedding of ``codes [...]`` of group ``group`` (1..G-1), in talker width ``[..., H]``."""
        return self.model.codec_embedding[group - 1](codes)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, caches: list[LayerCache],
                mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``x [B, S, H_talker]`` -> final-normed hidden ``[B, S, H_predictor]`` (``rope``: see ``Decoder``)."""
        return self.model(self.small_to_mtp_projection(x), positions, caches, mask, rope)

    def step(self, x: torch.Tensor, positions: torch.Tensor, caches: list[LayerCache], mask: torch.Tensor,
             rope: tuple[torch.Tensor, torch.Tensor], head: nn.Module) -> torch.Tensor:
        """One step of the frame loop: ``x [B, S, H_talker]`` -> float32 logits ``[B, vocab]`` of its last position
        through ``head`` (the group's ``lm_head``, an argument: one compiled graph serves every group, with the
        product inside it; ``qtts.accel.compile_regions`` compiles this method)."""
        return head(self(x, positions, caches, mask, rope)[:, -1]).float()

    def logits(self, group: int, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., vocab]`` of code group ``group`` (1..G-1) from ``hidden [..., H_predictor]``."""
        return self.lm_head[group - 1](hidden)
