"""Checkpoint location and strict weight loading: the only module that touches paths and the Hub.

Modules are built without running their random initialisers, then safetensors tensors (single file or
sharded with an index) are assigned strictly: a missing, unexpected or mis-shaped tensor is a
``CheckpointError`` naming the file and the key.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from .errors import CheckpointError

M = TypeVar("M", bound=nn.Module)

_INIT_FNS = ("uniform_", "normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
             "xavier_normal_", "trunc_normal_", "ones_", "zeros_", "constant_", "orthogonal_")


@contextlib.contextmanager
def no_init() -> Iterator[None]:
    """Skip ``torch.nn.init`` initialisers while building modules whose weights are loaded right after."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FNS}
    try:
        for name in _INIT_FNS:
            setattr(nn.init, name, lambda tensor, *a, **k: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def resolve_checkpoint(path_or_id: str | Path, allow_download: bool = True) -> Path:
    """A local checkpoint folder, or a Hugging Face repo id downloaded through ``huggingface_hub``."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_id)
    looks_like_repo = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.exists()
    if not looks_like_repo or not allow_download:
        raise CheckpointError(f"{text}: no such checkpoint folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=text))
    except Exception as e:  # offline, unknown repo, auth: all end the same way for the user
        raise CheckpointError(
            f"could not download Hugging Face repo '{text}' ({type(e).__name__}: {e}). "
            f"If the files are already on disk, pass the local folder instead, e.g. "
            f"TTS.from_pretrained('/path/to/{text.split('/')[-1]}') or `--model /path/to/folder`."
        ) from None


def read_safetensors(folder: Path, stem: str = "model") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of ``{stem}.safetensors`` or the shards listed in ``{stem}.safetensors.index.json``.

    Returns ``(tensors, origin)`` where ``origin[key]`` is the file a tensor came from (for errors).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        raise CheckpointError(f"{folder}: no {single.name} (or sharded {index.name}) found")
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for f in files:
        try:
            part = load_file(str(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{f}: cannot read safetensors file ({e})") from None
        for key, value in part.items():
            if key in tensors:
                raise CheckpointError(f"{f}: tensor '{key}' also appears in {origin[key]}")
            tensors[key] = value
            origin[key] = str(f)
    return tensors, origin


def load_strict(module: nn.Module, tensors: dict[str, torch.Tensor], where: str,
                dtype: torch.dtype | None = None, prefix: str = "") -> None:
    """Assign ``tensors`` (keys ``prefix`` + module key) to ``module`` after checking names and shapes.

    Floating tensors are cast to ``dtype`` (if given); errors name ``where`` and the key.
    """
    expected = module.state_dict()
    given = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing:
        raise CheckpointError(f"{where}: missing tensor '{prefix}{missing[0]}' ({len(missing)} missing in all)")
    if unexpected:
        raise CheckpointError(f"{where}: unexpected tensor '{prefix}{unexpected[0]}' ({len(unexpected)} in all)")
    for key, ref in expected.items():
        if tuple(given[key].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{where}: tensor '{prefix}{key}' has shape {tuple(given[key].shape)}, expected {tuple(ref.shape)}"
            )
        value = given[key]
        if value.is_floating_point() and dtype is not None:
            value = value.to(dtype)
        elif value.dtype != ref.dtype and not value.is_floating_point():
            value = value.to(ref.dtype)
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{where}: tensor '{prefix}{key}' contains NaN or infinite values")
        given[key] = value
    module.load_state_dict(given, strict=True, assign=True)


def build_and_load(factory: Callable[[], M], tensors: dict[str, torch.Tensor], where: str,
                   dtype: torch.dtype, device: torch.device | str, prefix: str = "") -> M:
    """Build ``factory()`` without initialisers, load ``tensors`` strictly, move to ``device``."""
    with no_init():
        module = factory()
    load_strict(module, tensors, where, dtype=dtype, prefix=prefix)
    return module.to(device).eval()
