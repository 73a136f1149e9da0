"""Text tokenizer: equal to the Hugging Face Qwen2 tokenizer (plain regex), special ids, byte fallback."""

from __future__ import annotations

import importlib.util

import pytest

from qtts.errors import CheckpointError
from qtts.text import TextTokenizer, write_byte_tokenizer

SAMPLES = [
    "<|im_start|>assistant\nHello McDonald's world, 123 times!<|im_end|>\n<|im_start|>assistant\n",
    "  leading spaces\n\n  and\ttabs  ",
    "你好，世界。今天天气很好。", "こんにちは、世界", "안녕하세요 세계", "Ünïcödé — “quotes” 😀👍🏽",
    "<tts_pad><tts_text_bos><tts_text_eod>",
]


def test_matches_hf_qwen2_tokenizer(tokenizer_dir):
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers (test reference) not installed")
    from transformers import AutoTokenizer

    ours = TextTokenizer.from_dir(tokenizer_dir)
    ref = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    for text in SAMPLES:
        assert ours.encode(text) == ref(text)["input_ids"], text


def test_special_ids(tokenizer_dir):
    tok = TextTokenizer.from_dir(tokenizer_dir)
    assert tok.encode("<|im_start|>assistant\n") == [151644, 77091, 198]
    assert [tok.token_id(t) for t in ("<tts_pad>", "<tts_text_bos>", "<tts_text_eod>")] == [151671, 151672, 151673]
    assert tok.decode(tok.encode("héllo 你好")) == "héllo 你好"


def test_byte_tokenizer_roundtrip(tmp_path):
    write_byte_tokenizer(tmp_path)
    tok = TextTokenizer.from_dir(tmp_path)
    ids = tok.encode("<|im_start|>assistant\nhé!")
    assert ids[:3] == [151644, ord("a"), ord("s")] and max(ids[1:]) < 256
    assert tok.decode(ids) == "<|im_start|>assistant\nhé!"
    assert tok.token_id("<tts_text_eod>") == 151673


def test_missing_or_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="vocab.json"):
        TextTokenizer.from_dir(tmp_path)
    write_byte_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="cannot read"):
        TextTokenizer.from_dir(tmp_path)
