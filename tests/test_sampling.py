"""Sampling rules: the official logit processing order, filters, greedy, seeded and batch-invariant noise."""

from __future__ import annotations

import re

import pytest
import torch

from qtts import gemv
from qtts.sampling import SamplingTensors, filter_top_k_top_p, process_code0_logits, sample, uniform_noise

EOS, CODEBOOK, V = 2150, 2048, 3072


def _params(B: int, do_sample=True, temperature=1.0, top_k=0, top_p=1.0) -> SamplingTensors:
    return SamplingTensors(torch.full((B,), do_sample), torch.full((B,), float(temperature)),
                           torch.full((B,), top_k), torch.full((B,), float(top_p)))


def test_control_ids_suppressed_except_eos():
    logits = torch.zeros(1, V)
    out = process_code0_logits(logits, torch.zeros(1, V, dtype=torch.bool), torch.ones(1), torch.tensor([5]),
                               EOS, CODEBOOK)
    assert torch.isinf(out[0, CODEBOOK:]).sum() == V - CODEBOOK - 1
    assert out[0, EOS] == 0 and torch.isfinite(out[0, :CODEBOOK]).all()


def test_eos_banned_for_first_two_steps():
    logits = torch.zeros(3, V)
    logits[:, EOS] = 100.0
    out = process_code0_logits(logits, torch.zeros(3, V, dtype=torch.bool), torch.ones(3),
                               torch.tensor([0, 1, 2]), EOS, CODEBOOK)
    assert out[0, EOS] == float("-inf") and out[1, EOS] == float("-inf") and out[2, EOS] == 100.0


def test_repetition_penalty_only_on_seen_codes():
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = process_code0_logits(logits, seen, torch.tensor([2.0]), torch.tensor([3]), eos_id=3, codebook_size=4)
    assert out.tolist() == [[1.0, -4.0, 2.0, -2.0]]


def test_top_k_and_top_p():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(3, 1)
    out = filter_top_k_top_p(logits, torch.tensor([2, 0, 0]), torch.tensor([1.0, 1.0, 0.7]))
    assert torch.isfinite(out[0]).tolist() == [True, True, False, False, False]
    assert torch.isfinite(out[1]).all()
    probs = logits[2].softmax(-1)
    assert probs[0] < 0.7 < probs[:2].sum()  # nucleus of 0.7 needs exactly the top two
    assert torch.isfinite(out[2]).tolist() == [True, True, False, False, False]


def test_greedy_is_argmax_and_sampling_follows_distribution():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    steps, seeds = torch.zeros(4, dtype=torch.long), torch.arange(4)
    assert torch.equal(sample(logits, _params(4, do_sample=False), seeds, steps, 0), logits.argmax(-1))
    # Empirical frequencies over many seeds approach the softmax distribution.
    row = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    n = 4000
    draws = sample(row.repeat(n, 1), _params(n), torch.arange(n), torch.zeros(n, dtype=torch.long), 0)
    freq = torch.bincount(draws, minlength=4).float() / n
    assert (freq - row[0].softmax(-1)).abs().max() < 0.03


def test_noise_is_a_pure_function_of_seed_step_group():
    seeds = torch.tensor([1, 2, 3, 1])
    steps = torch.tensor([0, 0, 0, 0])
    a = uniform_noise(seeds, steps, 0, 100)
    assert torch.equal(a[0], a[3]) and not torch.equal(a[0], a[1])
    assert torch.equal(uniform_noise(seeds[1:2], steps[1:2], 0, 100)[0], a[1])  # batch-invariant
    assert not torch.equal(uniform_noise(seeds, steps, 1, 100), a)
    assert not torch.equal(uniform_noise(seeds, steps + 1, 0, 100), a)
    assert a.min() > 0 and a.max() < 1 and abs(a.mean().item() - 0.5) < 0.05


def test_sampling_reproducible_and_batch_invariant():
    torch.manual_seed(0)
    logits = torch.randn(3, 2048)
    params = _params(3, temperature=0.9, top_k=50)
    seeds, steps = torch.tensor([11, 22, 33]), torch.tensor([4, 5, 6])
    batched = sample(logits, params, seeds, steps, 3)
    single = torch.cat([sample(logits[i:i + 1], _params(1, temperature=0.9, top_k=50), seeds[i:i + 1],
                               steps[i:i + 1], 3) for i in range(3)])
    assert torch.equal(batched, single)


def test_noise_never_reaches_one_so_masked_tokens_never_win():
    # Seed 10236, step 0, group 0 hashes token 932 to the top 24-bit value, which rounded to u == 1.0 in
    # float32 before the clamp; -log(1) = 0 made the masked token's race 0/0 = NaN, and argmax picked it.
    seeds, steps = torch.tensor([10236]), torch.tensor([0])
    u = uniform_noise(seeds, steps, 0, 3072)
    assert float(u.max()) < 1.0 and float(u.min()) > 0.0
    assert float(u[0, 932]) > 1.0 - 1e-6
    logits = torch.zeros(1, 3072)
    logits[0, 932] = float("-inf")  # e.g. a suppressed control id
    for top_k, top_p in ((0, 1.0), (50, 1.0), (0, 0.9)):
        token = sample(logits, _params(1, top_k=top_k, top_p=top_p), seeds, steps, 0)
        assert int(token) != 932


def test_group_noise_is_each_groups_noise():
    """A frame draws its 15 predictor groups' noise in one call: bit for bit what each group draws alone."""
    from qtts.sampling import group_noise

    seeds = torch.tensor([0, 1, 2**40 + 7, 2**63 - 1])
    steps = torch.tensor([0, 5, 2**31, 7])
    together = group_noise(seeds, steps, 1, 15, 2048)
    assert together.shape == (4, 15, 2048)
    for g in range(1, 16):
        assert torch.equal(together[:, g - 1], uniform_noise(seeds, steps, g, 2048))
    assert not torch.equal(together[:, 0], together[:, 1])


def test_prepared_parameters_and_race_variates_pick_the_same_tokens():
    """``SamplingTensors.prepared`` (the top-k index and nucleus flag derived once per frame) with the variates of
    ``group_exponential`` picks bit for bit what ``sample`` picks deriving both at each call."""
    from qtts.sampling import group_exponential, group_noise

    torch.manual_seed(0)
    V = 300
    logits = torch.randn(6, V) * 3
    logits[1, :40] = logits[1, 0]  # ties at the k-th value
    params = SamplingTensors(torch.tensor([True, True, True, True, False, True]),
                             torch.tensor([0.9, 1.0, 0.7, 1.3, 0.9, 0.5]),
                             torch.tensor([50, 0, 400, 1, 50, 20]), torch.tensor([1.0, 0.8, 0.5, 1.0, 1.0, 0.95]))
    seeds, steps = torch.arange(6) * 977, torch.arange(6) + 3
    prepared = params.prepared(V)
    assert prepared.kth.shape == (6, 1) and prepared.always_kept.shape == (6, V)
    assert prepared.kth[:, 0].tolist() == [49, V - 1, V - 1, 0, 49, 19]
    race = group_exponential(seeds, steps, 1, 4, V)
    assert torch.equal(race, -torch.log(group_noise(seeds, steps, 1, 4, V)))
    for g in range(1, 5):
        expected = sample(logits, params, seeds, steps, g)
        assert torch.equal(sample(logits, prepared, seeds, steps, g, race[:, g - 1]), expected)
        assert torch.equal(filter_top_k_top_p(logits, params.top_k, params.top_p, prepared.kth, prepared.always_kept),
                           filter_top_k_top_p(logits, params.top_k, params.top_p))


def _textbook_filter(row: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """One row, the two cuts one after the other as written down: top-k (ties kept), then the nucleus over
    what top-k kept (the most likely token always kept)."""
    V = row.shape[0]
    k = top_k if 0 < top_k <= V else V
    x = row.masked_fill(row < row.sort(descending=True).values[k - 1], float("-inf"))
    if top_p < 1.0:
        ordered = x.sort(descending=True).values
        probs = ordered.softmax(-1)
        keep = probs.cumsum(-1) - probs < top_p
        keep[0] = True
        x = x.masked_fill(x < ordered[keep].min(), float("-inf"))
    return x


def _hard_logits(B: int, V: int) -> torch.Tensor:
    """Seeded ``[B, V]`` logits of every scale with the filters' hard cases: ties with the maximum, ties elsewhere,
    suppressed (-inf) tokens."""
    torch.manual_seed(1)
    logits = torch.randn(B, V) * torch.linspace(0.1, 12, B)[:, None]
    logits[::5, :30] = logits[::5, :1]  # ties with the maximum
    logits[1::5, 10:40] = logits[1::5, 9:10]  # ties elsewhere
    logits[2::5, V // 2:] = float("-inf")  # suppressed tokens
    return logits


def test_filter_and_race_equal_the_textbook_cuts_and_draw():
    """The filter applies both cuts with one threshold and the race has no guard for filtered tokens (they
    cannot win): bit for bit the textbook version (two cuts, guarded race), over ties, -inf logits, every kind
    of top-k / top-p, prepared or not."""
    from qtts.sampling import group_exponential

    V, B = 257, 48
    logits = _hard_logits(B, V)
    top_k = torch.tensor([0, 1, 2, 7, 50, V, V + 3, 30] * 6)
    top_p = torch.tensor([1.0, 0.95, 0.5, 1e-6, 0.999999, 0.0] * 8)  # 0: only the first sorted position
    params = SamplingTensors(torch.ones(B, dtype=torch.bool), torch.rand(B) + 0.3, top_k, top_p)
    seeds, steps = torch.arange(B) * 7919, torch.arange(B)
    scaled = logits / params.temperature[:, None]
    expected = torch.stack([_textbook_filter(scaled[i], int(top_k[i]), float(top_p[i])) for i in range(B)])
    assert torch.equal(filter_top_k_top_p(scaled, top_k, top_p), expected)
    prepared = params.prepared(V)
    assert torch.equal(filter_top_k_top_p(scaled, top_k, top_p, prepared.kth, prepared.always_kept), expected)
    race = group_exponential(seeds, steps, 1, 3, V)
    for g in range(1, 4):
        probs = expected.softmax(-1)
        textbook = (probs / race[:, g - 1]).masked_fill(probs <= 0, -1.0).argmax(-1)
        assert torch.equal(sample(logits, params, seeds, steps, g), textbook)
        assert torch.equal(sample(logits, prepared, seeds, steps, g, race[:, g - 1]), textbook)


def test_a_filtered_token_loses_the_race_even_against_extreme_variates():
    """The race has no guard: a filtered token (probability 0) must lose even when its variate is the smallest
    possible and the kept tokens' the largest."""
    V = 2048
    logits = torch.zeros(1, V)
    logits[0, 0] = 1e-3  # barely the most likely
    params = SamplingTensors(torch.tensor([True]), torch.ones(1), torch.tensor([1]), torch.ones(1))
    race = torch.full((1, V), float(-torch.log(torch.tensor(1.0 - 2.0**-24))))  # smallest variate
    race[0, 0] = float(-torch.log(torch.tensor(2.0**-25)))  # largest, on the only kept token
    assert int(sample(logits, params, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), 1,
                      race[:, :])) == 0
    # Many tokens kept: each has probability ~1 / V, still positive against the largest variate.
    params = SamplingTensors(torch.tensor([True]), torch.ones(1), torch.zeros(1, dtype=torch.long), torch.ones(1))
    logits[0, V // 2:] = float("-inf")
    race = torch.full((1, V), float(-torch.log(torch.tensor(2.0**-25))))
    race[0, V // 2:] = 6e-8
    token = int(sample(logits, params, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), 1, race))
    assert token < V // 2


def test_frame_exponentials_are_each_groups_variates():
    """A frame's race variates come from one hash of (seed, step, group) split over the talker's and the
    predictor's vocabularies: bit for bit ``group_exponential`` of each group. The seed key made on the host
    from a Python int equals the one made on device tensors."""
    from qtts.sampling import frame_exponentials, group_exponential, group_offsets, seed_key, token_hash

    seeds = torch.tensor([0, 1, 2**40 + 7, 2**63 - 1])
    steps = torch.tensor([0, 5, 2**31, 7])
    keys = seed_key(seeds)
    assert keys.tolist() == [seed_key(int(s)) for s in seeds]
    code0, groups = frame_exponentials(keys, steps, group_offsets(0, 16), token_hash(3072), (3072, 2048))
    assert code0.shape == (4, 3072) and groups.shape == (4, 15, 2048)
    assert torch.equal(code0, group_exponential(seeds, steps, 0, 1, 3072)[:, 0])
    assert torch.equal(groups, group_exponential(seeds, steps, 1, 15, 2048))
    # The predictor may have the larger vocabulary: each part takes its prefix of the table.
    code0, groups = frame_exponentials(keys, steps, group_offsets(0, 3), token_hash(500), (300, 500))
    assert torch.equal(code0, group_exponential(seeds, steps, 0, 1, 300)[:, 0])
    assert torch.equal(groups, group_exponential(seeds, steps, 1, 2, 500))


def test_group_offsets_are_the_hash_constant_times_the_group():
    from qtts.sampling import group_offsets

    assert group_offsets(0, 16).tolist() == [(g + 1) * 0x9E3779B9 % 2**32 for g in range(16)]
    assert group_offsets(5, 2).tolist() == group_offsets(0, 7).tolist()[5:]


def test_compiled_frame_noise_makes_no_index_range():
    """Compiled, the frame's noise hash takes its per-group part as a tensor (``group_offsets``): built inside
    the region, ``arange * 0x9E3779B9`` became Triton index arithmetic in int32, and inductor's CUDA kernel
    failed to compile ("Scalar 2654435769 is out of range for type int32", H100, torch 2.11)."""
    from qtts.sampling import frame_exponentials, group_offsets, seed_key, token_hash

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    keys, steps = seed_key(torch.tensor([3, 4])), torch.tensor([1, 9])
    args = (keys, steps, group_offsets(0, 16), token_hash(3072), (3072, 2048))
    got = torch.compile(frame_exponentials, backend=backend, fullgraph=True)(*args)
    targets = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert targets and not any("arange" in t for t in targets)
    assert all(torch.equal(a, b) for a, b in zip(got, frame_exponentials(*args), strict=True))


def test_pairwise_filter_equals_the_textbook_cuts():
    """The sort-free filter (compiled code on a GPU, ``CUDA_FILTER``): top-k exact whatever the ties; the nucleus
    the same where no boundary lies within rounding of ``top_p`` (these rows: none does)."""
    from qtts.sampling import filter_pairwise, kth_index

    V, B = 257, 48
    logits = _hard_logits(B, V)
    top_k = torch.tensor([0, 1, 2, 7, 50, V, V + 3, 30] * 6)
    top_p = torch.tensor([1.0, 0.95, 0.5, 1e-6, 0.9, 0.0] * 8)
    expected = torch.stack([_textbook_filter(logits[i], int(top_k[i]), float(top_p[i])) for i in range(B)])
    assert torch.equal(filter_pairwise(logits, top_k, top_p), expected)
    assert torch.equal(filter_pairwise(logits, top_k, top_p, kth_index(top_k, V)), expected)
    ones = torch.ones(B)  # no nucleus: top-k alone, exact
    assert torch.equal(filter_pairwise(logits, top_k, ones), filter_top_k_top_p(logits, top_k, ones))


def test_a_top_k_bound_filters_from_the_largest_logits_only(monkeypatch):
    """With a bound on the rows' top-k (``width``, a frame state's ``sort_width``) the filter takes the ``width``
    largest logits (``topk``) instead of sorting all of them: the textbook cuts over ties and -inf logits (the
    nucleus where no boundary lies within rounding of ``top_p``: none does in these rows), and the same picks;
    a bound of the vocabulary or more sorts."""
    from qtts.sampling import group_exponential

    V, B = 257, 48
    logits = _hard_logits(B, V)
    top_k = torch.tensor([1, 2, 7, 50, 30, 49] * 8)
    top_p = torch.tensor([1.0, 0.95, 0.5, 1e-6, 0.9, 0.0, 1.0, 0.99] * 6)
    params = SamplingTensors(torch.ones(B, dtype=torch.bool), torch.rand(B) + 0.3, top_k, top_p).prepared(V)
    expected = torch.stack([_textbook_filter(logits[i], int(top_k[i]), float(top_p[i])) for i in range(B)])
    sorts = []
    monkeypatch.setattr(torch.Tensor, "sort", lambda self, *a, **k: sorts.append(1) or torch.sort(self, *a, **k))
    for width in (50, 64):
        assert torch.equal(filter_top_k_top_p(logits, top_k, top_p, params.kth, params.always_kept, width), expected)
    assert not sorts
    assert torch.equal(filter_top_k_top_p(logits, top_k, top_p, params.kth, params.always_kept, V), expected)
    assert sorts
    seeds, steps = torch.arange(B) * 7919, torch.arange(B)
    race = group_exponential(seeds, steps, 1, 1, V)[:, 0]
    assert torch.equal(sample(logits, params, seeds, steps, 1, race, width=50), sample(logits, params, seeds, steps,
                                                                                         1, race))


def test_filter_choice_per_batch_size(monkeypatch):
    """``CUDA_FILTER = "auto"`` (the default): compiled code on CUDA filters one stream's picks without a sort
    (faster there) and a batch's with one (the pair terms grow with the rows); eager code and CPUs always sort."""
    from qtts import sampling

    assert sampling.CUDA_FILTER == "auto" and sampling.PAIRWISE_MAX_ROWS == 1
    assert sampling.uses_pairwise(1, True) and not sampling.uses_pairwise(2, True)
    assert not sampling.uses_pairwise(1, False)
    monkeypatch.setattr(sampling, "CUDA_FILTER", "pairwise")
    assert sampling.uses_pairwise(8, True) and not sampling.uses_pairwise(8, False)
    monkeypatch.setattr(sampling, "CUDA_FILTER", "sort")
    assert not sampling.uses_pairwise(1, True)
    monkeypatch.setattr(sampling, "CUDA_FILTER", "pairs")
    with pytest.raises(ValueError, match="CUDA_FILTER"):
        sampling.uses_pairwise(1, False)


@pytest.mark.skipif(not gemv.available(), reason="torch.compile (inductor) cannot build kernels here")
def test_compiled_pairwise_filter_keeps_no_pairs_buffer():
    """Compiled, the ``V * V`` pair terms are fused into the reductions, never stored (8 streams over the
    talker's 3072 codes would be 75 M of them per pick)."""
    from torch._inductor.utils import run_and_get_code

    from qtts.sampling import filter_pairwise

    V = 96
    logits, top_k, top_p = torch.randn(3, V), torch.tensor([0, 5, 50]), torch.tensor([1.0, 0.9, 0.5])
    out, code = run_and_get_code(torch.compile(filter_pairwise), logits, top_k, top_p)
    assert torch.equal(out, filter_pairwise(logits, top_k, top_p))
    sizes = re.findall(r"empty_strided_cpu\(\(([^)]*)\)", "\n".join(code))
    assert sizes and not any(str(V * V) in s or f"{V}, {V}" in s for s in sizes), sizes
