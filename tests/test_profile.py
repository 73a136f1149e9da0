"""``qtts profile`` and the speed suite's smoke run (tiny checkpoints; no timing thresholds on absolute values)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from qtts import TTS, Sampling, Speaker, SynthesisOptions
from qtts.cli import main
from qtts.errors import InputError
from qtts.profile import FRAME_PARTS, PARTS, profile_synthesis
from tests.conftest import real_tokenizer_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def keep_threads():
    """Restore torch's thread count after a benchmark's ``main`` (which sets it from ``--threads``)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_profile_command_parts_cover_the_whole(tiny_checkpoints, tmp_path, capsys, keep_threads):
    """The command runs; every part is present and positive; the independently timed parts add up to (almost)
    the whole run's wall time, so no piece of the synthesis goes untimed."""
    out = tmp_path / "profile.json"
    rc = main(["profile", "--model", str(tiny_checkpoints["custom_voice"]), "--device", "cpu", "--frames", "6",
               "--threads", "1", "--json", str(out)])
    assert rc == 0
    table = capsys.readouterr().out
    for part in PARTS:
        assert part in table
    prof = json.loads(out.read_text())
    assert prof["frames"] == 6 and prof["batch"] == 1 and prof["dtype"] == "float32"
    assert set(prof["wall"]) == set(PARTS)
    assert all(prof["wall"][p] > 0 for p in PARTS), prof["wall"]
    assert prof["codec_first_s"] > 0 and prof["plain_frame_s"] > 0
    parts, whole = prof["parts_sum_wall"], prof["whole_wall"]
    assert 0.7 * whole <= parts <= whole * 1.001 + 1e-4, (parts, whole)
    assert prof["frame_wall"] == pytest.approx(sum(prof["wall"][p] for p in FRAME_PARTS) / 6)


def test_profiled_frames_are_the_engine_frames(tiny_tts):
    """The instrumented frame step runs the same computation as ``decode_frame``: its codes equal greedy
    ``synthesize``'s, for one stream and for a batch (each row as if alone)."""
    tts: TTS = tiny_tts["custom_voice"]
    text = "Profiling must not change what is computed."
    prof = profile_synthesis(tts, text, frames=5, batch=2, voice=Speaker("ryan"), plain=False)
    opts = SynthesisOptions(sampling=Sampling.greedy(), max_new_tokens=6)
    for row in range(2):
        expected = tts.synthesize(text, voice=Speaker("ryan"), seed=row, options=opts).codes
        assert torch.equal(prof.codes[row], expected)
    assert prof.batch == 2 and prof.wall["codec"] > 0
    sampled = profile_synthesis(tts, text, frames=5, voice=Speaker("ryan"), sampling=Sampling(), seed=3, plain=False)
    opts = SynthesisOptions(sampling=Sampling(), max_new_tokens=6)
    assert torch.equal(sampled.codes[0], tts.synthesize(text, voice=Speaker("ryan"), seed=3, options=opts).codes)


def _load_suite():
    spec = importlib.util.spec_from_file_location("bench_suite", REPO / "bench" / "suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_suite"] = module
    spec.loader.exec_module(module)
    return module


def test_suite_quick_smoke(tmp_path):
    """``bench/suite.py --quick`` (reduced to float32, batches 1 and 2): reports are written, the numbers it
    derives are consistent, and with the official package installed the greedy codes are identical to it."""
    suite = _load_suite()
    official = importlib.util.find_spec("qwen_tts") is not None and importlib.util.find_spec("transformers")
    argv = ["--quick", "--dtypes", "float32", "--batches", "1,2", "--out-dir", str(tmp_path)]
    result = suite.main(argv + ([] if official else ["--no-official"]))
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"suite-quick.json", "suite-quick.md", "frame-components-quick.md"}
    (entry,) = result["entries"]
    assert (entry["shape"], entry["dtype"]) == ("tiny", "float32")
    w = entry["weights"]
    assert w["total"] == w["talker"] + w["predictor_passes"] * w["predictor_pass"] + w["predictor_heads"]
    assert w["predictor_passes"] == 15
    d = entry["derived"]
    assert d["floor_ms"] == pytest.approx(1000 * w["total"] / result["bandwidth"]["bytes_per_s"])
    assert set(entry["runner"]) == {"1", "2"} and entry["runner"]["2"]["live"] == 2
    rounds = suite.BATCH_ROUNDS  # batch sizes in alternating rounds, each a share of the frames
    assert all(r["rounds"] == rounds and r["frames"] == rounds * -(-4 // rounds) for r in entry["runner"].values())
    assert result["targets"] == []  # the targets are for the released shapes only
    if official and real_tokenizer_dir() is not None:  # parity needs the real Qwen tokenizer (as test_parity)
        assert entry["codes_vs_official"] == "identical"
    assert "| tiny | float32 |" in (tmp_path / "suite-quick.md").read_text()


def test_profile_reports_the_accelerated_runner_step(tiny_checkpoints, tmp_path, capsys, monkeypatch):
    """With a static step (compile / CUDA graphs) the instrumented pieces do not run it, so ``qtts profile``
    also times the runner's own step and says so."""
    import qtts.accel

    real = qtts.accel.parse_accel
    monkeypatch.setattr(qtts.accel, "parse_accel",  # the eager backend: traced, not code-generated (fast)
                        lambda value, device: dataclasses.replace(real(value, device), compile_backend="eager"))
    out = tmp_path / "profile.json"
    assert main(["profile", "--model", str(tiny_checkpoints["custom_voice"]), "--device", "cpu", "--frames", "3",
                 "--accel", "compile", "--json", str(out)]) == 0
    assert "runner frame step with --accel compile:" in capsys.readouterr().out
    prof = json.loads(out.read_text())
    assert prof["runner_frame_s"] > 0 and prof["runner_warmup_s"] > 0
    assert main(["profile", "--model", str(tiny_checkpoints["custom_voice"]), "--device", "cpu", "--frames", "2"]) == 0
    assert "runner frame step" not in capsys.readouterr().out  # eager: the parts are the step


def test_frame_ab_measures_both_sides_in_turn(tiny_checkpoints, capsys, keep_threads):
    """``bench/frame_ab.py``: two configurations in one process, one row per round with both times and their
    ratio; a side's ``@streams=N`` / ``@fma=off`` / ``@opt=NAME:VALUE`` / ``@threads=N`` / ``@min-weights=N`` /
    ``@region-blocks=N`` / ``@routing=intel|other`` / ``@max-rows=N`` / ``@max-width=N`` / ``@accumulators=N``
    hold while that side runs and only then; ``@batch=B`` steps B streams (and the report adds frames per
    second)."""
    from qtts import gemv

    spec = importlib.util.spec_from_file_location("bench_frame_ab", REPO / "bench" / "frame_ab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from qtts import accel

    before, options = dict(gemv.STREAMS), dict(accel.CPU_COMPILE_OPTIONS)
    side = module.Side("bfloat16:eager@streams=3@fma=off", str(tiny_checkpoints["custom_voice"]))
    with side.active():
        assert gemv.STREAMS[torch.bfloat16] == 3 and gemv.STREAMS[torch.int8] == before[torch.int8]
        assert accel.CPU_COMPILE_OPTIONS == accel.CPU_HOST_OPTIONS  # FMA contraction off, the rest kept
    assert before == gemv.STREAMS and options == accel.CPU_COMPILE_OPTIONS
    side = module.Side("bfloat16:eager@opt=realize_reads_threshold:1@opt=cpp_wrapper:true",
                       str(tiny_checkpoints["custom_voice"]))
    with side.active():
        assert {**options, "realize_reads_threshold": 1, "cpp_wrapper": True} == accel.CPU_COMPILE_OPTIONS
    assert options == accel.CPU_COMPILE_OPTIONS
    torch.set_num_threads(2)
    side = module.Side("float32:eager@threads=1", str(tiny_checkpoints["custom_voice"]))
    with side.active():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    from qtts import packed, quant

    sizes = gemv.MIN_WEIGHTS, packed.MIN_WEIGHTS, quant.CPU_MIN_INT8PACK_WEIGHTS
    side = module.Side("float32:eager@min-weights=0", str(tiny_checkpoints["custom_voice"]))
    with side.active():
        assert (gemv.MIN_WEIGHTS, packed.MIN_WEIGHTS, quant.CPU_MIN_INT8PACK_WEIGHTS) == (0, 0, 0)
    assert (gemv.MIN_WEIGHTS, packed.MIN_WEIGHTS, quant.CPU_MIN_INT8PACK_WEIGHTS) == sizes != (0, 0, 0)
    with pytest.raises(SystemExit, match="@min-weights=N with N a whole number >= 0"):
        module.Side("float32:eager@min-weights=-1", str(tiny_checkpoints["custom_voice"]))
    blocks = dict(accel.TALKER_REGION_BLOCKS)
    side = module.Side("float32:eager@region-blocks=3", str(tiny_checkpoints["custom_voice"]))
    with side.active():
        assert {**blocks, "cpu": 3} == accel.TALKER_REGION_BLOCKS
    assert blocks == accel.TALKER_REGION_BLOCKS
    with pytest.raises(SystemExit, match="@region-blocks=N with N a whole number"):
        module.Side("float32:eager@region-blocks=0", str(tiny_checkpoints["custom_voice"]))
    routing = gemv.MAX_ROWS, gemv.MAX_WIDTH, gemv.MAX_IN
    for vendor, name in (("GenuineIntel", "intel"), ("", "other")):
        side = module.Side(f"int8:eager@routing={name}", str(tiny_checkpoints["custom_voice"]))
        with side.active():
            assert gemv.default_routing(vendor) == (gemv.MAX_ROWS, gemv.MAX_WIDTH, gemv.MAX_IN)
        assert routing == (gemv.MAX_ROWS, gemv.MAX_WIDTH, gemv.MAX_IN)
    accumulators = dict(gemv.ACCUMULATORS)
    side = module.Side("int8:eager@max-rows=3@routing=other@accumulators=24@max-width=99",
                       str(tiny_checkpoints["custom_voice"]))
    with side.active():
        other = gemv.default_routing("")
        assert ({**other[0], torch.int8: 3}, {**other[1], torch.int8: 99}, other[2]) == (
            gemv.MAX_ROWS, gemv.MAX_WIDTH, gemv.MAX_IN)
        assert gemv.accumulators(torch.int8) == 24 and {**accumulators, torch.int8: 24} == gemv.ACCUMULATORS
    assert routing == (gemv.MAX_ROWS, gemv.MAX_WIDTH, gemv.MAX_IN) and accumulators == gemv.ACCUMULATORS
    with pytest.raises(SystemExit, match="@max-rows=N with N a whole number"):
        module.Side("float32:eager@max-rows=0", str(tiny_checkpoints["custom_voice"]))
    with pytest.raises(SystemExit, match=re.escape("@streams=N, @routing=intel|other, @batch=B, @threads=N")):
        module.Side("float32:eager@cores=3", str(tiny_checkpoints["custom_voice"]))
    with pytest.raises(SystemExit, match="unknown configuration suffix 'routing=amd'"):
        module.Side("float32:eager@routing=amd", str(tiny_checkpoints["custom_voice"]))
    with pytest.raises(SystemExit, match="@threads=N with N a whole number"):
        module.Side("float32:eager@threads=0", str(tiny_checkpoints["custom_voice"]))
    with pytest.raises(SystemExit, match="integer, true or false"):
        module.Side("float32:eager@opt=realize_reads_threshold:many", str(tiny_checkpoints["custom_voice"]))
    capsys.readouterr()
    with pytest.raises(SystemExit, match="@batch=B"):
        module.Side("float32:eager@batch=0", str(tiny_checkpoints["custom_voice"]))
    with pytest.raises(SystemExit, match="@streams=N with N a whole number"):
        module.Side("float32:eager@streams=abc", str(tiny_checkpoints["custom_voice"]))
    module.main(["--a", "float32:eager", "--b", "float32:eager@streams=2", "--rounds", "2", "--frames", "2",
                 "--threads", "1", "--checkpoint", str(tiny_checkpoints["custom_voice"])])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 2 and all(len(r.split("|")) == 6 for r in rows)
    assert "A = float32:eager, B = float32:eager@streams=2" in out and "B / A median" in out
    assert "frames per second" not in out
    module.main(["--a", "float32:eager", "--b", "float32:eager@batch=3", "--rounds", "1", "--frames", "2",
                 "--threads", "1", "--checkpoint", str(tiny_checkpoints["custom_voice"])])
    out = capsys.readouterr().out
    a_ms, b_ms = (float(v) for v in next(line for line in out.splitlines() if line.startswith("| 1 |")).split("|")[2:4])
    rate = re.search(r"frames per second \(median\): A ([\d.]+), B ([\d.]+)", out)
    assert rate and float(rate[1]) == pytest.approx(1000 / a_ms, rel=0.05)
    assert float(rate[2]) == pytest.approx(3000 / b_ms, rel=0.05)


def test_frame_speed_runs_modes_with_variant_parts(tmp_path, monkeypatch, keep_threads):
    """``bench/frame_speed.py`` (the GPU benchmark) on CPU at the tiny shape: variant parts (``span-buckets``,
    ``row-products``, ``autotune``) set their library choice when their mode runs and are not ``--accel`` parts;
    every mode is reported with its frame times and code parity; a bad mode fails before the model is built."""
    from qtts import accel, gemv, sampling
    from qtts.model import layers

    spec = importlib.util.spec_from_file_location("bench_frame_speed", REPO / "bench" / "frame_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("GRAPH_SPANS", "CUDA_PRODUCTS", "CUDA_COMPILE_OPTIONS"):
        monkeypatch.setattr(accel, name, getattr(accel, name))
    monkeypatch.setattr(gemv, "CUDA_MAX_ROWS", gemv.CUDA_MAX_ROWS)
    monkeypatch.setattr(accel, "CUDA_ATTENTION", dict(accel.CUDA_ATTENTION))  # updated in place by the benchmark
    monkeypatch.setattr(accel, "TALKER_REGION_BLOCKS", dict(accel.TALKER_REGION_BLOCKS))  # likewise
    monkeypatch.setattr(accel, "STATIC_REGIONS", dict(accel.STATIC_REGIONS))  # likewise
    monkeypatch.setattr(layers, "STACK_GROUPED_HEADS", layers.STACK_GROUPED_HEADS)
    monkeypatch.setattr(sampling, "CUDA_FILTER", sampling.CUDA_FILTER)
    defaults = (accel.GRAPH_SPANS, accel.CUDA_PRODUCTS, dict(accel.CUDA_COMPILE_OPTIONS))
    cpu_blocks, cuda_blocks = accel.TALKER_REGION_BLOCKS["cpu"], accel.TALKER_REGION_BLOCKS["cuda"]
    static_regions = dict(accel.STATIC_REGIONS)

    assert module.mode_options("compile+fused+span-buckets", torch.device("cpu")) == dataclasses.replace(
        accel.AccelOptions(compile=True, fused=True), max_frames=512)
    module.use_variants("eager+whole-cache+linear-products+autotune+seven-block-regions+static-regions")
    assert (accel.GRAPH_SPANS, accel.CUDA_PRODUCTS, accel.CUDA_COMPILE_OPTIONS) == (
        "whole", "linear", {"max_autotune_gemm": True})
    assert accel.TALKER_REGION_BLOCKS["cuda"] == 7 and accel.TALKER_REGION_BLOCKS["cpu"] == cpu_blocks
    assert {**static_regions, "cuda": True} == accel.STATIC_REGIONS
    module.use_variants("eager+span-buckets+row-products+rows-to-8")
    assert (accel.GRAPH_SPANS, accel.CUDA_PRODUCTS, gemv.CUDA_MAX_ROWS) == ("buckets", "rows", 8)
    module.use_variants("eager")
    assert (accel.GRAPH_SPANS, accel.CUDA_PRODUCTS, dict(accel.CUDA_COMPILE_OPTIONS)) == defaults
    assert gemv.CUDA_MAX_ROWS == 2
    assert {"cpu": cpu_blocks, "cuda": cuda_blocks} == accel.TALKER_REGION_BLOCKS
    assert static_regions == accel.STATIC_REGIONS

    def run(*args: str) -> None:
        monkeypatch.setattr(sys, "argv", ["frame_speed.py", "--shape", "tiny", "--device", "cpu", *args])
        module.main()

    with pytest.raises(InputError, match="bogus"):
        run("--modes", "eager,eager+bogus")
    out = tmp_path / "speed.json"
    run("--dtype", "float32", "--modes", "eager,eager+whole-cache+linear-products", "--batches", "1,2",
        "--frames", "2", "--threads", "1", "--out", str(out))
    report = json.loads(out.read_text())
    assert list(report["modes"]) == ["eager", "eager+whole-cache+linear-products"]
    for entry in report["modes"].values():
        assert set(entry["frame_ms"]) == {"1", "2"} and all(ms > 0 for ms in entry["frame_ms"].values())
        assert entry["codes_match_first"] and entry["x_realtime"] > 0 and "streams_ended" not in entry
        assert 1 <= entry["stream_frames"] <= 2 and len(entry["ttfa_ms_runs"]) == 3
    assert (accel.GRAPH_SPANS, accel.CUDA_PRODUCTS) == ("whole", "linear")  # the last mode's choices hold after it
    # A mode that changes ``STATIC_REGIONS`` starts from a fresh dynamo cache (else it could replay the earlier
    # modes' graphs); modes that keep it do not.
    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    modes = "eager,eager+static-regions,eager+static-regions+whole-cache,eager+dynamic-regions"
    run("--dtype", "float32", "--modes", modes, "--batches", "1", "--frames", "1", "--threads", "1", "--out", str(out))
    assert len(resets) == 2


def test_frame_speed_times_only_full_batches(tiny_checkpoints, monkeypatch, keep_threads):
    """``bench/frame_speed.py`` times frames of B streams only while all B live: a batch whose streams end early
    (a random model samples EOS; here the first seeds' budgets run out) is retried with other seeds, and a batch
    that never stays full is reported with the streams it lost (session 17 timed empty steps at 0.008 ms)."""
    spec = importlib.util.spec_from_file_location("bench_frame_speed", REPO / "bench" / "frame_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tts = TTS.from_pretrained(tiny_checkpoints["custom_voice"], device="cpu")
    prepare, seeds = tts.prepare, []

    def short_lived(text, voice, seed, options):  # seeds below ``good`` end after two frames
        seeds.append(seed)
        if seed < good:
            options = dataclasses.replace(options, max_new_tokens=2)
        return prepare(text, voice=voice, seed=seed, options=options)

    monkeypatch.setattr(tts, "prepare", short_lived)
    good = 1000
    first, steady, live = module.full_frame_times(tts, 2, frames=3, warmup=2)
    assert live == 2 and seeds == [0, 1, 1000, 1001] and first > 0 and steady > 0
    good, seeds[:] = 10**9, []
    _, _, live = module.full_frame_times(tts, 2, frames=3, warmup=2, tries=3)
    assert live == 0 and seeds == [0, 1, 1000, 1001, 2000, 2001]
    good, seeds[:] = 0, []
    assert module.full_frame_times(tts, 2, frames=3, warmup=2)[2] == 2 and seeds == [0, 1]


def test_int8_products_reports_speed_and_error_per_kernel(capsys, keep_threads, monkeypatch):
    """``bench/int8_products.py`` at one small working set: a row per kernel with its rate and relative errors;
    the weight-only kernels are as exact as their activations (float32: ~1e-7, bfloat16: ~1e-3) and the W8A8 ones
    (activations quantized to int8) are not, least of all with outlier channels; an unknown shape is named."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("bench_int8_products", REPO / "bench" / "int8_products.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--threads", "1", "--mib", "2", "--rows", "1,3", "--shapes", "0.6b k/v", "--repeats", "1"])
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| 0.6b")]
    assert len(rows) == 2 * len(module.CONTENDERS)
    for shape, _mib, r, kernel, kind, gbs, gauss, spiky in (map(str.strip, row) for row in rows):
        assert shape == "0.6b k/v" and r in ("1", "3") and float(gbs) > 0
        assert kind == ("weight-only" if kernel in module.WEIGHT_ONLY else "W8A8")
        gauss, spiky = float(gauss), float(spiky)
        if kernel.startswith("row kernel"):  # dynamic shapes, and static as inside the compiled regions
            assert gauss < 1e-5 and spiky < 1e-5
        elif kernel == "int8pack":
            assert 1e-4 < gauss < 1e-2
        else:
            assert 3e-3 < gauss < spiky < 0.5
    with pytest.raises(SystemExit, match="unknown shape"):
        module.main(["--shapes", "0.6b qq"])


def test_server_load_quick_serves_int8_weights(tiny_checkpoints, monkeypatch, capsys, keep_threads):
    """``bench/server_load.py --quantize int8``: the real server loads int8 weights, every concurrent request's
    PCM equals its sequential run, and the report names the weights."""
    spec = importlib.util.spec_from_file_location("bench_server_load", REPO / "bench" / "server_load.py")
    server_load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(server_load)
    apps, create_app = [], server_load.create_app

    def recording_create_app(*args, **kwargs):
        apps.append(create_app(*args, **kwargs))
        return apps[-1]

    monkeypatch.setattr(server_load, "create_app", recording_create_app)
    result = server_load.main(["--quick", "--checkpoint", str(tiny_checkpoints["custom_voice"]), "--quantize",
                               "int8", "--concurrency", "1", "2"])
    assert result["config"]["quantize"] == "int8"
    assert apps and apps[0].state.qtts.tts.quantization is not None
    checks = result["checks"]
    assert checks["compared"] >= 3 and checks["length_mismatch"] == 0 and checks["max_abs_diff_int16"] == 0
    assert all(row[k]["failed"] == 0 for row in result["levels"].values() for k in ("concurrent", "sequential"))
    assert "float32 int8 weights cpu" in capsys.readouterr().out


def test_snake_ab_times_both_sides_and_checks_the_pcm(tiny_checkpoints, capsys, keep_threads):
    """``bench/snake_ab.py`` on a tiny checkpoint: both sides timed per chunk size, the PCM identical, and the
    library's ``SnakeBeta.forward`` restored afterwards."""
    from qtts.codec import decoder as codec_decoder

    spec = importlib.util.spec_from_file_location("bench_snake_ab", REPO / "bench" / "snake_ab.py")
    snake_ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(snake_ab)
    forward = codec_decoder.SnakeBeta.forward
    results = snake_ab.main(["--checkpoint", str(tiny_checkpoints["custom_voice"]), "--chunks", "1,3",
                             "--rounds", "2", "--calls", "1", "--threads", "1"])
    assert set(results) == {1, 3} and all(r["identical"] and len(r["a_ms"]) == 2 for r in results.values())
    assert codec_decoder.SnakeBeta.forward is forward
    assert "| 3 |" in capsys.readouterr().out
