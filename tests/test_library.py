"""The voice library (SQLite + prompt files) and its HTTP routes over a real engine on the tiny base checkpoint."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from qtts import SynthesisOptions
from qtts.errors import InputError
from qtts.server.library import VoiceExists, VoiceLibrary, VoiceNameError
from qtts.voices import Clone, ClonePrompt, Design

# ---- library unit tests -----------------------------------------------------------------------------------


def _prompt(seed: int = 0, icl: bool = True) -> ClonePrompt:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 100, (5, 16), generator=g) if icl else None
    return ClonePrompt(torch.randn(32, generator=g), codes, "Hello there." if icl else None)


def _files(lib: VoiceLibrary) -> list[str]:
    return sorted(p.name for p in lib.prompts_dir.iterdir())


def test_add_list_resolve_delete(tmp_path: Path) -> None:
    lib = VoiceLibrary(tmp_path / "voices")
    assert (tmp_path / "voices" / "voices.db").is_file() and lib.list() == []
    p = _prompt(1)
    rec = lib.add_clone("alice", p, filename="a.wav")
    assert (rec.name, rec.kind, rec.ref_text, rec.x_vector_only, rec.meta) == \
        ("alice", "clone", "Hello there.", False, {"filename": "a.wav"})
    lib.add_design("narrator", "  A calm, deep voice.  ")
    lib.add_clone("Xv", _prompt(2, icl=False))
    assert [r.name for r in lib.list()] == ["alice", "narrator", "Xv"]
    voice = lib.resolve("ALICE")  # names are case-insensitive
    assert isinstance(voice, Clone) and voice.prompt is not None
    assert torch.equal(voice.prompt.speaker_embedding, p.speaker_embedding)
    assert lib.resolve("narrator") == Design("A calm, deep voice.")
    xv = lib.resolve("xv")
    assert isinstance(xv, Clone) and xv.x_vector_only and xv.prompt.ref_codes is None
    assert lib.get("nobody") is None and lib.resolve("nobody") is None and lib.resolve("bad name!") is None
    assert len(_files(lib)) == 2  # one prompt file per clone, none for the unlocked design
    assert lib.delete("Alice") is True and lib.delete("alice") is False
    assert [r.name for r in lib.list()] == ["narrator", "Xv"] and lib.resolve("alice") is None
    assert len(_files(lib)) == 1


def test_persists_across_reopen_and_locked_designs(tmp_path: Path) -> None:
    lib = VoiceLibrary(tmp_path)
    p, locked = _prompt(3), _prompt(4)
    lib.add_clone("bob", p, duration_s=1.5)
    lib.add_design("locked.one", "Bright and fast.", locked=locked)
    again = VoiceLibrary(tmp_path)  # a server restart
    assert [(r.name, r.kind, r.locked) for r in again.list()] == [("bob", "clone", False),
                                                                 ("locked.one", "design", True)]
    assert again.get("bob").meta == {"duration_s": 1.5}
    bob = again.resolve("bob")
    assert torch.equal(bob.prompt.ref_codes, p.ref_codes) and bob.prompt.ref_text == "Hello there."
    lk = again.resolve("locked.one")
    assert isinstance(lk, Clone) and torch.equal(lk.prompt.speaker_embedding, locked.speaker_embedding)
    assert again.resolve("bob").prompt is bob.prompt  # loaded once, then cached


def test_names_and_duplicates(tmp_path: Path) -> None:
    lib = VoiceLibrary(tmp_path, reserved=["Vivian"])
    for bad in ["", "a b", "../x", "x" * 65, "é", None, "a/b"]:
        with pytest.raises(VoiceNameError, match="invalid voice name"):
            lib.add_clone(bad, _prompt())
    lib.add_clone("a-b_c.9", _prompt())
    with pytest.raises(VoiceExists, match="already exists"):
        lib.add_design("A-B_C.9", "Different.")
    with pytest.raises(VoiceExists, match="built-in speaker"):
        lib.add_design("vivian", "Shadowing a preset.")
    with pytest.raises(InputError, match="description"):
        lib.add_design("empty", "   ")
    assert [r.name for r in lib.list()] == ["a-b_c.9"] and len(_files(lib)) == 1


@dataclasses.dataclass(frozen=True)
class _BrokenPrompt(ClonePrompt):
    """Writes half a file at the target path, then fails (a disk filling up mid-write)."""

    def save(self, path: str | Path) -> Path:
        Path(path).write_bytes(b"half a file")
        raise OSError("simulated: no space left on device")


def test_failed_add_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = VoiceLibrary(tmp_path)
    p = _prompt()
    with pytest.raises(OSError, match="no space"):
        lib.add_clone("broken", _BrokenPrompt(p.speaker_embedding, p.ref_codes, p.ref_text))
    assert lib.list() == [] and _files(lib) == []

    class _FailingClock:  # the row insert fails after the prompt file is in place
        @staticmethod
        def time() -> float:
            raise OSError("simulated: database write failed")

    monkeypatch.setattr("qtts.server.library.time", _FailingClock)
    with pytest.raises(OSError, match="database write failed"):
        lib.add_clone("late", p)
    monkeypatch.undo()
    assert lib.list() == [] and _files(lib) == [] and lib.resolve("late") is None
    lib.add_clone("late", p)  # the name is still free
    assert [r.name for r in lib.list()] == ["late"]


def test_reopen_sweeps_orphan_prompt_files(tmp_path: Path) -> None:
    lib = VoiceLibrary(tmp_path)
    lib.add_clone("kept", _prompt())
    (lib.prompts_dir / "deadbeef.safetensors").write_bytes(b"orphan from a crash")
    (lib.prompts_dir / ".x.safetensors.tmp123").write_bytes(b"temp")
    VoiceLibrary(tmp_path)
    assert len(_files(lib)) == 1 and lib.resolve("kept") is not None


def test_concurrent_adds_of_one_name_save_it_once(tmp_path: Path) -> None:
    import threading

    lib = VoiceLibrary(tmp_path)
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def add(i: int) -> None:
        start.wait()
        try:
            lib.add_clone("same", _prompt(i), writer=i)
            outcomes.append("saved")
        except VoiceExists:
            outcomes.append("exists")
        lib.add_clone(f"own{i}", _prompt(i))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["exists"] * 7 + ["saved"]
    assert len(lib.list()) == 9 and len(_files(lib)) == 9  # no file of the refused adds is left behind
    writer = lib.get("same").meta["writer"]
    assert torch.equal(lib.resolve("same").prompt.speaker_embedding, _prompt(writer).speaker_embedding)


def test_name_taken_by_another_process_meanwhile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = VoiceLibrary(tmp_path), VoiceLibrary(tmp_path)  # e.g. two server processes
    first.add_clone("x", _prompt(1))
    monkeypatch.setattr(second, "_row", lambda name: None)  # its check ran before the other process committed
    with pytest.raises(VoiceExists, match="already exists"):
        second.add_clone("x", _prompt(2))
    monkeypatch.undo()
    assert len(_files(first)) == 1
    assert torch.equal(second.resolve("x").prompt.speaker_embedding, _prompt(1).speaker_embedding)


# ---- routes -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Settings:
    max_upload_bytes: int = 200_000


@dataclasses.dataclass
class _State:
    tts: Any
    engine: Any
    library: VoiceLibrary
    settings: _Settings


def _wav(seconds: float = 1.0, sr: int = 16000) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size)
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture()
def client_for(tiny_tts, tmp_path: Path):
    """``client_for(kind)`` -> (TestClient over the voice routes, state); engines closed afterwards."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from qtts.engine import Engine, EngineConfig
    from qtts.server.voice_routes import voice_router

    made: list[tuple[TestClient, Engine]] = []

    def make(kind: str, library: VoiceLibrary | None = None) -> tuple[TestClient, _State]:
        tts = tiny_tts[kind]
        engine = Engine(tts, EngineConfig(max_batch=1))
        state = _State(tts, engine, library or VoiceLibrary(tmp_path / "voices"), _Settings())
        app = FastAPI()
        app.include_router(voice_router(state))
        client = TestClient(app)
        made.append((client, engine))
        return client, state

    yield make
    for client, engine in made:
        client.close()
        engine.close()


def _error(resp: Any, status: int, param: str | None) -> str:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["param"] == param
    return err["message"]


def test_clone_upload_resolve_synthesize_restart_delete(client_for, tmp_path: Path) -> None:
    client, state = client_for("base")
    resp = client.post("/v1/audio/voices", data={"name": "ada", "ref_text": "Hello there, this is Ada."},
                       files={"audio": ("ada.wav", _wav(), "audio/wav")})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["name"], body["kind"], body["x_vector_only"], body["usable"]) == ("ada", "clone", False, True)
    assert body["meta"] == {"filename": "ada.wav", "sample_rate": 16000, "duration_s": 1.0}
    xv = client.post("/v1/audio/voices", data={"name": "ada-xv"}, files={"audio": ("a.wav", _wav(), "audio/wav")})
    assert xv.status_code == 201 and xv.json()["x_vector_only"] is True  # no transcript: x-vector only
    listed = client.get("/v1/audio/voices").json()
    assert listed["model_kind"] == "base"
    assert [(v["name"], v["kind"]) for v in listed["data"]] == [("ada", "clone"), ("ada-xv", "clone")]

    voice = state.library.resolve("ada")
    expected = state.tts.create_clone_prompt(_wav_tuple(), "Hello there, this is Ada.")
    assert torch.equal(voice.prompt.ref_codes, expected.ref_codes)
    assert torch.allclose(voice.prompt.speaker_embedding, expected.speaker_embedding, atol=1e-5)
    opts = SynthesisOptions(max_new_tokens=3)
    before = state.tts.synthesize("Hi.", voice=voice, seed=1, options=opts)
    assert before.audio.size > 0 and np.isfinite(before.audio).all()

    restarted = VoiceLibrary(tmp_path / "voices")  # a server restart
    after = state.tts.synthesize("Hi.", voice=restarted.resolve("ada"), seed=1, options=opts)
    assert torch.equal(after.codes, before.codes)
    client2, _ = client_for("base", restarted)
    assert client2.get("/v1/audio/voices/ada").json()["ref_text"] == "Hello there, this is Ada."

    assert client2.delete("/v1/audio/voices/ada").json()["deleted"] is True
    assert _error(client2.delete("/v1/audio/voices/ada"), 404, "name").startswith("no saved voice")
    assert restarted.resolve("ada") is None and _error(client2.get("/v1/audio/voices/ada"), 404, "name")
    assert [v["name"] for v in client2.get("/v1/audio/voices").json()["data"]] == ["ada-xv"]


def _wav_tuple() -> tuple[np.ndarray, int]:
    x, sr = sf.read(io.BytesIO(_wav()), dtype="float32")
    return x, sr


def test_clone_upload_errors(client_for) -> None:
    client, state = client_for("base")
    wav = ("a.wav", _wav(), "audio/wav")
    assert "required" in _error(client.post("/v1/audio/voices", data={"name": "x"}), 400, "audio")
    assert "could not be decoded" in _error(
        client.post("/v1/audio/voices", data={"name": "x"}, files={"audio": ("a.wav", b"not audio", "audio/wav")}),
        400, "audio")
    assert "too short" in _error(client.post("/v1/audio/voices", data={"name": "x"},
                                             files={"audio": ("a.wav", _wav(0.01), "audio/wav")}), 400, "audio")
    big = ("big.wav", _wav(10.0), "audio/wav")  # 320 kB > 200 kB
    assert "limit" in _error(client.post("/v1/audio/voices", data={"name": "x"}, files={"audio": big}), 413, "audio")
    over = ("over.wav", _wav(7.0), "audio/wav")  # 224 kB: the body fits the form allowance, the file does not
    assert "'audio' is" in _error(client.post("/v1/audio/voices", data={"name": "x"}, files={"audio": over}),
                                  413, "audio")
    assert "invalid voice name" in _error(client.post("/v1/audio/voices", data={"name": "no spaces"},
                                                      files={"audio": wav}), 400, "name")
    assert "required" in _error(client.post("/v1/audio/voices", files={"audio": wav}), 400, "name")
    assert "true or false" in _error(client.post("/v1/audio/voices", data={"name": "x", "x_vector_only": "maybe"},
                                                 files={"audio": wav}), 400, "x_vector_only")
    assert client.post("/v1/audio/voices", data={"name": "dup"}, files={"audio": wav}).status_code == 201
    assert "already exists" in _error(client.post("/v1/audio/voices", data={"name": "DUP"}, files={"audio": wav}),
                                      409, "name")
    assert "VoiceDesign" in _error(client.post("/v1/audio/voices", json={"name": "d", "description": "Calm."}),
                                   400, "description")
    assert _error(client.post("/v1/audio/voices", content=b"x", headers={"content-type": "text/plain"}), 415, None)
    assert [r.name for r in state.library.list()] == ["dup"] and len(_files(state.library)) == 1


def test_wrong_kind_and_designs(client_for) -> None:
    client, _ = client_for("custom_voice")
    wav = ("a.wav", _wav(), "audio/wav")
    assert "Base checkpoint" in _error(client.post("/v1/audio/voices", data={"name": "x"}, files={"audio": wav}),
                                       400, "audio")
    speakers = client.get("/v1/audio/voices").json()["data"]
    assert speakers and all(v["kind"] == "speaker" and v["builtin"] for v in speakers)
    taken = speakers[0]["name"].upper()
    assert "built-in" in _error(client.post("/v1/audio/voices", data={"name": taken}, files={"audio": wav}),
                                409, "name")
    assert "built-in" in _error(client.delete(f"/v1/audio/voices/{speakers[0]['name']}"), 400, "name")

    design, state = client_for("voice_design")
    resp = design.post("/v1/audio/voices", json={"name": "calm", "description": "A calm, low voice."})
    assert resp.status_code == 201 and resp.json()["kind"] == "design" and resp.json()["usable"] is True
    assert state.library.resolve("calm") == Design("A calm, low voice.")
    form = design.post("/v1/audio/voices", data={"name": "form", "description": "Bright."})
    assert form.status_code == 201
    assert "Base checkpoint" in _error(design.post("/v1/audio/voices", json={"name": "l", "description": "Hi.",
                                                                            "lock": True}), 400, "lock")
    assert "non-empty" in _error(design.post("/v1/audio/voices", json={"name": "e", "description": " "}),
                                 400, "description")
    assert "JSON object" in _error(design.post("/v1/audio/voices", json=["calm"]), 400, None)
    assert [r.name for r in state.library.list()] == ["calm", "form"]


def test_saved_clone_speaks_through_the_server_app(tiny_tts, tmp_path: Path) -> None:
    """The voice routes inside the server's own app: save a clone, then ``POST /v1/audio/speech`` with it."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from qtts.server.app import ServerSettings, ServerState, create_app

    tts = tiny_tts["base"]
    state = ServerState.create(ServerSettings(kind="base", data_dir=tmp_path / "voices", max_upload_bytes=200_000),
                               tts=tts)
    with TestClient(create_app(state)) as client:
        saved = client.post("/v1/audio/voices", data={"name": "ada", "ref_text": "Hello there, this is Ada."},
                            files={"audio": ("ada.wav", _wav(), "audio/wav")})
        assert saved.status_code == 201, saved.text
        resp = client.post("/v1/audio/speech", json={"input": "Hi.", "voice": "ada", "response_format": "pcm",
                                                     "seed": 3, "max_new_tokens": 4})
        assert resp.status_code == 200, resp.text
        pcm = np.frombuffer(resp.content, dtype="<i2").astype(np.float32) / 32767.0
        expected = tts.synthesize("Hi.", voice=VoiceLibrary(tmp_path / "voices").resolve("ada"), seed=3,
                                  options=SynthesisOptions(max_new_tokens=4)).audio
        assert pcm.shape == expected.shape and np.abs(pcm - expected).max() < 1e-3
        assert _error(client.post("/v1/audio/speech", json={"input": "Hi.", "voice": "nobody"}), 400, "voice")
