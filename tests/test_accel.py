"""Acceleration from outside the model: static / compiled / CUDA-graphed frame steps give eager's codes."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

from qtts import TTS, ChunkPolicy, InputError, Sampling, Speaker, SynthesisOptions, gemv, quant
from qtts.engine import Engine, EngineConfig
from qtts.model.cache import LayerCache, causal_mask
from qtts.model.layers import additive_mask, matmul_attention, sdpa_attention

TEXTS = ["Static shapes give the same codes.", "A second stream, longer than the first one.", "Third."]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _run(tts: TTS, max_batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three streams (sampled, different seeds and budgets) through an engine with ``max_batch`` slots."""
    results = []
    prepared = [tts.prepare(t, voice=Speaker(s), seed=i, options=SynthesisOptions(max_new_tokens=b))
                for i, (t, s, b) in enumerate(zip(TEXTS, ["ryan", "serena", "eric"], [14, 20, 9], strict=True))]
    with Engine(tts, EngineConfig(max_batch=max_batch)) as engine:
        handles = [engine.submit(p, ChunkPolicy(2, 4)) for p in prepared]
        for h in handles:
            chunks = list(h)
            results.append((np.concatenate([c.audio for c in chunks]), np.concatenate([c.codes for c in chunks])))
    return results


def _compare(got, expected, atol: float) -> None:
    for (audio, codes), (exp_audio, exp_codes) in zip(got, expected, strict=True):
        assert np.array_equal(codes, exp_codes)
        assert np.abs(audio - exp_audio).max() <= atol


def _fresh(path, device: str) -> TTS:
    return TTS.from_pretrained(path, device=device, dtype="float32")


def test_compiled_static_step_equals_eager(tiny_checkpoints):
    """Dynamo-traced step with whole-cache attention and batch buckets (3 streams run as a bucket of 4)."""
    tts = _fresh(tiny_checkpoints["custom_voice"], "cpu")
    expected = _run(tts, 1)
    tts.accelerate(compile=True, compile_backend="eager", max_frames=128)
    _compare(_run(tts, 4), expected, 1e-5)
    whole = tts.synthesize(TEXTS[0], voice=Speaker("ryan"), seed=0, options=SynthesisOptions(max_new_tokens=14))
    assert np.array_equal(whole.codes.numpy(), expected[0][1])
    # Warm-up (compilation) is paid on a bucket's first frame, once per engine, and reported in its stats. A
    # greedy first stream takes the greedy shortcut; the warm-up compiles sample() anyway, so a sampled stream
    # after it compiles nothing new.
    greedy, sampled = (SynthesisOptions(max_new_tokens=3, sampling=s) for s in (Sampling.greedy(), Sampling()))
    torch._dynamo.reset()  # forget what the runs above compiled (dynamo caches per function, process-wide)
    with Engine(tts, EngineConfig(max_batch=2)) as engine:
        assert engine.stats()["warmup_seconds"] == 0
        list(engine.submit(tts.prepare(TEXTS[2], voice=Speaker("eric"), options=greedy)))
        warm = engine.stats()["warmup_seconds"]
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        list(engine.submit(tts.prepare(TEXTS[2], voice=Speaker("eric"), options=sampled)))
        assert warm > 0 and engine.stats()["warmup_seconds"] == warm
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize("kind", ["custom_voice", "base"])
def test_pipelined_runner_equals_synchronous(tiny_checkpoints, kind):
    """Frame t+1 launched before frame t is read: same chunks, same finish (EOS is seen one frame late and the
    extra frame discarded); batched with streams that end at different frames."""
    from qtts import Clone

    tts = _fresh(tiny_checkpoints[kind], "cpu")
    t = np.arange(24000) / 24000
    voice = Clone(((0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 24000), "Reference.") \
        if kind == "base" else Speaker("ryan")
    # Two slots: the short first stream frees its slot while the second is mid-flight, so the third is
    # admitted (and read at once until its first chunk) while the second is pipelined.
    opts = [SynthesisOptions(max_new_tokens=b) for b in (9, 60, 40)]
    for eos_weight in (0.5, -0.5, 1.0, -1.0, 2.0, -2.0):  # make EOS likely so that streams end at different frames
        with torch.no_grad():
            tts.model.talker.codec_head.weight[tts.cfg.talker.codec_eos_token_id] = eos_weight
        expected = [list(tts.stream(TEXTS[i], voice=voice, seed=i, options=o)) for i, o in enumerate(opts)]
        if any(c[-1].finish_reason == "stop" for c in expected):
            break
    tts.accelerate(pipelined=True)
    prepared = [tts.prepare(TEXTS[i], voice=voice, seed=i, options=o) for i, o in enumerate(opts)]
    with Engine(tts, EngineConfig(max_batch=2)) as engine:
        assert engine.runner.pipelined
        handles = [engine.submit(p) for p in prepared]  # all queued at once: they overlap
        got = [list(h) for h in handles]
    assert any(c[-1].finish_reason == "stop" for c in expected)
    for e, g in zip(expected, got, strict=True):
        assert [c.finish_reason for c in e] == [c.finish_reason for c in g]
        assert [(c.start, c.end) for c in e] == [(c.start, c.end) for c in g]
        assert np.abs(np.concatenate([c.audio for c in e]) - np.concatenate([c.audio for c in g])).max() <= 1e-5


def test_accelerate_validation(tiny_tts):
    tts = tiny_tts["custom_voice"]
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="cuda-graphs needs a CUDA device; the model is on cpu"):
            tts.accelerate(cuda_graphs=True)
        with pytest.raises(InputError, match="codec-stream needs a CUDA device"):
            tts.accelerate(codec_stream=True)
    with pytest.raises(InputError, match="max_frames"):
        tts.accelerate(compile=True, max_frames=3)
    assert not tts.accel.static


def test_static_chunk_decoder_in_the_runner(tiny_checkpoints, monkeypatch):
    """The runner decodes chunks through its chunk decoder: the fixed-buffer one (graphs off, so it runs on
    CPU) gives eager's audio for every chunk size the policy makes, remainders included."""
    from qtts import api
    from qtts.codec.chunks import StaticChunkDecoder

    tts = _fresh(tiny_checkpoints["custom_voice"], "cpu")
    opts = SynthesisOptions(max_new_tokens=29, chunks=ChunkPolicy(1, 16))  # 1, 2, 4, 8, 14: pieces 8+4+2
    expected = list(tts.stream(TEXTS[1], voice=Speaker("ryan"), seed=3, options=opts))
    made = []

    def static(decoder, cuda_graphs):
        made.append(StaticChunkDecoder(decoder, graphs=False))
        return made[-1]

    monkeypatch.setattr(api, "make_chunk_decoder", static)
    tts.accelerate()  # new runners from here on
    got = list(tts.stream(TEXTS[1], voice=Speaker("ryan"), seed=3, options=opts))
    assert made and [c.end - c.start for c in got] == [c.end - c.start for c in expected]
    assert any(c.end - c.start not in (1, 2, 4, 8) for c in got)
    for a, b in zip(got, expected, strict=True):  # float32: cutting 14 frames as 8+4+2 rounds differently
        assert np.array_equal(a.codes, b.codes) and np.abs(a.audio - b.audio).max() <= 1e-4


@cuda
@pytest.mark.gpu
def test_cuda_graphs_equal_eager(tiny_checkpoints):
    tts = _fresh(tiny_checkpoints["custom_voice"], "cuda")
    expected = _run(tts, 1)
    tts.accelerate(cuda_graphs=True, max_frames=128)
    _compare(_run(tts, 4), expected, 1e-4)
    # A pooled runner keeps its graphs: the second stream captures nothing new. (A stream, not ``synthesize``:
    # that decodes the whole utterance at the end, so the runner's chunk decoder never runs.)
    opts = SynthesisOptions(max_new_tokens=14)
    a = np.concatenate([c.codes for c in tts.stream(TEXTS[0], voice=Speaker("ryan"), seed=0, options=opts)])
    runner = tts._runners[1][-1]
    captured, codec_captured = runner.step_fn.capture_seconds, runner.chunk_decoder.capture_seconds
    assert runner.chunk_decoder.graphs and codec_captured > 0  # the codec's chunk decode is graphed too
    b = np.concatenate([c.codes for c in tts.stream(TEXTS[0], voice=Speaker("ryan"), seed=0, options=opts)])
    assert tts._runners[1][-1] is runner
    assert runner.step_fn.capture_seconds == captured
    assert runner.chunk_decoder.capture_seconds == codec_captured
    assert np.array_equal(a, b) and np.array_equal(a, expected[0][1])


@cuda
@pytest.mark.gpu
def test_auto_on_cuda_equals_eager(tiny_checkpoints):
    """``auto`` on CUDA (graphs, fused projections, the codec on its own stream), float32: eager's codes and
    audio (3 streams in a bucket of 4, pipelined)."""
    import dataclasses

    from qtts.accel import parse_accel

    tts = _fresh(tiny_checkpoints["custom_voice"], "cuda")
    expected = _run(tts, 1)
    auto = parse_accel("auto", tts.device)
    assert auto.cuda_graphs and auto.fused and auto.codec_stream
    tts.set_accel(dataclasses.replace(auto, max_frames=128))
    _compare(_run(tts, 4), expected, 1e-4)


@cuda
@pytest.mark.gpu
def test_compiled_cuda_graphs_equal_eager(tiny_checkpoints):
    """Two slots (buckets 1 and 2): compiling takes 30-50 s per bucket on an H100, and three buckets ran past
    the device check's time."""
    tts = _fresh(tiny_checkpoints["custom_voice"], "cuda")
    expected = _run(tts, 1)
    tts.accelerate(compile=True, cuda_graphs=True, max_frames=128)
    _compare(_run(tts, 2), expected, 1e-4)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True], ids=["graphs", "compiled"])
def test_graphed_span_buckets_on_cuda_equal_eager(tiny_checkpoints, monkeypatch, compiled):
    """CUDA graphs per batch bucket and attention span (``GRAPH_SPANS = "buckets"``, spans from 16 slots, so the
    streams cross into longer spans mid-way), float32, with and without compilation (a dynamic span): eager's codes
    and audio."""
    from qtts import accel

    tts = _fresh(tiny_checkpoints["custom_voice"], "cuda")
    expected = _run(tts, 1)
    monkeypatch.setattr(accel, "GRAPH_SPANS", "buckets")
    monkeypatch.setattr(accel, "GRAPH_SPAN_MIN", 16)
    spans, capture = [], accel.StaticFrameStep._capture

    def spy(step, state, rows, span, key):
        spans.append(span)
        return capture(step, state, rows, span, key)

    monkeypatch.setattr(accel.StaticFrameStep, "_capture", spy)
    tts.accelerate(compile=compiled, cuda_graphs=True, max_frames=128)
    _compare(_run(tts, 2 if compiled else 4), expected, 1e-4)
    assert min(spans) == 16 and len(set(spans)) >= 3


@pytest.mark.skipif(not gemv.available(), reason="torch.compile (inductor) cannot build kernels here")
def test_compiled_cache_write_touches_only_the_written_slots():
    """Inside a compiled region the KV write happens in place: no kernel loops over the whole cache (a
    ``scatter_`` into the cache copied all of it on every call: 16 MiB per talker layer at 2048 slots)."""
    k = torch.zeros(1, 2, 4096, 16)
    v = torch.zeros_like(k)
    cache = LayerCache(k, v)

    def write(positions, kk, vv):
        keys, values = cache.write(positions, kk, vv, 8)
        return keys.sum(-1) + values.sum(-1)

    new = torch.arange(64, dtype=torch.float32).view(1, 2, 2, 16)
    out, code = run_and_get_code(torch.compile(write), torch.tensor([[3, 5]]), new, -new)
    assert torch.equal(k[0, :, [3, 5]], new[0]) and torch.equal(v[0, :, [3, 5]], -new[0])
    assert torch.equal(out, torch.zeros(1, 2, 8))
    bounds = [int(n) for n in re.findall(r"<\s*static_cast<int64_t>\((\d+)L\)", "\n".join(code))]
    assert bounds and max(bounds) < k.numel()


@pytest.mark.parametrize("batch,queries,slots", [(1, 1, 37), (2, 2, 16), (3, 29, 29)])
def test_matmul_attention_is_sdpa(batch, queries, slots):
    """The compiled regions' attention (plain products, inductor-fusable) computes what torch's SDPA does:
    grouped query heads, per-row causal masks at different positions, several queries."""
    torch.manual_seed(batch)
    q = torch.randn(batch, 16, queries, 32, dtype=torch.float64)
    keys, values = torch.randn(2, batch, 4, slots, 32, dtype=torch.float64)
    positions = (torch.arange(slots - queries, slots)[None] - torch.arange(batch)[:, None]).clamp(min=0)  # rows differ
    mask = causal_mask(positions, slots)
    expected = sdpa_attention(q, keys, values, mask)
    assert (matmul_attention(q, keys, values, mask) - expected).abs().max() < 1e-12
    got32 = matmul_attention(q.float(), keys.float(), values.float(), mask)
    assert got32.dtype == torch.float32 and (got32.double() - expected).abs().max() < 1e-5


@pytest.mark.parametrize("queries,strided", [(1, True), (2, True), (5, False)])
@pytest.mark.parametrize("shared_mask", [False, True])
def test_grouped_attention_is_gqa_sdpa(queries, strided, shared_mask):
    """SDPA with the query heads of each KV head stacked along the queries (what CUDA runs: its memory-efficient
    kernel takes a mask but not grouped heads) is GQA SDPA: per-row masks or one mask for all rows, q laid out
    as attention makes it (heads of a [B, S, H, D] tensor), boolean or additive masks."""
    from qtts.model.layers import additive_mask, grouped_attention

    torch.manual_seed(queries)
    B, H, kv, slots = 3, 16, 4, 24
    q = torch.randn(B, queries, H + kv, 32, dtype=torch.float64).transpose(1, 2)[:, :H] if strided \
        else torch.randn(B, H, queries, 32, dtype=torch.float64)
    keys, values = torch.randn(2, B, kv, slots, 32, dtype=torch.float64)
    positions = (torch.arange(slots - queries, slots)[None] - torch.arange(B)[:, None]).clamp(min=0)
    mask = causal_mask(positions[:1] if shared_mask else positions, slots)
    expected = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
    for m in (mask, additive_mask(mask, torch.float64)):
        got = grouped_attention(q, keys, values, m)
        assert got.shape == expected.shape and (got - expected).abs().max() < 1e-12
    assert torch.equal(sdpa_attention(q, keys, values, mask), expected)  # on CPU: torch's GQA kernel itself


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("queries", [1, 2, 40])
def test_grouped_attention_on_cuda_is_gqa_sdpa(queries, monkeypatch):
    """On CUDA with ``STACK_GROUPED_HEADS``, ``sdpa_attention`` runs ``grouped_attention`` (stacked query heads)
    and gives torch's GQA call's result within float32 rounding."""
    from qtts.model import layers
    from qtts.model.layers import additive_mask

    monkeypatch.setattr(layers, "STACK_GROUPED_HEADS", True)

    torch.manual_seed(queries)
    q = torch.randn(2, 16, queries, 128, device="cuda")
    keys, values = torch.randn(2, 2, 8, 256, 128, device="cuda")
    positions = torch.arange(200, 200 + queries, device="cuda")[None] - torch.tensor([[0], [7]], device="cuda")
    mask = additive_mask(causal_mask(positions, 256), torch.float32)
    expected = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
    assert (sdpa_attention(q, keys, values, mask) - expected).abs().max() < 1e-5


@pytest.mark.parametrize("queries", [1, 2, 5])
def test_additive_mask_gives_the_boolean_masks_attention(queries):
    """Decoders turn the boolean mask into an additive one once for all their layers; both attention kernels
    give exactly what they give with the boolean mask."""
    from qtts.model.layers import additive_mask

    torch.manual_seed(queries)
    q = torch.randn(2, 8, queries, 16)
    keys, values = torch.randn(2, 2, 4, 20, 16)
    positions = torch.arange(10, 10 + queries)[None].repeat(2, 1) - torch.tensor([[0], [3]])
    mask = causal_mask(positions, 20)
    add = additive_mask(mask, torch.float32)
    assert add.dtype == torch.float32 and set(add.unique().tolist()) == {0.0, float("-inf")}
    assert torch.equal(additive_mask(add, torch.float32), add)  # already additive: unchanged
    for attend in (sdpa_attention, matmul_attention):
        assert torch.equal(attend(q, keys, values, add), attend(q, keys, values, mask))


@pytest.mark.parametrize("queries,inline", [(1, True), (2, True), (3, False)])
def test_matmul_attention_inline_for_few_queries(queries, inline):
    """One or two queries (a frame step, the predictor's first step) compile to inline loops: no ``bmm``
    call per attention (two per block, ~100 blocks per frame); prefill-sized queries keep the products."""
    from torch._inductor.utils import run_and_get_code

    q = torch.randn(1, 4, queries, 16)
    keys, values = torch.randn(2, 1, 2, 24, 16)
    mask = causal_mask(torch.arange(24 - queries, 24)[None], 24)
    torch._dynamo.reset()
    out, code = run_and_get_code(torch.compile(matmul_attention), q, keys, values, mask)
    assert torch.allclose(out, sdpa_attention(q, keys, values, mask), atol=1e-5)
    assert ("bmm" not in "\n".join(code)) == inline


def test_compiled_regions_swap_attention_and_back(tiny_checkpoints):
    from qtts.accel import compile_regions, uncompile_regions

    talker = _fresh(tiny_checkpoints["custom_voice"], "cpu").model.talker
    blocks = [*talker.model.layers, *talker.code_predictor.model.layers]
    compile_regions(talker, "eager")
    try:
        assert all(b.self_attn.attend is matmul_attention for b in blocks)
        # Regions: each talker block, the code predictor's step whole (its blocks are not compiled on their own).
        assert all(b._compiled_call_impl is not None for b in talker.model.layers)
        assert "step" in talker.code_predictor.__dict__ and talker.code_predictor._compiled_call_impl is None
        assert all(b._compiled_call_impl is None for b in talker.code_predictor.model.layers)
    finally:
        uncompile_regions(talker)
    assert all(b.self_attn.attend is sdpa_attention for b in blocks)
    assert all(m._compiled_call_impl is None for m in [*talker.model.layers, talker.code_predictor])
    assert "step" not in talker.code_predictor.__dict__


def test_one_compiled_predictor_step_serves_every_group(tiny_checkpoints):
    """The code predictor's step takes its group's output head as an argument: its compiled graphs (the first
    step's two positions, the later steps' one) serve all 15 groups; a head looked up by group inside would
    specialise a graph per group. The heads' products run inside the region."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from qtts.model.predictor import CodePredictor

    tts = _fresh(tiny_checkpoints["custom_voice"], "cpu")
    expected = tts.synthesize(TEXTS[2], voice=Speaker("eric"), seed=0, options=SynthesisOptions(max_new_tokens=4))
    torch._dynamo.reset()
    tts.accelerate(compile=True, compile_backend="eager", max_frames=128)
    got = tts.synthesize(TEXTS[2], voice=Speaker("eric"), seed=0, options=SynthesisOptions(max_new_tokens=4))
    assert np.array_equal(got.codes.numpy(), expected.codes.numpy())
    entries = _debug_get_cache_entry_list(CodePredictor.step.__code__)
    assert 1 <= len(entries) <= 2


def test_codec_work_goes_through_the_codec_context(tiny_checkpoints):
    """Every chunk decode, its audio read, and the stream's codec state (made at admission) are issued inside
    ``Runner._codec_context``: on CUDA with ``codec_stream`` that is the codec's own CUDA stream, which is
    what lets a decode overlap the next frame. (On CPU there is no stream: this checks the routing.)"""
    import contextlib

    tts = _fresh(tiny_checkpoints["custom_voice"], "cpu")
    runner = tts.new_runner(1)
    assert runner.codec_stream is None  # CPU: nothing to overlap
    inside, calls = [False], []

    @contextlib.contextmanager
    def codec_context():
        inside[0] = True
        try:
            yield
        finally:
            inside[0] = False

    decode, init_state = runner.chunk_decoder, runner.decoder.init_state
    runner._codec_context = codec_context
    runner.chunk_decoder = lambda codes, state: (calls.append(("decode", inside[0])), decode(codes, state))[1]
    runner.decoder.init_state = lambda *a: (calls.append(("state", inside[0])), init_state(*a))[1]
    try:
        prepared = tts.prepare(TEXTS[2], voice=Speaker("eric"), seed=1, options=SynthesisOptions(max_new_tokens=7))
        chunks = []
        runner.submit(prepared.job(chunks.append))
        while not runner.idle:
            runner.step()
    finally:
        del runner.decoder.init_state
    assert calls[0] == ("state", True) and ("decode", True) in calls and all(flag for _, flag in calls)
    frames = sum(c.codes.shape[0] for c in chunks)
    assert frames > 1 and sum(len(c.audio) for c in chunks) == frames * tts.codec.decoder.samples_per_frame


def test_a_runner_raises_the_recompile_limit_in_the_thread_that_steps_it(tiny_checkpoints):
    """dynamo's config is per thread: the recompile limit raised where the regions were compiled does not hold in
    a thread that steps the runner (a server's engine thread), where past 8 graphs per function dynamo ran the
    talker blocks eagerly for the larger batch buckets. A runner's step raises it in its own thread first."""
    import threading

    from qtts.accel import AccelOptions
    from qtts.compile_limits import RECOMPILE_LIMIT

    tts = _fresh(tiny_checkpoints["custom_voice"], "cpu")
    tts.set_accel(AccelOptions(compile=True, compile_backend="eager", max_frames=64))
    runner = tts.new_runner(1, decode=False)  # the regions are compiled in this thread
    assert torch._dynamo.config.recompile_limit >= RECOMPILE_LIMIT
    prepared = tts.prepare(TEXTS[0], voice=Speaker("ryan"), seed=0, options=SynthesisOptions(max_new_tokens=4))
    seen, chunks = [], []

    def work() -> None:
        seen.append(torch._dynamo.config.recompile_limit)  # a new thread: torch's default
        runner.submit(prepared.job(chunks.append))
        while not runner.idle:
            runner.step()
        seen.append(torch._dynamo.config.recompile_limit)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen[0] < RECOMPILE_LIMIT <= seen[1]
    assert 1 <= sum(c.codes.shape[0] for c in chunks) <= 4  # the stream ran, compiled, in that thread


def test_parse_codec_stream():
    from qtts.accel import parse_accel

    assert parse_accel("cuda-graphs,codec-stream", "cuda").codec_stream
    assert not parse_accel("cuda-graphs", "cuda").codec_stream


@cuda
@pytest.mark.gpu
def test_codec_stream_equals_default_on_cuda(tiny_checkpoints):
    """Chunk decodes on their own CUDA stream (overlapping the next frame, pipelined): same codes and audio."""
    tts = _fresh(tiny_checkpoints["custom_voice"], "cuda")
    tts.accelerate(cuda_graphs=True, max_frames=128)
    expected = _run(tts, 4)
    tts.accelerate(cuda_graphs=True, codec_stream=True, max_frames=128)
    _compare(_run(tts, 4), expected, 0.0)
    assert tts.new_runner(1).codec_stream is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_with_the_signed_sin_is_the_textbook_rotation(dtype):
    """``apply_rotary`` with ``Rotary.cos_sin`` 's signed sine equals ``x * cos + rotate_half(x) * sin`` exactly."""
    from qtts.model.layers import Rotary, apply_rotary

    torch.manual_seed(0)
    positions = torch.tensor([[0, 7, 300], [5, 6, 2047]])
    cos, signed = Rotary(64, 1e6).cos_sin(positions, dtype)
    freqs = positions.float()[..., None] * (1.0 / 1e6 ** (torch.arange(0, 64, 2).float() / 64))
    emb = torch.cat((freqs, freqs), dim=-1)
    assert torch.equal(cos, emb.cos().to(dtype)[:, None])
    sin = emb.sin().to(dtype)[:, None]
    x = torch.randn(2, 4, 3, 64).to(dtype)
    x1, x2 = x.chunk(2, dim=-1)
    assert torch.equal(apply_rotary(x, cos, signed), x * cos + torch.cat((-x2, x1), dim=-1) * sin)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_rms_norm_is_the_official_formula_in_one_torch_call(dtype):
    """``RMSNorm`` equals the official formula (normalise in float32, cast back, scale) bit for bit, and issues one
    ``rms_norm`` and the scale: torch runs ``rms_norm`` as one fused kernel on CUDA, casts included, where the
    formula spelled out is seven kernels per norm (a graphed frame step runs ~430 norms)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from qtts.model.layers import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(96, 1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(96))
    norm = norm.to(dtype)
    x = (torch.randn(3, 5, 96) * 4).to(dtype)
    h = x.float()
    expected = norm.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype)
    assert torch.equal(norm(x), expected)

    calls, ops = [], []

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.append(str(func.overloadpacket).split(".")[-1])
            return func(*args, **(kwargs or {}))

    def one_call(x, *args, **kwargs):  # counted as one operation, as on CUDA
        calls.append(x.dtype)
        return torch.ones_like(x)

    original = torch.nn.functional.rms_norm
    torch.nn.functional.rms_norm = one_call
    try:
        with torch.no_grad(), Ops():
            norm(x)
    finally:
        torch.nn.functional.rms_norm = original
    if dtype == torch.float64:  # normalised in float32, as officially
        assert calls == [torch.float32] and ops == ["_to_copy", "ones_like", "_to_copy", "mul"]
    else:
        assert calls == [dtype] and ops == ["ones_like", "mul"]  # no casts around the norm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("fused", [False, True])
def test_attention_normalises_and_rotates_q_and_k_together_exactly(dtype, fused):
    """``Attention`` runs q and k heads through one norm and one rotation: bit for bit the output and cache
    contents of normalising each with its own ``RMSNorm`` and rotating each (the formula spelled out)."""
    from qtts.model.fuse import fuse_projections_
    from qtts.model.layers import Attention, Rotary, apply_rotary

    torch.manual_seed(0)
    attn = Attention(64, 4, 2, 16, 1e-6)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 1.0))
    attn = attn.to(dtype)
    if fused:
        fuse_projections_(attn)
    B, S, slots = 2, 3, 8
    x = torch.randn(B, S, 64).to(dtype)
    positions = torch.tensor([[0, 1, 2], [4, 5, 6]])
    rope = Rotary(16, 1e6).cos_sin(positions, dtype)
    mask = causal_mask(positions, slots)

    def caches():
        return LayerCache(torch.zeros(B, 2, slots, 16, dtype=dtype), torch.zeros(B, 2, slots, 16, dtype=dtype))

    with torch.no_grad():
        got_cache = caches()
        got = attn(x, rope, got_cache, positions, mask)
        if fused:
            q, k, v = attn.qkv_proj(x).split([64, 32, 32], dim=-1)
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        q = apply_rotary(attn.q_norm(q.view(B, S, 4, 16)).transpose(1, 2), *rope)
        k = apply_rotary(attn.k_norm(k.view(B, S, 2, 16)).transpose(1, 2), *rope)
        want_cache = caches()
        keys, values = want_cache.write(positions, k, v.view(B, S, 2, 16).transpose(1, 2), slots)
        out = sdpa_attention(q, keys, values, mask)
        want = attn.o_proj(out.transpose(1, 2).reshape(B, S, 64))
    assert torch.equal(got_cache.k, want_cache.k) and torch.equal(got_cache.v, want_cache.v)
    assert torch.equal(got, want)


def test_engine_warm_up_builds_every_bucket_before_the_first_request(tiny_checkpoints):
    """``Engine.warm_up`` runs every batch bucket (1, 2, 3 -> buckets 1, 2, 3) through the static step before
    serving: afterwards requests of any batch size compile nothing new. An eager step has nothing to warm."""
    tts = _fresh(tiny_checkpoints["custom_voice"], "cpu")
    with Engine(tts, EngineConfig(max_batch=3)) as engine:
        assert engine.warm_up(frames=4) == 0.0  # eager
    tts.accelerate(compile=True, compile_backend="eager", max_frames=128)
    torch._dynamo.reset()
    with Engine(tts, EngineConfig(max_batch=3)) as engine:
        seconds = engine.warm_up(frames=4)
        assert seconds > 0 and engine.stats()["warmup_seconds"] == pytest.approx(seconds, abs=1e-3)
        # Synthetic streams are not traffic: no finished streams, frames or observer calls are reported.
        assert engine.stats()["active"] == 0 and not engine.finished and engine.frames_total == 0
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        prepared = [tts.prepare(t, voice=Speaker("ryan"), seed=i, options=SynthesisOptions(max_new_tokens=5))
                    for i, t in enumerate(TEXTS)]
        for handle in [engine.submit(p) for p in prepared]:
            assert list(handle)[-1].finish_reason in ("length", "stop")
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
        assert engine.stats()["warmup_seconds"] == pytest.approx(seconds, abs=1e-3)


def test_server_warms_up_a_static_step(tiny_checkpoints, tmp_path):
    from qtts.server.settings import ServerSettings
    from qtts.server.state import ServerState

    with pytest.raises(InputError, match="warmup"):
        ServerSettings(warmup="yes")
    for warmup in (True, False):
        tts = _fresh(tiny_checkpoints["custom_voice"], "cpu")
        tts.accelerate(compile=True, compile_backend="eager", max_frames=128)
        state = ServerState.create(ServerSettings(max_batch=2, data_dir=tmp_path, warmup=warmup), tts=tts)
        try:
            assert (state.engine.stats()["warmup_seconds"] > 0) == warmup
        finally:
            state.close()


def test_decoders_hand_their_layers_one_additive_mask(tiny_tts):
    """A decoder converts the boolean mask once, and every layer gets that same additive tensor (attention
    converted it again in each layer: three operations per layer, each a kernel under CUDA graphs)."""
    from qtts.model.cache import KVCache

    talker = tiny_tts["custom_voice"].model.talker
    decoder, cfg = talker.model, talker.cfg
    caches = KVCache(cfg.num_hidden_layers, 1, cfg.num_key_value_heads, 8, cfg.head_dim, "cpu", torch.float32).layers
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda _m, args: seen.append(args[4])) for layer in decoder.layers]
    try:
        positions = torch.arange(3)[None]
        with torch.no_grad():
            decoder(torch.zeros(1, 3, talker.cfg.hidden_size), positions, caches, causal_mask(positions, 8))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) == len(decoder.layers) and all(mask is seen[0] for mask in seen)
    assert seen[0].dtype == torch.float32 and set(seen[0].unique().tolist()) == {0.0, float("-inf")}



def test_streams_crossing_span_steps_compile_nothing_after_the_first_frame(tiny_checkpoints, monkeypatch):
    """Compiled without graphs, attention reads the slots in use rounded up to ``SPAN_STEP``; the talker's blocks are
    compiled for a dynamic span from the first frame (``BlockRegions.dynamic_span``), so a stream crossing several
    span steps later compiles nothing (dynamo compiled them again mid-request before session 15, in a warm-up frame
    at a second span after it), the blocks hold one graph, and the streams' codes are eager's."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from qtts import accel

    monkeypatch.setattr(accel, "SPAN_STEP", 8)
    tts = _fresh(tiny_checkpoints["custom_voice"], "cpu")
    options = SynthesisOptions(max_new_tokens=30)
    expected = tts.synthesize(TEXTS[0], voice=Speaker("ryan"), seed=0, options=options).codes
    torch._dynamo.reset()
    tts.accelerate(compile=True, compile_backend="eager", max_frames=128)
    tts.synthesize(TEXTS[0], voice=Speaker("ryan"), seed=0, options=SynthesisOptions(max_new_tokens=2))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    got = tts.synthesize(TEXTS[0], voice=Speaker("ryan"), seed=0, options=options).codes  # crosses 3-4 span steps
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert torch.equal(got, expected)
    # The talker's blocks were compiled once, for every span (``BlockRegions.dynamic_span``), not once per span shape.
    assert len(_debug_get_cache_entry_list(accel._run_blocks.__code__)) == 1


def test_prompts_of_another_length_compile_nothing_after_the_first(tiny_checkpoints):
    """The prefill's length is dynamic in the compiled regions from the first prompt (``BlockRegions``): a second
    request with a prompt of another length compiles nothing (it built a dynamic graph then, mid-request: the
    first graph was for the first prompt's length only), and its codes are eager's."""
    tts = _fresh(tiny_checkpoints["custom_voice"], "cpu")
    options = SynthesisOptions(max_new_tokens=4)
    expected = [tts.synthesize(t, voice=Speaker("ryan"), seed=0, options=options).codes for t in TEXTS[:3]]
    torch._dynamo.reset()
    tts.accelerate(compile=True, compile_backend="eager", max_frames=64)
    got = [tts.synthesize(TEXTS[0], voice=Speaker("ryan"), seed=0, options=options).codes]
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    got += [tts.synthesize(t, voice=Speaker("ryan"), seed=0, options=options).codes for t in TEXTS[1:3]]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert len({tts.prepare(t, voice=Speaker("ryan")).stream.prompt.shape[0] for t in TEXTS[:3]}) == 3  # 3 lengths
    assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))


def test_block_regions_run_the_blocks_in_turn_with_one_graph_per_run_length():
    """``BlockRegions`` (talker blocks N at a time in one compiled call, frame steps only): the same hidden states
    and cache writes as the plain layer loop; the blocks are arguments, so the two runs of two blocks share one
    graph and the last single block takes a second (a graph specialised on the blocks would make three);
    more than one position (prefill) goes through the plain loop, not the compiled call."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from qtts import accel
    from qtts.model.cache import KVCache
    from qtts.model.layers import Decoder

    torch.manual_seed(0)
    decoder = Decoder(32, 64, 5, 4, 2, 8, 1e-6, 10000.0).eval()
    for block in decoder.layers:
        block.self_attn.attend = matmul_attention

    def run(loop, positions: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cache = KVCache(5, 2, 2, 16, 8, "cpu", torch.float32)
        for p in range(int(positions[0, 0])):  # fill the earlier slots (every layer) with the same values
            cache.k[:, :, :, p] = cache.v[:, :, :, p] = 0.1 * (p + 1)
        with torch.no_grad():
            rope = decoder.rotary.cos_sin(positions, x.dtype)
            mask = additive_mask(causal_mask(positions, 16), x.dtype)
            return loop(x, rope, cache.layers, positions, mask), cache.k.clone()

    torch._dynamo.reset()
    regions = accel.BlockRegions(decoder, 2, "eager", None)
    assert [len(run_) for run_ in regions.runs] == [2, 2, 1]
    x, positions = torch.randn(2, 1, 32), torch.tensor([[3], [5]])
    expected, expected_k = run(decoder.run_layers, positions, x)
    got, got_k = run(regions, positions, x)
    assert torch.equal(got, expected) and torch.equal(got_k, expected_k)
    assert len(_debug_get_cache_entry_list(accel._run_blocks.__code__)) == 2
    prompt, at = torch.randn(2, 4, 32), torch.arange(4).expand(2, 4)
    calls = []
    regions.compiled = lambda *args: calls.append(args)  # must not be called for a prompt
    got, got_k = run(regions, at, prompt)
    expected, expected_k = run(decoder.run_layers, at, prompt)
    assert not calls and torch.equal(got, expected) and torch.equal(got_k, expected_k)


def test_block_regions_with_a_dynamic_span_build_one_graph_for_every_span():
    """``BlockRegions(dynamic_span=True)`` marks the mask's span dimension dynamic before its first call: frames
    at spans 16, 24 and 40 equal the plain layer loop and share the graphs of the first call (one per run length:
    runs of 2 and the last single block), compiled for static shapes (``static``) or not. Without the mark dynamo
    builds static graphs for the first span and dynamic ones when the span first changes (twice as many, a second
    compilation of the blocks), or with ``static`` a graph per span."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from qtts import accel
    from qtts.model.cache import KVCache
    from qtts.model.layers import Decoder

    torch.manual_seed(0)
    decoder = Decoder(32, 64, 5, 4, 2, 8, 1e-6, 10000.0).eval()
    for block in decoder.layers:
        block.self_attn.attend = matmul_attention

    def run(loop, span: int) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.tensor([[3], [span - 2]])
        cache = KVCache(5, 2, 2, 48, 8, "cpu", torch.float32)
        cache.k[:] = cache.v[:] = 0.1 * torch.arange(48.0)[:, None]
        x = torch.linspace(-1, 1, 64).view(2, 1, 32)
        with torch.no_grad():
            rope = decoder.rotary.cos_sin(positions, x.dtype)
            mask = additive_mask(causal_mask(positions, span), x.dtype)
            return loop(x, rope, cache.layers, positions, mask), cache.k.clone()

    for dynamic, static, graphs in ((True, False, 2), (False, False, 4), (True, True, 2), (False, True, 6)):
        torch._dynamo.reset()
        regions = accel.BlockRegions(decoder, 2, "eager", None, dynamic_span=dynamic, static=static)
        for span in (16, 24, 40):
            expected, expected_k = run(decoder.run_layers, span)
            got, got_k = run(regions, span)
            assert torch.equal(got, expected) and torch.equal(got_k, expected_k)
        assert len(_debug_get_cache_entry_list(accel._run_blocks.__code__)) == graphs


def test_static_frame_regions_compile_one_graph_per_bucket_and_step(tiny_checkpoints, monkeypatch):
    """``STATIC_REGIONS["cpu"]`` True: the talker's block runs and the code predictor's step compile for static
    shapes, so an engine's warm-up over buckets 1, 2 and 3 builds one block graph per bucket and two predictor graphs
    (first step, later steps) per bucket. Left to dynamo's automatic dynamic shapes (False, the default) the tiny
    model's larger buckets share a graph dynamic in the batch size (at the 0.6b the row kernels' unrolled rows
    specialise them again, so there it builds more graphs: BENCHMARKS.md, session 16). Either way requests after
    the warm-up compile nothing and give eager's codes."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from qtts import accel

    assert accel.STATIC_REGIONS == {"cpu": False, "cuda": False}
    tts = _fresh(tiny_checkpoints["custom_voice"], "cpu")
    options = SynthesisOptions(max_new_tokens=5)
    expected = [tts.synthesize(t, voice=Speaker("ryan"), seed=0, options=options).codes for t in TEXTS]
    step = type(tts.model.talker.code_predictor).step
    counts = {}
    for static in (True, False):
        monkeypatch.setitem(accel.STATIC_REGIONS, "cpu", static)
        torch._dynamo.reset()
        tts.accelerate(compile=True, compile_backend="eager", max_frames=64)
        with Engine(tts, EngineConfig(max_batch=3)) as engine:
            engine.warm_up(frames=4)
            counts[static] = (len(_debug_get_cache_entry_list(accel._run_blocks.__code__)),
                              len(_debug_get_cache_entry_list(step.__code__)))
            handles = [engine.submit(tts.prepare(t, voice=Speaker("ryan"), seed=0, options=options)) for t in TEXTS]
            got = [torch.cat([c.codes for c in handle]) for handle in handles]
            assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))
            assert (len(_debug_get_cache_entry_list(accel._run_blocks.__code__)),
                    len(_debug_get_cache_entry_list(step.__code__))) == counts[static]
    assert counts[True] == (3, 6) and counts[False] == (2, 4)


def test_static_regions_reach_the_blocks_own_regions(tiny_tts, monkeypatch):
    """With one talker block per call (CUDA's default) frames run each block's own compiled region, so
    ``STATIC_REGIONS`` must reach those too: frames of 1, 2 and 3 streams then take a static graph each, where
    dynamo's automatic dynamic shapes share one graph, dynamic in the batch size, for 2 and 3."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from qtts import accel
    from qtts.model.cache import KVCache
    from qtts.model.layers import Block

    talker = tiny_tts["custom_voice"].model.talker
    cfg = talker.cfg
    monkeypatch.setitem(accel.TALKER_REGION_BLOCKS, "cpu", 1)
    graphs = {}
    for static in (True, False):
        monkeypatch.setitem(accel.STATIC_REGIONS, "cpu", static)
        torch._dynamo.reset()
        accel.compile_regions(talker, "eager")
        try:
            for b in (1, 2, 3):
                caches = KVCache(cfg.num_hidden_layers, b, cfg.num_key_value_heads, 16, cfg.head_dim, "cpu",
                                 torch.float32).layers
                positions = torch.full((b, 1), 3)
                with torch.no_grad():
                    talker.model(torch.zeros(b, 1, cfg.hidden_size), positions, caches, causal_mask(positions, 16))
        finally:
            accel.uncompile_regions(talker)
        graphs[static] = len(_debug_get_cache_entry_list(Block.forward.__code__))
    assert graphs == {True: 3, False: 2}


def test_compile_regions_runs_talker_blocks_as_region_blocks_says(tiny_checkpoints, monkeypatch):
    """``compile_regions`` puts ``BlockRegions`` over the talker's layer loop (not over the code predictor's), which
    runs frames' blocks ``TALKER_REGION_BLOCKS`` at a time (CPU: 7 by default) and with one block per call through
    each block's own region; the codes are eager's; ``uncompile_regions`` takes it off; a bad value is named."""
    from qtts import accel
    from qtts.accel import compile_regions, uncompile_regions

    assert accel.region_blocks("cpu") == 7 and accel.region_blocks("cuda") == 1 and accel.region_blocks("mps") == 1
    tts = _fresh(tiny_checkpoints["custom_voice"], "cpu")
    options = SynthesisOptions(max_new_tokens=6)
    expected = tts.synthesize(TEXTS[0], voice=Speaker("ryan"), seed=0, options=options).codes
    talker = tts.model.talker
    monkeypatch.setitem(accel.TALKER_REGION_BLOCKS, "cpu", 1)
    compile_regions(talker, "eager")
    regions = talker.model.__dict__["run_layers"]  # there for the dynamic dimensions; frames take each block's region
    regions.compiled = lambda *args: pytest.fail("one block per call runs the blocks' own regions")
    got = tts.synthesize(TEXTS[0], voice=Speaker("ryan"), seed=0, options=options).codes
    assert regions.size == 1 and torch.equal(got, expected)
    uncompile_regions(talker)
    monkeypatch.setitem(accel.TALKER_REGION_BLOCKS, "cpu", 2)
    tts.accelerate(compile=True, compile_backend="eager", max_frames=64)
    got = tts.synthesize(TEXTS[0], voice=Speaker("ryan"), seed=0, options=options).codes
    assert torch.equal(got, expected)
    regions = talker.model.__dict__["run_layers"]
    assert isinstance(regions, accel.BlockRegions) and regions.runs == [tuple(talker.model.layers)]
    assert "run_layers" not in talker.code_predictor.model.__dict__
    uncompile_regions(talker)
    assert "run_layers" not in talker.model.__dict__
    monkeypatch.setitem(accel.TALKER_REGION_BLOCKS, "cpu", 0)
    with pytest.raises(ValueError, match="TALKER_REGION_BLOCKS"):
        compile_regions(talker, "eager")
    assert all(b._compiled_call_impl is None for b in talker.model.layers)  # refused before any change


def test_region_attention_per_device(monkeypatch):
    """Compiled blocks attend with plain products on CPU; on CUDA as ``CUDA_ATTENTION`` says (by default plain
    products for the code predictor, torch's fused kernel for the talker: measured on an H100), per decoder."""
    from qtts import accel

    assert accel.region_attention("cpu") == {"talker": "matmul", "predictor": "matmul"}
    assert accel.region_attention("cuda") == {"talker": "sdpa", "predictor": "matmul"}
    monkeypatch.setitem(accel.CUDA_ATTENTION, "predictor", "sdpa")
    assert accel.region_attention("cuda") == {"talker": "sdpa", "predictor": "sdpa"}
    monkeypatch.setitem(accel.CUDA_ATTENTION, "talker", "flash")
    with pytest.raises(ValueError, match="CUDA_ATTENTION"):
        accel.region_attention("cuda")


def test_stream_state_bytes_is_what_a_static_slot_allocates(tiny_checkpoints):
    """``TTS.stream_state_bytes`` (the server sizes its default batch on CUDA with it) equals the caches and
    text buffer a static frame step allocates per slot."""
    from qtts.accel import make_frame_step

    tts = _fresh(tiny_checkpoints["custom_voice"], "cpu")
    tts.accelerate(compile=True, compile_backend="eager", max_frames=96)
    state = make_frame_step(tts.model.talker, tts.accel).allocate(3, 10)
    tensors = (state.cache.k, state.cache.v, state.pred_cache.k, state.pred_cache.v, state.text)
    assert sum(x.numel() * x.element_size() for x in tensors) == 3 * tts.stream_state_bytes()


def test_region_products_and_options_per_device(monkeypatch):
    """Compiled regions on CUDA multiply as ``CUDA_PRODUCTS`` says (by default as row reductions, which an H100
    measured faster than cuBLAS for one row) and take ``CUDA_COMPILE_OPTIONS``; a CPU's products follow
    ``row_kernels`` alone and its regions take ``CPU_COMPILE_OPTIONS`` (FMA contraction as ``cpu_fma_options``
    resolves it, inductor's host checks off). The row kernel takes one or two CUDA rows, only in compiled code."""
    from qtts import accel

    assert accel.CUDA_PRODUCTS == "rows" and accel.CUDA_COMPILE_OPTIONS == {}
    assert accel.region_products("cuda") == "rows" and accel.region_products("cpu") == "linear"
    monkeypatch.setattr(accel, "CUDA_PRODUCTS", "linear")
    assert accel.region_products("cuda") == "linear" and accel.region_products("cpu") == "linear"
    monkeypatch.setattr(accel, "CUDA_PRODUCTS", "triton")
    with pytest.raises(ValueError, match="CUDA_PRODUCTS"):
        accel.region_products("cuda")
    assert [gemv.cuda_rows(r, True) for r in (0, 1, 2, 3, 8)] == [False, True, True, False, False]
    assert not gemv.cuda_rows(1, False)
    fma = {"cpp.enable_floating_point_contract_flag": "fast"}
    host = {"size_asserts": False, "alignment_asserts": False, "scalar_asserts": False}
    assert (fma, host) == (accel.CPU_FMA_OPTIONS, accel.CPU_HOST_OPTIONS)
    cpu = accel.cpu_fma_options({**fma, **host})
    assert accel.region_compile_options("cuda") is None and accel.region_compile_options("cpu") == cpu
    monkeypatch.setattr(accel, "CUDA_COMPILE_OPTIONS", {"max_autotune_gemm": True})
    assert accel.region_compile_options("cuda") == {"max_autotune_gemm": True}
    assert accel.region_compile_options("cuda") is not accel.CUDA_COMPILE_OPTIONS  # a copy for each step
    assert accel.region_compile_options("cpu") == cpu and accel.region_compile_options("mps") is None
    monkeypatch.setattr(accel, "CPU_COMPILE_OPTIONS", {})
    assert accel.region_compile_options("cpu") is None


def test_fma_contraction_is_resolved_for_the_compiler_and_cpu():
    """Contraction in the CPU regions: under gcc with ``avoid-fma-max-bits=0`` (gcc's tuning for AMD's Zen 3 made
    FMAs in a 2-row loop and none for a lone row, which parted batched rows from single ones), under other compilers
    only with 512-bit vectors; options without contraction pass unchanged, and each call returns a fresh dict."""
    from qtts import accel

    key, host = "cpp.enable_floating_point_contract_flag", {"size_asserts": False}
    fast = {key: "fast", **host}
    assert accel.cpu_fma_options(fast, gcc=True, capability="AVX2") == {
        key: "fast --param=avoid-fma-max-bits=0", **host}
    assert accel.cpu_fma_options(fast, gcc=True, capability="AVX512")[key] == "fast --param=avoid-fma-max-bits=0"
    assert accel.cpu_fma_options(fast, gcc=False, capability="AVX512") == fast
    assert accel.cpu_fma_options(fast, gcc=False, capability="AVX512_BF16") == fast
    assert all(accel.cpu_fma_options(fast, gcc=False, capability=c) == host for c in ("AVX2", "DEFAULT", ""))
    assert accel.cpu_fma_options(host, gcc=True, capability="AVX2") == host
    assert accel.cpu_fma_options(fast, gcc=False, capability="AVX512") is not fast and fast[key] == "fast"
    on_gcc = accel._compiles_with_gcc()
    assert accel.cpu_fma_options(fast)[key].endswith(accel.GCC_FMA_PARAM) == on_gcc


def test_graph_spans(monkeypatch):
    """Graphed talker attention reads the slots in use rounded up to a power of two from ``GRAPH_SPAN_MIN``, the
    last span the whole cache ("buckets", the default since an H100 measured it faster), or the whole cache
    ("whole")."""
    from qtts import accel

    assert accel.GRAPH_SPANS == "buckets"
    assert accel.graph_spans(2048) == [256, 512, 1024, 2048]
    assert accel.graph_spans(600) == [256, 512, 600] and accel.graph_spans(256) == [256]
    assert accel.graph_spans(128) == [128]
    assert [accel.graph_span(n, 2048) for n in (1, 256, 257, 1024, 1025, 2048)] == [256, 256, 512, 1024, 2048, 2048]
    assert accel.graph_span(513, 600) == 600
    monkeypatch.setattr(accel, "GRAPH_SPANS", "whole")
    assert accel.graph_spans(2048) == [2048] and accel.graph_span(1, 2048) == 2048
    monkeypatch.setattr(accel, "GRAPH_SPANS", "some")
    with pytest.raises(ValueError, match="GRAPH_SPANS"):
        accel.graph_spans(64)


def _stand_in_graphs(monkeypatch, replayed: list[int], captured: list[tuple[int, int]] | None = None) -> None:
    """CUDA graphs stood in for on a CPU: ``StaticFrameStep._capture`` records ``(rows, span)`` in ``captured``
    and returns a "graph" whose replay reruns the step at its span (recorded in ``replayed``) into its own output
    buffer; a step's call returns a copy of that buffer, as a CUDA runner copies it to the host (on a CPU ``.cpu()``
    would hand the runner the buffer itself, overwritten by the next replay). The real capture runs in the GPU
    tests."""
    from qtts import accel

    def capture(step, state, rows, span, key):
        if captured is not None:
            captured.append((rows, span))
        view = state.head(rows)
        out = torch.zeros(rows, state.groups + 1, dtype=torch.long)

        class Graph:
            def replay(self) -> None:
                replayed.append(span)
                out.copy_(step.fn(step.talker, view, span))

        return Graph(), out, key

    call = accel.StaticFrameStep.__call__
    monkeypatch.setattr(accel.StaticFrameStep, "_capture", capture)
    monkeypatch.setattr(accel.StaticFrameStep, "__call__", lambda *a: call(*a).clone())


def test_graphed_compiled_blocks_take_the_span_as_dynamic_from_the_first_frame(tiny_checkpoints, monkeypatch):
    """Compiled + graphed frames over span buckets with the talker blocks one per region (CUDA's default): the
    blocks are compiled once for the prefill (its length dynamic) and once for frames, and that frame graph serves
    every span. ``compile_regions`` does not mark the span under graphs; dynamo makes it dynamic anyway, because
    the prefill's graph of the same block code saw another size there (automatic dynamic shapes), so marking it
    would save no compilation on CUDA (session 17 dropped a setting that did, after this test). A CPU stands in
    for the GPU: each "graph" reruns the compiled static step at its span (the real capture runs in the GPU tests).
    Eager's codes."""
    import dataclasses

    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from qtts import accel, api

    tts = _fresh(tiny_checkpoints["custom_voice"], "cpu")
    options = SynthesisOptions(max_new_tokens=40)
    expected = tts.synthesize(TEXTS[0], voice=Speaker("ryan"), seed=0, options=options).codes
    monkeypatch.setattr(accel, "GRAPH_SPANS", "buckets")
    monkeypatch.setattr(accel, "GRAPH_SPAN_MIN", 8)
    monkeypatch.setitem(accel.TALKER_REGION_BLOCKS, "cpu", 1)
    replayed, marks = [], []
    compile_regions = accel.compile_regions

    def as_graphed(talker, backend, dynamic_span):  # what a graphed step passes
        marks.append(dynamic_span)
        return compile_regions(talker, backend, dynamic_span=False)

    def graphed(talker, options):  # built as a compiled step, then run with stand-in graphs
        step = accel.StaticFrameStep(talker, options)
        step.options = dataclasses.replace(step.options, cuda_graphs=True)
        return step

    monkeypatch.setattr(accel, "compile_regions", as_graphed)
    _stand_in_graphs(monkeypatch, replayed)
    monkeypatch.setattr(api, "make_frame_step", graphed)
    torch._dynamo.reset()
    tts.accelerate(compile=True, compile_backend="eager", max_frames=64)
    got = tts.synthesize(TEXTS[0], voice=Speaker("ryan"), seed=0, options=options).codes
    assert torch.equal(got, expected) and marks
    assert len(set(replayed)) >= 2  # the stream crossed into a longer span
    block = type(tts.model.talker.model.layers[0])
    assert len(_debug_get_cache_entry_list(block.forward.__code__)) == 2  # the prefill's and the frames'


def test_graphed_span_buckets_capture_once_and_equal_eager(tiny_checkpoints, monkeypatch):
    """With ``GRAPH_SPANS = "buckets"`` a graphed step captures every span of a batch bucket on the bucket's first
    frame (none mid-stream) and replays the span covering the slots in use: eager's codes. A CPU stands in for the
    GPU here: each "graph" reruns the static step at its span (the real capture runs in the GPU tests)."""
    import dataclasses

    from qtts import accel, api

    tts = _fresh(tiny_checkpoints["custom_voice"], "cpu")
    expected = _run(tts, 1)
    monkeypatch.setattr(accel, "GRAPH_SPANS", "buckets")
    monkeypatch.setattr(accel, "GRAPH_SPAN_MIN", 8)
    captured, replayed = [], []

    def graphed(talker, options):
        step = accel.StaticFrameStep(talker, dataclasses.replace(options, compile=False))
        step.options = dataclasses.replace(step.options, cuda_graphs=True)
        return step

    _stand_in_graphs(monkeypatch, replayed, captured)
    monkeypatch.setattr(api, "make_frame_step", graphed)
    tts.accel = accel.AccelOptions(max_frames=64)  # below the runner's first allocation: that sets the cache
    _compare(_run(tts, 4), expected, 1e-5)
    by_rows: dict[int, list[int]] = {}
    for rows, span in captured:
        by_rows.setdefault(rows, []).append(span)
    assert set(by_rows) == {1, 2, 4}
    for spans in by_rows.values():  # every span of a bucket (up to its cache's length), once, on its first frame
        assert spans == accel.graph_spans(spans[-1]) and spans[:3] == [8, 16, 32]
    assert len(set(replayed)) >= 2  # the streams crossed into a longer span


def test_compile_regions_applies_the_products_and_options(tiny_checkpoints, monkeypatch):
    """``compile_regions`` routes the talker's products through the row kernel when ``region_products`` says
    "rows" (until the next ``set_accel``), and hands the device's inductor options (on this CPU
    ``CPU_COMPILE_OPTIONS``, over ``CPU_BATCH_OPTIONS`` where batches take the row kernels) to the regions, and
    ``CPU_HOST_OPTIONS`` alone to the sampling functions, when the backend is inductor."""
    from qtts import accel

    tts = _fresh(tiny_checkpoints["custom_voice"], "cpu")
    seen, functions = [], {}
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: seen.append(kw))
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: functions.__setitem__(fn.__name__, kw["options"]) or fn)
    monkeypatch.setattr(accel, "CUDA_COMPILE_OPTIONS", {"max_autotune_gemm": True})
    accel.compile_regions(tts.model.talker, "inductor")
    cpu = accel.cpu_fma_options(accel.CPU_COMPILE_OPTIONS)  # the contraction made safe for this CPU and compiler
    assert seen and all(kw == {"backend": "inductor", "options": cpu, "dynamic": None}
                    for kw in seen)
    assert functions == {"_run_blocks": cpu, "step": cpu,
                         **dict.fromkeys(("sample", "process_code0_logits", "frame_exponentials"),
                                         accel.CPU_HOST_OPTIONS)}
    seen.clear()
    functions.clear()
    accel.compile_regions(tts.model.talker, "eager")  # a tracing backend takes no inductor options
    assert seen and all(kw == {"backend": "eager", "options": None, "dynamic": None} for kw in seen)
    assert len(functions) == 5 and set(functions.values()) == {None}
    assert not gemv.uses_row_kernels(tts.model.talker)
    monkeypatch.setattr(accel, "region_products", lambda device_type: "rows")
    accel.compile_regions(tts.model.talker, "inductor")
    assert gemv.uses_row_kernels(tts.model.talker)
    tts.set_accel(accel.AccelOptions())
    assert not gemv.uses_row_kernels(tts.model.talker)
    # A model whose batches of streams take the row kernels (``gemv.takes_batches`` for its weight dtype, as on an
    # Intel CPU): its regions also store every computed buffer once (``CPU_BATCH_OPTIONS``), under the general
    # options, and float32 ones fuse 32 reductions per loop (``gemv.ACCUMULATORS``); the sampling functions are
    # unchanged. Row kernels off, or batches left to torch's kernels: the general options.
    import torch._inductor.config as inductor_config

    assert inductor_config.cpp.max_horizontal_fusion_size == accel.INDUCTOR_HORIZONTAL_FUSION
    for name, table in zip(("MAX_ROWS", "MAX_WIDTH", "MAX_IN"), gemv.default_routing("GenuineIntel"), strict=True):
        monkeypatch.setattr(gemv, name, table)
    monkeypatch.setattr(gemv, "ACCUMULATORS", {torch.float32: 32})
    monkeypatch.setattr(accel, "region_products", lambda device_type: "linear")  # the row kernels as set below

    def compiled_with(rows: bool) -> dict:
        gemv.use_row_kernels_(tts.model.talker, rows)
        seen.clear()
        functions.clear()
        accel.compile_regions(tts.model.talker, "inductor")
        assert seen and all(kw["options"] == seen[0]["options"] for kw in seen)
        assert functions["_run_blocks"] == functions["step"] == seen[0]["options"]
        assert functions["sample"] == accel.CPU_HOST_OPTIONS
        return seen[0]["options"]

    f32 = {**accel.CPU_BATCH_OPTIONS, "cpp.max_horizontal_fusion_size": 32, **cpu}
    assert f32["realize_reads_threshold"] == 1 and f32 == accel.region_compile_options("cpu", torch.float32)
    assert compiled_with(True) == f32 and compiled_with(False) == cpu
    quant.quantize_int8_(tts.model, kernel="dequant")
    int8 = {**accel.CPU_BATCH_OPTIONS, **cpu}  # 16 accumulators: inductor's fusion size
    assert compiled_with(True) == int8 == accel.region_compile_options("cpu", torch.int8)
    monkeypatch.setattr(gemv, "MAX_ROWS", {torch.int8: 2})  # int8 batches on int8pack (the AMD table)
    assert compiled_with(True) == cpu
    assert accel.region_compile_options("cuda", torch.int8) == {"max_autotune_gemm": True}


def test_cpu_options_drop_inductors_host_checks_and_keep_the_values():
    """With the regions' CPU options the Python that calls a compiled graph's kernels checks no sizes, strides or
    alignment (inductor's defaults check the inputs and every external call's output). The sampling functions'
    options (the checks off, no FMA contraction) give the values of the defaults' code bit for bit; the regions'
    (with contraction) the same values within float32 rounding."""
    from torch._inductor.utils import run_and_get_code

    from qtts import accel

    def f(x, w):
        return torch.nn.functional.linear(torch.relu(x), w).softmax(-1) * 3

    torch.manual_seed(0)
    x, w = torch.randn(3, 64), torch.randn(32, 64)
    outs, code = {}, {}
    for name, options in (("defaults", None), ("regions", accel.region_compile_options("cpu")),
                          ("sampling", accel.CPU_HOST_OPTIONS)):
        torch._dynamo.reset()
        outs[name], sources = run_and_get_code(torch.compile(f, options=options), x, w)
        code[name] = "\n".join(sources)
    assert "assert_size_stride(" in code["defaults"]  # calls (the name is imported in any case)
    for name in ("regions", "sampling"):
        assert "assert_size_stride(" not in code[name] and "assert_alignment(" not in code[name]
    assert torch.equal(outs["sampling"], outs["defaults"])
    assert torch.allclose(outs["regions"], f(x, w), rtol=1e-5, atol=1e-6)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("quantize", [None, "int8"])
def test_compiled_row_products_on_cuda_equal_eager(tiny_checkpoints, monkeypatch, quantize):
    """``accel.CUDA_PRODUCTS = "rows"``: a compiled, graphed single stream whose products are inductor's row
    reductions gives eager's codes and audio (float32 activations; float32 or int8 weights, whose reduction reads
    half of bfloat16's bytes; one bucket, ~30-50 s of compilation on an H100)."""
    from qtts import accel

    tts = TTS.from_pretrained(tiny_checkpoints["custom_voice"], device="cuda", dtype="float32", quantize=quantize)
    expected = _run(tts, 1)
    monkeypatch.setattr(accel, "CUDA_PRODUCTS", "rows")
    monkeypatch.setattr(gemv, "MIN_WEIGHTS", 0)  # the tiny model's matrices are all small
    calls = []
    name = "_row_int8" if quantize else "_row"
    row = getattr(gemv, name)

    def counted(*args):
        calls.append(1)
        return row(*args)

    # allow_in_graph: dynamo does not guard on ``calls`` (it would recompile at every call); AOT tracing still
    # inlines the row kernel's operations, so inductor compiles the same graph.
    monkeypatch.setattr(gemv, name, torch._dynamo.allow_in_graph(counted))
    torch._dynamo.reset()
    tts.accelerate(compile=True, cuda_graphs=True, max_frames=128)
    got = _run(tts, 1)
    assert gemv.uses_row_kernels(tts.model.talker) and calls
    _compare(got, expected, 1e-4)


@cuda
@pytest.mark.gpu
def test_pairwise_filter_on_cuda_picks_what_the_sort_picks(monkeypatch):
    """``sampling.CUDA_FILTER = "pairwise"``: compiled ``sample`` on CUDA filters without a sort and picks the
    tokens the eager, sorting one picks (top-k of every kind, ties, no nucleus: exact)."""
    from qtts import sampling

    torch.manual_seed(0)
    B, V = 8, 2048
    logits = torch.randn(B, V) * 3
    logits[1, :60] = logits[1, 0]  # ties at the k-th value
    dev = torch.device("cuda")
    params = sampling.SamplingTensors(torch.ones(B, dtype=torch.bool, device=dev), torch.full((B,), 0.9, device=dev),
                                      torch.tensor([50, 50, 0, 1, 2, V, V + 5, 7], device=dev),
                                      torch.ones(B, device=dev))
    seeds, steps = torch.arange(B, device=dev) * 31, torch.arange(B, device=dev) + 4
    race = sampling.group_exponential(seeds, steps, 1, 3, V)
    monkeypatch.setattr(sampling, "CUDA_FILTER", "pairwise")
    torch._dynamo.reset()
    compiled = torch.compile(sampling.sample)
    for g in range(3):
        expected = sampling.sample(logits.to(dev), params, seeds, steps, g + 1, race[:, g])
        assert torch.equal(compiled(logits.to(dev), params, seeds, steps, g + 1, race[:, g]), expected)
