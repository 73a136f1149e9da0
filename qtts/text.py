"""The Qwen text tokenizer, built with the ``tokenizers`` library from ``vocab.json`` + ``merges.txt``.

Uses the plain Qwen2 pre-tokenizer regex (what hub users of the official package get; see spec §0.1),
NFC normalisation and byte-level BPE. Special tokens come from ``tokenizer_config.json`` at their ids.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from .errors import CheckpointError

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
FIRST_SPECIAL_ID = 151643
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>",
    "</tool_response>", "<think>", "</think>", "<|audio_start|>", "<|audio_end|>", "<tts_pad>",
    "<tts_text_bos>", "<tts_text_eod>", "<tts_text_bos_single>", "<|audio_pad|>",
)


class TextTokenizer:
    """Text -> token ids. ``encode(text)`` returns plain BPE ids (special-token strings are recognised)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok = tokenizer

    @classmethod
    def from_dir(cls, folder: str | Path) -> TextTokenizer:
        """Load ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` from ``folder``."""
        folder = Path(folder)
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
            if not (folder / name).is_file():
                raise CheckpointError(f"{folder}: text tokenizer file '{name}' is missing")
        try:
            bpe = models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
        except Exception as e:  # tokenizers raises plain Exceptions for malformed files
            raise CheckpointError(f"{folder}: cannot read vocab.json/merges.txt ({e})") from None
        tok = Tokenizer(bpe)
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        with open(folder / "tokenizer_config.json", encoding="utf-8") as f:
            added = json.load(f).get("added_tokens_decoder", {})
        for token_id, spec in sorted(added.items(), key=lambda kv: int(kv[0])):
            content = spec["content"]
            tok.add_special_tokens([AddedToken(content, normalized=False, special=True)])
            if tok.token_to_id(content) != int(token_id):
                raise CheckpointError(
                    f"{folder}: special token {content!r} should have id {token_id}, got {tok.token_to_id(content)}"
                )
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added around it)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def token_id(self, token: str) -> int:
        """Id of a special or regular token string; error if unknown."""
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise CheckpointError(f"text tokenizer has no token {token!r}")
        return token_id


def write_byte_tokenizer(folder: Path) -> None:
    """Write a minimal byte-level Qwen-compatible tokenizer (no merges; every byte is one token).

    Used for offline random checkpoints when no real tokenizer is given: 256 byte tokens, placeholder
    entries up to id 151642 and the Qwen special tokens at their official ids, so prompts keep the
    official layout. The official package can load it too.
    """
    byte_chars = _bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    for i in range(256, FIRST_SPECIAL_ID):
        vocab[f"<|placeholder_{i}|>"] = i
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    added = {
        str(FIRST_SPECIAL_ID + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                    "single_word": False, "special": True}
        for i, t in enumerate(SPECIAL_TOKENS)
    }
    config = {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
        "bos_token": None, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
        "errors": "replace", "model_max_length": 131072, "pad_token": "<|endoftext|>",
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet: printable bytes map to themselves, the rest to code points >= 256."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping
