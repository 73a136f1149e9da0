"""Turns a symbolic ``PromptPlan`` into talker input vectors (the only place prompts meet weights)."""

from __future__ import annotations

import torch

from .errors import InputError
from .model.talker import Talker
from .prompt import SPEAKER_VECTOR, PromptPlan


def frame_embedding(talker: Talker, codes: torch.Tensor) -> torch.Tensor:
    """Codec-track vector of frames ``codes [..., G]`` -> ``[..., H]``: group-0 talker embedding plus the
    predictor's group embeddings, summed in one reduction."""
    parts = [talker.embed_codec(codes[..., 0])]
    parts += [talker.code_predictor.embed_group(g, codes[..., g]) for g in range(1, codes.shape[-1])]
    return sum_groups(parts)


def sum_groups(parts: list[torch.Tensor]) -> torch.Tensor:
    """The codec-track vector from the G group embeddings of a frame (``[..., H]`` each, group 0 first), summed
    as ``frame_embedding`` sums them (for a caller that already holds them)."""
    return torch.stack(parts, dim=-2).sum(dim=-2)


@torch.no_grad()
def embed_plan(talker: Talker, plan: PromptPlan, speaker_vector: torch.Tensor | None = None,
               ref_codes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(prefill [P, H], trailing [N, H])`` for ``plan``.

    ``speaker_vector [H]`` fills the speaker slot of a clone prompt; ``ref_codes [T_ref, G]`` the reference
    frames of an ICL clone prompt.
    """
    weight = talker.model.codec_embedding.weight
    device, dtype, H = weight.device, weight.dtype, weight.shape[1]
    slots = plan.slots
    text_ids = torch.tensor([s.text if s.text is not None else 0 for s in slots], device=device)
    has_text = torch.tensor([s.text is not None for s in slots], device=device)
    x = torch.where(has_text[:, None], talker.embed_text(text_ids), torch.zeros((), dtype=dtype, device=device))
    codec = torch.zeros(len(slots), H, dtype=dtype, device=device)
    ids = [(i, s.codec) for i, s in enumerate(slots) if isinstance(s.codec, int)]
    if ids:
        rows = torch.tensor([i for i, _ in ids], device=device)
        codec[rows] = talker.embed_codec(torch.tensor([c for _, c in ids], device=device))
    if plan.uses_speaker_vector:
        if speaker_vector is None or speaker_vector.shape != (H,):
            raise InputError(f"the prompt needs a speaker vector of shape ({H},)")
        for i, s in enumerate(slots):
            if s.codec == SPEAKER_VECTOR:
                codec[i] = speaker_vector.to(device=device, dtype=dtype)
    if plan.ref_frames:
        if ref_codes is None or ref_codes.shape[0] != plan.ref_frames:
            raise InputError(f"the prompt needs {plan.ref_frames} reference frames")
        refs = frame_embedding(talker, ref_codes.to(device))
        for i, s in enumerate(slots):
            if isinstance(s.codec, tuple):
                codec[i] = refs[s.codec[1]]
    has_codec = torch.tensor([s.codec is not None for s in slots], device=device)
    prefill = torch.where(has_codec[:, None] & has_text[:, None], x + codec, torch.where(has_text[:, None], x, codec))
    trailing = talker.embed_text(torch.tensor(plan.trailing, dtype=torch.long, device=device).view(-1))
    return prefill, trailing
