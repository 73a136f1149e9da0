"""CPU linear layers with their weights prepacked for oneDNN (opt-in: ``tts.accelerate(packed=True)``).

torch's CPU ``linear`` hands a bfloat16 weight to oneDNN in the plain ``[out, in]`` layout, which oneDNN
reorders into its blocked layout at every call; float32 goes to MKL, whose products of a few rows are slow on
the development machine's AMD CPU. Reordered once (``torch.ops.mkldnn._reorder_linear_weight``, what
inductor's ``freezing`` does) and multiplied with ``torch.ops.mkldnn._linear_pointwise``:

* bfloat16: bit for bit torch's ``linear`` (tested: rows 1-128, with and without bias), 1.1-1.5x faster per
  product on the development machine, so an eager bfloat16 frame step ran 1.2x and 8 batched streams 1.3x
  faster (BENCHMARKS.md);
* float32: oneDNN's sums instead of MKL's, so the last bits differ (~1e-6 relative, as with ``row-kernels``)
  and greedy codes can part from the eager reference at near-ties; 2-16 rows ran 2-3x faster, an eager frame
  1.4x and 8 batched streams 2.5x.

The packed copy is opaque to ``torch.compile``, so products go through a custom operator,
``qtts::packed_linear(x, weight, bias)``, that finds the packed copy from the plain weight (a registry keyed by
the weight's address; the plain weight stays the layer's parameter and a graph input, so one compiled graph
still serves every layer of a shape). Costs: a second copy of each packed weight in memory. A weight changed
in place after packing (its version counter moved) or freed is not used packed: such products fall back to
``linear``. ``int8`` layers are not packed, and bfloat16 layers only where oneDNN has bfloat16 kernels for the CPU
(AVX-512 BW/VL/DQ or AVX-NE-CONVERT: ``dtypes()``; an AVX2-only CPU such as AMD's Zen 3 keeps them on ``linear``).
"""

from __future__ import annotations

import threading
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import nn

# Batch size oneDNN is told to expect when reordering (inductor passes the traced one). In ``bench/packed.py`` the
# layout chosen for 8 rows ran 1 to 128 bfloat16 rows within 7 % of a layout made for each row count (float32:
# within 4 %, but one row 16 % slower).
PACK_ROWS = 8
# Smaller matrices stay in cache, where the reorder buys little (as ``qtts.gemv.MIN_WEIGHTS``).
MIN_WEIGHTS = 1 << 18
DTYPES = (torch.bfloat16, torch.float32)


class _Entry:
    __slots__ = ("ref", "version", "shape", "stride", "dtype", "packed")

    def __init__(self, weight: torch.Tensor, packed: torch.Tensor, on_free) -> None:
        self.ref = weakref.ref(weight, on_free)
        self.version = weight._version
        self.shape, self.stride, self.dtype = weight.shape, weight.stride(), weight.dtype
        self.packed = packed

    def serves(self, weight: torch.Tensor) -> bool:
        """Whether this entry's packed copy holds ``weight`` 's current values. While the packed weight lives, no
        other storage can start at its address, so a tensor found at that address with the same shape, strides,
        dtype and version is a view of the same, unchanged values."""
        return (self.ref() is not None and weight._version == self.version and weight.shape == self.shape
                and weight.stride() == self.stride and weight.dtype == self.dtype)


_PACKED: dict[int, _Entry] = {}
_LOCK = threading.Lock()


def available() -> bool:
    """Whether this torch build has oneDNN's CPU linear kernels."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _entry(weight: torch.Tensor) -> _Entry | None:
    entry = _PACKED.get(weight.data_ptr())
    return entry if entry is not None and entry.serves(weight) else None


def is_packed(layer: nn.Module) -> bool:
    """Whether ``layer`` 's products run on a packed copy of its weight."""
    weight = getattr(layer, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.device.type == "cpu" and _entry(weight) is not None


def dtypes() -> tuple[torch.dtype, ...]:
    """The weight dtypes this CPU packs: ``DTYPES``, less bfloat16 where oneDNN has no bfloat16 kernels for it
    (its reorder refuses without AVX-512 BW/VL/DQ or AVX-NE-CONVERT)."""
    bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return tuple(d for d in DTYPES if d != torch.bfloat16 or (bf16 is not None and bf16()))


def _packable(layer: nn.Module) -> bool:
    """Whether ``layer`` is worth packing where oneDNN has kernels for its weight's dtype (``DTYPES``)."""
    w = layer.weight
    return (type(layer) is nn.Linear and w.device.type == "cpu" and w.dtype in DTYPES and w.numel() >= MIN_WEIGHTS
            and w.is_contiguous())


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``linear(x, weight, bias)``, on the packed copy of ``weight`` when there is a current one."""
    entry = _entry(weight) if x.device.type == "cpu" and x.dtype == weight.dtype and x.numel() else None
    if entry is None:
        return F.linear(x, weight, bias)
    rows = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    y = torch.ops.mkldnn._linear_pointwise(rows.contiguous(), entry.packed, bias, "none", [], "")
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], weight.shape[0])


# The operator compiled regions call (an external call in the graph), registered at the dispatcher level: ~3 µs
# per call where ``torch.library.custom_op`` 's wrapper took ~20 (a frame step makes ~720 products).
_LIBRARY = torch.library.Library("qtts", "DEF")
_LIBRARY.define("packed_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
_LIBRARY.impl("packed_linear", _product, "CPU")


@torch.library.register_fake("qtts::packed_linear")
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.nn.functional.linear`` that uses the packed copy of ``weight`` if it has one: ``x [..., in]``,
    ``weight [out, in]`` -> ``[..., out]``. Inside ``torch.compile`` it is the custom operator (an external
    call in the compiled graph); eagerly a plain call."""
    if torch.compiler.is_compiling():
        return torch.ops.qtts.packed_linear(x, weight, bias)
    return _product(x, weight, bias)


def _forget(key: int):
    def on_free(_ref: weakref.ref) -> None:
        with _LOCK:
            entry = _PACKED.get(key)
            if entry is not None and entry.ref() is None:
                del _PACKED[key]
    return on_free


@torch.no_grad()
def pack_linear_weights_(module: nn.Module, enabled: bool = True) -> int:
    """Pack (``enabled``) or unpack the weights of every CPU ``nn.Linear`` under ``module`` (float32, or bfloat16
    where the CPU has oneDNN's bfloat16 kernels: ``dtypes()``, with a warning where it has not; at least
    ``MIN_WEIGHTS`` elements) and route their products through ``linear`` (``qtts.gemv`` installs the forward: row
    kernels, when on, keep their few-row products). Returns the number of layers switched. Without oneDNN nothing
    is packed."""
    from .gemv import sync_forward_

    count, unsupported, supported = 0, 0, dtypes()
    for layer in module.modules():
        if not isinstance(layer, nn.Linear):
            continue
        packable = enabled and _packable(layer) and available()
        if packable and layer.weight.dtype not in supported:
            unsupported += 1
        elif packable and not is_packed(layer):
            weight = layer.weight
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS)
            with _LOCK:
                _PACKED[weight.data_ptr()] = _Entry(weight, packed, _forget(weight.data_ptr()))
            count += 1
        elif not enabled and is_packed(layer):
            with _LOCK:
                _PACKED.pop(layer.weight.data_ptr(), None)
            count += 1
        sync_forward_(layer)
    if unsupported:
        warnings.warn(f"packed: {unsupported} bfloat16 linear layers keep torch's linear: oneDNN has no bfloat16 "
                      "kernels for this CPU (they need AVX-512 BW/VL/DQ or AVX-NE-CONVERT)", stacklevel=3)
    return count


def packed_bytes() -> int:
    """Bytes of the weights held packed in this process (the extra memory ``packed`` costs)."""
    with _LOCK:
        return sum(e.packed.numel() * e.packed.element_size() for e in _PACKED.values() if e.ref() is not None)
