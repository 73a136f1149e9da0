"""The web playground (``qtts/server/static/index.html``) driven in headless Chromium against a fake speech
endpoint on a loopback port: it lists voices, streams PCM, plays it with Web Audio and reports the timings.
Skipped when selenium, Chromium or chromedriver is not installed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

fastapi = pytest.importorskip("fastapi", reason="the server extra (fastapi) is not installed")
from fastapi import Request  # noqa: E402  (after the skip check)

PAGE = Path(__file__).resolve().parents[1] / "qtts" / "server" / "static" / "index.html"
CHUNKS = [4801, 9599, 7, 12001, 1]  # odd sizes split samples across network chunks (26409 bytes)
FIRST_DELAY_S = 0.3
VOICES = [{"name": "vivian", "kind": "speaker", "builtin": True, "usable": True},
          {"name": "ada", "kind": "clone", "builtin": False, "usable": True},
          {"name": "calm", "kind": "design", "builtin": False, "usable": False}]


def _fake_app(seen: list[dict[str, Any]], listing: dict[str, Any] | None = None) -> Any:
    """``listing``: the ``GET /v1/audio/voices`` body (default: a CustomVoice server without a clone model)."""
    from fastapi import FastAPI
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

    app = FastAPI()

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/v1/audio/voices")
    async def voices() -> JSONResponse:
        return JSONResponse(listing or {"object": "list", "model_kind": "custom_voice", "data": VOICES})

    @app.post("/v1/audio/voices")
    async def save_voice(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append({"voice": body})
        return JSONResponse({"name": body["name"], "kind": "design", "locked": bool(body.get("lock"))}, 201)

    @app.post("/v1/audio/speech")
    async def speech(request: Request) -> Any:
        body = await request.json()
        seen.append({"body": body, "authorization": request.headers.get("authorization")})
        if body.get("input") == "fail":
            return JSONResponse({"error": {"message": "input: simulated failure", "param": "input"}}, 400)

        async def pcm() -> Any:
            await asyncio.sleep(FIRST_DELAY_S)
            for i, size in enumerate(CHUNKS):
                yield bytes((i * 37 + k) % 256 for k in range(size))
                await asyncio.sleep(0.05)

        return StreamingResponse(pcm(), media_type="audio/pcm")

    return app


@contextlib.contextmanager
def _serve(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.common.exceptions import WebDriverException

    binary = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("Chromium or chromedriver is not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    except WebDriverException as e:
        pytest.skip(f"headless Chromium could not start: {e.msg}")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _wait(driver: Any, condition: str, timeout: float = 30.0) -> Any:
    """Poll the JavaScript expression ``condition`` until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {condition};")
        if value:
            return value
        time.sleep(0.05)
    status = driver.execute_script("const s = document.getElementById('status'); "
                                   "return JSON.stringify({text: s.textContent, data: Object.assign({}, s.dataset)});")
    raise AssertionError(f"timed out waiting for {condition}; status: {status}")


def _status(driver: Any) -> dict[str, str]:
    """The status element's ``data-`` attributes (state, bytes, scheduled, ttfaMs, totalMs)."""
    return json.loads(driver.execute_script("return JSON.stringify(document.getElementById('status').dataset)"))


def _speak(driver: Any, words: str, until: str = "done", timeout: float = 120.0) -> dict[str, str]:
    """Type ``words``, press Speak and wait for the status state ``until``; returns ``_status``."""
    from selenium.webdriver.common.by import By

    text = driver.find_element(By.ID, "text")
    text.clear()
    text.send_keys(words)
    driver.find_element(By.ID, "speak").click()
    _wait(driver, f"document.getElementById('status').dataset.state === '{until}'", timeout=timeout)
    return _status(driver)


def test_speak_streams_plays_and_reports_timing(browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    seen: list[dict[str, Any]] = []
    with _serve(_fake_app(seen)) as url:
        browser.get(url + "/")
        _wait(browser, "document.getElementById('voice').dataset.loaded === '3'")
        select = Select(browser.find_element(By.ID, "voice"))
        labels = {o.get_attribute("value"): (o.text, o.is_enabled()) for o in select.options}
        assert labels["ada"] == ("ada", True) and labels["vivian"] == ("vivian", True)
        assert labels["calm"][1] is False and "not usable" in labels["calm"][0]
        assert _lock_state(browser) == {"present": True, "shown": False, "enabled": False}  # no clone model
        select.select_by_value("ada")
        text = browser.find_element(By.ID, "text")
        text.clear()
        text.send_keys("Streaming from the browser.")
        browser.find_element(By.ID, "seed").send_keys("5")
        browser.find_element(By.ID, "api-key").send_keys("sekret")
        browser.find_element(By.ID, "speak").click()
        _wait(browser, "document.getElementById('status').dataset.state === 'done'")
        status = browser.find_element(By.ID, "status")
        data = _status(browser)
        assert int(data["bytes"]) == sum(CHUNKS)
        assert int(data["scheduled"]) == sum(CHUNKS) // 2  # every sample decoded and handed to Web Audio
        ttfa, total = float(data["ttfaMs"]), float(data["totalMs"])
        assert FIRST_DELAY_S * 1000 * 0.8 <= ttfa < total
        assert total >= ttfa + 0.8 * 0.05 * 1000 * (len(CHUNKS) - 1)
        assert "first audio after" in status.text and "s total" in status.text
        assert seen[-1]["authorization"] == "Bearer sekret"
        assert seen[-1]["body"] == {"input": "Streaming from the browser.", "voice": "ada", "language": "auto",
                                    "seed": 5, "response_format": "pcm", "stream_format": "audio"}

        text.clear()
        text.send_keys("fail")
        browser.find_element(By.ID, "speak").click()
        _wait(browser, "document.getElementById('status').dataset.state === 'error'")
        assert "simulated failure" in status.text


def _lock_state(driver: Any) -> dict[str, bool]:
    """The design form's lock checkbox: in the page, displayed, enabled."""
    return driver.execute_script(
        "const box = document.getElementById('new-lock');"
        "return {present: !!box, shown: !!box && box.offsetParent !== null, enabled: !!box && !box.disabled};")


def test_lock_checkbox_follows_the_clone_model_and_sends_lock(browser: Any) -> None:
    """A VoiceDesign server with a clone model: the lock box is shown and enabled, its hint is visible, and
    saving a design with it checked sends the API's ``lock`` field (unchecked: no ``lock`` at all)."""
    from selenium.webdriver.common.by import By

    seen: list[dict[str, Any]] = []
    listing = {"object": "list", "model_kind": "voice_design", "clone_model": True, "data": []}
    with _serve(_fake_app(seen, listing)) as url:
        browser.get(url + "/")
        _wait(browser, "document.getElementById('voice').dataset.loaded === '0'")
        assert _lock_state(browser) == {"present": True, "shown": True, "enabled": True}
        assert "sounds the same every time" in browser.find_element(By.ID, "lock-hint").text
        browser.find_element(By.ID, "new-name").send_keys("calm")
        browser.find_element(By.ID, "new-description").send_keys("A calm, low voice.")
        browser.find_element(By.ID, "new-lock").click()
        browser.find_element(By.ID, "save-voice").click()
        _wait(browser, "document.getElementById('voice-msg').textContent.startsWith('Saved')")
        assert seen[-1] == {"voice": {"name": "calm", "description": "A calm, low voice.", "lock": True}}
        assert browser.find_element(By.ID, "voice-msg").text == 'Saved locked design voice "calm".'
        browser.find_element(By.ID, "new-lock").click()  # unchecked again
        browser.find_element(By.ID, "save-voice").click()
        _wait(browser, "document.getElementById('voice-msg').textContent === 'Saved design voice \"calm\".'")
        assert seen[-1] == {"voice": {"name": "calm", "description": "A calm, low voice."}}


def test_lock_checkbox_on_a_real_voice_design_server_with_a_clone_model(browser: Any, tiny_tts: Any,
                                                                        tmp_path: Path) -> None:
    """The real voice listing of a VoiceDesign server started with a clone model enables the lock box."""
    from qtts.server.app import ServerSettings, ServerState, create_app

    state = ServerState.create(ServerSettings(kind="voice_design", data_dir=tmp_path / "voices"),
                               tts=tiny_tts["voice_design"], clone_tts=tiny_tts["base"])
    try:
        with _serve(create_app(state)) as url:
            browser.get(url + "/")
            _wait(browser, "document.getElementById('voice').dataset.loaded === '0'")
            assert _lock_state(browser) == {"present": True, "shown": True, "enabled": True}
    finally:
        state.close()


def test_page_speaks_through_the_real_server(browser: Any, tiny_tts: Any, tmp_path: Path) -> None:
    """The page served by the server app itself (tiny CustomVoice checkpoint): voices listed, audio streamed."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from qtts.server.app import ServerSettings, ServerState, create_app

    tts = tiny_tts["custom_voice"]
    state = ServerState.create(ServerSettings(data_dir=tmp_path / "voices"), tts=tts)
    try:
        with _serve(create_app(state)) as url:
            browser.get(url + "/")
            _wait(browser, f"document.getElementById('voice').dataset.loaded === '{len(tts.speakers)}'")
            values = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "voice")).options]
            assert values == ["", *tts.speakers]
            assert _lock_state(browser) == {"present": True, "shown": False, "enabled": False}
            Select(browser.find_element(By.ID, "voice")).select_by_value(tts.speakers[-1])
            data = _speak(browser, "Hi.")
            frames = state.engine.finished[-1].frames
            assert frames > 0 and int(data["bytes"]) == frames * tts.codec.samples_per_frame * 2
            assert int(data["scheduled"]) == int(data["bytes"]) // 2
            assert 0 < float(data["ttfaMs"]) <= float(data["totalMs"])
    finally:
        state.close()


def test_page_saves_a_cloned_voice_and_speaks_with_it(browser: Any, tiny_tts: Any, tmp_path: Path) -> None:
    """Upload reference audio through the page's form (tiny Base checkpoint), then speak with the new voice."""
    import numpy as np
    import soundfile as sf
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from qtts.server.app import ServerSettings, ServerState, create_app

    ref = tmp_path / "ref.wav"
    t = np.arange(16000) / 16000
    sf.write(ref, (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 16000)
    state = ServerState.create(ServerSettings(kind="base", data_dir=tmp_path / "voices"), tts=tiny_tts["base"])
    try:
        with _serve(create_app(state)) as url:
            browser.get(url + "/")
            _wait(browser, "document.getElementById('voice').dataset.loaded === '0'")
            browser.find_element(By.ID, "new-name").send_keys("bad name")
            browser.find_element(By.ID, "new-audio").send_keys(str(ref))
            browser.find_element(By.ID, "save-voice").click()
            _wait(browser, "document.getElementById('voice-msg').textContent.startsWith('Not saved')")
            assert "invalid voice name" in browser.find_element(By.ID, "voice-msg").text
            name = browser.find_element(By.ID, "new-name")
            name.clear()
            name.send_keys("ada")
            browser.find_element(By.ID, "new-ref-text").send_keys("A short reference sentence.")
            browser.find_element(By.ID, "save-voice").click()
            _wait(browser, "document.getElementById('voice').dataset.loaded === '1'")
            assert Select(browser.find_element(By.ID, "voice")).first_selected_option.get_attribute("value") == "ada"
            assert state.library.get("ada").ref_text == "A short reference sentence."
            data = _speak(browser, "Hi.")
            assert int(data["bytes"]) > 0 and int(data["scheduled"]) == int(data["bytes"]) // 2
    finally:
        state.close()


def test_page_loads_nothing_from_outside() -> None:
    """No CDN: no absolute URL anywhere in the page, and every src/href is relative (it must work offline)."""
    import re

    html = PAGE.read_text()
    assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.IGNORECASE)
    links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html, re.IGNORECASE)
    assert all(not re.match(r"^(?:[a-z]+:)?//", link) for link in links), links
