"""Locked designed voices: a VoiceDesign server with a Base clone model (``--clone-model``), tiny checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from qtts import SynthesisOptions  # noqa: E402
from qtts.errors import InputError  # noqa: E402
from qtts.server.app import ServerSettings, ServerState, create_app  # noqa: E402
from qtts.server.library import VoiceLibrary  # noqa: E402
from qtts.server.voice_routes import LOCK_SEED, LOCK_TEXT  # noqa: E402
from qtts.voices import Clone, Design  # noqa: E402

DESCRIPTION = "A calm, low voice, speaking slowly."


def _pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0


def _speak(client: TestClient, voice: str, seed: int, text: str = "Hi there.") -> np.ndarray:
    resp = client.post("/v1/audio/speech", json={"input": text, "voice": voice, "response_format": "pcm",
                                                 "seed": seed, "max_new_tokens": 4})
    assert resp.status_code == 200, resp.text
    return _pcm(resp.content)


def _state(tiny_tts, data_dir: Path) -> ServerState:
    return ServerState.create(ServerSettings(kind="voice_design", data_dir=data_dir),
                              tts=tiny_tts["voice_design"], clone_tts=tiny_tts["base"])


def _count_submits(state: ServerState) -> dict[str, int]:
    """Count the streams submitted to the main (VoiceDesign) and the clone (Base) engine from now on."""
    counts = {"main": 0, "clone": 0}
    for key, engine in (("main", state.engine), ("clone", state.clone_engine)):
        def submit(request, *args, _engine=engine, _key=key, **kwargs):
            counts[_key] += 1
            return type(_engine).submit(_engine, request, *args, **kwargs)
        engine.submit = submit
    return counts


def test_locked_design_speaks_on_the_clone_model_and_survives_a_restart(tiny_tts, tmp_path: Path) -> None:
    design_tts, clone_tts = tiny_tts["voice_design"], tiny_tts["base"]
    data_dir = tmp_path / "voices"
    state = _state(tiny_tts, data_dir)
    assert state.clone_tts is clone_tts and state.clone_engine is not None
    submits = _count_submits(state)
    with TestClient(create_app(state)) as client:
        resp = client.post("/v1/audio/voices", json={"name": "calm", "description": DESCRIPTION, "lock": True})
        assert resp.status_code == 201, resp.text
        assert submits == {"main": 1, "clone": 0}  # the one rendering that was locked
        body = resp.json()
        assert (body["kind"], body["locked"], body["usable"], body["ref_text"]) == ("design", True, True, LOCK_TEXT)
        assert client.post("/v1/audio/voices", data={"name": "plain", "description": DESCRIPTION}).status_code == 201
        listed = client.get("/v1/audio/voices").json()
        assert listed["clone_model"] is True and "clone_engine" in client.get("/health").json()
        assert [(v["name"], v["locked"], v["usable"]) for v in listed["data"]] == [("calm", True, True),
                                                                                  ("plain", False, True)]

        saved = VoiceLibrary(data_dir).resolve("calm")
        assert isinstance(saved, Clone) and saved.prompt.ref_text == LOCK_TEXT and saved.prompt.ref_codes is not None
        # the prompt is the Base model's encoding of one VoiceDesign rendering of LOCK_TEXT (seed LOCK_SEED)
        rendered = design_tts.synthesize(LOCK_TEXT, voice=Design(DESCRIPTION), seed=LOCK_SEED)
        expected_prompt = clone_tts.create_clone_prompt((rendered.audio, rendered.sample_rate), LOCK_TEXT)
        assert saved.prompt.ref_codes.shape == expected_prompt.ref_codes.shape
        assert (saved.prompt.ref_codes == expected_prompt.ref_codes).float().mean() > 0.95

        opts = SynthesisOptions(max_new_tokens=4)
        outputs = []
        for seed in (1, 2):
            got = _speak(client, "calm", seed)
            assert submits == {"main": 1, "clone": seed}  # spoken by the Base engine
            expected = clone_tts.synthesize("Hi there.", voice=Clone(prompt=saved.prompt), seed=seed,
                                            options=opts).audio
            assert got.shape == expected.shape and np.abs(got - np.clip(expected, -1, 1)).max() < 1e-3
            outputs.append(got)
        assert not np.array_equal(outputs[0], outputs[1])

        plain = _speak(client, "plain", 1)
        assert submits == {"main": 2, "clone": 2}  # the unlocked design stays on the VoiceDesign engine
        expected = design_tts.synthesize("Hi there.", voice=Design(DESCRIPTION), seed=1, options=opts).audio
        assert plain.shape == expected.shape and np.abs(plain - np.clip(expected, -1, 1)).max() < 1e-3

        with client.websocket_connect("/v1/audio/stream") as ws:  # the WebSocket routes the same way
            ws.send_text(json.dumps({"type": "config", "voice": "calm", "seed": 1, "max_new_tokens": 4}))
            ws.send_text(json.dumps({"type": "text", "text": "Hi there."}))
            ws.send_text(json.dumps({"type": "flush"}))
            while True:
                message = ws.receive()
                if message.get("text") and json.loads(message["text"])["type"] in ("done", "error"):
                    assert json.loads(message["text"])["type"] == "done", message
                    break
        assert submits == {"main": 2, "clone": 3}
    assert not state.engine._thread.is_alive() and not state.clone_engine._thread.is_alive()

    restarted = _state(tiny_tts, data_dir)  # a server restart on the same library folder
    submits = _count_submits(restarted)
    with TestClient(create_app(restarted)) as client:
        listed = client.get("/v1/audio/voices").json()["data"]
        assert [(v["name"], v["locked"]) for v in listed] == [("calm", True), ("plain", False)]
        assert np.array_equal(_speak(client, "calm", 2), outputs[1])
        assert submits == {"main": 0, "clone": 1}


def test_lock_without_a_clone_model_and_clone_routing_errors(tiny_tts, tmp_path: Path) -> None:
    data_dir = tmp_path / "voices"
    locked = VoiceLibrary(data_dir)
    locked.add_design("fixed", DESCRIPTION, locked=tiny_tts["base"].create_clone_prompt(
        (np.sin(np.arange(24000) / 10).astype(np.float32) * 0.3, 24000), "Hello there."))
    state = ServerState.create(ServerSettings(kind="voice_design", data_dir=data_dir), tts=tiny_tts["voice_design"])
    assert state.clone_engine is None
    assert state.engine.config.max_batch == 8  # no --max-batch, on CPU
    with TestClient(create_app(state)) as client:
        resp = client.post("/v1/audio/voices", json={"name": "l", "description": "Hi.", "lock": True})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "lock"
        assert "--clone-model" in resp.json()["error"]["message"]
        listed = client.get("/v1/audio/voices").json()
        assert listed["clone_model"] is False and listed["data"][0]["usable"] is False
        speak = client.post("/v1/audio/speech", json={"input": "Hi.", "voice": "fixed", "max_new_tokens": 2})
        assert speak.status_code == 400 and speak.json()["error"]["param"] == "voice"
        assert "--clone-model" in speak.json()["error"]["message"]


def test_clone_model_must_be_a_base_checkpoint(tiny_checkpoints, tmp_path: Path) -> None:
    settings = ServerSettings(model=str(tiny_checkpoints["voice_design"]),
                              clone_model=str(tiny_checkpoints["custom_voice"]), data_dir=tmp_path / "voices")
    with pytest.raises(InputError, match=r"--clone-model must be a Base .*'custom_voice'"):
        ServerState.create(settings)
    with pytest.raises(InputError, match="clone_model must not be empty"):
        ServerSettings(clone_model=" ")


def test_serve_parses_clone_model_and_fails_clearly(tiny_checkpoints, tmp_path: Path, capsys,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from qtts.cli import build_parser, main
    from qtts.server.main import settings_from_args

    args = build_parser().parse_args(["serve", "--model", "VD", "--clone-model", "BASE"])
    assert settings_from_args(args).clone_model == "BASE"
    assert settings_from_args(build_parser().parse_args(["serve"])).clone_model is None
    monkeypatch.setattr("logging.basicConfig", lambda **kwargs: None)  # leave the test session's logging alone
    code = main(["serve", "--model", str(tiny_checkpoints["voice_design"]), "--clone-model",
                 str(tiny_checkpoints["voice_design"]), "--data-dir", str(tmp_path / "v"), "--device", "cpu"])
    assert code != 0 and "--clone-model must be a Base" in capsys.readouterr().err


def test_server_state_with_both_models_from_paths(tiny_checkpoints, tmp_path: Path) -> None:
    state = ServerState.create(ServerSettings(model=str(tiny_checkpoints["voice_design"]),
                                              clone_model=str(tiny_checkpoints["base"]), data_dir=tmp_path / "v",
                                              device="cpu"))
    try:
        assert (state.tts.kind, state.clone_tts.kind) == ("voice_design", "base")
        assert state.clone_tts.device == state.tts.device
        assert state.engine_for(Design("x")) == (state.tts, state.engine)
        prompt = state.clone_tts.create_clone_prompt((np.zeros(24000, dtype=np.float32) + 0.1, 24000),
                                                     x_vector_only=True)
        assert state.engine_for(Clone(prompt=prompt)) == (state.clone_tts, state.clone_engine)
        assert torch.is_tensor(prompt.speaker_embedding)
    finally:
        state.close()
    assert not state.clone_engine._thread.is_alive()


def _prompt(base_tts):
    return base_tts.create_clone_prompt((np.sin(np.arange(24000) / 10).astype(np.float32) * 0.3, 24000),
                                        "Hello there.")


def _metrics(text: str) -> dict[str, str]:
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_metrics_report_both_engines_and_observe_clone_streams(tiny_tts, tmp_path: Path) -> None:
    """``/metrics`` labels the live gauges per engine (``main`` / ``clone``); the stream histograms and counters
    count the clone engine's streams too."""
    import httpx

    from .serving import serve, wait_idle

    state = _state(tiny_tts, tmp_path / "voices")
    state.library.add_clone("ada", _prompt(tiny_tts["base"]))
    body = {"input": "A long answer nobody waits for.", "voice": "ada", "response_format": "pcm", "seed": 3,
            "max_new_tokens": 4000}
    with serve(create_app(state)) as url:
        lines = _metrics(httpx.get(url + "/metrics").text)
        for engine in ("main", "clone"):
            assert lines[f'qtts_active_streams{{engine="{engine}"}}'] == "0"
            assert lines[f'qtts_queued_streams{{engine="{engine}"}}'] == "0"
            assert lines[f'qtts_max_batch{{engine="{engine}"}}'] == "8"  # no --max-batch, on CPU
            assert lines[f'qtts_frame_steps_total{{engine="{engine}"}}'] == "0"
        assert "qtts_active_streams" not in lines  # no unlabelled gauge any more
        with httpx.Client(timeout=60) as http, http.stream("POST", url + "/v1/audio/speech", json=body) as live:
            assert live.status_code == 200
            held = live.iter_raw()
            next(held)  # the clone voice's stream holds a slot on the clone engine
            lines = _metrics(http.get(url + "/metrics").text)
            assert lines['qtts_active_streams{engine="clone"}'] == "1"
            assert lines['qtts_active_streams{engine="main"}'] == "0"
        wait_idle(state.clone_engine)
        designed = httpx.post(url + "/v1/audio/speech", timeout=60, json={
            "input": "Designed.", "instructions": DESCRIPTION, "response_format": "pcm", "seed": 1,
            "max_new_tokens": 3})
        assert designed.status_code == 200, designed.text
        wait_idle(state.engine)
        lines = _metrics(httpx.get(url + "/metrics").text)
        main, clone = state.engine.finished, state.clone_engine.finished
        assert len(main) == len(clone) == 1 and clone[0].finish_reason == "cancelled"
        assert int(lines['qtts_frame_steps_total{engine="clone"}']) == state.clone_engine.frames_total > 0
        assert int(lines['qtts_frame_steps_total{engine="main"}']) == state.engine.frames_total > 0
        # both streams are observed: the cancelled clone stream had its first audio, so both count for TTFA
        assert int(lines["qtts_time_to_first_audio_seconds_count"]) == 2
        assert lines['qtts_streams_total{finish_reason="cancelled"}'] == "1"
        assert int(lines["qtts_frames_total"]) == main[0].frames + clone[0].frames


def test_every_engine_reports_to_the_metrics_once(tiny_tts, tmp_path: Path) -> None:
    """However the state is made (``create`` or the dataclass itself), both engines feed ``metrics`` once."""
    from qtts.engine import Engine, EngineConfig
    from qtts.server.metrics import Metrics

    made = _state(tiny_tts, tmp_path / "a")
    direct = ServerState(tiny_tts["voice_design"], Engine(tiny_tts["voice_design"], EngineConfig()),
                         ServerSettings(kind="voice_design", data_dir=tmp_path / "b"), Metrics(),
                         clone_tts=tiny_tts["base"], clone_engine=Engine(tiny_tts["base"], EngineConfig()))
    try:
        for state in (made, direct):
            assert [label for label, _ in state.engines()] == ["main", "clone"]
            for _, engine in state.engines():
                assert engine.observers.count(state.metrics.observe) == 1
        assert direct.model_ids.clone == "qtts-clone"
    finally:
        made.close()
        direct.close()


def test_models_with_a_clone_model(tiny_tts, tmp_path: Path) -> None:
    """``/v1/models`` lists both models; the clone model's name is accepted for the voices it speaks."""
    settings = ServerSettings(model="Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign", kind="voice_design",
                              clone_model="/ckpt/Qwen3-TTS-12Hz-1.7B-Base/", data_dir=tmp_path / "voices")
    state = ServerState.create(settings, tts=tiny_tts["voice_design"], clone_tts=tiny_tts["base"])
    state.library.add_clone("ada", _prompt(tiny_tts["base"]))
    body = {"input": "Hi.", "response_format": "pcm", "seed": 1, "max_new_tokens": 2}
    with TestClient(create_app(state)) as client:
        data = client.get("/v1/models").json()["data"]
        assert [(m["id"], m["role"], m["kind"], m["owned_by"]) for m in data] == [
            ("Qwen3-TTS-12Hz-1.7B-VoiceDesign", "main", "voice_design", "qtts"),
            ("Qwen3-TTS-12Hz-1.7B-Base", "clone", "base", "qtts")]
        assert "/ckpt/Qwen3-TTS-12Hz-1.7B-Base" in data[1]["aliases"] and "tts-1" in data[0]["aliases"]
        assert client.get("/health").json()["clone_model"] == "Qwen3-TTS-12Hz-1.7B-Base"
        for model in ("Qwen3-TTS-12Hz-1.7B-Base", "/ckpt/Qwen3-TTS-12Hz-1.7B-Base", "tts-1", "qwen3-tts",
                      "Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign"):
            resp = client.post("/v1/audio/speech", json={**body, "voice": "ada", "model": model})
            assert resp.status_code == 200, (model, resp.text)
        assert len(state.clone_engine.finished) == 5 and not state.engine.finished
        design = {**body, "instructions": DESCRIPTION, "model": "Qwen3-TTS-12Hz-1.7B-Base"}
        refused = client.post("/v1/audio/speech", json=design)  # the clone model cannot speak a design
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"
        assert "Qwen3-TTS-12Hz-1.7B-VoiceDesign" in refused.json()["error"]["message"]
        unknown = client.post("/v1/audio/speech", json={**design, "model": "Qwen3-TTS-12Hz-0.6B-Base"})
        assert unknown.status_code == 400 and "Qwen3-TTS-12Hz-1.7B-Base" in unknown.json()["error"]["message"]
        assert not state.engine.finished
        with client.websocket_connect("/v1/audio/stream") as ws:
            ws.send_text(json.dumps({"type": "config", "model": "Qwen3-TTS-12Hz-1.7B-Base",
                                     "instructions": DESCRIPTION}))
            assert json.loads(ws.receive_text())["param"] == "model"
