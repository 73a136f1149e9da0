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
