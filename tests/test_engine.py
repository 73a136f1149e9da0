"""The engine: continuous batching equals single streams; cancellation; admission control; failures."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from qtts import ChunkPolicy, Speaker, SynthesisOptions
from qtts.engine import Engine, EngineBusy, EngineConfig
from qtts.errors import InputError

TEXTS = ["The first stream speaks.", "A second, longer stream that says rather more words.", "Third!",
         "Number four joins late."]


def _joined(chunks) -> tuple[np.ndarray, np.ndarray]:
    chunks = list(chunks)
    return np.concatenate([c.audio for c in chunks]), np.concatenate([c.codes for c in chunks])


def test_batched_streams_equal_single_streams(tiny_tts):
    tts = tiny_tts["custom_voice"]
    speakers = ["ryan", "serena", "vivian", "eric"]
    budgets = [12, 20, 7, 15]
    expected = [
        _joined(tts.stream(t, voice=Speaker(s), seed=i,
                           options=SynthesisOptions(max_new_tokens=b, chunks=ChunkPolicy(1, 4))))
        for i, (t, s, b) in enumerate(zip(TEXTS, speakers, budgets, strict=True))
    ]
    with Engine(tts, EngineConfig(max_batch=3)) as engine:  # 4 streams, 3 slots: one is admitted later
        handles = [
            engine.submit(tts.prepare(t, voice=Speaker(s), seed=i, options=SynthesisOptions(max_new_tokens=b)),
                          ChunkPolicy(1, 4))
            for i, (t, s, b) in enumerate(zip(TEXTS, speakers, budgets, strict=True))
        ]
        results: list = [None] * 4

        def read(i: int) -> None:
            results[i] = _joined(handles[i])

        threads = [threading.Thread(target=read, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        for (audio, codes), (exp_audio, exp_codes) in zip(results, expected, strict=True):
            assert np.array_equal(codes, exp_codes)
            assert np.abs(audio - exp_audio).max() <= 1e-5
        assert engine.stats()["active"] == 0 and engine.stats()["waiting"] == 0
        assert all(h.stats is not None and h.stats.frames == len(e[1]) for h, e in zip(handles, expected, strict=True))


def test_frames_total_counts_every_step_before_a_stream_s_last_audio(tiny_tts, monkeypatch):
    """A client that has a stream's last chunk sees all its frame steps in ``frames_total`` (the server test of an
    unknown model read the counter between the last audio of the test before it and the count of its last
    step). The count is read on the engine thread as the last chunk is handed over."""
    from qtts.engine import StreamHandle

    tts = tiny_tts["custom_voice"]
    at_last: list[int] = []
    put = StreamHandle._put

    def recording(self, item):
        if getattr(item, "finish_reason", None) is not None:
            at_last.append(self._engine.frames_total)
        put(self, item)

    monkeypatch.setattr(StreamHandle, "_put", recording)
    with Engine(tts, EngineConfig(max_batch=1)) as engine:
        before = engine.frames_total
        handle = engine.submit(tts.prepare(TEXTS[0], voice=Speaker("ryan"), seed=0,
                                           options=SynthesisOptions(max_new_tokens=6)))
        frames = len(_joined(handle)[1])
        assert at_last == [engine.frames_total] and engine.frames_total - before >= frames


def test_cancel_frees_the_slot_and_others_continue(tiny_tts):
    tts = tiny_tts["custom_voice"]
    opts = SynthesisOptions(max_new_tokens=200)
    with Engine(tts, EngineConfig(max_batch=2)) as engine:
        long = engine.submit(tts.prepare(TEXTS[1], voice=Speaker("ryan"), seed=1, options=opts), ChunkPolicy(1, 1))
        short = engine.submit(tts.prepare(TEXTS[0], voice=Speaker("ryan"), seed=2,
                                          options=SynthesisOptions(max_new_tokens=10)))
        it = iter(long)
        next(it)
        it.close()  # closing the iteration cancels
        audio, codes = _joined(short)
        assert len(codes) == 9 and short.finish_reason == "length"
        for _ in range(200):
            if long.finish_reason is not None:
                break
            threading.Event().wait(0.01)
        assert long.finish_reason == "cancelled" and long.stats.frames < 199
        assert engine.stats()["active"] == 0


def test_admission_control(tiny_tts):
    tts = tiny_tts["custom_voice"]
    prep = tts.prepare(TEXTS[1], voice=Speaker("ryan"), seed=1, options=SynthesisOptions(max_new_tokens=400))
    with Engine(tts, EngineConfig(max_batch=1, max_waiting=1, wait_timeout=0.3)) as engine:
        busy = engine.submit(prep)
        busy_chunks = iter(busy)
        next(busy_chunks)  # admitted: the only slot is taken
        waiting = engine.submit(prep)
        with pytest.raises(EngineBusy, match="queued"):
            engine.submit(prep)
        with pytest.raises(EngineBusy, match="no free slot") as info:
            list(waiting)
        assert info.value.retry_after >= 1
        busy.cancel()
        assert list(busy_chunks)[-1].finish_reason == "cancelled"
        ok = engine.submit(tts.prepare("Now there is room.", voice=Speaker("ryan"), seed=3,
                                       options=SynthesisOptions(max_new_tokens=5)))
        assert list(ok)[-1].finish_reason == "length"


class _BuildingStep:
    """A frame step whose first ``frames`` calls take ``seconds`` more each, building something once: reported
    as warm-up seconds (a batch bucket compiling or capturing on its first frame), or only seen as a new graph
    made by ``torch.compile`` (e.g. prefill regions for a new prompt length)."""

    def __init__(self, inner, frames: int, seconds: float, reported: bool) -> None:
        self.inner, self.left, self.seconds, self.reported = inner, frames, seconds, reported
        self.capture_seconds = 0.0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, *args):
        if self.left > 0:
            self.left -= 1
            time.sleep(self.seconds)
            if self.reported:
                self.capture_seconds += self.seconds
            else:
                torch._dynamo.utils.counters["stats"]["unique_graphs"] += 1
        return self.inner(*args)


@pytest.mark.parametrize("reported", [True, False])
def test_wait_for_a_slot_does_not_count_warm_up(tiny_tts, reported):
    """A request queued while the engine builds something once (a batch bucket: 25-45 s of compilation on an
    H100, longer than the default ``wait_timeout``) waits for the slot, not for the build: served, not refused."""
    tts = tiny_tts["custom_voice"]
    with Engine(tts, EngineConfig(max_batch=1, wait_timeout=0.5)) as engine:
        engine.runner.step_fn = _BuildingStep(engine.runner.step_fn, frames=4, seconds=0.3, reported=reported)
        first = engine.submit(tts.prepare(TEXTS[0], voice=Speaker("ryan"), seed=1,
                                          options=SynthesisOptions(max_new_tokens=5)))
        second = engine.submit(tts.prepare(TEXTS[1], voice=Speaker("ryan"), seed=2,
                                           options=SynthesisOptions(max_new_tokens=3)))
        assert list(first)[-1].finish_reason == "length"
        assert list(second)[-1].finish_reason == "length"
        assert engine.runner.step_fn.left == 0


def test_async_iteration_and_calls(tiny_tts):
    tts = tiny_tts["custom_voice"]
    opts = SynthesisOptions(max_new_tokens=9)
    expected, _ = _joined(tts.stream(TEXTS[0], voice=Speaker("serena"), seed=4, options=opts))

    async def main() -> tuple[np.ndarray, str]:
        with Engine(tts) as engine:
            prep = await engine.run(tts.prepare, TEXTS[0], voice=Speaker("serena"), seed=4, options=opts)
            name = await engine.run(lambda: threading.current_thread().name)
            handle = engine.submit(prep)
            chunks = [c async for c in handle]
            return np.concatenate([c.audio for c in chunks]), name

    audio, thread_name = asyncio.run(main())
    assert thread_name == "qtts-engine"
    assert np.abs(audio - expected).max() <= 1e-5


def test_sessions_in_the_engine(tiny_tts):
    tts = tiny_tts["voice_design"]
    from qtts import Design

    opts = SynthesisOptions(max_new_tokens=30, non_streaming_mode=False)
    text = "Words arrive one at a time from a language model."
    expected, _ = _joined(tts.stream(text, voice=Design("a deep voice"), seed=8, options=opts))
    with Engine(tts) as engine:
        session = tts.prepare_session(voice=Design("a deep voice"), seed=8, options=opts)
        handle = engine.submit(session)
        other = engine.submit(tts.prepare("Meanwhile another stream.", voice=Design("a voice"), seed=1,
                                          options=SynthesisOptions(max_new_tokens=12)))
        got: list = []
        reader = threading.Thread(target=lambda: got.extend(handle))
        reader.start()
        for word in text.split(" "):
            session.feed.push(word + " ")
            threading.Event().wait(0.01)
        session.feed.end()
        reader.join(timeout=120)
        assert list(other)[-1].finish_reason == "length"
    audio = np.concatenate([c.audio for c in got])
    assert np.abs(audio - expected).max() <= 1e-5


def test_a_failing_step_does_not_take_the_engine_down(tiny_tts, monkeypatch):
    tts = tiny_tts["custom_voice"]
    with Engine(tts) as engine:
        original = engine.runner._launch
        calls = {"n": 0}

        def flaky(advancing):
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("simulated device failure")
            return original(advancing)

        monkeypatch.setattr(engine.runner, "_launch", flaky)
        bad = engine.submit(tts.prepare(TEXTS[0], voice=Speaker("ryan"), seed=1,
                                        options=SynthesisOptions(max_new_tokens=10)))
        with pytest.raises(RuntimeError, match="simulated"):
            list(bad)
        good = engine.submit(tts.prepare(TEXTS[0], voice=Speaker("ryan"), seed=1,
                                         options=SynthesisOptions(max_new_tokens=10)))
        assert list(good)[-1].finish_reason == "length"
        empty = tts.prepare_session(voice=Speaker("ryan"))
        h = engine.submit(empty)
        empty.feed.end()
        with pytest.raises(InputError, match="empty"):
            list(h)


def test_a_failing_codec_decode_fails_only_its_stream(tiny_tts, monkeypatch):
    tts = tiny_tts["custom_voice"]
    opts = SynthesisOptions(max_new_tokens=8)
    prepared = [tts.prepare(TEXTS[i], voice=Speaker("ryan"), seed=i, options=opts) for i in range(2)]
    expected = [_joined(tts.stream(TEXTS[i], voice=Speaker("ryan"), seed=i,
                                   options=SynthesisOptions(max_new_tokens=8, chunks=ChunkPolicy(1, 1))))
                for i in range(2)]
    with Engine(tts, EngineConfig(max_batch=2)) as engine:
        decoder = engine.runner.decoder
        original = decoder.decode_step
        calls = {"n": 0}

        def flaky(codes, state):
            calls["n"] += 1
            if calls["n"] == 4:
                raise IndexError("simulated bad code")
            return original(codes, state)

        monkeypatch.setattr(decoder, "decode_step", flaky)
        handles = [engine.submit(p, ChunkPolicy(1, 1)) for p in prepared]
        outcomes = []
        for h in handles:
            try:
                outcomes.append(_joined(h))
            except IndexError:
                outcomes.append(None)
        assert sum(o is None for o in outcomes) == 1  # the failing stream alone
        for got, exp in zip(outcomes, expected, strict=True):
            if got is not None:
                assert np.array_equal(got[1], exp[1]) and np.abs(got[0] - exp[0]).max() <= 1e-5
        assert engine.stats()["active"] == 0 and engine.stats()["waiting"] == 0


def test_engine_config_validation():
    with pytest.raises(InputError, match="max_batch"):
        EngineConfig(max_batch=0)
    with pytest.raises(InputError, match="wait_timeout"):
        EngineConfig(wait_timeout=0)
