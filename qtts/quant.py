"""Weight-only int8 quantization of the talker's and code predictor's linear layers (opt-in).

Each quantized layer keeps ``weight_int8 [out, in]`` (int8) and one scale per output channel
(``scales [out]``, symmetric: ``scale = max|w_row| / 127``, rounded *up* to a bfloat16 value so the scales
are exact in the kernel's dtype and no weight clips). Two ways to multiply, both PyTorch's own kernels:

* ``int8pack``: ``torch._weight_int8pack_mm``; activations are rounded to bfloat16 for the product (its fast
  form needs bfloat16 activations and scales) and the result is cast back to the input dtype;
* ``dequant``: ``linear(x, weight_int8.to(x.dtype)) * scales``, exact in ``x.dtype``.

``auto`` (the default) takes ``int8pack`` on CPU, where it reads a quarter of float32's bytes and was the
fastest path measured, and ``dequant`` on CUDA, where torch 2.11's int8pack kernel was 2.5-6x slower than a
bfloat16 matmul for one row on an H200 and the dequant path ~2-3x slower (int8 on a GPU saves memory, not
time). See ``bench/quant.py`` and BENCHMARKS.md.

What ``quantize_int8_`` replaces: every ``nn.Linear`` inside the talker's decoder layers (q/k/v/o and the
SwiGLU gate/up/down projections) and inside the code predictor (its decoder layers, its 15 ``lm_head`` s and,
at 1.7B, ``small_to_mtp_projection``): the weights streamed on every frame. Kept in full precision: the
talker's ``codec_head`` (code-0 logits; ~0.2 % of the per-frame weights, and the engine reads its
``weight`` for the model's device and dtype), ``text_projection`` (run once per request, not per frame),
all embeddings and norms, the speaker encoder and the codec.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError

QUANTIZE_MODES = ("none", "int8")
KERNELS = ("auto", "int8pack", "dequant")
# On CPU, "auto" leaves matrices smaller than this to the dequant path: they stay in cache, and the int8pack
# kernel splits even tiny products across all threads (a 64x128 product took 16 ms instead of 14 µs with
# 2 threads on a busy 2-core machine). Every quantized layer of the released shapes has >= 1M weights.
CPU_MIN_INT8PACK_WEIGHTS = 1 << 18

# (device type, device index, in_features, out_features) -> whether the int8pack kernel passed its check.
_PROBED: dict[tuple[str, int | None, int, int], bool] = {}


def parse_quantize(value: object) -> str | None:
    """Validate a ``quantize`` option: ``None`` / ``"none"`` -> ``None``; ``"int8"`` -> ``"int8"``."""
    if value is None or value == "none":
        return None
    if value == "int8":
        return "int8"
    raise InputError(f"unknown quantize mode {value!r}; valid: {', '.join(QUANTIZE_MODES)}")


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 quantization of ``weight [out, in]``.

    Returns ``(q [out, in] int8, scales [out] bfloat16)`` with ``weight ~= q * scales[:, None]``; each scale
    is ``max|row| / 127`` rounded up to the next bfloat16 value (so ``|q| <= 127`` and the round-trip error of
    an element is at most half a scale). All-zero rows get scale 1 and zero codes.
    """
    if weight.dim() != 2:
        raise InputError(f"quantize_weight needs a 2-D weight, got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    exact = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    scales = exact.to(torch.bfloat16)
    low = scales.float() < exact  # rounded down: bump to the next bfloat16 value so nothing clips
    scales = torch.where(low, torch.nextafter(scales, torch.full_like(scales, float("inf"))), scales)
    q = torch.round(w / scales.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scales.contiguous()


def dequantize_weight(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``q [out, in]`` int8 and ``scales [out]`` -> ``[out, in]`` in ``dtype`` (computed in float32)."""
    return (q.float() * scales.float()[:, None]).to(dtype)


def _aligned(t: torch.Tensor) -> bool:
    return t.is_contiguous() and t.data_ptr() % 64 == 0


class Int8Linear(nn.Module):
    """``y = x @ (weight_int8 * scales[:, None]).T + bias``; ``x [..., in]`` -> ``[..., out]`` in ``x.dtype``.

    ``kernel``: ``auto`` (on CPU, the int8pack kernel for matrices of at least ``CPU_MIN_INT8PACK_WEIGHTS``
    weights where it is available and passed its check; else, and on CUDA, dequant), ``int8pack`` (require
    it) or ``dequant`` (always the fallback).
    """

    def __init__(self, weight_int8: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None,
                 kernel: str = "auto") -> None:
        super().__init__()
        if weight_int8.dtype != torch.int8 or weight_int8.dim() != 2:
            raise InputError(f"weight_int8 must be a 2-D int8 tensor, got {weight_int8.dtype} "
                             f"{tuple(weight_int8.shape)}")
        if scales.shape != (weight_int8.shape[0],):
            raise InputError(f"scales must have shape ({weight_int8.shape[0]},), got {tuple(scales.shape)}")
        if kernel not in KERNELS:
            raise InputError(f"unknown int8 kernel {kernel!r}; valid: {', '.join(KERNELS)}")
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8.contiguous())
        self.register_buffer("scales", scales.to(torch.bfloat16).contiguous())
        self.bias = nn.Parameter(bias.detach(), requires_grad=False) if bias is not None else None
        self.kernel = kernel
        self._fast: bool | None = None  # resolved on first use per device (reset when the module moves)

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: str = "auto") -> Int8Linear:
        """Quantize ``linear`` (any float dtype, any device); the result lives on the same device."""
        q, scales = quantize_weight(linear.weight)
        return cls(q, scales, linear.bias, kernel)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, kernel={self.kernel}")

    def _apply(self, *args, **kwargs):  # type: ignore[override]
        self._fast = None  # .to() / .cuda(): the kernel check is per device
        return super()._apply(*args, **kwargs)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The effective weight ``[out, in]`` in ``dtype``."""
        return dequantize_weight(self.weight_int8, self.scales, dtype)

    def uses_int8pack(self) -> bool:
        """Whether forward runs ``torch._weight_int8pack_mm`` on the current device."""
        if self._fast is None:
            self._resolve()
        return self._fast

    @torch.compiler.disable  # the probe reads data pointers and values: run eagerly even inside a compiled region
    def _resolve(self) -> None:
        if self._fast is None:
            w = self.weight_int8
            big_cpu = w.is_cpu and w.numel() >= CPU_MIN_INT8PACK_WEIGHTS
            wanted = self.kernel == "int8pack" or (self.kernel == "auto" and big_cpu)
            self._fast = wanted and _int8pack_ok(self.weight_int8, self.scales)
            if self.kernel == "int8pack" and not self._fast:
                raise InputError(f"torch._weight_int8pack_mm is unavailable for {self.in_features}->"
                                 f"{self.out_features} on {self.weight_int8.device}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] > 0 and self.uses_int8pack():
            y = _int8pack_product(x2, self.weight_int8, self.scales)
        else:
            y = _dequant_product(x2, self.weight_int8, self.scales)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)


def _dequant_product(x2: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return F.linear(x2, q.to(x2.dtype)) * scales.to(x2.dtype)


# The CPU kernel reads rows with aligned vector loads (a misaligned row crashes the process), and alignment is a
# data-pointer check that a compiled region cannot trace. As a custom operator the product is one opaque node
# of the graph (its check runs when the node runs), so prefill and batch paths compile without a graph break.
@torch.library.custom_op("qtts::int8pack_product", mutates_args=())
def _int8pack_product(x2: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``x2 [R, in]`` times int8 ``q [out, in]`` with bfloat16 ``scales [out]`` -> ``[R, out]`` in
    ``x2.dtype``, through ``torch._weight_int8pack_mm`` (bfloat16 activations), else dequantized."""
    xb = x2.to(torch.bfloat16)
    if not _aligned(xb):
        xb = xb.clone(memory_format=torch.contiguous_format)
    if not _aligned(xb):
        return _dequant_product(x2, q, scales)
    return torch._weight_int8pack_mm(xb, q, scales).to(x2.dtype)


@_int8pack_product.register_fake
def _(x2: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return x2.new_empty(x2.shape[0], q.shape[0])


def _int8pack_ok(q: torch.Tensor, scales: torch.Tensor) -> bool:
    """Whether ``torch._weight_int8pack_mm`` runs and is right for this weight's shape and device.

    Shapes are screened first: the CPU kernel needs ``in_features % 16 == 0`` (other widths crash or give
    wrong numbers in torch 2.13), so those never reach it. Then one small product is checked against the
    dequantized matmul (once per device and shape).
    """
    if not hasattr(torch, "_weight_int8pack_mm") or q.device.type not in ("cpu", "cuda"):
        return False
    out_f, in_f = q.shape
    if in_f % 16 or not _aligned(q) or not _aligned(scales) or scales.dtype != torch.bfloat16:
        return False
    key = (q.device.type, q.device.index, in_f, out_f)
    if key not in _PROBED:
        rows = 3
        x = torch.sin(torch.arange(rows * in_f, device=q.device, dtype=torch.float32) * 0.37).view(rows, in_f)
        x = x.to(torch.bfloat16)
        ref = F.linear(x.float(), q.float()) * scales.float()
        try:
            got = torch._weight_int8pack_mm(x, q, scales).float()
            ok = bool(((got - ref).norm() <= 1e-2 * ref.norm() + 1e-6).item())
        except (RuntimeError, NotImplementedError):
            ok = False
        _PROBED[key] = ok
    return _PROBED[key]


@dataclasses.dataclass(frozen=True)
class QuantSummary:
    """What ``quantize_int8_`` did: replaced layers, their weight count, and their weight bytes before/after
    (after = int8 codes + scales; biases are unchanged and not counted)."""

    layers: int
    params: int
    bytes_before: int
    bytes_after: int
    int8pack_layers: int

    def __str__(self) -> str:
        mib = 1 << 20
        return (f"int8: {self.layers} linear layers, {self.params / 1e6:.1f}M weights, "
                f"{self.bytes_before / mib:.1f} MiB -> {self.bytes_after / mib:.1f} MiB "
                f"({self.int8pack_layers} on torch._weight_int8pack_mm, the rest dequantize)")


def _quantizable(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """``(parent, attribute, linear)`` for each layer to quantize (see the module docstring)."""
    talker = getattr(model, "talker", model)
    if not hasattr(talker, "code_predictor") or not hasattr(talker, "model"):
        raise InputError(f"quantize_int8_ needs a TTSModel or Talker, got {type(model).__name__}")
    found = []
    for root in (talker.model.layers, talker.code_predictor):
        for parent in root.modules():
            for name, child in parent.named_children():
                if type(child) is nn.Linear:
                    found.append((parent, name, child))
    return found


@torch.no_grad()
def quantize_int8_(model: nn.Module, kernel: str = "auto") -> QuantSummary:
    """Replace, in place, the talker/predictor ``nn.Linear`` s of ``model`` (a ``TTSModel`` or ``Talker``)
    with ``Int8Linear``. Layers already quantized are left alone (a second call replaces nothing)."""
    layers = params = before = after = fast = 0
    for parent, name, linear in _quantizable(model):
        q = Int8Linear.from_linear(linear, kernel)
        setattr(parent, name, q)
        layers += 1
        params += linear.weight.numel()
        before += linear.weight.numel() * linear.weight.element_size()
        after += q.weight_int8.numel() + q.scales.numel() * q.scales.element_size()
        fast += q.uses_int8pack()
    return QuantSummary(layers, params, before, after, fast)


def module_bytes(module: nn.Module) -> int:
    """Bytes held by ``module`` 's parameters and buffers."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
