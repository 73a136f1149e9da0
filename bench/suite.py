"""Speed suite: per-frame time by component, TTFA, RTF, memory, batching, against the official package and
the machine's memory-bandwidth floor, per shape and dtype, in one run.

    python bench/suite.py [--shapes tiny,0.6b] [--with-1.7b] [--dtypes float32,bfloat16,int8] [--frames 10]
                          [--batches 1,4,8] [--threads 1] [--device cpu] [--no-official] [--quick]
                          [--out-dir bench/results] [--label cpu]

Per shape (random-weight CustomVoice checkpoints of the real shapes: ``tiny`` is written to a temp folder,
``0.6b`` / ``1.7b`` are read from ``checkpoints/<shape>-custom_voice``) and dtype (``int8`` = float32 with
``quantize="int8"``), all greedy with a fixed frame budget (random weights never stop on their own):

* ``profile``: ``qtts.profile.profile_synthesis`` (prepare, prefill, talker / predictor / sampling / other
  per frame, codec per frame and the first 1-frame decode);
* ``runner[B]``: steady frame-step time of ``tts.new_runner(B, decode=False)`` with B live streams (median
  wall and mean process-CPU per step) and the aggregate frames per second, B in ``--batches``;
* ``stream``: ``tts.stream`` (default chunks 1, 2, 4, 8, ...): time to first audio and real-time factor, after
  one 2-frame warm-up stream (a compiled step is built once per runner; its cost is warm-up, not TTFA);
* ``memory``: resident memory of the loaded model and the peak above it during the measurements (CPU:
  ``/proc/self/status`` VmRSS / VmHWM, the peak reset through ``/proc/self/clear_refs``; CUDA:
  ``torch.cuda.max_memory_allocated``);
* ``floor``: weight bytes a frame step must read (talker decoder + ``codec_head`` once, the predictor's
  transformer 15 times, each of its 15 heads once; embeddings are gathered rows, not counted) divided by the
  measured copy bandwidth (best of several copies of a 1 GiB tensor, bytes read + written per second);
* ``official``: ``Qwen3TTSModel.generate_custom_voice`` (``qwen-tts``, greedy) of N and of 2 frames in the
  same process; steady per-frame = difference of (total - codec) / (N - 2), so its prefill and codec are not
  counted; also its naive total / N. It has no batching: its batch-B throughput is its single-stream rate.
  ``int8`` is compared against the official float32 run (it has no int8).

Writes ``suite-<label>.json``, ``suite-<label>.md`` (tables, targets) and ``frame-components-<label>.md``
(ASCII bar chart; matplotlib is not installed here) into ``--out-dir``. Absolute CPU times are only
meaningful relative to the floor and the official package measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from streaming import Request, Stamp, compare_codes, cpu_model, git_commit, load_official, run_official  # noqa: E402

from qtts import TTS, Sampling, Speaker, SynthesisOptions  # noqa: E402
from qtts.accel import parse_accel  # noqa: E402
from qtts.checkpoint import make_checkpoint  # noqa: E402
from qtts.profile import FRAME_PARTS, profile_synthesis, time_runner_steps  # noqa: E402
from qtts.quant import Int8Linear, module_bytes  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog, and then it keeps on running far away."
SPEAKER, LANGUAGE = "vivian", "english"
DTYPES = {"float32": (torch.float32, None), "bfloat16": (torch.bfloat16, None), "int8": (torch.float32, "int8")}
MIB = 1 << 20
SHARED_TOKENIZER = REPO.parent / "shared" / "data" / "qwen-text-tokenizer"


# ---- machine ------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


class Memory:
    """Resident (CPU) or allocated (CUDA) bytes now, and the peak since ``reset``."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def now(self) -> int | None:
        if self.cuda:
            return torch.cuda.memory_allocated()
        kb = _status_kb("VmRSS")
        return None if kb is None else kb * 1024

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS

    def peak(self) -> int | None:
        if self.cuda:
            return torch.cuda.max_memory_allocated()
        kb = _status_kb("VmHWM")
        return None if kb is None else kb * 1024


def bandwidth(device: torch.device, gib: float = 1.0, repeats: int = 5) -> dict:
    """Copy bandwidth: best of ``repeats`` copies of a ``gib`` GiB tensor, (bytes read + written) / second."""
    n = int(gib * (1 << 30)) // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t0)
    del src, dst
    return {"bytes_per_s": 2 * n * 4 / min(times), "copy_gib": gib, "repeats": repeats,
            "copy_s": [round(t, 4) for t in times]}


def read_bandwidth(device: torch.device, gib: float = 1.0, repeats: int = 3) -> float:
    """Read bandwidth in bytes / second: best of ``repeats`` sums of a ``gib`` GiB float32 tensor (a read-only
    stream, as a frame step's weight reads are; a copy also writes)."""
    src = torch.ones(int(gib * (1 << 30)) // 4, dtype=torch.float32, device=device)
    src.sum()  # touch the pages
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        src.sum()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return src.numel() * 4 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def release() -> None:
    """Free dropped models for real: collect, then hand glibc's free heap back to the OS (otherwise the next
    model reuses resident pages and its RSS growth understates its memory)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def frame_weight_bytes(tts: TTS) -> dict:
    """Weight bytes one frame step reads at the model's dtype (int8 layers: codes + scales)."""
    talker = tts.model.talker
    pred = talker.code_predictor
    passes = talker.cfg.num_code_groups - 1  # predictor transformer passes per frame
    talker_b = module_bytes(talker.model.layers) + module_bytes(talker.model.norm) + module_bytes(talker.codec_head)
    pred_pass = module_bytes(pred.model.layers) + module_bytes(pred.model.norm) + \
        module_bytes(pred.small_to_mtp_projection)
    heads = module_bytes(pred.lm_head)
    return {"talker": talker_b, "predictor_pass": pred_pass, "predictor_passes": passes, "predictor_heads": heads,
            "total": talker_b + passes * pred_pass + heads}


@torch.no_grad()
def matmul_time(tts: TTS, repeats: int = 3) -> float:
    """Seconds of the frame step's matrix products alone, on the model's own linear modules with one row of
    input (talker layers and ``codec_head`` once, the predictor's layers 15 times, each head once); best of
    ``repeats``. What the same weights cost without attention, norms, sampling or Python around them."""
    talker = tts.model.talker
    pred = talker.code_predictor

    def linears(module: torch.nn.Module) -> list[torch.nn.Module]:
        return [m for m in module.modules() if isinstance(m, (torch.nn.Linear, Int8Linear))]

    passes = talker.cfg.num_code_groups - 1
    calls = linears(talker.model.layers) + [talker.codec_head] + passes * (
        linears(pred.model.layers) + linears(pred.small_to_mtp_projection)) + linears(pred.lm_head)
    inputs = {m.in_features: torch.zeros(1, m.in_features, dtype=tts.dtype, device=tts.device) for m in calls}
    best = float("inf")
    for _ in range(repeats):
        _sync(tts.device)
        t0 = time.perf_counter()
        for m in calls:
            m(inputs[m.in_features])
        _sync(tts.device)
        best = min(best, time.perf_counter() - t0)
    return best


# ---- ours ---------------------------------------------------------------------------------------------


def _options(frames: int) -> SynthesisOptions:
    return SynthesisOptions(sampling=Sampling.greedy(), max_new_tokens=frames + 1)


def runner_rate(tts: TTS, batch: int, frames: int) -> dict:
    """Steady frame step with ``batch`` live streams on ``tts.new_runner(batch, decode=False)``."""
    prepared = [tts.prepare(TEXT, voice=Speaker(SPEAKER), language=LANGUAGE, seed=i, options=_options(frames + 4))
                for i in range(batch)]
    steps = time_runner_steps(tts, prepared, frames)
    wall = statistics.median(steps.wall)
    return {"batch": batch, "live": steps.live, "frame_ms": 1000 * wall,
            "frame_cpu_ms": 1000 * statistics.mean(steps.cpu), "frames_per_s": batch / wall, "frames": frames}


# Batch sizes are measured in alternation, this many rounds of each (a share of the frames each time), so that the
# machine's phases (its memory speed moves by 10 % and more within minutes) weigh on every batch size alike: the
# ratio of 8 streams' throughput to one's is what a target judges. One pass per batch size, as before session 20,
# gave 4.61 x for float32 where the same code, measured in 10 interleaved rounds by ``bench/frame_ab.py``, gave 5.06 x.
BATCH_ROUNDS = 3


def runner_rates(tts: TTS, batches: list[int], frames: int, rounds: int = BATCH_ROUNDS) -> dict[str, dict]:
    """``runner_rate`` for each of ``batches``, measured in ``rounds`` alternating rounds of ``ceil(frames /
    rounds)`` steps per batch size; per batch size the median step and mean CPU over all its rounds' steps.
    Keys are the batch sizes as strings (the same after a JSON round trip)."""
    per_round = -(-frames // rounds)
    walls: dict[int, list[float]] = {b: [] for b in batches}
    cpus: dict[int, list[float]] = {b: [] for b in batches}
    live: dict[int, int] = {}
    for _ in range(rounds):
        for b in batches:
            prepared = [tts.prepare(TEXT, voice=Speaker(SPEAKER), language=LANGUAGE, seed=i,
                                    options=_options(per_round + 4)) for i in range(b)]
            steps = time_runner_steps(tts, prepared, per_round)
            walls[b] += steps.wall
            cpus[b] += steps.cpu
            live[b] = steps.live
    out = {}
    for b in batches:
        wall = statistics.median(walls[b])
        out[str(b)] = {"batch": b, "live": live[b], "frame_ms": 1000 * wall,
                       "frame_cpu_ms": 1000 * statistics.mean(cpus[b]), "frames_per_s": b / wall,
                       "frames": len(walls[b]), "rounds": rounds}
    return out


def stream_run(tts: TTS, frames: int) -> dict:
    """One ``tts.stream`` of ``frames`` frames: TTFA (incl. prepare), RTF, and the codes."""
    start = Stamp.now()
    first, codes, samples = None, [], 0
    for chunk in tts.stream(TEXT, voice=Speaker(SPEAKER), language=LANGUAGE, options=_options(frames)):
        if first is None and len(chunk.audio):
            first = Stamp.now() - start
        samples += len(chunk.audio)
        if chunk.codes is not None and chunk.codes.shape[0]:
            codes.append(chunk.codes)
    total = Stamp.now() - start
    audio_s = samples / tts.sample_rate
    return {"ttfa_ms": 1000 * first.wall, "ttfa_cpu_ms": 1000 * first.cpu, "wall_s": total.wall,
            "cpu_s": total.cpu, "audio_s": audio_s, "rtf": total.wall / audio_s, "rtf_cpu": total.cpu / audio_s,
            "codes": torch.cat(codes)}


def measure_ours(folder: Path, dtype_name: str, device: torch.device, frames: int, batches: list[int],
                 mem: Memory, accel: str = "eager") -> tuple[dict, torch.Tensor]:
    dtype, quantize = DTYPES[dtype_name]
    release()
    base = mem.now()
    tts = TTS.from_pretrained(folder, device=device, dtype=dtype, quantize=quantize)
    tts.set_accel(parse_accel(accel.replace("+", ","), device))
    loaded = mem.now()
    mem.reset()
    voice = Speaker(SPEAKER)
    profile_synthesis(tts, TEXT, 2, voice=voice, plain=False)  # warm-up
    prof = profile_synthesis(tts, TEXT, frames, voice=voice, plain=False, quantize=quantize or "none")
    matmuls = matmul_time(tts)
    runners = runner_rates(tts, batches, frames)
    stream_run(tts, 2)  # warm-up of the pooled stream runner (compiled paths build their step once per runner)
    stream = stream_run(tts, frames)
    peak = mem.peak()
    out = {"weights": frame_weight_bytes(tts), "matmul_ms": 1000 * matmuls, "profile": prof.to_dict(),
           "runner": runners,
           "stream": {k: v for k, v in stream.items() if k != "codes"},
           "memory": {"weights_mib": module_bytes(tts.model) / MIB,  # without the codec, like the official
                      "model_mib": _mib(loaded, base), "working_peak_mib": _mib(peak, loaded)}}
    if tts.quantization is not None:
        out["quantization"] = str(tts.quantization)
    del tts
    release()
    return out, stream["codes"]


def _mib(a: int | None, b: int | None) -> float | None:
    return None if a is None or b is None else (a - b) / MIB


# ---- official -----------------------------------------------------------------------------------------


def measure_official(folder: Path, dtype: torch.dtype, device: torch.device, frames: int, mem: Memory
                     ) -> tuple[dict, torch.Tensor]:
    """The official package: steady per-frame from an N-frame and a 2-frame run (minus codec time)."""
    release()
    base = mem.now()
    theirs = load_official(folder, dtype, device)
    loaded = mem.now()
    mem.reset()
    short = Request(TEXT, SPEAKER, LANGUAGE, 2)
    run_official(theirs, short, device)  # warm-up
    long = run_official(theirs, Request(TEXT, SPEAKER, LANGUAGE, frames), device)
    ref = run_official(theirs, short, device)
    peak = mem.peak()
    gen_long, gen_short = long.total - long.codec, ref.total - ref.codec
    n = long.codes.shape[0] - ref.codes.shape[0]
    out = {"frames": int(long.codes.shape[0]),
           "frame_ms": 1000 * (gen_long.wall - gen_short.wall) / n,
           "frame_cpu_ms": 1000 * (gen_long.cpu - gen_short.cpu) / n,
           "naive_frame_ms": 1000 * long.total.wall / long.codes.shape[0],
           "total_s": long.total.wall, "codec_s": long.codec.wall, "short_total_s": ref.total.wall,
           "rtf": long.total.wall / (long.codes.shape[0] * 0.08), "ttfa_ms": 1000 * long.total.wall,
           "memory": {"weights_mib": module_bytes(theirs.model) / MIB, "model_mib": _mib(loaded, base),
                      "working_peak_mib": _mib(peak, loaded)}}
    del theirs
    release()
    return out, long.codes


# ---- assembling ----------------------------------------------------------------------------------------


def checkpoint_for(shape: str, tmp: Path) -> Path:
    """The CustomVoice checkpoint of ``shape``: tiny in ``tmp``; larger ones in ``checkpoints/`` (1.7b is
    written there on first use, ~3.8 GB)."""
    tok = SHARED_TOKENIZER if (SHARED_TOKENIZER / "vocab.json").is_file() else None
    if shape == "tiny":
        return make_checkpoint("tiny", "custom_voice", tmp / "tiny", seed=1, tokenizer=tok)
    folder = REPO / "checkpoints" / f"{shape}-custom_voice"
    if not (folder / "speech_tokenizer" / "model.safetensors").is_file():
        if shape != "1.7b":
            raise SystemExit(f"{folder} is missing: qtts make-checkpoint --shape {shape} --kind custom_voice "
                             f"--out {folder}")
        make_checkpoint(shape, "custom_voice", folder, seed=1, tokenizer=tok)
    return folder


def derive(entry: dict, floor_bw: float, official: dict | None, batches: list[int]) -> dict:
    """Ratios and targets for one (shape, dtype) entry."""
    prof, runners = entry["profile"], entry["runner"]
    first, top = str(batches[0]), str(batches[-1])
    one, one_cpu = runners[first]["frame_ms"], runners[first]["frame_cpu_ms"]
    w = entry["weights"]
    floor_ms = 1000 * w["total"] / floor_bw
    d = {"frame_ms": one, "frame_cpu_ms": one_cpu, "floor_ms": floor_ms, "vs_floor": one / floor_ms,
         "vs_floor_cpu": one_cpu / floor_ms, "talker_floor_ms": 1000 * w["talker"] / floor_bw,
         "matmul_ms": entry["matmul_ms"], "vs_matmul_cpu": one_cpu / entry["matmul_ms"],
         "predictor_floor_ms": 1000 * (w["predictor_passes"] * w["predictor_pass"] + w["predictor_heads"]) / floor_bw,
         "ttfa_budget_ms": 1000 * (prof["wall"]["prepare"] + prof["wall"]["prefill"] + prof["codec_first_s"])
         + 2 * one}
    d["ttfa_vs_budget"] = entry["stream"]["ttfa_ms"] / d["ttfa_budget_ms"]
    if len(batches) > 1:
        d[f"throughput_{top}_vs_{first}"] = runners[top]["frames_per_s"] / runners[first]["frames_per_s"]
        d[f"throughput_{top}_vs_{first}_cpu"] = (int(top) / runners[top]["frame_cpu_ms"]) / (int(first) / one_cpu)
    if official is not None:
        d["vs_official"] = one / official["frame_ms"]
        d["vs_official_cpu"] = runners[first]["frame_cpu_ms"] / official["frame_cpu_ms"]
        d["vs_official_naive"] = one / official["naive_frame_ms"]
        d["throughput_vs_official"] = {b: r["frames_per_s"] / (1000 / official["frame_ms"])
                                       for b, r in runners.items()}
    return d


def targets(shape: str, dtype: str, d: dict, batches: list[int], on_cpu: bool = True, base: str | None = None
            ) -> list[dict]:
    """The speed issue's targets that apply to this entry (stated for the released shapes; none for ``tiny``),
    with the value from wall time and from process CPU time. On CPU ``met`` is judged on CPU time: with one
    torch thread it is the time the work needed, while the wall time also holds the time other load on a
    shared machine took the core (TTFA has wall time on both sides). On a GPU, and with several threads (whose
    CPU times add up), it is judged on wall time. ``dtype`` is the entry's label, ``base`` its plain dtype."""
    out = []
    kind = base or dtype
    if shape == "tiny":
        return out

    def add(name: str, wall: float, cpu: float, limit: float, at_most: bool = True) -> None:
        value = cpu if on_cpu else wall
        out.append({"shape": shape, "dtype": dtype, "target": name, "value": round(wall, 3),
                    "value_cpu": round(cpu, 3), "limit": limit,
                    "met": bool(value <= limit if at_most else value >= limit)})

    if kind == "float32":
        add("frame ≤ 1.15 × floor", d["vs_floor"], d["vs_floor_cpu"], 1.15)
        if "vs_official" in d:
            add("frame ≈ 0.6 × official (≤)", d["vs_official"], d["vs_official_cpu"], 0.6)
    if kind == "bfloat16":
        add("frame ≤ 1.3 × floor", d["vs_floor"], d["vs_floor_cpu"], 1.3)
    if kind == "int8":
        add("frame ≤ 80 ms", d["frame_ms"], d["frame_cpu_ms"], 80.0)
    add("TTFA ÷ (prepare + prefill + 2 frames + 1-frame decode) ≤ 1", d["ttfa_vs_budget"], d["ttfa_vs_budget"], 1.0)
    key = f"throughput_{batches[-1]}_vs_{batches[0]}"
    if key in d and (batches[0], batches[-1]) == (1, 8):
        add("8 streams ≥ 5 × throughput of 1", d[key], d[key + "_cpu"], 5.0, at_most=False)
    return out


def run_suite(shapes: list[str], dtypes: list[str], frames: int, batches: list[int], device: torch.device,
              official: bool = True, log=print, copy_gib: float = 1.0, accels: tuple[str, ...] = ("eager",)
              ) -> dict:
    """Run the suite and return the result dict (see the module docstring)."""
    mem = Memory(device)
    bw = bandwidth(device, copy_gib)
    log(f"copy bandwidth {bw['bytes_per_s'] / 1e9:.1f} GB/s (read + write)")
    result = {"machine": machine(device), "bandwidth": bw, "frames": frames, "batches": batches, "entries": [],
              "targets": []}
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            folder = checkpoint_for(shape, Path(tmp))
            theirs: dict[str, tuple[dict, torch.Tensor]] = {}
            for dtype, accel in [(d, a) for d in dtypes for a in accels]:
                _more_bandwidth(bw, device)
                t0 = time.perf_counter()
                entry, codes = measure_ours(folder, dtype, device, frames, batches, mem, accel)
                label = dtype if accel == "eager" else f"{dtype} {accel}"
                entry.update(shape=shape, dtype=label, base_dtype=dtype, accel=accel)
                ref_dtype = "float32" if dtype == "int8" else dtype
                if official and ref_dtype not in theirs:
                    theirs[ref_dtype] = measure_official(folder, DTYPES[ref_dtype][0], device, frames, mem)
                off = theirs.get(ref_dtype)
                if off is not None:
                    entry["official"] = {**off[0], "dtype": ref_dtype}
                    entry["codes_vs_official"] = compare_codes(codes, off[1])
                result["entries"].append(entry)
                log(f"{shape} {label}: frame {entry['runner'][str(batches[0])]['frame_ms']:.1f} ms, official "
                    f"{entry.get('official', {}).get('frame_ms', float('nan')):.1f} ms "
                    f"({time.perf_counter() - t0:.0f} s)")
    _more_bandwidth(bw, device)
    for entry in result["entries"]:  # one floor for the whole run: the best bandwidth seen
        entry["derived"] = derive(entry, bw["bytes_per_s"], entry.get("official"), batches)
        result["targets"] += targets(entry["shape"], entry["dtype"], entry["derived"], batches,
                                     device.type == "cpu" and torch.get_num_threads() == 1, entry.get("base_dtype"))
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    return result


def _more_bandwidth(bw: dict, device: torch.device) -> None:
    """Measure the bandwidth again (other load on a shared machine varies) and keep the best in ``bw``."""
    again = bandwidth(device, bw["copy_gib"], 3)
    bw.setdefault("samples_gb_s", [round(bw["bytes_per_s"] / 1e9, 2)]).append(round(again["bytes_per_s"] / 1e9, 2))
    bw["bytes_per_s"] = max(bw["bytes_per_s"], again["bytes_per_s"])


def machine(device: torch.device) -> dict:
    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "loadavg_start": list(os.getloadavg()), "qtts_commit": git_commit()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(ImportError):
        from importlib.metadata import version

        info["qwen-tts"] = version("qwen-tts")
    return info


# ---- reports ------------------------------------------------------------------------------------------


def _f(x: float | None, fmt: str = ".1f") -> str:
    return "–" if x is None else format(x, fmt)


def markdown(result: dict) -> str:
    """Tables of one suite run."""
    m, bw = result["machine"], result["bandwidth"]
    bs = [str(b) for b in result["batches"]]
    lines = [f"Machine: {m['cpu']} ({m['cpu_count']} CPUs), device {m['device']}, torch {m['torch']}, "
             f"{m['torch_threads']} torch thread(s), qtts {m['qtts_commit']}, qwen-tts {m.get('qwen-tts', '–')}, "
             f"{m['date']}; load average {m['loadavg_start'][0]:.1f} at start, {m['loadavg_end'][0]:.1f} at end. "
             f"Copy bandwidth {bw['bytes_per_s'] / 1e9:.2f} GB/s (read + written; the best copy of {bw['copy_gib']} "
             f"GiB, measured before every entry: {bw.get('samples_gb_s', [])} GB/s). {result['frames']} frames "
             "per measurement, greedy.", "",
             "Per frame, B=1 (ms): the runner's steady frame step (median wall; mean process CPU), its split by "
             "component from `qtts.profile` (process CPU ms per frame, instrumented run), the floor = weight bytes "
             "per frame / bandwidth (talker + predictor floors in brackets), the frame's matrix products alone on "
             "the same modules (`matmul_time`), and the official package's steady per-frame time (wall; CPU):", "",
             "| shape | dtype | prefill | frame wall | frame CPU | talker | predictor | sampling | other | "
             "codec/frame | weights/frame MiB | floor (T + P) | ÷ floor wall / CPU | matmuls only | "
             "CPU ÷ matmuls | official wall / CPU | "
             "÷ official wall / CPU | codes vs official |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in result["entries"]:
        p, d, r1 = e["profile"], e["derived"], e["runner"][bs[0]]
        off = e.get("official")
        cpu = {k: 1000 * v / p["frames"] for k, v in p["cpu"].items()}
        ref = f" [{off['dtype']}]" if off and off["dtype"] != e["dtype"] else ""
        lines.append(
            f"| {e['shape']} | {e['dtype']} | {1000 * p['wall']['prefill']:.1f} | {r1['frame_ms']:.1f} | "
            f"{r1['frame_cpu_ms']:.1f} | " + " | ".join(f"{cpu[k]:.1f}" for k in FRAME_PARTS)
            + f" | {cpu['codec']:.1f} | {e['weights']['total'] / MIB:.0f} | {d['floor_ms']:.1f} "
            f"({d['talker_floor_ms']:.1f} + {d['predictor_floor_ms']:.1f}) | {d['vs_floor']:.2f} / "
            f"{d['vs_floor_cpu']:.2f} | {d['matmul_ms']:.1f} | {d['vs_matmul_cpu']:.2f} | "
            + (f"{off['frame_ms']:.1f} / {off['frame_cpu_ms']:.1f}{ref} | {d['vs_official']:.2f} / "
               f"{d['vs_official_cpu']:.2f} | {e['codes_vs_official']} |" if off else "– | – | – |"))
    lines += ["", "Streaming, batching, memory. TTFA: wall, including prompt building, against its budget "
              "prepare + prefill + 2 frames + the first 1-frame decode; the official package returns audio only at "
              "the end (its TTFA = its whole run). Throughput: frames per second summed over B streams "
              "(`new_runner(B)`, no audio decode; the batch sizes measured in alternating rounds, "
              f"{BATCH_ROUNDS} by default), wall (CPU-time based in brackets); the official package has no "
              "batching, so its throughput at any B is its single-stream rate. Memory: weight bytes; RSS growth "
              "on load; peak RSS above that during the measurements.", "",
              "| shape | dtype | TTFA ms | budget ms | RTF | official RTF | "
              + " | ".join(f"B={b} frames/s" for b in bs) + f" | B={bs[-1]} ÷ B={bs[0]} | ÷ official at B={bs[-1]} "
              "| weights / load / peak MiB | official weights / load / peak MiB |",
              "|---|---|---|---|---|---|" + "---|" * len(bs) + "---|---|---|---|"]
    for e in result["entries"]:
        d, s, off, mem = e["derived"], e["stream"], e.get("official"), e["memory"]
        ratio, ratio_cpu = d.get(f"throughput_{bs[-1]}_vs_{bs[0]}"), d.get(f"throughput_{bs[-1]}_vs_{bs[0]}_cpu")
        lines.append(
            f"| {e['shape']} | {e['dtype']} | {s['ttfa_ms']:.0f} | {d['ttfa_budget_ms']:.0f} | {s['rtf']:.2f} | "
            f"{_f(off and off['rtf'], '.2f')} | " + " | ".join(f"{e['runner'][b]['frames_per_s']:.2f}" for b in bs)
            + f" | {_f(ratio, '.2f')} ({_f(ratio_cpu, '.2f')}) | "
            f"{_f(off and d['throughput_vs_official'][bs[-1]], '.2f')} | {_mem(mem)} | "
            f"{_mem(off['memory']) if off else '–'} |")
    judged = "CPU" if m["device"].startswith("cpu") and m.get("torch_threads", 1) == 1 else "wall"
    lines += ["", f"Targets (from the speed issue; `met` judged on {judged} time, see `bench/suite.py`):", "",
              "| shape | dtype | target | measured (wall) | measured (CPU) | limit | met |",
              "|---|---|---|---|---|---|---|"]
    if not result["targets"]:
        lines.append("| – | – | none: the targets are stated for the released shapes | | | | |")
    for t in result["targets"]:
        lines.append(f"| {t['shape']} | {t['dtype']} | {t['target']} | {t['value']} | {t['value_cpu']} | "
                     f"{t['limit']} | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def _mem(mem: dict) -> str:
    return " / ".join(_f(mem.get(k), ".0f") for k in ("weights_mib", "model_mib", "working_peak_mib"))


def bar_chart(result: dict, width: int = 64) -> str:
    """ASCII stacked bars of the per-frame time by component (T talker, P predictor, S sampling, o other,
    C codec; process CPU ms per frame from the profile), with the bandwidth floor (``=``) and the official
    per-frame CPU time (``#``) underneath."""
    symbols = {"talker": "T", "predictor": "P", "sampling": "S", "other": "o", "codec": "C"}
    rows, scales = [], {}
    for e in result["entries"]:
        p = e["profile"]
        parts = {k: 1000 * p["cpu"][k] / p["frames"] for k in symbols}
        official = e.get("official", {}).get("frame_cpu_ms")
        rows.append((e["shape"], f"{e['shape']} {e['dtype']}", parts, e["derived"]["floor_ms"], official,
                     e["derived"]["matmul_ms"]))
        longest = max(sum(parts.values()), e["derived"]["floor_ms"], official or 0)
        scales[e["shape"]] = max(scales.get(e["shape"], 0.0), longest / width)
    out = ["Per-frame time by component (process CPU ms per frame, instrumented run, B=1). T talker, "
           "P predictor, S sampling, o other, C codec (streaming decode, per frame); `=` memory-bandwidth floor "
           "of the frame step, `~` its matrix products alone (wall), `#` official package per frame (CPU). "
           "One scale per shape.", "", "```"]
    for shape, name, parts, floor, official, matmul in rows:
        scale = scales[shape]
        bar = "".join(sym * round(parts[k] / scale) for k, sym in symbols.items())
        detail = ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
        out.append(f"{name:<16} {bar} {sum(parts.values()):.1f} ({detail})")
        out.append(f"{'  floor':<16} {'=' * round(floor / scale)} {floor:.1f}")
        out.append(f"{'  matmuls only':<16} {'~' * round(matmul / scale)} {matmul:.1f}")
        if official is not None:
            out.append(f"{'  official':<16} {'#' * round(official / scale)} {official:.1f}")
    out.append("```")
    return "\n".join(out) + "\n"


def write_reports(result: dict, out_dir: Path, label: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"suite-{label}.json", out_dir / f"suite-{label}.md", out_dir / f"frame-components-{label}.md"]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    paths[1].write_text(markdown(result))
    paths[2].write_text(bar_chart(result))
    return paths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="tiny,0.6b")
    ap.add_argument("--with-1.7b", dest="with_17", action="store_true", help="add the 1.7b shape (slow; 3.8 GB)")
    ap.add_argument("--dtypes", default="float32,bfloat16,int8")
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--accels", default="eager", help="comma-separated acceleration variants of ours, each an "
                    "--accel value with + for sets, e.g. eager,row-kernels,compile+row-kernels")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-official", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny shape only, 4 frames, 0.25 GiB copies (a smoke run)")
    ap.add_argument("--copy-gib", type=float, default=1.0, help="size of the bandwidth copy (default 1 GiB)")
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    ap.add_argument("--label", default="")
    ap.add_argument("--render", help="only re-write the reports from this suite JSON (no measurements)")
    args = ap.parse_args(argv)
    if args.quick:
        args.shapes, args.frames, args.label, args.copy_gib = "tiny", 4, args.label or "quick", 0.25
    if args.with_17 and "1.7b" not in args.shapes:
        args.shapes += ",1.7b"
    args.label = args.label or torch.device(args.device).type
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.render:
        result = json.loads(Path(args.render).read_text())
        result["targets"] = [t for e in result["entries"]
                             for t in targets(e["shape"], e["dtype"], e["derived"], result["batches"],
                                              result["machine"]["device"].startswith("cpu")
                                              and result["machine"].get("torch_threads", 1) == 1,
                                              e.get("base_dtype"))]
        for path in write_reports(result, Path(args.out_dir), args.label):
            print(f"wrote {path}")
        return result
    if args.frames < 3:
        raise SystemExit("--frames must be at least 3 (the official per-frame time is a difference against 2)")
    torch.set_num_threads(args.threads)
    result = run_suite(args.shapes.split(","), args.dtypes.split(","), args.frames,
                       [int(b) for b in args.batches.split(",")], torch.device(args.device), not args.no_official,
                       copy_gib=args.copy_gib, accels=tuple(args.accels.split(",")))
    result["command"] = "python bench/suite.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for path in write_reports(result, Path(args.out_dir), args.label):
        print(f"wrote {path}")
    print(markdown(result))
    print(bar_chart(result))
    return result


if __name__ == "__main__":
    main()
