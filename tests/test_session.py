"""Text-in sessions: incremental tokenization, incremental text == whole text, waiting for text, cancellation."""

from __future__ import annotations

import gc
import random
import threading
import time
import weakref

import numpy as np
import pytest

from qtts import ChunkPolicy, Clone, Design, InputError, Speaker, SynthesisOptions
from qtts.text import TextTokenizer
from qtts.textfeed import TextFeed

TEXTS = [
    "Hello world, this is a test.",
    "  Leading and trailing spaces   ",
    "It's 2026: numbers 12345, contractions we'll, and  double  spaces!",
    "Line one.\nLine two,\n\nthree...",
    "你好，世界。今天天气很好！",
    "Café naïve — “quotes” and émigré.",
]


@pytest.fixture(scope="module")
def tok(tokenizer_dir) -> TextTokenizer:
    return TextTokenizer.from_dir(tokenizer_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_feed_commits_the_tokens_of_the_whole_text(tok, text):
    rng = random.Random(hash(text) & 0xFFFF)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 8))))
        feed = TextFeed(tok)
        seen: list[int] = []
        for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True):
            feed.push(text[a:b])
            assert feed.tokens[: len(seen)] == seen  # committed tokens never change
            seen = list(feed.tokens)
        feed.end()
        assert feed.tokens == tok.encode(text.strip())


def test_feed_holds_back_a_partial_word(tok):
    feed = TextFeed(tok)
    feed.push("Hel")
    assert feed.tokens == []
    feed.push("lo wor")
    assert feed.tokens == tok.encode("Hello")
    feed.push("ld")
    assert feed.tokens == tok.encode("Hello")
    feed.end()
    assert feed.tokens == tok.encode("Hello world") and feed.ended
    with pytest.raises(InputError, match="already ended"):
        feed.push("more")


def test_feed_limits_and_types(tok):
    feed = TextFeed(tok, max_tokens=5)
    with pytest.raises(InputError, match="too long"):
        feed.push("one two three four five six seven eight ")
    assert feed.closed
    with pytest.raises(InputError, match="string"):
        TextFeed(tok).push(3)  # type: ignore[arg-type]


def _ref_audio() -> tuple[np.ndarray, int]:
    t = np.arange(30000) / 24000
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 24000


VOICES = {
    "custom_voice": Speaker("serena"),
    "voice_design": Design("a calm low voice"),
    "base": Clone(_ref_audio(), "Some reference words here."),
    "base-xvec": Clone(_ref_audio(), x_vector_only=True),
}
TEXT = "Incremental text should give the very same audio as whole text, word by word."


def _push_words(session, text: str, delay: float) -> threading.Thread:
    def run() -> None:
        words = text.split(" ")
        for i, w in enumerate(words):
            session.push_text(w + ("" if i == len(words) - 1 else " "))
            time.sleep(delay)
        session.end()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("name", sorted(VOICES))
def test_incremental_text_equals_whole_text(tiny_tts, name):
    tts = tiny_tts[name.split("-")[0]]
    voice = VOICES[name]
    if isinstance(voice, Clone):
        voice = Clone(prompt=tts.create_clone_prompt(voice.ref_audio, voice.ref_text, voice.x_vector_only))
    opts = SynthesisOptions(max_new_tokens=40, non_streaming_mode=False, chunks=ChunkPolicy(2, 4))
    whole = list(tts.stream(TEXT, voice=voice, seed=5, options=opts))
    expected = np.concatenate([c.audio for c in whole])
    session = tts.open_stream(voice=voice, seed=5, options=opts)
    pusher = _push_words(session, TEXT, 0.002)
    got = list(session)
    pusher.join()
    assert got[-1].finish_reason == whole[-1].finish_reason == session.finish_reason
    joined = np.concatenate([c.audio for c in got])
    assert joined.shape == expected.shape
    assert np.abs(joined - expected).max() <= 1e-5
    assert np.array_equal(np.concatenate([c.codes for c in got]), np.concatenate([c.codes for c in whole]))


def test_whole_text_pushed_at_once(tiny_tts):
    tts = tiny_tts["custom_voice"]
    opts = SynthesisOptions(max_new_tokens=25, non_streaming_mode=False)
    expected = np.concatenate([c.audio for c in tts.stream(TEXT, voice=Speaker("ryan"), seed=2, options=opts)])
    session = tts.open_stream(voice=Speaker("ryan"), seed=2, options=opts)
    session.push_text(TEXT)
    session.end()
    assert np.abs(np.concatenate([c.audio for c in session]) - expected).max() <= 1e-5


def test_async_iteration_while_text_arrives(tiny_tts):
    """``async for`` over a session (model work in a worker thread) while text is pushed from the event loop
    gives the audio of the whole text pushed at once."""
    import asyncio

    tts = tiny_tts["custom_voice"]
    opts = SynthesisOptions(max_new_tokens=25, non_streaming_mode=False)
    expected = np.concatenate([c.audio for c in tts.stream(TEXT, voice=Speaker("ryan"), seed=2, options=opts)])

    async def run() -> list:
        session = tts.open_stream(voice=Speaker("ryan"), seed=2, options=opts)

        async def feed() -> None:
            for word in TEXT.split(" "):
                session.push_text(word + " ")
                await asyncio.sleep(0.01)
            session.end()

        feeding = asyncio.create_task(feed())
        chunks = [c async for c in session]
        await feeding
        return chunks

    chunks = asyncio.run(run())
    assert chunks[-1].finish_reason in ("stop", "length")
    assert np.abs(np.concatenate([c.audio for c in chunks]) - expected).max() <= 1e-5


def test_generation_waits_for_text(tiny_tts):
    """With only two words committed, the model runs at most one frame per committed text token and waits."""
    tts = tiny_tts["custom_voice"]
    frames: list[int] = []
    opts = SynthesisOptions(max_new_tokens=200, chunks=ChunkPolicy(1, 1), on_frame=frames.append)
    session = tts.open_stream(voice=Speaker("ryan"), seed=1, options=opts)
    session.push_text("Two words and")  # "Two", " words" committed; " and" held back
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(session))
    reader.start()
    time.sleep(1.5)
    n_tokens = len(tts.prompts.tok.encode("Two words"))
    # The prefill takes the first token and each frame consumes the next one: with the committed text used
    # up, generation pauses until more arrives.
    assert n_tokens >= 2 and len(frames) == n_tokens - 1
    assert reader.is_alive()
    session.push_text(" more text.")
    session.end()
    reader.join(timeout=60)
    assert not reader.is_alive() and got[-1].finish_reason in ("stop", "length")
    assert len(frames) > n_tokens


def test_session_close_cancels_and_frees_state(tiny_tts):
    tts = tiny_tts["voice_design"]

    def run() -> tuple[weakref.ref, list]:
        session = tts.open_stream(voice=Design("a voice"), seed=1, options=SynthesisOptions(chunks=ChunkPolicy(1, 1)))
        session.push_text("Some words to start with and")
        got: list = []
        reader = threading.Thread(target=lambda: got.extend(session))
        reader.start()
        time.sleep(0.5)
        session.close()
        reader.join(timeout=10)
        assert not reader.is_alive()
        return weakref.ref(session._job), got

    job, got = run()
    assert got and got[-1].finish_reason == "cancelled"
    gc.collect()
    assert job() is None


def test_cancelled_streams_leave_nothing_behind(tiny_tts):
    """Many cancelled streams: every job is freed and the runner pool neither grows nor keeps work."""
    tts = tiny_tts["custom_voice"]
    opts = SynthesisOptions(max_new_tokens=100, chunks=ChunkPolicy(1, 1))
    gc.collect()
    refs = []
    for i in range(20):
        it = tts.stream(TEXT, voice=Speaker("ryan"), seed=i, options=opts)
        next(it)
        refs.append(weakref.ref(it.gi_frame.f_locals["job"]))
        it.close()
        del it
    gc.collect()
    assert all(r() is None for r in refs)
    pool = tts._runners[1]
    assert len(pool) == 1 and pool[0].idle and not pool[0].state.active.any()


def test_session_errors(tiny_tts):
    tts = tiny_tts["custom_voice"]
    with pytest.raises(InputError, match="streaming text layout"):
        tts.open_stream(voice=Speaker("ryan"), options=SynthesisOptions(non_streaming_mode=True))
    with pytest.raises(InputError, match="language"):
        tts.open_stream(voice=Speaker("ryan"), language="klingon")
    session = tts.open_stream(voice=Speaker("ryan"))
    session.push_text("   ")
    session.end()
    with pytest.raises(InputError, match="empty"):
        list(session)
    with pytest.raises(InputError, match="only once"):
        iter(session)


def test_budget_ends_a_session_with_length(tiny_tts):
    tts = tiny_tts["custom_voice"]
    session = tts.open_stream(voice=Speaker("ryan"), seed=3, options=SynthesisOptions(max_new_tokens=6))
    session.push_text(TEXT)
    session.end()
    chunks = list(session)
    assert chunks[-1].finish_reason == "length" and chunks[-1].end == 5
