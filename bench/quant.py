"""Numerical effect and speed of weight-only int8 quantization (``quantize="int8"``) against float32.

    python bench/quant.py [--checkpoint PATH] [--frames N] [--threads N] [--device cpu] [--out FILE]

Without ``--checkpoint`` a tiny random CustomVoice checkpoint is made in a temp dir. Steps:

1. Kernel micro-benchmark at the checkpoint's talker shapes, one activation row, weights cycled through a
   set larger than any cache (as in a real frame, where ~1.65 G weights stream from memory at 0.6B):
   float32/bfloat16 ``F.linear`` against the int8 paths (``torch._weight_int8pack_mm`` with bfloat16 or float32
   activations, and the dequantize-then-matmul fallback).
2. A float32 greedy run of ``--frames`` frames with the bench's own frame loop (the same math as
   ``generate.decode_frame`` at batch 1; EOS is banned so every run has the same length); its codes are
   checked against ``TTS.synthesize`` (greedy) where the engine did not stop earlier.
3. Teacher forcing: each variant (int8 with float32 activations elsewhere, bfloat16, int8 + bfloat16) is run
   on the float32 codes as inputs, so every frame sees the same history. Reported per code group: relative
   logit error ``||l_q - l_f|| / ||l_f||`` (raw talker code-0 logits, predictor logits), argmax agreement
   (code 0 after the engine's logit rules: repetition penalty, control ids suppressed), and the mean
   ``KL(p_f32 || p_variant)`` of the temperature-1 distributions (what matters when sampling).
4. Time per frame of each variant's loop (codec decoding excluded), in this process, and the memory read
   bandwidth with the per-frame floor it implies.

Random weights are a pessimistic and odd test of quantization error: their rows have no outliers (easy
for per-channel scales) but their logits have small top-1/top-2 margins (near-ties flip easily), and a
trained model's sensitivity is not measured at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qtts import TTS, Design, InputError, Sampling, SynthesisOptions  # noqa: E402
from qtts.embed import frame_embedding  # noqa: E402
from qtts.model.cache import KVCache, causal_mask  # noqa: E402
from qtts.quant import dequantize_weight, module_bytes, quantize_weight  # noqa: E402
from qtts.sampling import process_code0_logits  # noqa: E402

TEXT = "Quantized weights should not change what the model says, or how it sounds."
VARIANTS = (("float32", torch.float32, None), ("int8", torch.float32, "int8"),
            ("bfloat16", torch.bfloat16, None), ("int8+bf16", torch.bfloat16, "int8"))


# ---- kernel micro-benchmark -----------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_cycle(fn_list, device: torch.device, reps: int) -> float:
    """Seconds per call of the functions in ``fn_list`` (called in turn), best of ``reps`` passes after one
    warm pass: on a shared machine the best pass is the closest to the uncontended cost."""
    for fn in fn_list:
        fn()
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        for fn in fn_list:
            fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best / len(fn_list)


def _pack_f32(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return torch._weight_int8pack_mm(x.to(torch.bfloat16), q, s).float()


def _dequant(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return F.linear(x, q.to(x.dtype)) * s.to(x.dtype)


def _paths(x32: torch.Tensor, w: list[torch.Tensor], qs: list[tuple[torch.Tensor, torch.Tensor]]
           ) -> dict[str, list[Callable[[], torch.Tensor]]]:
    """The products to time, one callable per weight copy, for activations ``x32 [1, in]``."""
    x16 = x32.to(torch.bfloat16)
    paths = {"float32 F.linear": [partial(F.linear, x32, a) for a in w],
             "bfloat16 F.linear": [partial(F.linear, x16, a.to(torch.bfloat16)) for a in w]}
    if hasattr(torch, "_weight_int8pack_mm"):
        paths["int8pack, bf16 x"] = [partial(torch._weight_int8pack_mm, x16, q, s) for q, s in qs]
        paths["int8pack, f32 x -> bf16"] = [partial(_pack_f32, x32, q, s) for q, s in qs]
        paths["int8pack, f32 x + f32 scales"] = [partial(torch._weight_int8pack_mm, x32, q, s.float()) for q, s in qs]
    paths["dequant f32"] = [partial(_dequant, x32, q, s) for q, s in qs]
    paths["dequant bf16"] = [partial(_dequant, x16, q, s) for q, s in qs]
    return paths


def kernel_bench(shapes: list[tuple[str, int, int]], device: torch.device, budget_bytes: int = 96 << 20
                 ) -> list[dict]:
    """Per shape ``(name, out, in)``: microseconds per single-row product of each path, weights cycled
    through enough copies that the int8 set is at least ``budget_bytes`` (no cache reuse)."""
    rows = []
    g = torch.Generator().manual_seed(0)
    for name, out_f, in_f in shapes:
        n = min(64, max(2, budget_bytes // (out_f * in_f)))
        w = [(torch.randn(out_f, in_f, generator=g) / in_f**0.5).to(device) for _ in range(n)]
        qs = [quantize_weight(x) for x in w]
        x32 = torch.randn(1, in_f, generator=g).to(device)
        x16 = x32.to(torch.bfloat16)
        paths = _paths(x32, w, qs)
        del w
        row = {"shape": f"{name} {in_f}->{out_f}", "copies": n}
        for label, fns in paths.items():
            try:
                row[label] = _time_cycle(fns, device, reps=5 if device.type == "cpu" else 20) * 1e6
            except RuntimeError as e:
                row[label] = f"error: {str(e).splitlines()[0][:60]}"
        rows.append(row)
        # correctness of the fast path at this shape (against the dequantized float32 product)
        q, s = qs[0]
        ref = F.linear(x16.float(), dequantize_weight(q, s))
        try:
            got = torch._weight_int8pack_mm(x16, q, s).float()
            row["int8pack rel err"] = float((got - ref).norm() / ref.norm())
        except (AttributeError, RuntimeError):
            row["int8pack rel err"] = float("nan")
        del qs, paths
    return rows


def read_bandwidth(device: torch.device, nbytes: int = 512 << 20) -> float:
    """Memory read bandwidth in GB/s: best of 3 sums over a float32 tensor of ``nbytes``."""
    x = torch.ones(nbytes // 4, device=device)
    sec = _time_cycle([x.sum], device, reps=3)
    return nbytes / sec / 1e9


# ---- the frame loop --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """One run of ``frames`` frames: codes ``[T, G]``, raw logits per frame (code 0: ``[V]``; groups 1..G-1:
    ``[G-1, V_p]``), the processed code-0 logits' argmax ``[T]``, and seconds per frame."""

    codes: torch.Tensor
    logits0: torch.Tensor
    argmax0: torch.Tensor
    logits_groups: torch.Tensor
    seconds: list[float]


def _voice(tts: TTS):
    if tts.kind == "custom_voice":
        return None
    if tts.kind == "voice_design":
        return Design("a calm, clear voice")
    raise InputError("use a custom_voice or voice_design checkpoint (a base one needs reference audio)")


@torch.no_grad()
def run_frames(tts: TTS, text: str, frames: int, forced: torch.Tensor | None = None) -> Run:
    """Greedy frames (``forced`` None) or teacher-forced on ``forced [T, G]`` codes, batch 1."""
    talker = tts.model.talker
    pred = talker.code_predictor
    cfg, pcfg = talker.cfg, talker.cfg.code_predictor_config
    dev, dtype, G = tts.device, tts.dtype, cfg.num_code_groups
    opts = SynthesisOptions(sampling=Sampling.greedy(), max_new_tokens=frames + 1)
    prepared = tts.prepare(text, _voice(tts), options=opts)
    prompt, trailing = prepared.stream.prompt, prepared.stream.trailing
    penalty = torch.tensor([prepared.stream.params.talker.repetition_penalty], device=dev)
    pad = tts.tts_pad()
    P = prompt.shape[0]
    cache = KVCache(cfg.num_hidden_layers, 1, cfg.num_key_value_heads, P + frames + 1, cfg.head_dim, dev, dtype)
    pcache = KVCache(pcfg.num_hidden_layers, 1, pcfg.num_key_value_heads, G, pcfg.head_dim, dev, dtype)
    positions = torch.arange(P, device=dev)[None]
    hidden = talker(prompt[None], positions, cache.layers, causal_mask(positions, P))[:, -1]
    seen = torch.zeros(1, cfg.vocab_size, dtype=torch.bool, device=dev)
    never = torch.zeros(1, dtype=torch.long, device=dev)  # steps < 2 bans EOS: fixed-length runs
    codes, l0, a0, lg, secs = [], [], [], [], []
    for t in range(frames):
        _sync(dev)
        start = time.perf_counter()
        logits0 = talker.codec_head(hidden).float()
        processed = process_code0_logits(logits0, seen, penalty, never, cfg.codec_eos_token_id, cfg.codebook_size)
        best0 = processed.argmax(dim=-1)
        code0 = best0 if forced is None else forced[t, :1].to(dev)
        x = torch.stack([hidden, talker.embed_codec(code0)], dim=1)
        ppos = torch.arange(2, device=dev)[None]
        h = pred(x, ppos, pcache.layers, causal_mask(ppos, 2))[:, -1]
        frame, glogits = [code0], []
        for g in range(1, G):
            if g > 1:
                ppos = torch.full((1, 1), g, device=dev, dtype=torch.long)
                h = pred(pred.embed_group(g - 1, frame[-1])[:, None], ppos, pcache.layers,
                         causal_mask(ppos, g + 1))[:, -1]
            logits = pred.logits(g, h).float()
            glogits.append(logits[0])
            frame.append(logits.argmax(dim=-1) if forced is None else forced[t, g:g + 1].to(dev))
        codes_t = torch.stack(frame, dim=1)  # [1, G]
        seen[0, code0] = True
        text_vec = trailing[t] if t < trailing.shape[0] else pad
        x = (frame_embedding(talker, codes_t) + text_vec)[:, None]
        pos = torch.full((1, 1), P + t, device=dev, dtype=torch.long)
        hidden = talker(x, pos, cache.layers, causal_mask(pos, P + t + 1))[:, -1]
        _sync(dev)
        secs.append(time.perf_counter() - start)
        codes.append(codes_t[0].cpu())
        l0.append(logits0[0].cpu())
        a0.append(int(best0))
        lg.append(torch.stack(glogits).cpu())
    return Run(torch.stack(codes), torch.stack(l0), torch.tensor(a0), torch.stack(lg), secs)


def frame_weights(talker) -> dict[str, int]:
    """Weights of the quantizable layers read per frame: talker layers once, predictor layers 15 times (one
    predictor step per code group 1..15, the first over 2 positions), one lm_head per step."""
    pred = talker.code_predictor
    G = talker.cfg.num_code_groups
    per_layer = sum(m.weight.numel() for m in talker.model.layers.modules() if isinstance(m, torch.nn.Linear))
    pred_layers = sum(m.weight.numel() for m in pred.model.layers.modules() if isinstance(m, torch.nn.Linear))
    proj = pred.small_to_mtp_projection
    proj_w = proj.weight.numel() if isinstance(proj, torch.nn.Linear) else 0
    return {"talker": per_layer, "predictor": (G - 1) * (pred_layers + proj_w),
            "lm_heads": sum(h.weight.numel() for h in pred.lm_head)}


def engine_codes(tts: TTS, text: str, frames: int) -> torch.Tensor:
    """``TTS.synthesize`` greedy codes (the engine may stop early on EOS)."""
    opts = SynthesisOptions(sampling=Sampling.greedy(), max_new_tokens=frames + 1)
    return tts.synthesize(text, voice=_voice(tts), options=opts).codes


# ---- comparison ------------------------------------------------------------------------------------------


def _rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Relative error per row: ``||a - b|| / ||b||`` over the last dim."""
    return (a - b).norm(dim=-1) / b.norm(dim=-1).clamp(min=1e-30)


def _margin(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 logit per row, in units of the row's standard deviation."""
    top = logits.topk(2, dim=-1).values
    return (top[..., 0] - top[..., 1]) / logits.std(dim=-1)


def _kl(logits: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(ref) || softmax(logits))`` per row, in nats (temperature 1)."""
    lp, lq = ref.double().log_softmax(-1), logits.double().log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1)


def compare(ref: Run, run: Run) -> dict:
    """Per group (0 = talker code 0, 1..G-1 = predictor): mean/max relative logit error, agreement rate."""
    rel0 = _rel(run.logits0, ref.logits0)  # [T]
    relg = _rel(run.logits_groups, ref.logits_groups)  # [T, G-1]
    agree0 = (run.argmax0 == ref.argmax0).float()
    agreeg = (run.logits_groups.argmax(-1) == ref.logits_groups.argmax(-1)).float()  # [T, G-1]
    rel = torch.cat([rel0[:, None], relg], dim=1)
    agree = torch.cat([agree0[:, None], agreeg], dim=1)
    codebook = ref.logits_groups.shape[-1]  # code-0 KL over the code ids only (control ids are suppressed)
    kl0 = _kl(run.logits0[:, :codebook], ref.logits0[:, :codebook])
    klg = _kl(run.logits_groups, ref.logits_groups)
    margins = _margin(ref.logits_groups)
    flipped = agreeg == 0
    return {
        "rel_mean": rel.mean(0).tolist(), "rel_max": rel.amax(0).tolist(), "agree": agree.mean(0).tolist(),
        "rel_all": float(rel[:, 1:].mean()), "kl0": float(kl0.mean()), "kl_pred": float(klg.mean()),
        "agree_pred": float(agreeg.mean()), "frames_all_agree": float(agree.all(dim=1).float().mean()),
        "margin_all": float(margins.median()),
        "margin_flipped": float(margins[flipped].median()) if bool(flipped.any()) else None,
    }


# ---- report ------------------------------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt(v) -> str:
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="checkpoint folder (default: a tiny random CustomVoice one in a temp dir)")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--text", default=TEXT)
    ap.add_argument("--no-kernels", action="store_true", help="skip the kernel micro-benchmark")
    ap.add_argument("--out", help="also write the markdown report to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tmp = None
    ckpt = args.checkpoint
    if ckpt is None:
        from qtts.checkpoint import make_checkpoint

        tmp = tempfile.TemporaryDirectory()
        ckpt = str(make_checkpoint("tiny", "custom_voice", Path(tmp.name) / "tiny", seed=0))
    lines = [f"checkpoint `{Path(ckpt).name}`, device {device}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, CPU {_cpu_name()}, load average at start "
             f"{os.getloadavg()[0]:.1f}, {args.frames} frames", ""]

    runs: dict[str, Run] = {}
    sizes: dict[str, int] = {}
    shapes = None
    ref_weights: dict[str, int] = {}
    check = ""
    for name, dtype, quantize in VARIANTS:
        tts = TTS.from_pretrained(ckpt, device=device, dtype=dtype, quantize=quantize)
        sizes[name] = module_bytes(tts.model.talker)
        if tts.quantization is not None:
            lines.append(f"- {name}: {tts.quantization}")
        if shapes is None:
            ref_weights = frame_weights(tts.model.talker)
            t = tts.model.talker.cfg
            shapes = [("q_proj", t.num_attention_heads * t.head_dim, t.hidden_size),
                      ("gate/up", t.intermediate_size, t.hidden_size), ("down", t.hidden_size, t.intermediate_size)]
        if name == "float32":
            runs[name] = run_frames(tts, args.text, args.frames)
            eng = engine_codes(tts, args.text, args.frames)
            n = min(len(eng), args.frames)
            same = torch.equal(eng[:n], runs[name].codes[:n])
            check = (f"bench loop == TTS.synthesize greedy codes on the {n} frames the engine made: "
                     f"{'yes' if same else 'NO'}")
            print(check, file=sys.stderr)
        else:
            runs[name] = run_frames(tts, args.text, args.frames, forced=runs["float32"].codes)
        print(f"{name}: done", file=sys.stderr)
        del tts
    lines += ["", check, ""]

    ref = runs["float32"]
    G = ref.codes.shape[1]
    lines += ["Teacher-forced on the float32 greedy codes. Relative logit error ||l - l_f32|| / ||l_f32|| "
              "(mean over frames) and argmax agreement with float32, per code group (0 = talker, 1-15 = "
              "predictor):", ""]
    head = "| variant | " + " | ".join(str(g) for g in range(G)) + " |"
    lines += [head, "|" + "---|" * (G + 1)]
    results = {}
    for name in runs:
        if name == "float32":
            continue
        r = compare(ref, runs[name])
        results[name] = r
        lines.append(f"| {name} rel err | " + " | ".join(f"{v:.4f}" for v in r["rel_mean"]) + " |")
        lines.append(f"| {name} agree | " + " | ".join(f"{v:.2f}" for v in r["agree"]) + " |")
    lines += ["", "| variant | talker code-0 rel err (mean / max) | predictor rel err (mean) | KL(f32 ‖ variant) "
              "code 0 / predictor, nats | code-0 agree | predictor agree | frames with all 16 equal | "
              "fp32 top-2 margin (σ), all / flipped |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        flipped = "-" if r["margin_flipped"] is None else f"{r['margin_flipped']:.2f}"
        lines.append(f"| {name} | {r['rel_mean'][0]:.4f} / {r['rel_max'][0]:.4f} | {r['rel_all']:.4f} | "
                     f"{r['kl0']:.1e} / {r['kl_pred']:.1e} | {r['agree'][0]:.2f} | {r['agree_pred']:.3f} | "
                     f"{r['frames_all_agree']:.2f} | "
                     f"{r['margin_all']:.2f} / {flipped} |")
    lines += ["", "Time per frame of the frame loop (batch 1, codec decoding excluded; first 2 frames dropped; "
              "on a shared machine the fastest frame is the closest to the uncontended cost):",
              "", "| variant | fastest ms | median ms | talker+predictor bytes (MiB) |", "|---|---|---|---|"]
    for name, run in runs.items():
        s = run.seconds[2:] if len(run.seconds) > 4 else run.seconds
        lines.append(f"| {name} | {min(s) * 1e3:.1f} | {statistics.median(s) * 1e3:.1f} | "
                     f"{sizes[name] / (1 << 20):.0f} |")

    if not args.no_kernels and shapes is not None:
        bw = read_bandwidth(device)
        per_frame = sum(ref_weights.values())
        lines += ["", f"Memory read bandwidth (float32 sum over 512 MiB, best of 3): {bw:.1f} GB/s. Quantized "
                  f"weights read per frame: {per_frame / 1e9:.2f} G, so a frame cannot take less than "
                  + ", ".join(f"{per_frame * b / bw / 1e6:.0f} ms in {n}" for n, b in
                              (("int8", 1), ("bfloat16", 2), ("float32", 4)))
                  + " (weights only)."]
        rows = kernel_bench(shapes, device)
        labels = [k for k in rows[0] if k not in ("shape", "copies", "int8pack rel err")]
        lines += ["", "Kernel micro-benchmark: µs per 1-row product (best of 5 passes), weights cycled through copies "
                  "larger than the caches:", "", "| shape | " + " | ".join(labels) + " | int8pack rel err |",
                  "|" + "---|" * (len(labels) + 2)]
        for row in rows:
            lines.append(f"| {row['shape']} (x{row['copies']}) | " + " | ".join(_fmt(row[k]) for k in labels)
                         + f" | {row.get('int8pack rel err', float('nan')):.1e} |")
    lines += ["", f"load average at end {os.getloadavg()[0]:.1f}"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
