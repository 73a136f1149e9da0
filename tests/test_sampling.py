"""Sampling rules: the official logit processing order, filters, greedy, seeded and batch-invariant noise."""

from __future__ import annotations

import torch

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
    assert prepared.kth.shape == prepared.open_nucleus.shape == (6, 1)
    assert prepared.kth[:, 0].tolist() == [49, V - 1, V - 1, 0, 49, 19]
    race = group_exponential(seeds, steps, 1, 4, V)
    assert torch.equal(race, -torch.log(group_noise(seeds, steps, 1, 4, V)))
    for g in range(1, 5):
        expected = sample(logits, params, seeds, steps, g)
        assert torch.equal(sample(logits, prepared, seeds, steps, g, race[:, g - 1]), expected)
        assert torch.equal(filter_top_k_top_p(logits, params.top_k, params.top_p, prepared.kth, prepared.open_nucleus),
                           filter_top_k_top_p(logits, params.top_k, params.top_p))
