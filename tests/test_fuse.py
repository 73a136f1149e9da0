"""Fused projections (``qtts.model.fuse``, ``--accel fused``): same outputs, same codes, reversible."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from qtts import TTS, Sampling, Speaker, SynthesisOptions
from qtts.accel import parse_accel
from qtts.model.cache import LayerCache, causal_mask
from qtts.model.fuse import fuse_projections_, is_fused, unfuse_projections_
from qtts.model.layers import Block, Rotary
from qtts.quant import Int8Linear, quantize_int8_


def _block(dtype: torch.dtype = torch.float64) -> Block:
    torch.manual_seed(0)
    block = Block(64, 96, 4, 2, 16, 1e-6).to(dtype)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.2)
    return block


def _run(block: Block, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    x = torch.randn(2, 3, 64, dtype=dtype, generator=torch.Generator().manual_seed(1))
    positions = torch.tensor([[0, 1, 2], [4, 5, 6]])
    cache = LayerCache(torch.zeros(2, 2, 8, 16, dtype=dtype), torch.zeros(2, 2, 8, 16, dtype=dtype))
    return block(x, Rotary(16, 1e4).cos_sin(positions, dtype), cache, positions, causal_mask(positions, 8))


def _cats(block: Block) -> int:
    """Concatenations one block call runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += func.overloadpacket is torch.ops.aten.cat
            return func(*args, **(kwargs or {}))

    with Count():
        _run(block)
    return Count.n


def test_fused_block_computes_the_same_and_unfuses_exactly():
    block = _block()
    before = {k: v.clone() for k, v in block.state_dict().items()}
    expected = _run(block)
    cats = _cats(block)
    assert fuse_projections_(block) == 2 and is_fused(block)
    keys = set(block.state_dict())
    assert {"self_attn.qkv_proj.weight", "mlp.gate_up_proj.weight"} <= keys
    assert not keys & {"self_attn.q_proj.weight", "mlp.up_proj.weight"}  # the separate layers are gone
    assert sum(p.numel() for p in block.parameters()) == sum(v.numel() for v in before.values())
    assert (_run(block) - expected).abs().max() < 1e-12
    attn = block.self_attn
    assert torch.equal(attn.qk_norm_weight, attn.norm_weights()) and "self_attn.qk_norm_weight" not in keys
    assert _cats(block) == cats - 2  # neither q and k nor their norm weights are concatenated per call
    assert fuse_projections_(block) == 0  # already fused: nothing to do
    assert unfuse_projections_(block) == 2 and not is_fused(block)
    assert attn.qk_norm_weight is None and _cats(block) == cats
    after = block.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert torch.equal(_run(block), expected)


def test_fused_int8_layers_keep_codes_and_scales():
    """int8 blocks fuse their codes and per-row scales: the quantization is the one of the separate layers."""
    block = _block(torch.float32)
    for parent in (block.self_attn, block.mlp):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, Int8Linear.from_linear(child, kernel="dequant"))
    q, k, v = (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj)
    expected = _run(block, torch.float32)
    assert fuse_projections_(block) == 2
    fused = block.self_attn.qkv_proj
    assert type(fused) is Int8Linear and fused.kernel == "dequant"
    assert torch.equal(fused.weight_int8, torch.cat([q.weight_int8, k.weight_int8, v.weight_int8]))
    assert torch.equal(fused.scales, torch.cat([q.scales, k.scales, v.scales]))
    assert (_run(block, torch.float32) - expected).abs().max() < 1e-5
    unfuse_projections_(block)
    assert torch.equal(block.self_attn.k_proj.weight_int8, k.weight_int8)


def test_parse_fused():
    assert parse_accel("fused, compile", "cpu").fused and not parse_accel("compile", "cpu").fused


def test_mixed_layers_are_left_alone():
    block = _block(torch.float32)
    block.mlp.up_proj = Int8Linear.from_linear(block.mlp.up_proj)
    assert fuse_projections_(block) == 1  # attention only: gate (float) and up (int8) cannot be one product
    assert block.mlp.gate_up_proj is None and block.self_attn.qkv_proj is not None


@pytest.mark.parametrize("accel", ["fused", "fused,compile"])
def test_fused_accel_gives_eager_codes(tiny_checkpoints, accel):
    """``--accel fused`` on a whole model, eager and compiled (dynamo, no code generation): the codes of the
    unfused eager path; switching back restores the checkpoint's layout."""
    tts = TTS.from_pretrained(tiny_checkpoints["custom_voice"], device="cpu", dtype="float32")
    opts = SynthesisOptions(max_new_tokens=12)
    text = "Fused projections give the same codes."
    expected = [tts.synthesize(text, voice=Speaker("ryan"), seed=s, options=o).codes
                for s, o in ((0, opts), (1, SynthesisOptions(max_new_tokens=12, sampling=Sampling.greedy())))]
    names = set(tts.model.state_dict())
    options = parse_accel(accel, "cpu")
    if options.compile:  # dynamo traces, no code generation (fast)
        options = dataclasses.replace(options, compile_backend="eager", max_frames=128)
    tts.set_accel(options)
    assert is_fused(tts.model.talker)
    got = [tts.synthesize(text, voice=Speaker("ryan"), seed=s, options=o).codes
           for s, o in ((0, opts), (1, SynthesisOptions(max_new_tokens=12, sampling=Sampling.greedy())))]
    for a, b in zip(got, expected, strict=True):
        assert np.array_equal(a.numpy(), b.numpy())
    tts.accelerate()
    assert not is_fused(tts.model.talker) and set(tts.model.state_dict()) == names


def test_fused_with_int8_and_row_kernels(tiny_checkpoints):
    tts = TTS.from_pretrained(tiny_checkpoints["custom_voice"], device="cpu", dtype="float32", quantize="int8")
    layers = tts.quantization.layers
    text, opts = "Quantized and fused.", SynthesisOptions(max_new_tokens=8, sampling=Sampling.greedy())
    expected = tts.synthesize(text, voice=Speaker("ryan"), options=opts).codes
    tts.set_accel(parse_accel("fused,row-kernels", "cpu"))
    fused = [m for m in tts.model.talker.modules() if type(m) is Int8Linear]
    assert len(fused) == layers - 3 * len(tts.model.talker.model.layers + tts.model.talker.code_predictor.model.layers)
    assert all("forward" in m.__dict__ for m in fused)  # the fused layers got the row kernels
    got = tts.synthesize(text, voice=Speaker("ryan"), options=opts).codes
    assert np.array_equal(got.numpy(), expected.numpy())
    assert quantize_int8_(tts.model).layers == 0  # nothing left unquantized


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_cuda_graphs_give_eager_codes(tiny_checkpoints):
    tts = TTS.from_pretrained(tiny_checkpoints["custom_voice"], device="cuda", dtype="float32")
    opts = SynthesisOptions(max_new_tokens=12)
    expected = tts.synthesize("Graphs and fused layers.", voice=Speaker("ryan"), seed=2, options=opts).codes
    tts.accelerate(cuda_graphs=True, fused=True, max_frames=128)
    got = tts.synthesize("Graphs and fused layers.", voice=Speaker("ryan"), seed=2, options=opts).codes
    assert np.array_equal(got.numpy(), expected.numpy())
