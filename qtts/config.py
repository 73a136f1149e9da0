"""Frozen configuration dataclasses parsed from a checkpoint's real ``config.json`` files.

Three tiers: architecture (``ModelConfig`` / ``SpeechTokenizerConfig``, read once from the checkpoint),
sampling defaults (``GenerationConfig``, from ``generation_config.json``) and runtime knobs (engine options,
elsewhere). Class defaults of the official package are wrong for every release, so every architecture
field is required: a missing key is a :class:`~qtts.errors.CheckpointError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_origin, get_type_hints

from .errors import CheckpointError

T = TypeVar("T")

MODEL_KINDS = ("base", "custom_voice", "voice_design")


def _parse(cls: type[T], raw: Mapping[str, Any], where: str, **overrides: Any) -> T:
    """Build dataclass ``cls`` from ``raw``; fields without a default must be present."""
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{where}: expected an object, got {type(raw).__name__}")
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            values[f.name] = overrides[f.name]
            continue
        if f.name not in raw or raw[f.name] is None:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise CheckpointError(f"{where}: required key '{f.name}' is missing")
        values[f.name] = _coerce(raw[f.name], hints[f.name], f"{where}: key '{f.name}'")
    return cls(**values)


def _coerce(value: Any, hint: Any, what: str) -> Any:
    """Check/convert a JSON value against a field type (int, float, bool, str, tuple[int, ...], dict)."""
    origin = get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
            raise CheckpointError(f"{what} must be a list of integers, got {value!r}")
        return tuple(value)
    if hint is bool and not isinstance(value, bool):
        raise CheckpointError(f"{what} must be true or false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise CheckpointError(f"{what} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CheckpointError(f"{what} must be a number, got {value!r}")
        return float(value)
    if hint is str and not isinstance(value, str):
        raise CheckpointError(f"{what} must be a string, got {value!r}")
    if origin is dict and not isinstance(value, dict):
        raise CheckpointError(f"{what} must be an object, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class DecoderDims:
    """Dimensions shared by the talker's and the predictor's Qwen3 transformers."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    num_code_groups: int


@dataclasses.dataclass(frozen=True)
class PredictorConfig(DecoderDims):
    """The code predictor: a small Qwen3 transformer predicting code groups 1..15 of a frame."""


@dataclasses.dataclass(frozen=True)
class TalkerConfig(DecoderDims):
    """The talker: a Qwen3 decoder over dual-track (text + codec) embeddings producing code group 0."""

    text_vocab_size: int
    text_hidden_size: int
    codec_pad_id: int
    codec_bos_id: int
    codec_eos_token_id: int
    codec_think_id: int
    codec_nothink_id: int
    codec_think_bos_id: int
    codec_think_eos_id: int
    codec_language_id: dict[str, int]
    spk_id: dict[str, int]
    spk_is_dialect: dict[str, Any]
    code_predictor_config: PredictorConfig

    @property
    def codebook_size(self) -> int:
        """Number of real codes in code group 0 (ids at or above are control ids)."""
        return self.code_predictor_config.vocab_size


@dataclasses.dataclass(frozen=True)
class SpeakerEncoderConfig:
    """ECAPA-TDNN speaker encoder (Base checkpoints only)."""

    mel_dim: int
    enc_dim: int
    enc_channels: tuple[int, ...]
    enc_kernel_sizes: tuple[int, ...]
    enc_dilations: tuple[int, ...]
    enc_attention_channels: int
    enc_res2net_scale: int
    enc_se_channels: int
    sample_rate: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Top-level ``config.json`` of a Qwen3-TTS 12 Hz checkpoint."""

    talker_config: TalkerConfig
    speaker_encoder_config: SpeakerEncoderConfig | None
    tts_model_type: str
    tts_model_size: str
    tokenizer_type: str
    im_start_token_id: int
    im_end_token_id: int
    tts_pad_token_id: int
    tts_bos_token_id: int
    tts_eos_token_id: int
    assistant_token_id: int = 77091
    sample_rate: int = 24000

    @property
    def talker(self) -> TalkerConfig:
        return self.talker_config

    @property
    def predictor(self) -> PredictorConfig:
        return self.talker_config.code_predictor_config

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "config.json") -> ModelConfig:
        talker_raw = raw.get("talker_config")
        if not isinstance(talker_raw, Mapping):
            raise CheckpointError(f"{where}: required key 'talker_config' is missing")
        predictor = _parse(
            PredictorConfig, talker_raw.get("code_predictor_config") or {},
            f"{where}: talker_config.code_predictor_config",
        )
        talker = _parse(
            TalkerConfig, talker_raw, f"{where}: talker_config", code_predictor_config=predictor,
        )
        kind = raw.get("tts_model_type")
        if kind not in MODEL_KINDS:
            raise CheckpointError(f"{where}: tts_model_type must be one of {MODEL_KINDS}, got {kind!r}")
        speaker = None
        if kind == "base":
            if not isinstance(raw.get("speaker_encoder_config"), Mapping):
                raise CheckpointError(f"{where}: a base checkpoint needs 'speaker_encoder_config'")
            speaker = _parse(SpeakerEncoderConfig, raw["speaker_encoder_config"],
                             f"{where}: speaker_encoder_config")
        cfg = _parse(cls, raw, where, talker_config=talker, speaker_encoder_config=speaker)
        if cfg.tokenizer_type != "qwen3_tts_tokenizer_12hz":
            raise CheckpointError(
                f"{where}: tokenizer_type {cfg.tokenizer_type!r} is not supported (only qwen3_tts_tokenizer_12hz)"
            )
        if talker.num_code_groups != predictor.num_code_groups:
            raise CheckpointError(f"{where}: talker and code predictor disagree on num_code_groups")
        return cfg


@dataclasses.dataclass(frozen=True)
class CodecDecoderConfig:
    """The 12 Hz codec decoder (codes -> 24 kHz waveform)."""

    codebook_size: int
    codebook_dim: int
    hidden_size: int
    latent_dim: int
    head_dim: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    num_hidden_layers: int
    sliding_window: int
    rope_theta: float
    max_position_embeddings: int
    rms_norm_eps: float
    layer_scale_initial_scale: float
    num_quantizers: int
    upsample_rates: tuple[int, ...]
    upsampling_ratios: tuple[int, ...]
    decoder_dim: int


@dataclasses.dataclass(frozen=True)
class CodecEncoderConfig:
    """The 12 Hz codec encoder: a Mimi encoder (waveform -> codes)."""

    sampling_rate: int
    frame_rate: float
    audio_channels: int
    hidden_size: int
    num_filters: int
    num_residual_layers: int
    upsampling_ratios: tuple[int, ...]
    kernel_size: int
    last_kernel_size: int
    residual_kernel_size: int
    dilation_growth_rate: int
    use_causal_conv: bool
    compress: int
    codebook_size: int
    codebook_dim: int
    num_quantizers: int
    num_semantic_quantizers: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    norm_eps: float
    rope_theta: float
    sliding_window: int
    layer_scale_initial_scale: float
    pad_mode: str = "constant"
    trim_right_ratio: float = 1.0
    use_conv_shortcut: bool = False
    vector_quantization_hidden_dimension: int = 256
    upsample_groups: int = 512
    hidden_act: str = "gelu"
    attention_bias: bool = False


@dataclasses.dataclass(frozen=True)
class SpeechTokenizerConfig:
    """``speech_tokenizer/config.json``: encoder + decoder of the 12 Hz codec."""

    encoder_config: CodecEncoderConfig
    decoder_config: CodecDecoderConfig
    encoder_valid_num_quantizers: int
    input_sample_rate: int
    output_sample_rate: int
    decode_upsample_rate: int
    encode_downsample_rate: int

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "speech_tokenizer/config.json"
                  ) -> SpeechTokenizerConfig:
        if raw.get("model_type", "qwen3_tts_tokenizer_12hz") != "qwen3_tts_tokenizer_12hz":
            raise CheckpointError(f"{where}: model_type {raw.get('model_type')!r} is not the 12 Hz tokenizer")
        enc = _parse(CodecEncoderConfig, raw.get("encoder_config") or {}, f"{where}: encoder_config")
        dec = _parse(CodecDecoderConfig, raw.get("decoder_config") or {}, f"{where}: decoder_config")
        return _parse(cls, raw, where, encoder_config=enc, decoder_config=dec)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Sampling defaults from ``generation_config.json`` (same fallbacks as the official wrapper)."""

    do_sample: bool = True
    top_k: int = 50
    top_p: float = 1.0
    temperature: float = 0.9
    repetition_penalty: float = 1.05
    subtalker_dosample: bool = True
    subtalker_top_k: int = 50
    subtalker_top_p: float = 1.0
    subtalker_temperature: float = 0.9
    max_new_tokens: int = 2048

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "generation_config.json") -> GenerationConfig:
        return _parse(cls, raw, where)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from ``path``; errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return raw
