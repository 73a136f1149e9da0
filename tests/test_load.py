"""Bounded load test on loopback: 32 concurrent streaming requests on the tiny checkpoint."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from qtts import ChunkPolicy, Speaker, SynthesisOptions  # noqa: E402
from qtts.server.app import ServerSettings, ServerState, create_app  # noqa: E402

from .serving import serve, wait_idle  # noqa: E402

CONCURRENT = 32
FRAMES = 8


async def _stream(client: httpx.AsyncClient, url: str, seed: int) -> tuple[int, bytes, float]:
    body = {"input": f"Load test request number {seed % 4}.", "voice": "aiden", "seed": seed % 4,
            "max_new_tokens": FRAMES, "response_format": "pcm"}
    start = time.perf_counter()
    async with client.stream("POST", url + "/v1/audio/speech", json=body) as response:
        first = None
        parts = []
        async for part in response.aiter_raw():
            first = first or time.perf_counter() - start
            parts.append(part)
        return response.status_code, b"".join(parts), first or 0.0


def test_32_concurrent_streams(tiny_tts, tmp_path):
    tts = tiny_tts["custom_voice"]
    expected = []
    for seed in range(4):
        chunks = tts.stream(f"Load test request number {seed}.", voice=Speaker("aiden"), seed=seed,
                            options=SynthesisOptions(max_new_tokens=FRAMES, chunks=ChunkPolicy(1, 8)))
        audio = np.clip(np.concatenate([c.audio for c in chunks]), -1, 1)
        expected.append(np.round(audio * 32767).astype("<i2"))
    state = ServerState.create(ServerSettings(max_batch=16, max_waiting=64, wait_timeout=120, data_dir=tmp_path),
                               tts=tts)

    async def main(url: str) -> list[tuple[int, bytes, float]]:
        limits = httpx.Limits(max_connections=CONCURRENT)
        async with httpx.AsyncClient(timeout=300, limits=limits) as client:
            return await asyncio.gather(*(_stream(client, url, i) for i in range(CONCURRENT)))

    with serve(create_app(state)) as url:
        results = asyncio.run(main(url))
        stats = wait_idle(state.engine)
        metrics = httpx.get(url + "/metrics").text
    assert [status for status, _, _ in results] == [200] * CONCURRENT
    for i, (_, data, _) in enumerate(results):
        got = np.frombuffer(data, dtype="<i2")
        want = expected[i % 4]
        assert len(got) == len(want) > 0, f"request {i}: {len(got)} samples, expected {len(want)}"
        assert np.abs(got.astype(np.int32) - want).max() <= 1, f"request {i}: audio differs from a single stream"
    assert stats["active"] == 0 and stats["waiting"] == 0
    finished = {line.split('"')[1]: int(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith("qtts_streams_total{")}
    assert set(finished) <= {"stop", "length"} and sum(finished.values()) == CONCURRENT  # no errors, no cancels
