"""The speech server over real HTTP on loopback (uvicorn in a thread, tiny CustomVoice checkpoint)."""

from __future__ import annotations

import base64
import io
import json
import logging
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
av = pytest.importorskip("av")
sf = pytest.importorskip("soundfile")

from qtts import ChunkPolicy, Speaker, SynthesisOptions  # noqa: E402
from qtts.request import Sampling  # noqa: E402
from qtts.server.app import ServerSettings, ServerState, create_app  # noqa: E402
from qtts.server.formats import FORMATS  # noqa: E402

from .serving import serve, wait_idle  # noqa: E402

SPF = 1920  # samples per frame


@pytest.fixture(scope="module")
def server(tiny_tts, tmp_path_factory):
    state = ServerState.create(ServerSettings(max_batch=4, max_input_chars=200, max_upload_bytes=50_000,
                                              data_dir=tmp_path_factory.mktemp("voices")),
                               tts=tiny_tts["custom_voice"])
    with serve(create_app(state)) as url:
        yield url, state
    assert not state.engine._thread.is_alive()  # the app's shutdown closed the engine


def _reference(tts, text: str, voice: str, seed: int, frames: int, **opts) -> np.ndarray:
    chunks = tts.stream(text, voice=Speaker(voice), seed=seed,
                        options=SynthesisOptions(max_new_tokens=frames, chunks=ChunkPolicy(1, 8), **opts))
    return np.concatenate([c.audio for c in chunks])


def _pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0


def _post(url: str, **body) -> httpx.Response:
    return httpx.post(url + "/v1/audio/speech", json=body, timeout=120)


def test_openai_sdk_streaming_equals_the_library(server, tiny_tts):
    url, _ = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="Ryan", input="Hello from the server.", response_format="pcm",
            extra_body={"seed": 11, "max_new_tokens": 12}) as response:
        assert response.headers["content-type"] == "audio/pcm"
        data = b"".join(response.iter_bytes())
    expected = _reference(tiny_tts["custom_voice"], "Hello from the server.", "ryan", 11, 12)
    got = _pcm(data)
    assert len(got) == len(expected) > 0
    assert np.abs(got - np.clip(expected, -1, 1)).max() <= 1.5 / 32767
    whole = client.audio.speech.create(model="tts-1", voice="ryan", input="Hello from the server.",
                                       response_format="wav", extra_body={"seed": 11, "max_new_tokens": 12})
    audio, rate = sf.read(io.BytesIO(whole.read()), dtype="float32")
    assert rate == 24000 and np.abs(audio - got).max() <= 1.5 / 32767
    missing = httpx.get(url + "/v1/nothing-here")
    assert missing.status_code == 404 and "error" in missing.json()


def test_sse_events_join_to_the_audio_stream(server):
    url, _ = server
    body = {"input": "Server sent events.", "voice": "serena", "seed": 5, "max_new_tokens": 10,
            "response_format": "pcm"}
    plain = _post(url, **body)
    assert plain.status_code == 200
    sse = _post(url, **body, stream_format="sse")
    assert sse.status_code == 200 and sse.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(block.removeprefix("data: ")) for block in sse.text.split("\n\n") if block.strip()]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) > 1  # streamed in pieces, not as one blob
    assert events[-1]["type"] == "speech.audio.done" and events[:-1] == deltas
    usage = events[-1]["usage"]
    assert usage["output_tokens"] * SPF * 2 == len(plain.content)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] and usage["input_tokens"] > 0
    assert b"".join(base64.b64decode(e["audio"]) for e in deltas) == plain.content


def _decode(fmt: str, data: bytes) -> tuple[int, int]:
    """(samples, sample rate) of an encoded response."""
    if fmt == "pcm":
        return len(data) // 2, 24000
    if fmt == "wav":
        audio, rate = sf.read(io.BytesIO(data))
        return len(audio), rate
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(audio=0))
    return sum(f.samples for f in frames), frames[0].sample_rate


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_response_format_decodes(server, fmt):
    url, _ = server
    body = {"input": "Formats.", "voice": "eric", "seed": 2, "max_new_tokens": 6, "response_format": fmt}
    expected = len(_post(url, **{**body, "response_format": "pcm"}).content) // 2
    response = _post(url, **body)
    assert response.status_code == 200, response.text
    samples, rate = _decode(fmt, response.content)
    got = samples * 24000 // rate
    # lossy codecs add encoder delay / pad to their frame size (< 0.1 s); wav, pcm and flac are exact
    slack = 0 if fmt in ("pcm", "wav", "flac") else 2400
    assert expected > 0 and expected <= got <= expected + slack


def test_websocket_text_deltas_two_utterances(server, tiny_tts):
    from websockets.sync.client import connect

    url, state = server
    first = "Words arrive one at a time."
    with connect(url.replace("http", "ws") + "/v1/audio/stream") as ws:
        ws.send("not json")
        assert json.loads(ws.recv(timeout=30))["param"] == "message"
        ws.send(json.dumps({"type": "flush"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "error"
        ws.send(json.dumps({"type": "config", "voice": "nobody"}))
        assert json.loads(ws.recv(timeout=30))["param"] == "voice"
        ws.send(json.dumps({"type": "config", "voice": "Serena", "seed": 4, "max_new_tokens": 9}))
        for word in first.split(" "):
            ws.send(json.dumps({"type": "text", "text": word + " "}))
        ws.send(json.dumps({"type": "flush"}))
        ws.send(json.dumps({"type": "text", "text": "And a second one."}))
        ws.send(json.dumps({"type": "flush"}))
        audio: dict[int, list[bytes]] = {0: [], 1: []}
        events: list[dict] = []
        current = -1
        while sum(e["type"] == "done" for e in events) < 2:
            message = ws.recv(timeout=60)
            if isinstance(message, bytes):
                audio[current].append(message)
                continue
            event = json.loads(message)
            assert event["type"] != "error", event
            events.append(event)
            if event["type"] == "started":
                current = event["utterance"]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "started" and kinds.count("started") == 2 and kinds[-1] == "done"
    assert kinds.index("done") < kinds.index("started", 1)  # utterances in order
    done = [e for e in events if e["type"] == "done"]
    assert all(d["finish_reason"] in ("stop", "length") and d["ttfa"] is not None for d in done)
    for index in (0, 1):
        chunks = [e for e in events if e["type"] == "chunk" and e["utterance"] == index]
        assert chunks[-1]["end"] == done[index]["frames"]
        assert sum(len(b) for b in audio[index]) == done[index]["frames"] * SPF * 2
    # the whole text pushed in pieces speaks like the streaming text layout of the library
    expected = _reference(tiny_tts["custom_voice"], first, "serena", 4, 9, non_streaming_mode=False)
    got = _pcm(b"".join(audio[0]))
    assert len(got) == len(expected) and np.abs(got - np.clip(expected, -1, 1)).max() <= 1.5 / 32767
    assert wait_idle(state.engine)["active"] == 0


def test_client_disconnect_frees_the_slot(server):
    url, state = server
    body = {"input": "A very long answer that nobody waits for.", "voice": "ryan", "response_format": "pcm",
            "max_new_tokens": 4000, "seed": 3}  # seeded: a random stream could end by EOS within a frame
    with httpx.Client(timeout=60) as client, client.stream("POST", url + "/v1/audio/speech", json=body) as r:
        assert r.status_code == 200
        next(r.iter_raw())
        assert state.engine.stats()["active"] == 1
    before = state.engine.frames_total
    stats = wait_idle(state.engine, timeout=5)
    assert stats["active"] == 0 and stats["waiting"] == 0
    assert state.engine.frames_total - before < 200  # cancelled at once, not run to its budget
    assert state.engine.finished[-1].finish_reason == "cancelled"


@pytest.mark.parametrize(("body", "status", "param"), [
    (b"{not json", 400, "body"),
    (b'["a list"]', 400, "body"),
    (b'{"voice": "ryan"}', 422, "input"),
    (b'{"input": "   ", "voice": "ryan"}', 422, "input"),
    (b'{"input": "' + b"x" * 201 + b'", "voice": "ryan"}', 400, "input"),
    (b'{"input": "hi", "voice": "nobody"}', 400, "voice"),
    (b'{"input": "hi", "voice": "ryan", "response_format": "ogg"}', 422, "response_format"),
    (b'{"input": "hi", "voice": "ryan", "speed": 1.25}', 422, "speed"),
    (b'{"input": "hi", "voice": "ryan", "seed": "abc"}', 422, "seed"),
    (b'{"input": "hi", "voice": "ryan", "seed": -1}', 422, "seed"),
    (b'{"input": "hi", "voice": "ryan", "language": "klingon"}', 400, "language"),
    (b'{"input": "hi", "voice": "ryan", "temperature": 0}', 422, "temperature"),
    (b'{"input": "hi", "voice": "ryan", "stream_format": "ws"}', 422, "stream_format"),
    (b'{"input": "hi", "voice": "ryan", "max_new_tokens": 0}', 422, "max_new_tokens"),
    (b'{"input": "hi", "voice": "ryan", "volume": 2}', 422, "volume"),
    (b'{"input": "hi", "voice": {"name": "ryan"}}', 422, "voice"),
    (b'{"input": "' + b"y" * 60_000 + b'"}', 413, "body"),
])
def test_malformed_requests_get_4xx_naming_the_field(server, body, status, param):
    url, _ = server
    response = httpx.post(url + "/v1/audio/speech", content=body, headers={"Content-Type": "application/json"},
                          timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"].startswith(param)
    ok = _post(url, input="Still serving.", voice="ryan", max_new_tokens=2, response_format="pcm")
    assert ok.status_code == 200 and len(ok.content) > 0


def test_health_metrics_and_logs(server, caplog):
    url, state = server
    caplog.set_level(logging.INFO, logger="qtts.server.access")
    _post(url, input="Count me.", voice="ryan", max_new_tokens=3, response_format="pcm", seed=1)
    deadline = time.monotonic() + 5  # the line is written just after the response's last byte
    while time.monotonic() < deadline:
        logged = [json.loads(r.getMessage()) for r in caplog.records if r.name == "qtts.server.access"]
        # (a late line of an earlier test's request may be captured too: match this request's text length)
        logged = [line for line in logged if line["path"] == "/v1/audio/speech" and line["chars"] == len("Count me.")]
        if logged:
            break
        time.sleep(0.02)
    assert logged and logged[-1]["status"] == 200 and logged[-1]["chars"] == len("Count me.")
    assert logged[-1]["finish_reason"] == "length" and logged[-1]["frames"] == 2 and logged[-1]["voice"] == "ryan"
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["kind"] == "custom_voice" and "ryan" in health["speakers"]
    text = httpx.get(url + "/metrics").text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert int(lines["qtts_time_to_first_audio_seconds_count"]) >= 1
    assert int(lines['qtts_real_time_factor_bucket{le="+Inf"}']) >= 1
    assert int(lines['qtts_frame_steps_total{engine="main"}']) == state.engine.frames_total > 0
    assert int(lines["qtts_frames_total"]) == sum(s.frames for s in state.engine.finished) >= 2
    assert lines['qtts_active_streams{engine="main"}'] == "0" and lines['qtts_queued_streams{engine="main"}'] == "0"
    assert lines['qtts_max_batch{engine="main"}'] == "4"
    assert not any('engine="clone"' in key for key in lines)  # no clone model on this server
    assert int(lines['qtts_http_requests_total{method="POST",route="/v1/audio/speech",status="200"}']) >= 1


def test_api_key_and_admission_control(tiny_tts, tmp_path, server):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    state = ServerState.create(ServerSettings(api_key="s3cret", max_batch=1, max_waiting=1, wait_timeout=0.3,
                                              text_timeout=0.5, data_dir=tmp_path), tts=tiny_tts["custom_voice"])
    body = {"input": "Guarded.", "voice": "ryan", "response_format": "pcm", "max_new_tokens": 2}
    with serve(create_app(state)) as url:
        assert httpx.get(url + "/health").status_code == 200  # operations stay open
        missing = httpx.post(url + "/v1/audio/speech", json=body)
        assert missing.status_code == 401 and missing.json()["error"]["param"] == "authorization"
        wrong = httpx.post(url + "/v1/audio/speech", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        with pytest.raises(InvalidStatus):
            connect(url.replace("http", "ws") + "/v1/audio/stream").close()
        with connect(url.replace("http", "ws") + "/v1/audio/stream?api_key=s3cret") as ws:  # browsers: no headers
            ws.send(json.dumps({"type": "flush"}))
            assert json.loads(ws.recv(timeout=30))["param"] == "type"
            ws.send(json.dumps({"type": "config", "max_new_tokens": 4000, "seed": 5}))  # seeded: no early EOS
            ws.send(json.dumps({"type": "text", "text": "Then the client goes quiet"}))
            while True:  # audio may come first; the idle utterance is then cancelled
                message = ws.recv(timeout=30)
                if isinstance(message, str) and json.loads(message)["type"] == "error":
                    break
            assert json.loads(message)["param"] == "text" and "cancelled" in json.loads(message)["message"]
            assert wait_idle(state.engine)["active"] == 0
        client = openai.OpenAI(base_url=url + "/v1", api_key="s3cret")
        with client.audio.speech.with_streaming_response.create(model="tts-1-hd", voice="ryan", input="Key accepted.",
                                                                response_format="pcm") as ok:
            assert len(ok.read()) > 0
        auth = {"Authorization": "Bearer s3cret"}
        long = {**body, "max_new_tokens": 4000, "seed": 5}  # seed 5 holds all 4000 frames (no EOS)
        with httpx.Client(timeout=60, headers=auth) as http, http.stream("POST", url + "/v1/audio/speech",
                                                                          json=long) as busy:
            held = busy.iter_raw()  # keep the generator: dropping it would close the response
            next(held)  # the long stream holds the only slot
            refused = http.post(url + "/v1/audio/speech", json=body)
            assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
            assert "no free slot" in refused.json()["error"]["message"]
        assert wait_idle(state.engine)["active"] == 0
        again = httpx.post(url + "/v1/audio/speech", json=body, headers=auth, timeout=60)
        assert again.status_code == 200 and len(again.content) > 0 and len(again.content) % (SPF * 2) == 0


def test_serve_arguments():
    from qtts.cli import build_parser
    from qtts.server.main import settings_from_args

    args = build_parser().parse_args(["serve", "--port", "9000", "--api-key", "k", "--max-batch", "3",
                                      "--data-dir", "/tmp/v"])
    settings = settings_from_args(args)
    assert (settings.port, settings.api_key, settings.max_batch, str(settings.data_dir)) == (9000, "k", 3, "/tmp/v")
    assert settings.model is None and settings.host == "127.0.0.1" and settings.warmup
    plain = settings_from_args(build_parser().parse_args(["serve", "--no-warmup"]))
    assert not plain.warmup and plain.max_batch is None  # the device's default, once the model is loaded


def test_default_max_batch_per_device():
    """Without ``--max-batch`` an engine batches 32 streams on CUDA (measured: 3.5 x the audio of 8 for 13 %
    more time per frame on an H100) and 8 elsewhere; a bad value is still refused."""
    from qtts.errors import InputError
    from qtts.server.settings import default_max_batch

    assert (default_max_batch("cuda"), default_max_batch("cpu")) == (32, 8)
    gib = 1 << 30  # half the free memory for the streams' state, 32 at most, 1 at least
    assert [default_max_batch("cuda", free * gib, gib // 4) for free in (80, 8, 1, 0)] == [32, 16, 2, 1]
    assert default_max_batch("cpu", gib, gib) == 8
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="max_batch"):
            ServerSettings(max_batch=bad)


def test_cuda_max_batch_shares_free_memory_between_engines(monkeypatch):
    """On CUDA the server sizes the default batch from the free memory, split between the main and the clone
    model's engines (each would otherwise take half of all of it)."""
    import types

    import torch

    from qtts.server import state as server_state

    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * gib, 80 * gib))
    fake = types.SimpleNamespace(device=torch.device("cuda"), stream_state_bytes=lambda: gib // 4)
    assert server_state._device_max_batch(fake, 1) == 16
    assert server_state._device_max_batch(fake, 2) == 8


def test_sampling_fields_reach_the_engine(server, tiny_tts):
    url, _ = server
    body = {"input": "Sampling fields.", "voice": {"id": "vivian"}, "max_new_tokens": 6, "response_format": "pcm",
            "seed": 3}
    default = _pcm(_post(url, **body).content)
    tuned = _pcm(_post(url, **body, do_sample=False, repetition_penalty=1.3).content)
    chunks = tiny_tts["custom_voice"].stream(
        "Sampling fields.", voice=Speaker("vivian"), seed=3,
        options=SynthesisOptions(max_new_tokens=6, sampling=Sampling(do_sample=False, repetition_penalty=1.3)))
    expected = np.clip(np.concatenate([c.audio for c in chunks]), -1, 1)
    assert len(tuned) == len(expected) and np.abs(tuned - expected).max() <= 1.5 / 32767
    assert len(default) != len(tuned) or np.abs(default - tuned).max() > 1e-3


def test_a_full_queue_refuses_and_a_client_leaving_it_frees_its_place(tiny_tts, tmp_path, server):
    import threading

    state = ServerState.create(ServerSettings(max_batch=1, max_waiting=1, wait_timeout=60, data_dir=tmp_path),
                               tts=tiny_tts["custom_voice"])
    long = {"input": "Holding the slot.", "voice": "ryan", "response_format": "pcm", "max_new_tokens": 4000,
            "seed": 3}  # seed 3 holds all 4000 frames: an unseeded stream could end by EOS mid-test
    waiter_error: list[BaseException] = []

    def wait_then_leave(url: str) -> None:  # waits for the slot, then gives up and disconnects
        try:
            httpx.post(url + "/v1/audio/speech", json={**long, "max_new_tokens": 3}, timeout=2.0)
        except httpx.ReadTimeout as e:
            waiter_error.append(e)

    with serve(create_app(state)) as url, httpx.Client(timeout=60) as http, \
            http.stream("POST", url + "/v1/audio/speech", json=long) as busy:
        held = busy.iter_raw()
        next(held)
        waiter = threading.Thread(target=wait_then_leave, args=(url,))
        waiter.start()
        deadline = time.monotonic() + 10
        while state.engine.stats()["waiting"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        refused = http.post(url + "/v1/audio/speech", json=long)  # the queue (max_waiting=1) is full
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        assert "queued" in refused.json()["error"]["message"]
        waiter.join(timeout=30)
        assert waiter_error, "the waiting request should still have been waiting"
        deadline = time.monotonic() + 5
        while state.engine.stats()["waiting"] and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = state.engine.stats()
        assert (stats["active"], stats["waiting"]) == (1, 0)  # the long stream still runs; the queue is empty
    assert wait_idle(state.engine)["active"] == 0


def test_voices_of_each_model_kind(tiny_tts, tmp_path, server):
    from qtts import Clone

    design = ServerState.create(ServerSettings(data_dir=tmp_path / "vd"), tts=tiny_tts["voice_design"])
    body = {"input": "Designed.", "voice": "alloy", "response_format": "pcm", "max_new_tokens": 4}
    with serve(create_app(design)) as url:
        described = _post(url, **body, instructions="A calm, low voice.")
        assert described.status_code == 200 and len(described.content) > 0
        missing = _post(url, **body)
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "voice"

    tts = tiny_tts["base"]
    rng = np.random.default_rng(0)
    prompt = tts.create_clone_prompt(((rng.standard_normal(24000 * 2) * 0.1).astype(np.float32), 24000),
                                     "A reference sentence.")
    clone = ServerState.create(ServerSettings(data_dir=tmp_path / "base"), tts=tts)
    clone.library.add_clone("ada", prompt)
    with serve(create_app(clone)) as url:
        spoken = _post(url, **{**body, "voice": "ada", "seed": 6})
        assert spoken.status_code == 200, spoken.text
        chunks = tts.stream("Designed.", voice=Clone(prompt=prompt), seed=6,
                            options=SynthesisOptions(max_new_tokens=4))
        expected = np.clip(np.concatenate([c.audio for c in chunks]), -1, 1)
        got = _pcm(spoken.content)
        assert len(got) == len(expected) and np.abs(got - expected).max() <= 1.5 / 32767
        unknown = _post(url, **body)
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "voice"
        instructed = _post(url, **{**body, "voice": "ada"}, instructions="Whisper.")
        assert instructed.status_code == 400 and instructed.json()["error"]["param"] == "instructions"


def test_websocket_disconnect_cancels_the_utterance(server):
    from websockets.sync.client import connect

    url, state = server
    before = state.engine.frames_total
    with connect(url.replace("http", "ws") + "/v1/audio/stream") as ws:
        ws.send(json.dumps({"type": "config", "voice": "dylan", "seed": 1, "max_new_tokens": 4000}))
        ws.send(json.dumps({"type": "text", "text": "An utterance that the client walks away from "}))
        ws.send(json.dumps({"type": "text", "text": "while it is still being spoken."}))
        ws.send(json.dumps({"type": "flush"}))
        while not isinstance(ws.recv(timeout=60), bytes):
            pass
        assert state.engine.stats()["active"] == 1
    stats = wait_idle(state.engine, timeout=5)
    assert stats["active"] == 0 and stats["waiting"] == 0
    # A slot is freed just before its last chunk (and its stats) goes out: wait for the stats too.
    deadline = time.monotonic() + 5
    while state.engine.finished[-1].finish_reason != "cancelled" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert state.engine.frames_total - before < 300 and state.engine.finished[-1].finish_reason == "cancelled"


@pytest.mark.parametrize("model", ["tts-1", "tts-1-hd", "gpt-4o-mini-tts", "qwen3-tts", "Qwen3-TTS", "qtts", None])
def test_model_names_the_openai_sdk_sends_are_accepted(server, model):
    url, _ = server
    body = {"input": "Model names.", "voice": "ryan", "max_new_tokens": 2, "response_format": "pcm", "seed": 1}
    response = _post(url, **body, **({} if model is None else {"model": model}))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/pcm" and len(response.content) % (SPF * 2) == 0


@pytest.mark.parametrize("model", ["whisper-1", "gpt-4o", "tts-2", "", "qtts/other"])
def test_unknown_model_is_a_400_listing_the_accepted_names(server, model):
    url, state = server
    before = state.engine.frames_total
    response = _post(url, input="Which model?", voice="ryan", model=model, max_new_tokens=1)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["type"], error["code"]) == ("model", "invalid_request_error", "model_not_found")
    assert error["message"].startswith("model: unknown model")
    for name in ("qtts", "qwen3-tts", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"):
        assert name in error["message"]
    assert state.engine.frames_total == before  # refused before any model work


def test_models_list_and_the_loaded_name(tiny_tts, tmp_path, server):
    """``/v1/models`` in OpenAI's list format; a model loaded from a repo id answers to it and its last part."""
    repo = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
    state = ServerState.create(ServerSettings(model=repo, data_dir=tmp_path), tts=tiny_tts["custom_voice"])
    body = {"input": "Named.", "voice": "ryan", "max_new_tokens": 1, "response_format": "pcm", "seed": 1}
    with serve(create_app(state)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        listed = client.models.list()
        assert [m.id for m in listed.data] == ["Qwen3-TTS-12Hz-0.6B-CustomVoice"]
        raw = httpx.get(url + "/v1/models").json()
        assert raw["object"] == "list" and len(raw["data"]) == 1
        entry = raw["data"][0]
        assert (entry["object"], entry["owned_by"], entry["kind"], entry["role"]) == (
            "model", "qtts", "custom_voice", "main")
        assert {repo, "qwen3-tts", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"} <= set(entry["aliases"])
        assert httpx.get(url + "/health").json()["model"] == entry["id"] and "clone_model" not in raw
        for name in (entry["id"], repo, "qwen3-tts"):
            assert _post(url, **body, model=name).status_code == 200, name
        served = len(state.engine.finished)
        with pytest.raises(openai.BadRequestError) as refused:
            client.audio.speech.create(model="Qwen/Other-TTS", voice="ryan", input="No.", response_format="pcm")
        assert refused.value.status_code == 400 and refused.value.param == "model"
        assert repo in refused.value.message and "Qwen3-TTS-12Hz-0.6B-CustomVoice" in refused.value.message
        assert len(state.engine.finished) == served  # the refused request never reached the engine


def test_websocket_config_checks_model_like_the_speech_route(server):
    from websockets.sync.client import connect

    url, state = server
    with connect(url.replace("http", "ws") + "/v1/audio/stream") as ws:
        ws.send(json.dumps({"type": "config", "model": "whisper-1", "voice": "ryan"}))
        error = json.loads(ws.recv(timeout=30))
        assert (error["type"], error["param"]) == ("error", "model") and "tts-1" in error["message"]
        ws.send(json.dumps({"type": "config", "model": "gpt-4o-mini-tts", "voice": "ryan", "seed": 1,
                            "max_new_tokens": 2}))
        ws.send(json.dumps({"type": "text", "text": "Still open."}))
        ws.send(json.dumps({"type": "flush"}))
        while True:
            message = ws.recv(timeout=60)
            if isinstance(message, str) and json.loads(message)["type"] in ("done", "error"):
                break
        assert json.loads(message)["type"] == "done" and json.loads(message)["finish_reason"] in ("stop", "length")
    assert wait_idle(state.engine)["active"] == 0
