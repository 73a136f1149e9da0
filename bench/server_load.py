"""Server under concurrent load: aggregate audio throughput and time to first audio vs sequential requests.

    python bench/server_load.py [--checkpoint PATH] [--concurrency 1 4 8 16] [--frames N] [--threads N] [--accel A]
                                [--dtype D] [--quantize int8] [--repeats R] [--repeats-max R] [--out FILE] [--quick]

Starts the real server (``create_app`` under uvicorn, in a thread of this process, on a free 127.0.0.1 port)
with ``max_batch`` = the largest concurrency, then for each repeat:

* ``sequential``: the largest level's N requests, one at a time (the baseline; level c uses its first c);
* for each concurrency c: c streaming ``POST /v1/audio/speech`` requests sent at once (``httpx.AsyncClient``).

Every request is ``response_format=pcm`` (16-bit mono), streamed, with its own text and seed (request i has
the same seed in every phase, so the sequential and concurrent runs do identical work; the script checks that their
audio matches) and a fixed frame budget through the server's ``max_new_tokens`` extension (random weights
rarely stop on their own). Measured per request on the client: time to the first audio byte (TTFA) and to the
last byte; audio seconds are counted from the bytes received. Reported per level: aggregate audio seconds per
wall second (sum of audio / wall time from the first send to the last byte; sequential: sum of audio / sum of
request times), p50 / p95 TTFA (pooled over repeats), process CPU seconds per audio second, and the
concurrent / sequential throughput ratio (the batching gain). On a CPU only the ratios mean anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from qtts.server.app import ServerSettings, create_app  # noqa: E402

DEFAULT_CHECKPOINT = REPO / "checkpoints" / "0.6b-custom_voice"
TEXTS = ("The train to the coast leaves at nine, so please be on time.",
         "Streaming speech should start quickly and keep up with the listener.",
         "A quiet morning, a cup of tea, and the whole day ahead of us.",
         "Please check the numbers twice before you send the report.")
BYTES_PER_SAMPLE = 2  # pcm: 16-bit little-endian mono


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help=f"CustomVoice checkpoint folder (default {DEFAULT_CHECKPOINT}; "
                   "--quick: the offline tiny demo checkpoint)")
    p.add_argument("--concurrency", type=int, nargs="+", help="concurrent stream counts (default 1 4 8 16)")
    p.add_argument("--frames", type=int, help="frames per request (12.5 frames per audio second; default 12)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server (default 1)")
    p.add_argument("--repeats", type=int, help="rounds of every phase (default 2)")
    p.add_argument("--repeats-max", type=int, help="rounds at the largest level and of the sequential baseline "
                   "(default: --repeats)")
    p.add_argument("--exclude-seeds", type=int, nargs="*", default=[],
                   help="seeds not to use (request i gets the i-th seed that is not excluded)")
    p.add_argument("--voice", default="ryan")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--accel", default=None, help="the server's --accel (default auto: eager on CPU)")
    p.add_argument("--quantize", choices=["int8"], default=None, help="the server's --quantize (default: none)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="smoke run: concurrency 1 2 4, 4 frames, 1 repeat")
    args = p.parse_args(argv)
    quick = args.quick
    if args.checkpoint is None and not quick:
        args.checkpoint = str(DEFAULT_CHECKPOINT)
    args.concurrency = sorted(set(args.concurrency or ([1, 2, 4] if quick else [1, 4, 8, 16])))
    args.frames = args.frames or (4 if quick else 12)
    args.repeats = args.repeats or (1 if quick else 2)
    args.repeats_max = args.repeats_max or args.repeats
    if min(args.concurrency) < 1 or args.frames < 1 or args.repeats < 1 or args.repeats_max < 1:
        p.error("--concurrency, --frames and --repeats must be positive")
    return args


# ---- server ------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(settings: ServerSettings) -> Iterator[tuple[str, object]]:
    """The app for ``settings`` under uvicorn in a daemon thread on loopback; yields (base URL, app)."""
    app = create_app(settings)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                           ws="none", access_log=False))
    thread = threading.Thread(target=server.run, name="bench-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    try:
        httpx.get(url + "/health", timeout=30).raise_for_status()
        yield url, app
    finally:
        server.should_exit = True
        thread.join(timeout=60)


# ---- client ------------------------------------------------------------------------------------------------


def request_body(i: int, seed: int, frames: int, voice: str) -> dict:
    """Request i: its own text and seed; ``max_new_tokens`` = frames + 1 gives ``frames`` frames when the
    stream runs to its budget (the budget counts the final end-of-speech step)."""
    return {"input": TEXTS[i % len(TEXTS)], "voice": voice, "seed": seed, "max_new_tokens": frames + 1,
            "response_format": "pcm", "stream_format": "audio"}


async def one_request(client: httpx.AsyncClient, url: str, body: dict, t0: float) -> dict:
    """Stream one request; times are seconds from ``t0`` (the phase start) and from this request's send."""
    sent, cpu0 = time.perf_counter(), time.process_time()
    first, status, error = None, None, None
    parts = []
    try:
        async with client.stream("POST", url + "/v1/audio/speech", json=body) as response:
            status = response.status_code
            async for part in response.aiter_raw():
                if part and first is None:
                    first = time.perf_counter()
                parts.append(part)
    except httpx.HTTPError as e:  # e.g. the stream failed mid-body: counted, not fatal
        error = f"{type(e).__name__}: {e}"
    end, cpu1 = time.perf_counter(), time.process_time()
    data = b"".join(parts)
    if status != 200 and error is None:
        error = f"HTTP {status}: {data[:300]!r}"
    if error is not None:
        print(f"request seed={body['seed']} failed: {error}", flush=True)
        data = b""
    return {"seed": body["seed"], "sent": sent - t0, "ttfa": None if first is None else first - sent,
            "total": end - sent, "end": end - t0, "cpu": cpu1 - cpu0, "bytes": len(data), "pcm": data,
            "status": status, "error": error}


def _stamp() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


async def run_phase(url: str, bodies: list[dict], concurrent: bool) -> dict:
    """Send ``bodies`` all at once (``concurrent``) or one after another; wall and process CPU seconds."""
    limits = httpx.Limits(max_connections=len(bodies) + 1, max_keepalive_connections=len(bodies) + 1)
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0), limits=limits) as client:
        load0 = os.getloadavg()[0]
        wall0, cpu0 = _stamp()
        if concurrent:
            results = await asyncio.gather(*(one_request(client, url, b, wall0) for b in bodies))
        else:
            results = [await one_request(client, url, b, wall0) for b in bodies]
        wall1, cpu1 = _stamp()
    return {"requests": list(results), "wall": wall1 - wall0, "cpu": cpu1 - cpu0, "loadavg_1m_start": load0,
            "loadavg_1m_end": os.getloadavg()[0]}


# ---- summary -----------------------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def summarize(phases: list[dict], sample_rate: int, sequential: bool) -> dict:
    """Aggregate over repeats: throughput is total audio / total wall (sequential: the sum of the request
    times, and of their process CPU times, so a subset of a sequential phase counts only its own requests)."""
    audio = wall = cpu = 0.0
    ttfa, totals = [], []
    for ph in phases:
        reqs = ph["requests"]
        audio += sum(r["bytes"] for r in reqs) / BYTES_PER_SAMPLE / sample_rate
        wall += sum(r["total"] for r in reqs) if sequential else ph["wall"]
        cpu += sum(r["cpu"] for r in reqs) if sequential else ph["cpu"]
        ttfa += [r["ttfa"] for r in reqs if r["ttfa"] is not None and r["error"] is None]
        totals += [r["total"] for r in reqs]
    return {"repeats": len(phases), "requests": sum(len(ph["requests"]) for ph in phases),
            "failed": sum(r["error"] is not None for ph in phases for r in ph["requests"]), "audio_s": audio,
            "wall_s": wall, "cpu_s": cpu, "audio_per_wall": audio / wall if wall else float("nan"),
            "cpu_per_audio": cpu / audio if audio else float("nan"), "ttfa_p50": _pct(ttfa, 50),
            "ttfa_p95": _pct(ttfa, 95), "ttfa_max": max(ttfa, default=float("nan")),
            "request_total_p50": _pct(totals, 50)}


def sequential_subset(phase: dict, n: int) -> dict:
    """The first ``n`` requests of a sequential phase (``summarize`` uses per request wall and CPU times)."""
    return {**phase, "requests": phase["requests"][:n]}


def check_audio(seq_phases: list[dict], conc: dict[int, list[dict]]) -> dict:
    """Same seed, same audio: every concurrent request against the first sequential run of that seed."""
    ref = {r["seed"]: np.frombuffer(r["pcm"], dtype="<i2") for ph in reversed(seq_phases) for r in ph["requests"]
           if r["error"] is None}
    compared, length_mismatch, max_diff = 0, 0, 0
    for phases in [seq_phases, *conc.values()]:
        for ph in phases:
            for r in ph["requests"]:
                if r["error"] is not None or r["seed"] not in ref:
                    continue
                got, want = np.frombuffer(r["pcm"], dtype="<i2"), ref[r["seed"]]
                compared += 1
                if len(got) != len(want):
                    length_mismatch += 1
                    continue
                if len(got):
                    max_diff = max(max_diff, int(np.abs(got.astype(np.int32) - want).max()))
    return {"compared": compared, "length_mismatch": length_mismatch, "max_abs_diff_int16": max_diff}


def machine_info(args: argparse.Namespace) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    info = {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"), "cpu": cpu,
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "commit": commit, "loadavg_start": list(os.getloadavg())}
    if str(args.device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    return info


def print_table(result: dict) -> None:
    cfg, m = result["config"], result["machine"]
    gpu = f" ({m['gpu']}, peak {m['gpu_peak_allocated_gb']} GB)" if "gpu" in m else ""
    weights = f" {cfg['quantize']} weights" if cfg.get("quantize") else ""
    print(f"\n{cfg['checkpoint']}  {cfg['dtype']}{weights} {cfg['device']}{gpu}  torch threads {m['torch_threads']}  "
          f"{cfg['frames']} frames/request  max_batch {cfg['max_batch']}  load avg {m['loadavg_start'][0]:.2f}"
          f" -> {m['loadavg_end'][0]:.2f}")
    head = ("| streams | requests | audio s / wall s (conc) | (seq) | speedup | TTFA p50 conc | TTFA p95 conc "
            "| TTFA p50 seq | TTFA p95 seq | CPU s / audio s conc | seq |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for c, row in result["levels"].items():
        con, seq = row["concurrent"], row["sequential"]
        print(f"| {c} | {con['requests']} | {con['audio_per_wall']:.3f} | {seq['audio_per_wall']:.3f} | "
              f"**{row['speedup']:.2f}** | {con['ttfa_p50']:.2f} | {con['ttfa_p95']:.2f} | {seq['ttfa_p50']:.2f} | "
              f"{seq['ttfa_p95']:.2f} | {con['cpu_per_audio']:.2f} | {seq['cpu_per_audio']:.2f} |")
    ck = result["checks"]
    failed = sum(row[k]["failed"] for row in result["levels"].values() for k in ("concurrent", "sequential"))
    print(f"failed requests (counted in every level that includes them): {failed}")
    print(f"audio check: {ck['compared']} requests vs their (last good) sequential run, {ck['length_mismatch']} length "
          f"mismatches, max |diff| {ck['max_abs_diff_int16']} (int16)")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    levels, top = args.concurrency, max(args.concurrency)
    settings = ServerSettings(model=args.checkpoint, device=args.device, dtype=args.dtype, max_batch=top,
                              max_waiting=4 * top, wait_timeout=900.0, data_dir=Path("/tmp/qtts-bench-voices"),
                              accel=args.accel, quantize=args.quantize)
    info = machine_info(args)
    t_load = time.perf_counter()
    with running_server(settings) as (url, app):
        state = app.state.qtts
        sample_rate = state.tts.sample_rate
        voice = args.voice if args.voice in state.tts.speakers else state.tts.speakers[0]
        up_s = time.perf_counter() - t_load  # load, warm-up (compilation, graph captures) and start
        print(f"server up in {up_s:.1f} s on {url} ({state.model_name}, voice {voice})", flush=True)
        excluded = set(args.exclude_seeds)
        seeds = [s for s in range(top + len(excluded)) if s not in excluded][:top]
        bodies = [request_body(i, seed, args.frames, voice) for i, seed in enumerate(seeds)]
        warm_up = request_body(0, 10_000, 2, voice)
        asyncio.run(run_phase(url, [warm_up], concurrent=False))  # not counted
        seq: list[dict] = []
        conc: dict[int, list[dict]] = {c: [] for c in levels}
        for rep in range(max(args.repeats, args.repeats_max)):
            if rep < args.repeats_max:
                seq.append(asyncio.run(run_phase(url, bodies, concurrent=False)))
                print(f"repeat {rep + 1} sequential x{top}: {seq[-1]['wall']:.1f} s "
                      f"(load {seq[-1]['loadavg_1m_end']:.2f})", flush=True)
            for c in levels:
                if rep >= (args.repeats_max if c == top else args.repeats):
                    continue
                conc[c].append(asyncio.run(run_phase(url, bodies[:c], concurrent=True)))
                print(f"repeat {rep + 1} concurrent x{c}: {conc[c][-1]['wall']:.1f} s "
                      f"(load {conc[c][-1]['loadavg_1m_end']:.2f})", flush=True)
        engine_stats = state.engine.stats()
    info["loadavg_end"] = list(os.getloadavg())
    if "gpu" in info:  # the server's whole run: weights, caches, graphs, codec
        info["gpu_peak_allocated_gb"] = round(torch.cuda.max_memory_allocated(torch.device(args.device)) / 1e9, 2)
    result_levels = {}
    for c in levels:
        s = summarize([sequential_subset(ph, c) for ph in seq], sample_rate, sequential=True)
        k = summarize(conc[c], sample_rate, sequential=False)
        result_levels[str(c)] = {"concurrent": k, "sequential": s,
                                 "speedup": k["audio_per_wall"] / s["audio_per_wall"],
                                 "cpu_ratio": k["cpu_per_audio"] / s["cpu_per_audio"]}
    raw = {"sequential": seq, **{f"concurrent_{c}": conc[c] for c in levels}}
    for phases in raw.values():
        for ph in phases:
            for r in ph["requests"]:
                r["audio_s"] = r["bytes"] / BYTES_PER_SAMPLE / sample_rate
    result = {
        "machine": info, "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {**{k: v for k, v in vars(args).items() if k != "out"}, "max_batch": top,
                   "sample_rate": sample_rate, "voice": voice},
        "levels": result_levels, "checks": check_audio(seq, conc), "engine_stats": engine_stats,
        "server_up_s": round(up_s, 1),
    }
    print_table(result)
    for phases in raw.values():
        for ph in phases:
            for r in ph["requests"]:
                r.pop("pcm")
    result["raw"] = raw
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
