"""Sampling as pure, batched, sync-free tensor functions; parameters arrive as per-row tensors.

Randomness is counter-based: the noise for row ``r`` at step ``s`` and code group ``g`` is a hash of
``(seed_r, s, g, token)``. A stream therefore produces the same codes whether it runs alone or in a batch,
on any device, and no generator state needs to be carried or synchronised.
"""

from __future__ import annotations

import dataclasses

import torch

_M32 = 0xFFFFFFFF
_BELOW_ONE = 1.0 - 2.0**-24  # the largest float32 below 1


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for ``0 <= x < 2**32`` without int64 overflow."""
    hi, lo = c >> 16, c & 0xFFFF
    return ((((x * hi) & 0xFFFF) << 16) + x * lo) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply) on int64 tensors holding values in ``[0, 2**32)``."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def group_noise(seeds: torch.Tensor, steps: torch.Tensor, first: int, count: int, vocab: int) -> torch.Tensor:
    """Uniform noise in (0, 1) for code groups ``first .. first + count - 1`` at once: ``[B, count, vocab]``
    float32, a pure function of (seed, step, group, token). A frame draws the noise of its 15 predictor groups in
    one call (a few dozen element-wise operations instead of 15 times as many: under CUDA graphs without
    compilation each is a kernel); ``[:, i]`` equals ``uniform_noise`` of group ``first + i`` bit for bit.

    The open interval matters: ``sample`` divides by ``-log(u)``, and a ``u`` that rounded to 1.0 would give
    ``0 / 0 = NaN`` for a masked token, which ``argmax`` then picks. 24 bits plus a half step do not fit a
    float32 mantissa below 1, so the top value is clamped to the largest float32 below 1."""
    s = _mix32((seeds & _M32) ^ _mix32((seeds >> 32) & _M32))  # [B]
    groups = torch.arange(first + 1, first + count + 1, device=seeds.device, dtype=torch.int64)
    s = _mix32(s[:, None] ^ _mix32((steps & _M32)[:, None] + 0x9E3779B9 * groups[None, :] & _M32))  # [B, count]
    tokens = _mix32(torch.arange(vocab, device=seeds.device, dtype=torch.int64))
    h = _mix32(s[:, :, None] ^ tokens[None, None, :])
    return (((h >> 8).float() + 0.5) / float(1 << 24)).clamp(max=_BELOW_ONE)


def group_exponential(seeds: torch.Tensor, steps: torch.Tensor, first: int, count: int, vocab: int) -> torch.Tensor:
    """``-log`` of ``group_noise``: the exponential variates ``sample`` races the probabilities against, for
    code groups ``first .. first + count - 1`` at once, ``[B, count, vocab]`` (a frame makes its predictor
    groups' in one call; ``[:, i]`` is bit for bit what ``sample`` makes from group ``first + i`` 's noise)."""
    return -torch.log(group_noise(seeds, steps, first, count, vocab))


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, group: int, vocab: int) -> torch.Tensor:
    """Uniform noise in (0, 1), ``[B, vocab]`` float32, a pure function of (seed, step, group, token)
    (``group_noise`` of one group)."""
    return group_noise(seeds, steps, group, 1, vocab)[:, 0]


@dataclasses.dataclass
class SamplingTensors:
    """Per-row sampling parameters of one code group kind, ``[B]`` each."""

    do_sample: torch.Tensor  # bool
    temperature: torch.Tensor  # float, > 0
    top_k: torch.Tensor  # long, 0 = off
    top_p: torch.Tensor  # float in (0, 1]
    # Derived from top_k / top_p by ``prepared`` ([B, 1] each); None: ``sample`` derives them at every call.
    kth: torch.Tensor | None = None  # long: index of each row's k-th largest logit
    open_nucleus: torch.Tensor | None = None  # bool: top_p >= 1 (no nucleus cut)

    def prepared(self, vocab: int) -> SamplingTensors:
        """These parameters with ``kth`` and ``open_nucleus`` derived for picks among ``vocab`` tokens: the 15
        predictor picks of a frame share them (their operations run once per frame, not once per pick)."""
        return dataclasses.replace(self, kth=kth_index(self.top_k, vocab), open_nucleus=(self.top_p >= 1.0)[:, None])


def kth_index(top_k: torch.Tensor, vocab: int) -> torch.Tensor:
    """Each row's top-k cut as an index into its descending-sorted logits, ``[B, 1]`` (``top_k`` 0 or larger
    than ``vocab``: no cut)."""
    k = torch.where((top_k <= 0) | (top_k > vocab), vocab, top_k).clamp(min=1)
    return (k - 1)[:, None]


def filter_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                       kth: torch.Tensor | None = None, open_nucleus: torch.Tensor | None = None) -> torch.Tensor:
    """Set logits outside each row's top-k / nucleus (top-p) to -inf. ``logits [B, V]``; ``kth``,
    ``open_nucleus``: see ``SamplingTensors.prepared`` (derived here when None).

    Ties at the k-th value are kept; the most likely token is always kept.
    """
    if kth is None:
        kth = kth_index(top_k, logits.shape[-1])
    if open_nucleus is None:
        open_nucleus = (top_p >= 1.0)[:, None]
    sorted_logits, _ = logits.sort(dim=-1, descending=True)
    kth_value = sorted_logits.gather(1, kth)
    logits = logits.masked_fill(logits < kth_value, float("-inf"))
    # Nucleus: keep tokens whose exclusive cumulative probability (in descending order) is < top_p.
    sorted_logits = sorted_logits.masked_fill(sorted_logits < kth_value, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    exclusive = probs.cumsum(dim=-1) - probs
    keep_sorted = (exclusive < top_p[:, None]) | open_nucleus
    keep_sorted[:, 0] = True
    # The smallest kept logit in sorted order is the threshold for the row.
    threshold = sorted_logits.masked_fill(~keep_sorted, float("inf")).amin(dim=-1, keepdim=True)
    return logits.masked_fill(logits < threshold, float("-inf"))


def sample(logits: torch.Tensor, params: SamplingTensors, seeds: torch.Tensor, steps: torch.Tensor,
           group: int, exponential: torch.Tensor | None = None) -> torch.Tensor:
    """Pick one token per row from processed ``logits [B, V]`` (float32): argmax where ``do_sample`` is
    False, otherwise temperature -> top-k -> top-p -> categorical draw (exponential race). Returns ``[B]``.
    ``exponential [B, V]``: this group's race variates, if already made (``group_exponential``); else they
    are made here from ``uniform_noise``, bit for bit the same."""
    greedy = logits.argmax(dim=-1)
    scaled = logits / params.temperature[:, None]
    filtered = filter_top_k_top_p(scaled, params.top_k, params.top_p, params.kth, params.open_nucleus)
    probs = filtered.softmax(dim=-1)
    if exponential is None:
        exponential = -torch.log(uniform_noise(seeds, steps, group, logits.shape[-1]))
    race = probs / exponential
    # A filtered-out token has probability 0 and must never win the race, whatever the noise.
    drawn = race.masked_fill(probs <= 0, -1.0).argmax(dim=-1)
    return torch.where(params.do_sample, drawn, greedy)


def process_code0_logits(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor,
                         steps: torch.Tensor, eos_id: int, codebook_size: int, min_steps: int = 2
                         ) -> torch.Tensor:
    """The talker's logit rules, in the official order. ``logits [B, V]`` float32, ``seen [B, V]`` bool
    (codes generated so far by the row), ``penalty [B]``, ``steps [B]`` (codes generated so far).

    1. repetition penalty on previously generated codes (divide positive, multiply negative logits);
    2. suppress every control id (``>= codebook_size``) except EOS;
    3. forbid EOS while fewer than ``min_steps`` codes were generated.
    """
    p = penalty[:, None]
    penalised = torch.where(logits < 0, logits * p, logits / p)
    logits = torch.where(seen, penalised, logits)
    V = logits.shape[-1]
    ids = torch.arange(V, device=logits.device)
    suppressed = (ids >= codebook_size) & (ids != eos_id)
    logits = logits.masked_fill(suppressed[None, :], float("-inf"))
    eos_banned = (steps < min_steps)[:, None] & (ids == eos_id)[None, :]
    return logits.masked_fill(eos_banned, float("-inf"))
