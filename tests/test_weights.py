"""Strict loading: every missing, unexpected, mis-shaped or corrupt tensor is an error naming file and key."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from qtts import shapes
from qtts.config import ModelConfig
from qtts.errors import CheckpointError
from qtts.model.talker import Talker
from qtts.random_init import init_random_
from qtts.weights import build_and_load, read_safetensors, resolve_checkpoint


@pytest.fixture(scope="module")
def talker_state() -> dict[str, torch.Tensor]:
    cfg = ModelConfig.from_dict(shapes.model_config("tiny", "custom_voice"))
    return {f"talker.{k}": v for k, v in init_random_(Talker(cfg.talker), 3).state_dict().items()}


def _load(state: dict[str, torch.Tensor]) -> Talker:
    cfg = ModelConfig.from_dict(shapes.model_config("tiny", "custom_voice"))
    return build_and_load(lambda: Talker(cfg.talker), state, "model.safetensors", torch.float32, "cpu",
                          prefix="talker.")


def test_roundtrip_is_exact(talker_state):
    talker = _load(dict(talker_state))
    for k, v in talker.state_dict().items():
        assert torch.equal(v, talker_state[f"talker.{k}"])
    assert talker.model.rotary.inv_freq.dtype == torch.float32  # non-persistent buffers are rebuilt


@pytest.mark.parametrize(("edit", "match"), [
    (lambda s: s.pop("talker.codec_head.weight"), "missing tensor 'talker.codec_head.weight'"),
    (lambda s: s.update({"talker.extra.weight": torch.zeros(1)}), "unexpected tensor 'talker.extra.weight'"),
    (lambda s: s.update({"talker.codec_head.weight": torch.zeros(3, 3)}), r"'talker.codec_head.weight' has shape"),
    (lambda s: s["talker.model.norm.weight"].__setitem__(0, float("nan")), "NaN"),
])
def test_strict_errors(talker_state, edit, match):
    state = {k: v.clone() for k, v in talker_state.items()}
    edit(state)
    with pytest.raises(CheckpointError, match=match):
        _load(state)


def test_sharded_and_corrupt_files(tmp_path, talker_state):
    keys = sorted(talker_state)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, part in shards.items():
        save_file({k: talker_state[k].contiguous() for k in part}, str(tmp_path / name))
    index = {"weight_map": {k: name for name, part in shards.items() for k in part}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    tensors, origin = read_safetensors(tmp_path)
    assert set(tensors) == set(talker_state) and origin[keys[-1]].endswith("00002-of-00002.safetensors")
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="00002-of-00002.safetensors: cannot read"):
        read_safetensors(tmp_path)
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        read_safetensors(tmp_path / "speech_tokenizer")


def test_resolve_errors(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        resolve_checkpoint(tmp_path / "absent")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="Qwen/Qwen3-TTS-12Hz-0.6B-Base.*local folder"):
        resolve_checkpoint("Qwen/Qwen3-TTS-12Hz-0.6B-Base")
