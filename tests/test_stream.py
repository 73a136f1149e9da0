"""Audio streaming: joined chunks equal ``synthesize`` for every kind; chunk sizes; cancellation."""

from __future__ import annotations

import numpy as np
import pytest

from qtts import ChunkPolicy, Clone, Design, InputError, Speaker, SynthesisOptions

TEXT = "Streaming should never change the audio."


def _ref_audio() -> tuple[np.ndarray, int]:
    t = np.arange(30000) / 24000
    return (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 24000


VOICES = {
    "custom_voice": Speaker("serena"),
    "voice_design": Design("a bright voice"),
    "base": Clone(_ref_audio(), "Reference words."),
}


@pytest.mark.parametrize("kind", sorted(VOICES))
@pytest.mark.parametrize("policy", [ChunkPolicy(1, 1), ChunkPolicy(3, 3), ChunkPolicy()])
def test_stream_equals_synthesize(tiny_tts, kind, policy):
    tts = tiny_tts[kind]
    opts = SynthesisOptions(max_new_tokens=20, chunks=policy)
    whole = tts.synthesize(TEXT, voice=VOICES[kind], seed=9, options=opts)
    chunks = list(tts.stream(TEXT, voice=VOICES[kind], seed=9, options=opts))
    assert chunks[-1].finish_reason == whole.finish_reason and all(c.finish_reason is None for c in chunks[:-1])
    assert [c.start for c in chunks[1:]] == [c.end for c in chunks[:-1]] and chunks[-1].end == len(whole.codes)
    for c in chunks:
        assert len(c.audio) == 1920 * (c.end - c.start)
    if policy == ChunkPolicy():
        assert [c.end - c.start for c in chunks[:4]] == [1, 2, 4, 8]
    joined = np.concatenate([c.audio for c in chunks])
    assert joined.shape == whole.audio.shape
    assert np.abs(joined - whole.audio).max() <= 1e-4


def test_closing_the_stream_stops_generation(tiny_tts):
    tts = tiny_tts["custom_voice"]
    frames = []
    opts = SynthesisOptions(max_new_tokens=200, on_frame=frames.append, chunks=ChunkPolicy(1, 1))
    it = tts.stream(TEXT, voice=Speaker("ryan"), seed=1, options=opts)
    first = next(it)
    assert first.end == 1 and first.elapsed > 0
    assert len(frames) == 1
    it.close()
    with pytest.raises(StopIteration):
        next(it)
    assert len(frames) == 1  # nothing was generated after the close


def test_bad_chunk_policy():
    with pytest.raises(InputError, match="chunk policy"):
        ChunkPolicy(0, 4)


def test_async_stream_equals_sync_and_budget_ends_with_length(tiny_tts):
    import asyncio

    tts = tiny_tts["custom_voice"]
    opts = SynthesisOptions(max_new_tokens=5, chunks=ChunkPolicy(2, 2))

    async def collect():
        return [c async for c in tts.astream(TEXT, voice=Speaker("aiden"), seed=4, options=opts)]

    chunks = asyncio.run(collect())
    sync = list(tts.stream(TEXT, voice=Speaker("aiden"), seed=4, options=opts))
    assert [(c.start, c.end, c.finish_reason) for c in chunks] == [(c.start, c.end, c.finish_reason) for c in sync]
    assert np.array_equal(np.concatenate([c.audio for c in chunks]), np.concatenate([c.audio for c in sync]))
    if sync[-1].finish_reason == "length":
        assert sync[-1].end == 4  # budget of 5 code-0 samples -> 4 frames
