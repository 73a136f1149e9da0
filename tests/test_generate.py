"""Frame functions: the host bookkeeping of which slots sample, and the greedy shortcut it enables."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from qtts import Sampling, Speaker, SynthesisOptions
from qtts.generate import EAGER, FrameState, Kernels, SamplingParams, StreamParams, decode_frame, prefill

GREEDY, SAMPLED = SamplingParams(do_sample=False), SamplingParams(top_k=20)


def test_sampling_flags_follow_the_slots(tiny_tts):
    state = FrameState(tiny_tts["custom_voice"].model.talker, 3, 32)
    assert not state.samples(0) and not state.samples(1)
    state.set_params(2, StreamParams(GREEDY, SAMPLED, seed=1))
    assert state.samples(1) and not state.samples(0)
    assert not state.head(2).samples(1)  # the sampling slot is outside the view
    assert state.samples(1, slice(2, 3)) and not state.samples(1, slice(0, 2))
    state.move_row(2, 0)
    assert state.head(1).samples(1)
    state.head(2).set_params(1, StreamParams(SAMPLED, GREEDY, seed=2))  # a view writes into the state
    assert state.samples(0, slice(1, 2)) and state.samples(0)


def test_sort_width_is_the_sampling_slots_largest_top_k(tiny_tts):
    """``FrameState.sort_width`` (how many of the largest logits a pick's filter needs): the largest top-k among
    the slots that sample that code kind, greedy slots ignored, None when a sampling slot has no top-k (0) or a
    nucleus (top-p < 1) or none samples; it follows ``set_params`` (also through a view), ``move_row`` and ``head``
    views."""
    state = FrameState(tiny_tts["custom_voice"].model.talker, 3, 32)
    assert state.sort_width(0) is None and state.sort_width(1) is None
    state.set_params(2, StreamParams(GREEDY, SAMPLED, seed=1))  # predictor top-k 20; talker greedy (top-k 50)
    assert state.sort_width(1) == 20 and state.sort_width(0) is None
    state.head(2).set_params(0, StreamParams(SamplingParams(top_k=7), SamplingParams(top_k=35), seed=2))
    assert (state.sort_width(0), state.sort_width(1)) == (7, 35)
    assert state.sort_width(1, slice(1, 3)) == 20 and state.head(1).sort_width(1) == 35
    state.set_params(1, StreamParams(GREEDY, SamplingParams(top_k=0), seed=3))  # samples every token
    assert state.sort_width(1) is None and state.sort_width(1, slice(2, 3)) == 20
    state.move_row(2, 1)
    assert state.sort_width(1) == 35 and state.sort_width(1, slice(1, 2)) == 20
    state.set_params(1, StreamParams(GREEDY, SamplingParams(top_k=20, top_p=0.9), seed=4))  # a nucleus
    assert state.sort_width(1) is None and state.sort_width(1, slice(0, 1)) == 35
    state.set_params(2, StreamParams(GREEDY, SamplingParams(top_k=1), seed=5))
    assert state.sort_width(1, slice(2, 3)) == 2  # never below 2
    # The sampler hands the bound to ``sample`` only where the kernels take one (not CUDA's compiled ones, nor
    # under CUDA graphs).
    bounded = Kernels().sampler(state, 1, slice(2, 3))
    assert bounded.func is EAGER.sample and bounded.keywords == {"width": 2}
    assert Kernels(top_k_bound=False).sampler(state, 1, slice(2, 3)) is EAGER.sample
    assert Kernels(greedy_shortcut=False).sampler(state, 1, slice(2, 3)) is EAGER.sample


def _frames(tts, kernels: Kernels, params: list[StreamParams], frames: int = 6) -> torch.Tensor:
    """Codes ``[frames, B, G]`` of B slots started from the same text with ``params``."""
    talker = tts.model.talker
    p = tts.prepare("The shortcut keeps the codes.", voice=Speaker("ryan"),
                    options=SynthesisOptions(sampling=Sampling.greedy(), max_new_tokens=frames + 2)).stream
    state = FrameState(talker, len(params), p.prompt.shape[0] + frames + 1)
    for row, sp in enumerate(params):
        prefill(talker, state, row, p.prompt, p.trailing, sp)
    span = p.prompt.shape[0]
    out = []
    for _ in range(frames):
        span += 1
        out.append(decode_frame(talker, state, span, kernels))
    return torch.stack(out)


def _no_sample(*_args, **_kwargs):
    raise AssertionError("sample() was called for slots that all decode greedily")


def test_greedy_steps_skip_the_sampling_filter_with_the_same_codes(tiny_tts):
    tts = tiny_tts["custom_voice"]
    greedy = [StreamParams(GREEDY, GREEDY, seed=s) for s in (3, 4)]
    full = _frames(tts, Kernels(greedy_shortcut=False), greedy)
    assert torch.equal(_frames(tts, dataclasses.replace(EAGER, sample=_no_sample), greedy), full)
    # One slot samples its predictor codes: sample() runs for the predictor (the greedy slot's codes are the
    # same as before) and code-0 keeps the shortcut.
    mixed = [greedy[0], StreamParams(GREEDY, SAMPLED, seed=4)]
    calls = []

    def counting(logits, *args, **kwargs):
        calls.append((logits.shape[-1], kwargs.get("width")))
        return EAGER.sample(logits, *args, **kwargs)

    got = _frames(tts, dataclasses.replace(EAGER, sample=counting), mixed)
    assert torch.equal(got[:, 0], full[:, 0])
    pred_vocab = tts.model.talker.cfg.code_predictor_config.vocab_size
    assert calls and set(calls) == {(pred_vocab, SAMPLED.top_k)}  # with the sampling slot's top-k bound
    # The bound changes no code: the same frames when ``sample`` sorts every logit.
    unbounded = _frames(tts, dataclasses.replace(EAGER, sample=lambda *a, width=None: EAGER.sample(*a)), mixed)
    assert torch.equal(got, unbounded)
    with pytest.raises(AssertionError, match="sample\\(\\) was called"):
        _frames(tts, dataclasses.replace(EAGER, sample=_no_sample), [StreamParams(SAMPLED, GREEDY, seed=5)], 1)


def test_a_sampled_frame_draws_its_noise_once(tiny_tts):
    """A sampled frame's 16 picks take their race variates from one ``frame_exponentials`` call (with the state's
    seed keys and token table), and their filter's derived parameters from the state (written once per stream;
    under CUDA graphs without compilation every operation is a kernel). Greedy frames draw none."""
    from qtts.sampling import frame_exponentials, sample

    tts = tiny_tts["custom_voice"]
    calls = {"noise": 0, "sample": 0, "drawn": 0}

    def noise(*args):
        calls["noise"] += 1
        assert args[0] is runner.state.seed_keys and args[3] is runner.state.tokens
        return frame_exponentials(*args)

    def pick(*args, **kwargs):
        calls["sample"] += 1
        calls["drawn"] += args[5] is not None
        state = runner.state
        own = state.predictor_params if args[4] >= 1 else state.talker_params
        assert args[1].kth.data_ptr() == own.kth.data_ptr()  # the slot's own derived tensors (views)
        assert args[1].always_kept.data_ptr() == own.always_kept.data_ptr()
        return sample(*args, **kwargs)

    kernels = dataclasses.replace(EAGER, noise=noise, sample=pick)
    for sampling, expected in ((Sampling(), (1, 16, 16)), (Sampling.greedy(), (0, 0, 0))):
        runner = tts.new_runner(1, decode=False)
        prepared = tts.prepare("One frame.", voice=Speaker("ryan"), seed=1,
                               options=SynthesisOptions(max_new_tokens=9, sampling=sampling))
        runner.submit(prepared.job(lambda _chunk: None))
        runner.step()
        calls.update(noise=0, sample=0, drawn=0)
        with torch.no_grad():
            decode_frame(tts.model.talker, runner.state, runner.state.cache.max_len, kernels)
        assert (calls["noise"], calls["sample"], calls["drawn"]) == expected


def test_the_filter_parameters_are_derived_per_stream_not_per_frame(tiny_tts, monkeypatch):
    """``kth`` and ``always_kept`` of both code kinds follow each slot's parameters through ``set_params`` (also
    through a view), ``move_row`` and ``prefill``, equal to what ``prepared`` derives; a sampled frame derives
    none of them again (the code-0 filter used to rebuild ``always_kept [B, V]`` every frame)."""
    import qtts.sampling as sampling

    tts = tiny_tts["custom_voice"]
    talker = tts.model.talker
    vocabs = (talker.cfg.vocab_size, talker.cfg.code_predictor_config.vocab_size)
    state = FrameState(talker, 3, 32)

    def check() -> None:
        for params, vocab in zip((state.talker_params, state.predictor_params), vocabs, strict=True):
            fresh = dataclasses.replace(params, kth=None, always_kept=None).prepared(vocab)
            assert torch.equal(params.kth, fresh.kth) and torch.equal(params.always_kept, fresh.always_kept)

    check()
    nucleus = SamplingParams(top_k=7, top_p=0.8)
    state.set_params(2, StreamParams(nucleus, SamplingParams(top_k=5000, top_p=0.5), seed=1))
    assert state.talker_params.kth[2, 0] == 6 and not state.talker_params.always_kept[2, 1:].any()
    assert state.predictor_params.kth[2, 0] == vocabs[1] - 1  # a top-k above the vocabulary cuts nothing
    check()
    state.head(2).set_params(1, StreamParams(SAMPLED, nucleus, seed=2))
    check()
    state.move_row(2, 0)
    check()
    assert state.talker_params.kth[0, 0] == 6

    p = tts.prepare("Derived once.", voice=Speaker("ryan"),
                    options=SynthesisOptions(sampling=Sampling(top_p=0.9), max_new_tokens=8)).stream
    state = FrameState(talker, 2, p.prompt.shape[0] + 4)
    for row in range(2):
        prefill(talker, state, row, p.prompt, p.trailing, StreamParams(nucleus, nucleus, seed=row))
    check()

    def derived(*_args):
        raise AssertionError("a frame derived filter parameters again")

    monkeypatch.setattr(sampling, "kth_index", derived)
    monkeypatch.setattr(sampling, "always_kept", derived)
    codes = decode_frame(talker, state, p.prompt.shape[0] + 1, Kernels(greedy_shortcut=False))
    assert codes.shape == (2, state.groups)


def test_the_frame_vector_is_the_frame_embedding_of_its_codes(tiny_tts):
    """``predict_groups`` sums the group embeddings its steps already made into the talker's next input: bit for
    bit ``frame_embedding`` of the codes it returns (sampled and greedy frames, a batch of three streams)."""
    from qtts.embed import frame_embedding
    from qtts.generate import predict_groups
    from qtts.sampling import frame_exponentials

    tts = tiny_tts["custom_voice"]
    talker = tts.model.talker
    runner = tts.new_runner(3, decode=False)
    for seed, sampling in enumerate((Sampling(), Sampling.greedy(), Sampling(top_k=2))):
        prepared = tts.prepare("One frame.", voice=Speaker("ryan"), seed=seed,
                               options=SynthesisOptions(max_new_tokens=9, sampling=sampling))
        runner.submit(prepared.job(lambda _chunk: None))
    runner.step()
    state = runner.state
    vocabs = (talker.cfg.vocab_size, talker.code_predictor.cfg.vocab_size)
    with torch.no_grad():
        for _ in range(3):
            race = frame_exponentials(state.seed_keys, state.steps, state.offsets, state.tokens, vocabs)[1]
            codes, frame = predict_groups(talker, state, race)
            assert torch.equal(frame, frame_embedding(talker, codes))
            decode_frame(talker, state, state.cache.max_len)


@pytest.mark.parametrize("fixed_span", [False, True])
def test_the_predictor_steps_reuse_their_positions_rope_and_masks(tiny_tts, fixed_span):
    """The predictor runs at the same positions every frame: its steps take positions, RoPE and causal masks
    made once per state (``PredictorSteps``, equal to what each step would make), so a frame computes RoPE once
    (the talker's) and builds no position or mask tensors per group (under CUDA graphs each is a kernel)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from qtts.model.cache import causal_mask
    from qtts.model.layers import additive_mask

    tts = tiny_tts["custom_voice"]
    talker = tts.model.talker
    runner = tts.new_runner(2, decode=False)
    for seed in (1, 2):
        prepared = tts.prepare("Same places every frame.", voice=Speaker("ryan"), seed=seed,
                               options=SynthesisOptions(max_new_tokens=9))
        runner.submit(prepared.job(lambda _chunk: None))
    runner.step()
    state = runner.state
    steps, G = state.pred_steps, state.groups
    assert sorted(steps.positions) == list(range(1, G))
    for g, positions in steps.positions.items():
        assert torch.equal(positions, torch.tensor([[0, 1]] * 2 if g == 1 else [[g]] * 2))
        cos, sin = talker.code_predictor.model.rotary.cos_sin(positions, state.hidden.dtype)
        assert torch.equal(steps.rope[g][0], cos[:1]) and torch.equal(steps.rope[g][1], sin[:1])
        assert torch.equal(steps.masks[g], additive_mask(causal_mask(positions, G), state.hidden.dtype)[:1])
    assert steps.head(1).positions[3].shape == (1, 1)

    ops = []

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.append(str(func.overloadpacket).split(".")[-1])
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Ops():
        decode_frame(talker, state, state.cache.max_len, dataclasses.replace(EAGER, fixed_span=fixed_span))
    assert ops.count("cos") == ops.count("sin") == 1  # the talker's step; none per predictor group
    # Per frame, not per group: the talker's mask and text index, code-0 rules, the noise hashes' token ids.
    assert "full" not in ops and ops.count("arange") <= 7
