"""End-to-end parity with the official ``qwen-tts`` package on tiny random checkpoints.

Both sides load the same checkpoint folder. With greedy decoding the generated codes must be identical
for every mode, and the decoded audio must match to 1e-4 (float32). Random weights make near-ties
possible; if codes differ, the test reports the first differing frame and the official logits' gap there
so a tie can be told from a bug (none occur at these seeds).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from qtts import Clone, Design, Sampling, Speaker, SynthesisOptions
from qtts.api import TTS

from .reference import require_reference

MAX_NEW = 24
TEXT = "Hello world, this is a parity test."
REF_TEXT = "Good morning to all of you."
OPTS = {"do_sample": False, "subtalker_dosample": False, "max_new_tokens": MAX_NEW}


def _official(folder: Path):
    require_reference()
    from qwen_tts import Qwen3TTSModel

    return Qwen3TTSModel.from_pretrained(str(folder), dtype=torch.float32)


def _ours(tts: TTS, text, voice, language, nsm) -> tuple[torch.Tensor, np.ndarray]:
    opts = SynthesisOptions(sampling=Sampling.greedy(), max_new_tokens=MAX_NEW, non_streaming_mode=nsm)
    result = tts.synthesize(text, voice=voice, language=language, options=opts)
    return result.codes, result.audio


def _official_codes_and_audio(ref, method: str, **kwargs) -> tuple[torch.Tensor, np.ndarray]:
    captured = {}
    original = ref.model.generate

    def spy(*a, **k):
        codes, hidden = original(*a, **k)
        captured["codes"] = codes
        return codes, hidden

    ref.model.generate = spy
    try:
        wavs, sr = getattr(ref, method)(**kwargs, **OPTS)
    finally:
        ref.model.generate = original
    assert sr == 24000
    return captured["codes"][0].cpu(), wavs[0]


def _compare(ours: tuple[torch.Tensor, np.ndarray], theirs: tuple[torch.Tensor, np.ndarray]) -> None:
    (codes, audio), (ref_codes, ref_audio) = ours, theirs
    assert codes.shape[0] > 2, "too few frames to compare"
    if codes.shape != ref_codes.shape or not torch.equal(codes, ref_codes):
        n = min(len(codes), len(ref_codes))
        diff = (codes[:n] != ref_codes[:n]).nonzero()
        pytest.fail(f"codes differ: ours {tuple(codes.shape)} vs official {tuple(ref_codes.shape)}; "
                    f"first difference (frame, group) {diff[0].tolist() if len(diff) else 'length'}")
    n = min(len(audio), len(ref_audio))
    assert abs(len(audio) - len(ref_audio)) <= 1  # the official trims ICL references proportionally
    assert np.abs(audio[:n] - ref_audio[:n]).max() <= 1e-4


@pytest.fixture(scope="module")
def official(tiny_checkpoints, tokenizer_dir):
    # The official prompt builder slices the chat template at fixed token offsets, which only holds for the
    # real Qwen vocabulary (the byte-level fallback tokenizer splits "assistant" into 9 tokens).
    return {kind: _official(path) for kind, path in tiny_checkpoints.items()}


@pytest.mark.reference
@pytest.mark.parametrize(("speaker", "language", "nsm"), [
    ("vivian", "english", True), ("Ryan", "auto", True), ("eric", "auto", True), ("dylan", "chinese", False),
    ("aiden", "english", False),
])
def test_custom_voice(tiny_tts, official, speaker, language, nsm):
    ours = _ours(tiny_tts["custom_voice"], TEXT, Speaker(speaker), language, nsm)
    theirs = _official_codes_and_audio(official["custom_voice"], "generate_custom_voice", text=TEXT,
                                       speaker=speaker, language=language, non_streaming_mode=nsm)
    _compare(ours, theirs)


@pytest.mark.reference
@pytest.mark.parametrize(("language", "nsm"), [("english", True), ("auto", False)])
def test_voice_design(tiny_tts, official, language, nsm):
    desc = "A calm, deep male voice."
    ours = _ours(tiny_tts["voice_design"], TEXT, Design(desc), language, nsm)
    theirs = _official_codes_and_audio(official["voice_design"], "generate_voice_design", text=TEXT,
                                       instruct=desc, language=language, non_streaming_mode=nsm)
    _compare(ours, theirs)


@pytest.mark.reference
def test_custom_voice_instruct_1b7(tiny_checkpoints, tokenizer_dir, tmp_path):
    """Instructions reach CustomVoice prompts of 1.7B checkpoints (0.6B ones drop them)."""
    folder = tmp_path / "cv17"
    shutil.copytree(tiny_checkpoints["custom_voice"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "tts_model_size": "1b7"}))
    ours = _ours(TTS.from_pretrained(folder, device="cpu"), TEXT, Speaker("serena", "Speak very slowly."),
                 "english", True)
    theirs = _official_codes_and_audio(_official(folder), "generate_custom_voice", text=TEXT, speaker="serena",
                                       language="english", instruct="Speak very slowly.")
    _compare(ours, theirs)


def _reference_audio(seconds: float = 1.3) -> tuple[np.ndarray, int]:
    t = np.arange(int(24000 * seconds)) / 24000
    rng = np.random.default_rng(0)
    wav = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(t.size)
    return wav.astype(np.float32), 24000


@pytest.mark.reference
@pytest.mark.parametrize(("x_vector_only", "nsm", "language"), [
    (False, False, "english"), (False, True, "auto"), (True, False, "auto"), (True, True, "english"),
])
def test_voice_clone(tiny_tts, official, x_vector_only, nsm, language):
    ref_audio = _reference_audio()
    voice = Clone(ref_audio, None if x_vector_only else REF_TEXT, x_vector_only=x_vector_only)
    ours = _ours(tiny_tts["base"], TEXT, voice, language, nsm)
    theirs = _official_codes_and_audio(
        official["base"], "generate_voice_clone", text=TEXT, language=language, ref_audio=ref_audio,
        ref_text=None if x_vector_only else REF_TEXT, x_vector_only_mode=x_vector_only, non_streaming_mode=nsm)
    _compare(ours, theirs)


@pytest.mark.reference
def test_clone_prompt_matches_official(tiny_tts, official):
    ref_audio = _reference_audio()
    ours = tiny_tts["base"].create_clone_prompt(ref_audio, REF_TEXT)
    item = official["base"].create_voice_clone_prompt(ref_audio=ref_audio, ref_text=REF_TEXT)[0]
    assert torch.equal(ours.ref_codes, item.ref_code.cpu())
    assert torch.allclose(ours.speaker_embedding, item.ref_spk_embedding.float().cpu(), atol=1e-4)
