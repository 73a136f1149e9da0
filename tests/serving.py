"""A real uvicorn server on a free loopback port, in a thread, for the server tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(app) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1 until the block ends; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                           ws="websockets-sansio"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        httpx.get(url + "/health", timeout=10).raise_for_status()
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_idle(engine, timeout: float = 10.0) -> dict[str, int]:
    """Engine stats once no stream is active or waiting (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    stats = engine.stats()
    while (stats["active"] or stats["waiting"]) and time.monotonic() < deadline:
        time.sleep(0.02)
        stats = engine.stats()
    return stats
