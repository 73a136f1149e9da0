"""Config files (as dicts) of the released checkpoint shapes, plus a tiny shape for tests and demos and a
``tiny-deep`` one for host-overhead benchmarks (tiny widths at the 0.6b's layer counts: a frame step makes as many
calls as the 0.6b's, each almost free of arithmetic).

``model_config(shape, kind)`` and ``speech_tokenizer_config(shape)`` return dicts in the official on-disk
format (what ``config.json`` holds), so a random checkpoint written from them loads in the official
package too. The 0.6b / 1.7b values are the released ones.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import InputError

SHAPES = ("tiny", "tiny-deep", "0.6b", "1.7b")

LANGUAGE_IDS = {
    "chinese": 2055, "english": 2050, "german": 2053, "italian": 2070, "portuguese": 2071,
    "spanish": 2054, "japanese": 2058, "korean": 2064, "french": 2061, "russian": 2069,
    "beijing_dialect": 2074, "sichuan_dialect": 2062,
}
SPEAKER_IDS = {
    "serena": 3066, "vivian": 3065, "uncle_fu": 3010, "ryan": 3061, "aiden": 2861,
    "ono_anna": 2873, "sohee": 2864, "eric": 2875, "dylan": 2878,
}
SPEAKER_DIALECTS: dict[str, Any] = {name: False for name in SPEAKER_IDS}
SPEAKER_DIALECTS.update(eric="sichuan_dialect", dylan="beijing_dialect")

# Per shape: talker, predictor and speaker-encoder dims that differ between shapes.
_TALKER = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, text_hidden_size=32, mrope_section=[4, 2, 2]),
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, text_hidden_size=2048, mrope_section=[24, 20, 20]),
    "1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, text_hidden_size=2048, mrope_section=[24, 20, 20]),
}
_PREDICTOR = {
    "tiny": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16),
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=5, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128),
    "1.7b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=5, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128),
}
_SPEAKER = {
    "tiny": dict(enc_channels=[32, 32, 32, 32, 96], enc_attention_channels=16, enc_res2net_scale=4,
                 enc_se_channels=16),
    "0.6b": dict(enc_channels=[512, 512, 512, 512, 1536], enc_attention_channels=128, enc_res2net_scale=8,
                 enc_se_channels=128),
}
_SPEAKER["1.7b"] = _SPEAKER["0.6b"]
# tiny-deep: the tiny widths with the 0.6b's layer counts (28 talker layers, 5 predictor layers).
_TALKER["tiny-deep"] = {**_TALKER["tiny"], "num_hidden_layers": _TALKER["0.6b"]["num_hidden_layers"]}
_PREDICTOR["tiny-deep"] = {**_PREDICTOR["tiny"], "num_hidden_layers": _PREDICTOR["0.6b"]["num_hidden_layers"]}
_SPEAKER["tiny-deep"] = _SPEAKER["tiny"]
_SIZE_NAME = {"tiny": "0b6", "tiny-deep": "0b6", "0.6b": "0b6", "1.7b": "1b7"}

_CODEC_ENCODER = {
    "tiny": dict(hidden_size=32, num_filters=4, num_hidden_layers=2, intermediate_size=64,
                 num_attention_heads=2, num_key_value_heads=2, head_dim=16, codebook_dim=32,
                 vector_quantization_hidden_dimension=32, num_quantizers=16, sliding_window=16,
                 upsample_groups=32),
    "full": dict(hidden_size=512, num_filters=64, num_hidden_layers=8, intermediate_size=2048,
                 num_attention_heads=8, num_key_value_heads=8, head_dim=64, codebook_dim=256,
                 vector_quantization_hidden_dimension=256, num_quantizers=32, sliding_window=250,
                 upsample_groups=512),
}
_CODEC_DECODER = {
    "tiny": dict(codebook_dim=64, hidden_size=32, latent_dim=64, head_dim=8, num_attention_heads=4,
                 num_key_value_heads=4, intermediate_size=64, num_hidden_layers=2, sliding_window=8,
                 vector_quantization_hidden_dimension=64, decoder_dim=64),
    "full": dict(codebook_dim=512, hidden_size=512, latent_dim=1024, head_dim=64, num_attention_heads=16,
                 num_key_value_heads=16, intermediate_size=1024, num_hidden_layers=8, sliding_window=72,
                 vector_quantization_hidden_dimension=512, decoder_dim=1536),
}


def _check(shape: str, kind: str | None = None) -> None:
    if shape not in SHAPES:
        raise InputError(f"unknown shape {shape!r}; valid shapes: {', '.join(SHAPES)}")
    if kind is not None and kind not in ("base", "custom_voice", "voice_design"):
        raise InputError(f"unknown kind {kind!r}; valid kinds: base, custom_voice, voice_design")


def model_config(shape: str, kind: str) -> dict[str, Any]:
    """``config.json`` content for a checkpoint of ``shape`` (tiny / tiny-deep / 0.6b / 1.7b) and ``kind``."""
    _check(shape, kind)
    t = dict(_TALKER[shape])
    mrope = t.pop("mrope_section")
    predictor = dict(
        vocab_size=2048, hidden_act="silu", max_position_embeddings=65536, rms_norm_eps=1e-06,
        rope_theta=1000000, rope_scaling=None, attention_bias=False, attention_dropout=0,
        use_sliding_window=False, num_code_groups=16, initializer_range=0.02,
        **_PREDICTOR[shape], model_type="qwen3_tts_talker_code_predictor",
    )
    custom = kind == "custom_voice"
    talker = dict(
        vocab_size=3072, hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-06,
        rope_theta=1000000, attention_bias=False, attention_dropout=0, use_sliding_window=False,
        rope_scaling={"interleaved": True, "mrope_section": mrope, "rope_type": "default", "type": "default"},
        num_code_groups=16, position_id_per_seconds=13, initializer_range=0.02,
        code_predictor_config=predictor, codec_language_id=dict(LANGUAGE_IDS),
        spk_id=dict(SPEAKER_IDS) if custom else {}, spk_is_dialect=dict(SPEAKER_DIALECTS) if custom else {},
        codec_pad_id=2148, codec_bos_id=2149, codec_eos_token_id=2150, codec_think_id=2154,
        codec_nothink_id=2155, codec_think_bos_id=2156, codec_think_eos_id=2157,
        **t, text_vocab_size=151936, model_type="qwen3_tts_talker",
    )
    cfg: dict[str, Any] = {
        "architectures": ["Qwen3TTSForConditionalGeneration"],
        "model_type": "qwen3_tts",
        "talker_config": talker,
    }
    if kind == "base":
        cfg["speaker_encoder_config"] = dict(
            mel_dim=128, enc_dim=t["hidden_size"], enc_kernel_sizes=[5, 3, 3, 3, 1],
            enc_dilations=[1, 2, 3, 4, 1], sample_rate=24000, **_SPEAKER[shape],
        )
    cfg.update(
        tokenizer_type="qwen3_tts_tokenizer_12hz", tts_model_size=_SIZE_NAME[shape], tts_model_type=kind,
        im_start_token_id=151644, im_end_token_id=151645, tts_pad_token_id=151671,
        tts_bos_token_id=151672, tts_eos_token_id=151673, assistant_token_id=77091, sample_rate=24000,
    )
    return copy.deepcopy(cfg)


def speech_tokenizer_config(shape: str) -> dict[str, Any]:
    """``speech_tokenizer/config.json`` content: the real codec for 0.6b / 1.7b, a small one for tiny and
    tiny-deep."""
    _check(shape)
    size = "tiny" if shape.startswith("tiny") else "full"
    encoder = dict(
        sampling_rate=24000, frame_rate=12.5, audio_channels=1, num_residual_layers=1,
        upsampling_ratios=[8, 6, 5, 4], kernel_size=7, last_kernel_size=3, residual_kernel_size=3,
        dilation_growth_rate=2, use_causal_conv=True, pad_mode="constant", compress=2, trim_right_ratio=1.0,
        codebook_size=2048, use_conv_shortcut=False, num_semantic_quantizers=1, hidden_act="gelu",
        max_position_embeddings=8000, norm_eps=1e-05, use_cache=False, use_streaming=False,
        rope_theta=10000.0, attention_dropout=0.0, layer_scale_initial_scale=0.01, attention_bias=False,
        **_CODEC_ENCODER[size], model_type="mimi",
    )
    decoder = dict(
        codebook_size=2048, rope_theta=10000, max_position_embeddings=8000, rms_norm_eps=1e-05,
        layer_scale_initial_scale=0.01, hidden_act="silu", attention_bias=False, attention_dropout=0.0,
        num_quantizers=16, num_semantic_quantizers=1, semantic_codebook_size=4096,
        upsample_rates=[8, 5, 4, 3], upsampling_ratios=[2, 2], **_CODEC_DECODER[size],
    )
    return copy.deepcopy({
        "architectures": ["Qwen3TTSTokenizerV2Model"],
        "model_type": "qwen3_tts_tokenizer_12hz",
        "encoder_config": encoder,
        "decoder_config": decoder,
        "encoder_valid_num_quantizers": 16,
        "input_sample_rate": 24000,
        "output_sample_rate": 24000,
        "decode_upsample_rate": 1920,
        "encode_downsample_rate": 1920,
    })


GENERATION_CONFIG: dict[str, Any] = {
    "do_sample": True, "repetition_penalty": 1.05, "temperature": 0.9, "top_p": 1.0, "top_k": 50,
    "subtalker_dosample": True, "subtalker_temperature": 0.9, "subtalker_top_p": 1.0,
    "subtalker_top_k": 50, "max_new_tokens": 8192,
}
SPEECH_PREPROCESSOR_CONFIG: dict[str, Any] = {
    "chunk_length_s": None, "feature_extractor_type": "EncodecFeatureExtractor", "feature_size": 1,
    "overlap": None, "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True,
    "sampling_rate": 24000,
}
TEXT_PREPROCESSOR_CONFIG: dict[str, Any] = {
    "padding_side": "left", "padding_value": 0.0, "processor_class": "Qwen3TTSProcessor",
    "return_attention_mask": True,
}
