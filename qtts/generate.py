"""The frame loop as functions over a batch of independent streams (slots).

``prefill`` fills one slot from its prompt and samples its first code-0. ``decode_frame`` advances every
slot by one frame: the 15 predictor steps complete the pending frame, the talker consumes it (plus the
slot's next text vector) and samples the next code-0. ``decode_frame`` has no host synchronisation and
no Python branching on tensor values; the host only passes ``span`` (how many cache slots attention reads),
which it knows from its own bookkeeping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable

import torch

from .embed import sum_groups
from .errors import InputError
from .model.cache import KVCache, causal_mask
from .model.layers import additive_mask
from .model.talker import Talker
from .sampling import (
    SamplingTensors,
    frame_exponentials,
    group_exponential,
    group_offsets,
    process_code0_logits,
    sample,
    seed_key,
    token_hash,
)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Sampling of one code kind. ``do_sample=False`` is greedy; ``top_k=0`` and ``top_p=1`` are off."""

    do_sample: bool = True
    temperature: float = 0.9
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise InputError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0, got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise InputError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


@dataclasses.dataclass(frozen=True)
class StreamParams:
    """Per-stream generation settings: talker (code 0) and predictor (codes 1..15) sampling and seed."""

    talker: SamplingParams
    predictor: SamplingParams
    seed: int


class PredictorSteps:
    """What the code predictor's steps need besides their inputs, made once per state: it runs at the same
    positions every frame (0-1 for group 1, then ``g`` for group ``g``), so its cache positions ``[B, S]``,
    RoPE ``(cos, sin)`` ``[1, 1, S, D]`` and additive causal mask rows ``[1, 1, S, G]`` are the same each frame.
    Built per frame they were ~15 operations per step (kernels of a graphed frame); indexed by the group they
    are none. One tensor per step (not slices of one table), so a compiled region sees the same input layout
    at every step."""

    def __init__(self, talker: Talker, batch: int, device: torch.device, dtype: torch.dtype) -> None:
        G = talker.cfg.num_code_groups
        decoder = talker.code_predictor.model
        grid = torch.arange(G, device=device)[None]  # [1, G]
        cos, sin = decoder.rotary.cos_sin(grid, dtype)  # [1, 1, G, D]
        mask = additive_mask(causal_mask(grid, G), dtype)  # [1, 1, G, G]
        spans = {g: slice(0, 2) if g == 1 else slice(g, g + 1) for g in range(1, G)}  # group -> positions
        self.positions = {g: grid[:, s].expand(batch, -1).contiguous() for g, s in spans.items()}
        self.rope = {g: (cos[:, :, s].contiguous(), sin[:, :, s].contiguous()) for g, s in spans.items()}
        self.masks = {g: mask[:, :, s].contiguous() for g, s in spans.items()}

    def head(self, n: int) -> PredictorSteps:
        """A view for slots ``0..n-1``."""
        view = object.__new__(PredictorSteps)
        view.positions = {g: t[:n] for g, t in self.positions.items()}
        view.rope, view.masks = self.rope, self.masks
        return view


class FrameState:
    """Decode state of ``batch`` slots: talker and predictor caches, positions, last hidden and code-0,
    the codes seen (for the repetition penalty), pending text vectors and per-slot sampling tensors."""

    def __init__(self, talker: Talker, batch: int, max_len: int, text_cap: int = 64) -> None:
        t, p = talker.cfg, talker.cfg.code_predictor_config
        w = talker.codec_head.weight
        device, dtype = w.device, w.dtype
        self.groups = t.num_code_groups
        self.cache = KVCache(t.num_hidden_layers, batch, t.num_key_value_heads, max_len, t.head_dim, device, dtype)
        self.pred_cache = KVCache(p.num_hidden_layers, batch, p.num_key_value_heads, self.groups, p.head_dim,
                                  device, dtype)
        self.pred_steps = PredictorSteps(talker, batch, device, dtype)
        self.tokens = token_hash(max(t.vocab_size, p.vocab_size), device)  # the noise hash's per-token half
        self.offsets = group_offsets(0, self.groups, device)  # ... and its per-group part
        z = dict(device=device)
        self.positions = torch.zeros(batch, dtype=torch.long, **z)
        self.steps = torch.zeros(batch, dtype=torch.long, **z)
        self.active = torch.zeros(batch, dtype=torch.bool, **z)
        self.hidden = torch.zeros(batch, t.hidden_size, dtype=dtype, **z)
        self.code0 = torch.zeros(batch, dtype=torch.long, **z)
        self.seen = torch.zeros(batch, t.vocab_size, dtype=torch.bool, **z)
        self.text = torch.zeros(batch, text_cap, t.hidden_size, dtype=dtype, **z)
        self.text_len = torch.zeros(batch, dtype=torch.long, **z)
        self.pad = torch.zeros(t.hidden_size, dtype=dtype, **z)
        self.seeds = torch.zeros(batch, dtype=torch.long, **z)
        self.seed_keys = torch.zeros(batch, dtype=torch.long, **z)  # sampling.seed_key of each seed
        self.penalty = torch.ones(batch, **z)
        # Each slot's sampling parameters, with the filter's derived tensors (``kth``, ``always_kept``) for the
        # kind's vocabulary, written once per stream by ``set_params``.
        self.talker_params = _sampling_tensors(batch, t.vocab_size, device)
        self.predictor_params = _sampling_tensors(batch, p.vocab_size, device)
        # Host copy of each slot's do_sample (talker, predictor): lets a step of greedy slots skip the sampling
        # filter without reading a device tensor. Shared with views from ``head``.
        self.sampling = [(False, False)] * batch
        # ... and of each slot's cuts, (top-k, top-p) for the talker and the predictor: the bound of a pick's filter
        # (``sort_width``). Shared with views too.
        self.cuts = [((0, 1.0), (0, 1.0))] * batch

    @property
    def batch(self) -> int:
        return self.positions.shape[0]

    def set_params(self, row: int, params: StreamParams) -> None:
        """Write one slot's sampling parameters and seed (host values into device tensors, the sampling
        filter's derived tensors with them: a few device operations per stream, none per frame)."""
        for tensors, sp in ((self.talker_params, params.talker), (self.predictor_params, params.predictor)):
            tensors.set_row(row, sp.do_sample, sp.temperature, sp.top_k, sp.top_p)
        self.penalty[row] = params.talker.repetition_penalty
        self.seeds[row] = params.seed & 0x7FFFFFFFFFFFFFFF
        self.seed_keys[row] = seed_key(params.seed & 0x7FFFFFFFFFFFFFFF)
        self.sampling[row] = (params.talker.do_sample, params.predictor.do_sample)
        self.cuts[row] = ((params.talker.top_k, params.talker.top_p), (params.predictor.top_k, params.predictor.top_p))

    def samples(self, kind: int, rows: slice = slice(None)) -> bool:
        """Whether any of ``rows`` (of this state or view) samples code kind ``kind`` (0 = talker code-0,
        1 = predictor codes) rather than decoding greedily; host bookkeeping, no device read."""
        return any(flags[kind] for flags in self.sampling[: self.batch][rows])

    def sort_width(self, kind: int, rows: slice = slice(None)) -> int | None:
        """The largest top-k among ``rows`` that sample code kind ``kind`` (at least 2: one compiled graph serves
        every bound, ``qtts.accel``): how many of the largest logits their filter needs
        (``sampling.filter_top_k_top_p`` 's ``width``). None when none samples, or one of them keeps every token
        (top-k 0) or has a nucleus (top-p < 1): without one any bound of at least the top-k changes no bit of a
        row's filter, so a stream's codes stay the same alone or batched with any other. Host bookkeeping, no
        device read."""
        n = self.batch
        cuts = [c[kind] for flags, c in zip(self.sampling[:n][rows], self.cuts[:n][rows], strict=True) if flags[kind]]
        if not cuts or any(k <= 0 or p < 1.0 for k, p in cuts):
            return None
        return max(2, *(k for k, _ in cuts))

    def set_text(self, row: int, trailing: torch.Tensor, start: int = 0) -> None:
        """Set the text vectors ``[N, H]`` a slot consumes one per decode step, from index ``start`` on
        (``start > 0`` appends to text that is still arriving); afterwards the slot has ``start + N``."""
        n = start + trailing.shape[0]
        if n > self.text.shape[1]:
            grown = torch.zeros(self.batch, max(n, 2 * self.text.shape[1]), self.text.shape[2],
                                dtype=self.text.dtype, device=self.text.device)
            grown[:, : self.text.shape[1]] = self.text
            self.text = grown
        self.text[row, start:n] = trailing
        self.text_len[row] = n

    def head(self, n: int) -> FrameState:
        """A view of slots ``0..n-1`` (tensors are views: updates through it land in this state)."""
        view = object.__new__(FrameState)
        rows = slice(0, n)
        view.groups, view.pad, view.sampling, view.tokens = self.groups, self.pad, self.sampling, self.tokens
        view.cuts = self.cuts
        view.offsets = self.offsets
        view.cache = self.cache.head(n)
        view.pred_cache = self.pred_cache.head(n)
        view.pred_steps = self.pred_steps.head(n)
        for name in _ROW_TENSORS:
            setattr(view, name, getattr(self, name)[rows])
        view.talker_params = self.talker_params.rows(rows)
        view.predictor_params = self.predictor_params.rows(rows)
        return view

    def move_row(self, src: int, dst: int) -> None:
        """Copy slot ``src`` (caches, text, sampling, counters) into slot ``dst``; keeps live slots packed."""
        for cache in (self.cache, self.pred_cache):
            cache.k[:, dst] = cache.k[:, src]
            cache.v[:, dst] = cache.v[:, src]
        for name in _ROW_TENSORS:
            t = getattr(self, name)
            t[dst] = t[src]
        for params in (self.talker_params, self.predictor_params):
            params.copy_row(src, dst)
        self.sampling[dst] = self.sampling[src]
        self.cuts[dst] = self.cuts[src]


_ROW_TENSORS = ("positions", "steps", "active", "hidden", "code0", "seen", "text", "text_len", "seeds", "seed_keys",
                "penalty")


def _sampling_tensors(batch: int, vocab: int, device: torch.device) -> SamplingTensors:
    """``batch`` greedy rows (no top-k, no nucleus) prepared for picks among ``vocab`` tokens."""
    return SamplingTensors(
        do_sample=torch.zeros(batch, dtype=torch.bool, device=device),
        temperature=torch.ones(batch, device=device),
        top_k=torch.zeros(batch, dtype=torch.long, device=device),
        top_p=torch.ones(batch, device=device),
    ).prepared(vocab)


def greedy(logits: torch.Tensor, *_args: object) -> torch.Tensor:
    """``sample`` when no row samples: the argmax of ``logits [B, V]`` -> ``[B]`` (what ``sample`` returns for
    greedy rows, without its top-k / top-p filter, which sorts the vocabulary)."""
    return logits.argmax(dim=-1)


@dataclasses.dataclass(frozen=True)
class Kernels:
    """The sampling functions the frame step calls (swapped for compiled versions by ``qtts.accel``).

    ``greedy_shortcut``: when no slot of a step samples a code kind (known on the host from the slots'
    parameters), pick that kind's codes with ``greedy`` instead of ``sample``; same codes, no sort. When some
    do and ``top_k_bound`` is set, ``sample`` gets their top-k bound (``FrameState.sort_width``): its filter then
    takes the largest logits with ``topk`` instead of sorting them all. Off under CUDA graphs, whose replay
    repeats whichever branch (and bound) the capture took."""

    sample: Callable[..., torch.Tensor] = sample
    code0_logits: Callable[..., torch.Tensor] = process_code0_logits
    noise: Callable[..., tuple[torch.Tensor, torch.Tensor]] = frame_exponentials  # a frame's race variates
    fixed_span: bool = False  # predictor attention reads all G cache slots (masked): one shape per step
    greedy_shortcut: bool = True
    top_k_bound: bool = True  # with ``greedy_shortcut``: ``sample`` gets the rows' top-k bound (``width``)

    def samples(self, state: FrameState, kind: int, rows: slice = slice(None)) -> bool:
        """Whether ``rows`` ' picks of code kind ``kind`` go through ``sample`` (else ``greedy``); host bookkeeping."""
        return not self.greedy_shortcut or state.samples(kind, rows)

    def sampler(self, state: FrameState, kind: int, rows: slice = slice(None)) -> Callable[..., torch.Tensor]:
        """The function picking code kind ``kind`` (0 = code-0, 1 = predictor codes) for ``rows`` of ``state``."""
        if not self.samples(state, kind, rows):
            return greedy
        width = state.sort_width(kind, rows) if self.greedy_shortcut and self.top_k_bound else None
        return self.sample if width is None else functools.partial(self.sample, width=width)


EAGER = Kernels()

Timed = Callable[[str], contextlib.AbstractContextManager]
"""A timer over the parts of a frame step: ``with timed("predictor"): ...`` (``qtts.profile.Timer``)."""
_UNTIMED = contextlib.nullcontext()


def untimed(_part: str) -> contextlib.AbstractContextManager:
    """The ``Timed`` of an untimed frame step: does nothing."""
    return _UNTIMED


def _pick_code0(talker: Talker, state: FrameState, logits: torch.Tensor, rows: slice, race: torch.Tensor | None,
                kernels: Kernels = EAGER) -> torch.Tensor:
    """Apply the code-0 rules to ``rows`` ' code-0 logits ``[b, V]`` (float32) and pick code-0 (``race [b, V]``:
    the race variates, None when no row samples); returns ``[b]``."""
    cfg = talker.cfg
    logits = kernels.code0_logits(logits, state.seen[rows], state.penalty[rows], state.steps[rows],
                                  cfg.codec_eos_token_id, cfg.codebook_size)
    pick = kernels.sampler(state, 0, rows)
    return pick(logits, state.talker_params.rows(rows), state.seeds[rows], state.steps[rows], 0, race)


@torch.no_grad()
def prefill(talker: Talker, state: FrameState, row: int, prompt: torch.Tensor, trailing: torch.Tensor,
            params: StreamParams) -> None:
    """Start slot ``row``: run the talker over ``prompt [P, H]``, sample the first code-0, and set the
    slot's text vectors ``trailing [N, H]`` and ``params``. Needs ``state.cache.max_len >= P``."""
    P = prompt.shape[0]
    state.set_params(row, params)
    state.set_text(row, trailing)
    rows = slice(row, row + 1)
    positions = torch.arange(P, device=prompt.device)[None]
    hidden = talker(prompt[None], positions, state.cache.rows(rows), causal_mask(positions, P))[:, -1]
    state.seen[rows] = False
    state.steps[rows] = 0
    race = None
    if state.samples(0, rows):
        race = group_exponential(state.seeds[rows], state.steps[rows], 0, 1, talker.cfg.vocab_size, state.tokens)
    code0 = _pick_code0(talker, state, talker.codec_head(hidden).float(), rows, None if race is None else race[:, 0])
    state.hidden[rows] = hidden
    state.code0[rows] = code0
    state.seen[rows] = state.seen[rows].scatter(1, code0[:, None], True)
    state.steps[rows] = 1
    state.positions[rows] = P
    state.active[rows] = True


def predict_groups(talker: Talker, state: FrameState, race: torch.Tensor | None, kernels: Kernels = EAGER,
                   timed: Timed = untimed) -> tuple[torch.Tensor, torch.Tensor]:
    """Complete every slot's pending frame: its codes ``[B, G]`` (group 0 = the pending code-0) and its
    codec-track vector ``[B, H]`` for the talker (``frame_embedding`` of the codes, from the group embeddings
    the predictor steps already made). ``race [B, G - 1, V]``: the groups' race variates (``Kernels.noise``),
    None when no slot samples."""
    pred = talker.code_predictor
    caches = state.pred_cache.layers
    steps, G = state.pred_steps, state.groups
    with timed("other"):
        embeds = [talker.embed_codec(state.code0)]
        x = torch.stack([state.hidden, embeds[0]], dim=1)  # [B, 2, H]
    codes = [state.code0]
    pick = kernels.sampler(state, 1)
    params = state.predictor_params
    for g in range(1, G):
        with timed("predictor"):
            if g > 1:
                embeds.append(pred.embed_group(g - 1, codes[-1]))
                x = embeds[-1][:, None]
            mask = steps.masks[g] if kernels.fixed_span else steps.masks[g][..., :g + 1]
            logits = pred.step(x, steps.positions[g], caches, mask, steps.rope[g], pred.lm_head[g - 1])
        with timed("sampling"):
            codes.append(pick(logits, params, state.seeds, state.steps, g, None if race is None else race[:, g - 1]))
    with timed("other"):
        embeds.append(pred.embed_group(G - 1, codes[-1]))
        return torch.stack(codes, dim=1), sum_groups(embeds)


def next_text(state: FrameState) -> torch.Tensor:
    """Each slot's text vector for this decode step ``[B, H]``: its next pending text vector or ``tts_pad``."""
    k = state.steps - 1
    idx = k.clamp(min=0, max=state.text.shape[1] - 1)
    vec = state.text[torch.arange(state.batch, device=k.device), idx]
    return torch.where((k < state.text_len)[:, None], vec, state.pad)


@torch.no_grad()
def decode_frame(talker: Talker, state: FrameState, span: int, kernels: Kernels = EAGER, timed: Timed = untimed
                 ) -> torch.Tensor:
    """Advance all slots one frame. Returns the completed frames' codes ``[B, G]``; afterwards
    ``state.code0`` holds each slot's next code-0 (EOS ends a stream). ``span`` must exceed every active
    slot's position. Inactive slots are computed but keep their state (a paused slot resumes exactly).
    ``timed``: a timer around each part (``qtts profile``); none by default."""
    race0 = race = None
    if kernels.samples(state, 0) or kernels.samples(state, 1):
        with timed("sampling"):  # the race variates of all 16 picks at once
            vocabs = (talker.cfg.vocab_size, talker.code_predictor.cfg.vocab_size)
            race0, race = kernels.noise(state.seed_keys, state.steps, state.offsets, state.tokens, vocabs)
    codes, frame = predict_groups(talker, state, race, kernels, timed)
    with timed("other"):
        x = (frame + next_text(state))[:, None]
        positions = state.positions[:, None]
    with timed("talker"):
        hidden = talker(x, positions, state.cache.layers, causal_mask(positions, span))[:, -1]
        logits = talker.codec_head(hidden).float()
    with timed("sampling"):
        code0 = _pick_code0(talker, state, logits, slice(None), race0, kernels)
    with timed("other"):
        advance(state, hidden, code0)
    return codes


def advance(state: FrameState, hidden: torch.Tensor, code0: torch.Tensor) -> None:
    """End a frame: active slots take the talker's ``hidden [B, H]`` and next ``code0 [B]``, note code0 as
    seen (repetition penalty) and move one step on; inactive slots keep their state."""
    live = state.active[:, None]
    state.hidden.copy_(torch.where(live, hidden, state.hidden))
    state.code0.copy_(torch.where(state.active, code0, state.code0))
    idx = code0[:, None]
    state.seen.scatter_(1, idx, live | state.seen.gather(1, idx))
    step = state.active.long()
    state.steps.add_(step)
    state.positions.add_(step)
