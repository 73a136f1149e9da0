"""Config parsing from the released files; our shape tables equal the released configs."""

from __future__ import annotations

import json

import pytest

from qtts import shapes
from qtts.config import GenerationConfig, ModelConfig, SpeechTokenizerConfig, read_json
from qtts.errors import CheckpointError

from .conftest import SHARED

CONFIGS = SHARED / "configs"
RELEASES = {
    "Qwen3-TTS-12Hz-0.6B-Base": ("0.6b", "base"),
    "Qwen3-TTS-12Hz-0.6B-CustomVoice": ("0.6b", "custom_voice"),
    "Qwen3-TTS-12Hz-1.7B-Base": ("1.7b", "base"),
    "Qwen3-TTS-12Hz-1.7B-CustomVoice": ("1.7b", "custom_voice"),
    "Qwen3-TTS-12Hz-1.7B-VoiceDesign": ("1.7b", "voice_design"),
}
needs_shared = pytest.mark.skipif(not CONFIGS.is_dir(), reason="../shared/configs not available")


@needs_shared
@pytest.mark.parametrize("name", sorted(RELEASES))
def test_released_configs_parse_and_match_shapes(name):
    raw = read_json(CONFIGS / name / "config.json")
    cfg = ModelConfig.from_dict(raw)
    shape, kind = RELEASES[name]
    assert cfg.tts_model_type == kind and cfg.talker.num_code_groups == 16
    assert (cfg.speaker_encoder_config is not None) == (kind == "base")
    assert shapes.model_config(shape, kind) == raw
    gen = GenerationConfig.from_dict(read_json(CONFIGS / name / "generation_config.json"))
    assert gen.max_new_tokens == 8192 and gen.top_k == 50


@needs_shared
def test_speech_tokenizer_config_matches_release():
    raw = read_json(CONFIGS / "Qwen3-TTS-Tokenizer-12Hz" / "config.json")
    cfg = SpeechTokenizerConfig.from_dict(raw)
    assert cfg.decoder_config.sliding_window == 72 and cfg.encoder_config.num_quantizers == 32
    assert shapes.speech_tokenizer_config("0.6b") == raw


def test_tiny_deep_has_tiny_widths_at_the_released_layer_counts():
    """``tiny-deep`` (host-overhead benchmarks): the tiny config with the 0.6b's talker and predictor layer counts,
    and the tiny codec; it parses like any other."""
    deep, tiny, real = (shapes.model_config(s, "custom_voice") for s in ("tiny-deep", "tiny", "0.6b"))
    for part in (lambda c: c["talker_config"], lambda c: c["talker_config"]["code_predictor_config"]):
        assert part(deep)["num_hidden_layers"] == part(real)["num_hidden_layers"] != part(tiny)["num_hidden_layers"]
        widths = [{k: v for k, v in part(c).items() if k not in ("num_hidden_layers", "code_predictor_config")}
                  for c in (deep, tiny)]
        assert widths[0] == widths[1]
    assert ModelConfig.from_dict(deep).talker.num_hidden_layers == 28
    assert shapes.speech_tokenizer_config("tiny-deep") == shapes.speech_tokenizer_config("tiny")


def test_missing_key_is_named():
    raw = shapes.model_config("tiny", "base")
    del raw["talker_config"]["hidden_size"]
    with pytest.raises(CheckpointError, match="talker_config: required key 'hidden_size'"):
        ModelConfig.from_dict(raw)
    raw = shapes.model_config("tiny", "base")
    del raw["speaker_encoder_config"]
    with pytest.raises(CheckpointError, match="speaker_encoder_config"):
        ModelConfig.from_dict(raw)


def test_bad_values_are_named():
    raw = shapes.model_config("tiny", "custom_voice")
    raw["tts_model_type"] = "karaoke"
    with pytest.raises(CheckpointError, match="tts_model_type"):
        ModelConfig.from_dict(raw)
    raw = shapes.model_config("tiny", "custom_voice")
    raw["talker_config"]["num_hidden_layers"] = "two"
    with pytest.raises(CheckpointError, match="num_hidden_layers"):
        ModelConfig.from_dict(raw)
    raw = shapes.model_config("tiny", "custom_voice")
    raw["tokenizer_type"] = "qwen3_tts_tokenizer_25hz"
    with pytest.raises(CheckpointError, match="25hz"):
        ModelConfig.from_dict(raw)


def test_read_json_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_json(tmp_path / "config.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    with pytest.raises(CheckpointError, match="JSON object"):
        read_json(tmp_path / "list.json")
