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


def _mul32(x: torch.Tensor | int, c: int) -> torch.Tensor | int:
    """``(x * c) mod 2**32`` for ``0 <= x < 2**32`` without int64 overflow."""
    hi, lo = c >> 16, c & 0xFFFF
    return ((((x * hi) & 0xFFFF) << 16) + x * lo) & _M32


def _mix32(x: torch.Tensor | int) -> torch.Tensor | int:
    """A 32-bit integer hash (xor-shift-multiply) on int64 tensors (or Python ints) holding values in
    ``[0, 2**32)``."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


# The noise hash in three parts, each made where it changes: per seed (``seed_key``, once per stream), per
# (seed, step, group) (``group_keys``, once per frame for all groups), per token (``token_hash``, once per
# state); ``noise_from_keys`` joins the last two.

def seed_key(seeds: torch.Tensor | int) -> torch.Tensor | int:
    """The per-seed half of the noise hash of non-negative int64 ``seeds [B]`` (tensor or one Python int, the
    same value: a frame state computes it on the host when a stream starts)."""
    return _mix32((seeds & _M32) ^ _mix32((seeds >> 32) & _M32))


def group_offsets(first: int, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The per-group part of the (seed, step, group) hash for groups ``first .. first + count - 1``: ``[count]``
    int64, ``(group + 1) * 0x9E3779B9 mod 2**32``. A frame state makes it once and compiled code takes it as a
    tensor: inside a compiled region inductor folded ``arange * 0x9E3779B9`` into the kernel's 32-bit index
    arithmetic, which Triton rejects (the constant does not fit an int32)."""
    groups = torch.arange(first + 1, first + count + 1, device=device, dtype=torch.int64)
    return groups * 0x9E3779B9 & _M32


def group_keys(keys: torch.Tensor, steps: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``[B, count]``: the hash of (seed, step, group) for the groups of ``offsets = group_offsets(first,
    count)`` from ``keys = seed_key(seeds)`` and ``steps [B]``."""
    return _mix32(keys[:, None] ^ _mix32((steps & _M32)[:, None] + offsets[None, :] & _M32))


def token_hash(vocab: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The per-token half of the noise hash, ``[vocab]`` int64: the same for every row, step and group, so a
    frame state makes it once (``tokens`` of ``group_noise``) instead of ~19 operations per noise call. A
    prefix of a longer table is the table of the smaller vocabulary."""
    return _mix32(torch.arange(vocab, device=device, dtype=torch.int64))


def noise_from_keys(keys: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Uniform noise in (0, 1), ``[B, count, V]`` float32, from ``group_keys [B, count]`` and ``token_hash
    [V]``.

    The open interval matters: ``sample`` divides by ``-log(u)``, and a ``u`` that rounded to 1.0 would give
    ``0 / 0 = NaN`` for a masked token, which ``argmax`` then picks. 24 bits plus a half step do not fit a
    float32 mantissa below 1, so the top value is clamped to the largest float32 below 1."""
    h = _mix32(keys[:, :, None] ^ tokens[None, None, :])
    return (((h >> 8).float() + 0.5) / float(1 << 24)).clamp(max=_BELOW_ONE)


def group_noise(seeds: torch.Tensor, steps: torch.Tensor, first: int, count: int, vocab: int,
                tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Uniform noise in (0, 1) for code groups ``first .. first + count - 1`` at once: ``[B, count, vocab]``
    float32, a pure function of (seed, step, group, token) (``noise_from_keys``); ``[:, i]`` equals
    ``uniform_noise`` of group ``first + i`` bit for bit. ``tokens``: ``token_hash`` of at least ``vocab``
    tokens, if already made."""
    tokens = token_hash(vocab, seeds.device) if tokens is None else tokens[:vocab]
    return noise_from_keys(group_keys(seed_key(seeds), steps, group_offsets(first, count, seeds.device)), tokens)


def group_exponential(seeds: torch.Tensor, steps: torch.Tensor, first: int, count: int, vocab: int,
                      tokens: torch.Tensor | None = None) -> torch.Tensor:
    """``-log`` of ``group_noise``: the exponential variates ``sample`` races the probabilities against, for
    code groups ``first .. first + count - 1`` at once, ``[B, count, vocab]`` (``[:, i]`` is bit for bit what
    ``sample`` makes from group ``first + i`` 's noise). Each lies in ``[6e-8, 17.4]``: ``u`` is in
    ``[2**-25, 1 - 2**-24]``."""
    return -torch.log(group_noise(seeds, steps, first, count, vocab, tokens))


def frame_exponentials(keys: torch.Tensor, steps: torch.Tensor, offsets: torch.Tensor, tokens: torch.Tensor,
                       vocabs: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A frame's race variates, from one hash of (seed, step, group) for all its ``G`` groups (``offsets =
    group_offsets(0, G)``): code-0's over the talker's ``vocabs[0]`` tokens ``[B, V0]`` and groups ``1 .. G - 1``
    's over the predictor's ``vocabs[1]`` ``[B, G - 1, V1]``; bit for bit ``group_exponential`` of each (``keys =
    seed_key(seeds)``, ``tokens``: ``token_hash`` of at least both vocabularies). Under CUDA graphs without
    compilation every operation is a kernel: ~95 here against ~215 for two ``group_exponential`` calls."""
    hashed = group_keys(keys, steps, offsets)
    code0 = -torch.log(noise_from_keys(hashed[:, :1], tokens[:vocabs[0]]))[:, 0]
    return code0, -torch.log(noise_from_keys(hashed[:, 1:], tokens[:vocabs[1]]))


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
    # Derived from top_k / top_p by ``prepared`` (kept up to date by ``set_row``); None: ``sample`` derives them
    # at every call.
    kth: torch.Tensor | None = None  # [B, 1] long: index of each row's k-th largest logit
    always_kept: torch.Tensor | None = None  # [B, V] bool: sorted positions the nucleus cut never drops

    def prepared(self, vocab: int) -> SamplingTensors:
        """These parameters with ``kth`` and ``always_kept`` derived for picks among ``vocab`` tokens (new
        tensors). A frame state keeps them per slot (``set_row``): derived once per stream, not per pick."""
        return dataclasses.replace(self, kth=kth_index(self.top_k, vocab),
                                   always_kept=always_kept(self.top_p, vocab, self.top_p.device))

    def set_row(self, row: int, do_sample: bool, temperature: float, top_k: int, top_p: float) -> None:
        """Write row ``row`` in place (host values into these tensors, which may be views) and, where this
        object holds them (``prepared``), its ``kth`` and ``always_kept``, derived as ``prepared`` does."""
        self.do_sample[row] = do_sample
        self.temperature[row] = temperature
        self.top_k[row] = top_k
        self.top_p[row] = top_p
        if self.always_kept is not None and self.kth is not None:
            one, vocab = slice(row, row + 1), self.always_kept.shape[-1]
            self.kth[one] = kth_index(self.top_k[one], vocab)
            self.always_kept[one] = always_kept(self.top_p[one], vocab, self.top_p.device)

    def tensors(self) -> tuple[torch.Tensor | None, ...]:
        """All six fields in order (``kth`` and ``always_kept`` None unless prepared)."""
        return self.do_sample, self.temperature, self.top_k, self.top_p, self.kth, self.always_kept

    def rows(self, rows: slice) -> SamplingTensors:
        """Views of ``rows`` of every tensor (the derived ones included where present)."""
        return SamplingTensors(*(None if t is None else t[rows] for t in self.tensors()))

    def copy_row(self, src: int, dst: int) -> None:
        """Copy row ``src`` of every tensor into row ``dst``."""
        for t in self.tensors():
            if t is not None:
                t[dst] = t[src]


def kth_index(top_k: torch.Tensor, vocab: int) -> torch.Tensor:
    """Each row's top-k cut as an index into its descending-sorted logits, ``[B, 1]`` (``top_k`` 0 or larger
    than ``vocab``: no cut)."""
    k = torch.where((top_k <= 0) | (top_k > vocab), vocab, top_k).clamp(min=1)
    return (k - 1)[:, None]


def always_kept(top_p: torch.Tensor, vocab: int, device: torch.device | str) -> torch.Tensor:
    """``[B, vocab]`` bool: the descending-sorted positions each row keeps whatever its nucleus sum: all of them
    where ``top_p >= 1`` (no cut), else the first (the most likely token)."""
    return (top_p >= 1.0)[:, None] | (torch.arange(vocab, device=device) == 0)[None, :]


def filter_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                       kth: torch.Tensor | None = None, kept: torch.Tensor | None = None,
                       width: int | None = None) -> torch.Tensor:
    """Set logits outside each row's top-k / nucleus (top-p) to -inf. ``logits [B, V]``; ``kth``, ``kept``:
    ``SamplingTensors.kth`` / ``always_kept`` (derived here when None).

    Ties at the k-th value are kept; the most likely token is always kept. The top-k cut, then the nucleus
    over what it kept, in as few operations as give the same result (a graphed frame runs 16 filters): both
    cuts are a threshold on the logits, so one ``masked_fill`` with the larger threshold applies them together.

    ``width``: a host-known bound with ``0 < top_k <= width`` for every row whose result is used (a frame state's
    ``sort_width``). Both cuts then look only at the ``width`` largest logits, found by ``torch.topk`` instead of a
    sort of all ``V`` (on CPU a sort of 2048 logits took ~64 µs, ``topk`` of 50 ~7 µs). The same logits come out
    for ``top_p >= 1``; a nucleus sums the same probabilities over fewer columns, so a cut within rounding of
    ``top_p`` may move (``sort_width`` gives no bound then). Rows outside the bound get a meaningless filter.
    """
    V = logits.shape[-1]
    if kth is None:
        kth = kth_index(top_k, V)
    if kept is None:
        kept = always_kept(top_p, V, logits.device)
    if width is not None and width < V:
        sorted_logits = logits.topk(width, dim=-1).values  # descending
        kth, kept = kth.clamp(max=width - 1), kept[:, :width]
    else:
        sorted_logits, _ = logits.sort(dim=-1, descending=True)
    kth_value = sorted_logits.gather(1, kth)
    # Nucleus: keep tokens whose exclusive cumulative probability (in descending order) among the top-k is
    # < top_p.
    sorted_logits = sorted_logits.masked_fill(sorted_logits < kth_value, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    exclusive = probs.cumsum(dim=-1) - probs
    keep_sorted = (exclusive < top_p[:, None]) | kept
    # The smallest kept logit in sorted order is the row's nucleus threshold (-inf when no cut).
    threshold = torch.where(keep_sorted, sorted_logits, float("inf")).amin(dim=-1, keepdim=True)
    return logits.masked_fill(logits < torch.maximum(kth_value, threshold), float("-inf"))


def filter_pairwise(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                    kth: torch.Tensor | None = None) -> torch.Tensor:
    """``filter_top_k_top_p`` without a sort, for compiled code on a GPU: each token's rank (how many logits lie
    strictly above it) and the probability mass strictly above it come from all pairs of the row's tokens, a
    few fused reductions of ``V * V`` terms instead of a sort per pick (the sort took 22 µs per pick on an H100).

    The k-th largest logit is exact (the smallest logit with fewer than k above it), so top-k alone gives the
    same logits bit for bit. A token survives the nucleus when the mass above it is below ``top_p``: what the
    sorted form decides for the first token of each equal-logit run, with the mass summed in another order, so
    a nucleus boundary within rounding of ``top_p`` may fall one run apart (``top_p >= 1``: no cut, exact).
    Eager, the ``[B, V, V]`` terms are materialised (inductor fuses them into the reductions)."""
    V = logits.shape[-1]
    if kth is None:
        kth = kth_index(top_k, V)
    above = logits[:, None, :] > logits[:, :, None]  # [B, i, j]: token j's logit lies above token i's
    rank = above.sum(-1)  # [B, V]
    kth_value = torch.where(rank <= kth, logits, float("inf")).amin(dim=-1, keepdim=True)
    masked = logits.masked_fill(logits < kth_value, float("-inf"))
    probs = masked.softmax(dim=-1)
    mass = torch.where(above, probs[:, None, :], 0.0).sum(-1)  # [B, V]: probability strictly above each token
    keep = (mass < top_p[:, None]) | (top_p >= 1.0)[:, None] | (rank == 0)
    threshold = torch.where(keep, masked, float("inf")).amin(dim=-1, keepdim=True)
    return logits.masked_fill(logits < torch.maximum(kth_value, threshold), float("-inf"))


# How compiled code filters on CUDA: "sort" (``filter_top_k_top_p``), "pairwise" (``filter_pairwise``) or "auto":
# pairwise for batches of at most ``PAIRWISE_MAX_ROWS`` rows, else sort. On an H100 (BENCHMARKS.md, session 10)
# pairwise took one stream's compiled frame from 6.03 to 5.47 ms, but 8 streams' from 6.22 to 6.88 ms (its V * V
# terms grow with the rows; a sort took 22 µs per pick whatever the rows). Eager code and CPUs always sort. Read
# when ``sample`` is traced (a batch bucket's size is fixed there).
CUDA_FILTER = "auto"
PAIRWISE_MAX_ROWS = 1


def uses_pairwise(rows: int, cuda_compiled: bool) -> bool:
    """Whether ``sample`` filters a batch of ``rows`` without a sort (``CUDA_FILTER``): only in compiled code on
    CUDA (``cuda_compiled``)."""
    if CUDA_FILTER not in ("sort", "pairwise", "auto"):
        raise ValueError(f"sampling.CUDA_FILTER must be 'sort', 'pairwise' or 'auto', not {CUDA_FILTER!r}")
    if not cuda_compiled:
        return False
    return CUDA_FILTER == "pairwise" or (CUDA_FILTER == "auto" and rows <= PAIRWISE_MAX_ROWS)


def sample(logits: torch.Tensor, params: SamplingTensors, seeds: torch.Tensor, steps: torch.Tensor,
           group: int, exponential: torch.Tensor | None = None, width: int | None = None) -> torch.Tensor:
    """Pick one token per row from processed ``logits [B, V]`` (float32): argmax where ``do_sample`` is
    False, otherwise temperature -> top-k -> top-p -> categorical draw (exponential race). Returns ``[B]``.
    ``exponential [B, V]``: this group's race variates, if already made (``group_exponential``); else they
    are made here from ``uniform_noise``, bit for bit the same. ``width``: a bound on the sampling rows' top-k
    (``filter_top_k_top_p``; a frame state's ``sort_width``), or None.

    A filtered-out token never wins the race: its probability is exactly 0, so its race value is 0, while the
    most likely kept token has probability >= 1 / V and a variate <= 17.4 (``group_exponential``), so a
    positive race value."""
    greedy = logits.argmax(dim=-1)
    scaled = logits / params.temperature[:, None]
    if uses_pairwise(logits.shape[0], logits.is_cuda and torch.compiler.is_compiling()):
        filtered = filter_pairwise(scaled, params.top_k, params.top_p, params.kth)
    else:
        filtered = filter_top_k_top_p(scaled, params.top_k, params.top_p, params.kth, params.always_kept, width)
    probs = filtered.softmax(dim=-1)
    if exponential is None:
        exponential = -torch.log(uniform_noise(seeds, steps, group, logits.shape[-1]))
    drawn = (probs / exponential).argmax(dim=-1)
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
