"""Access to the official ``qwen-tts`` package, used only as a test reference.

Its ``qwen_tts.core`` import pulls in modules for the unreleased 25 Hz codec (``torchaudio``, ``sox``,
``onnxruntime``); they are stubbed here so the 12 Hz code imports. Tests that need the reference call
``require_reference()`` which skips cleanly when the package is not installed.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

import pytest

_STUBS = ("torchaudio", "torchaudio.compliance", "torchaudio.compliance.kaldi", "sox", "onnxruntime")


def _install_stubs() -> None:
    for name in _STUBS:
        if name in sys.modules:
            continue
        top = name.split(".")[0]
        if top not in sys.modules and importlib.util.find_spec(top) is not None:
            continue  # the real package is installed
        mod = types.ModuleType(name)
        mod.__path__ = []  # type: ignore[attr-defined]
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        sys.modules[name] = mod
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, mod)


def require_reference() -> types.ModuleType:
    """Import and return ``qwen_tts`` (with stubs), or skip the test if it is not installed."""
    if importlib.util.find_spec("qwen_tts") is None or importlib.util.find_spec("transformers") is None:
        pytest.skip("official qwen-tts package not installed (pip install --no-deps qwen-tts==0.1.1)")
    _install_stubs()
    import qwen_tts

    return qwen_tts
