"""Seeded random-weight checkpoints in the official on-disk format (for tests, benchmarks and demos).

The weights are untrained: such a checkpoint produces noise, not speech. The layout is the released one
(``config.json``, ``generation_config.json``, text tokenizer files, ``model.safetensors`` and
``speech_tokenizer/``), so the official ``qwen-tts`` package loads it too.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import shapes
from .config import ModelConfig, SpeechTokenizerConfig
from .errors import InputError
from .random_init import init_random_
from .text import write_byte_tokenizer

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
DEFAULT_CACHE = Path(os.environ.get("QTTS_HOME", Path.home() / ".cache" / "qtts"))


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _save(module: torch.nn.Module, path: Path, dtype: torch.dtype) -> None:
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})


def make_checkpoint(shape: str, kind: str, out: str | Path, seed: int = 0, tokenizer: str | Path | None = None,
                    dtype: torch.dtype = torch.bfloat16, overwrite: bool = False) -> Path:
    """Write a random checkpoint of ``shape`` (tiny / 0.6b / 1.7b) and ``kind`` (base / custom_voice /
    voice_design) to ``out``. ``tokenizer``: folder with the real Qwen text tokenizer files to copy; by
    default a byte-level tokenizer is written. The folder appears atomically (built under a temp name)."""
    from .codec.tokenizer import SpeechTokenizer
    from .model.tts import TTSModel

    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    model_cfg = shapes.model_config(shape, kind)
    codec_cfg = shapes.speech_tokenizer_config(shape)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        # transformers_version <= 4.57.2 keeps the plain Qwen2 regex in the official loader (spec §0.1).
        _write_json(tmp / "config.json", {**model_cfg, "transformers_version": "4.57.1"})
        _write_json(tmp / "generation_config.json", shapes.GENERATION_CONFIG)
        _write_json(tmp / "preprocessor_config.json", shapes.TEXT_PREPROCESSOR_CONFIG)
        if tokenizer is not None:
            for name in TOKENIZER_FILES:
                src = Path(tokenizer) / name
                if not src.is_file():
                    raise InputError(f"tokenizer folder {tokenizer} has no {name}")
                shutil.copyfile(src, tmp / name)
        else:
            write_byte_tokenizer(tmp)
        model = init_random_(TTSModel(ModelConfig.from_dict(model_cfg)), seed)
        _save(model, tmp / "model.safetensors", dtype)
        del model
        st = tmp / "speech_tokenizer"
        st.mkdir()
        _write_json(st / "config.json", codec_cfg)
        _write_json(st / "preprocessor_config.json", shapes.SPEECH_PREPROCESSOR_CONFIG)
        codec = init_random_(SpeechTokenizer(SpeechTokenizerConfig.from_dict(codec_cfg)), seed + 1)
        with torch.no_grad():  # keep random audio mostly inside [-1, 1] so clamping hides no differences
            for p in codec.decoder.decoder[-1].parameters():
                p.mul_(0.03)
        _save(codec, st / "model.safetensors", dtype)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def default_checkpoint(kind: str = "custom_voice") -> Path:
    """The offline demo checkpoint: a seeded tiny random model, generated on first use under
    ``$QTTS_HOME`` (default ``~/.cache/qtts``). Untrained: it sounds like noise."""
    path = DEFAULT_CACHE / f"tiny-{kind}-seed0"
    if not (path / "speech_tokenizer" / "model.safetensors").is_file():
        make_checkpoint("tiny", kind, path, seed=0, overwrite=True)
    return path


def random_tts(shape: str = "tiny", kind: str = "custom_voice", device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, seed: int = 0):
    """A ``TTS`` with seeded random weights built in memory (no files but a byte-level tokenizer in a temp
    folder): for benchmarks at the real shapes without writing gigabytes. Untrained: it produces noise."""
    from .api import TTS
    from .codec.tokenizer import SpeechTokenizer
    from .config import GenerationConfig
    from .model.tts import TTSModel
    from .text import TextTokenizer

    cfg = ModelConfig.from_dict(shapes.model_config(shape, kind))
    codec_cfg = SpeechTokenizerConfig.from_dict(shapes.speech_tokenizer_config(shape))
    with tempfile.TemporaryDirectory() as tmp:
        write_byte_tokenizer(Path(tmp))
        tokenizer = TextTokenizer.from_dir(tmp)
    model = init_random_(TTSModel(cfg), seed).to(device=device, dtype=dtype).eval()
    codec = init_random_(SpeechTokenizer(codec_cfg), seed + 1)
    with torch.no_grad():
        for p in codec.decoder.decoder[-1].parameters():
            p.mul_(0.03)
    codec = codec.to(device=device, dtype=dtype).eval()
    return TTS(cfg, GenerationConfig.from_dict(shapes.GENERATION_CONFIG), tokenizer, model, codec)
