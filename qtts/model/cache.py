"""Static, preallocated KV caches written in place at explicit positions (no hidden counters).

One ``KVCache`` holds every layer of one transformer for a batch of ``B`` slots: keys and values of
shape ``[L, B, H_kv, S_max, D]``. Each batch row (slot) is an independent stream with its own positions;
a slot is reused simply by writing from position 0 again — attention masks never look past a row's
current position, so stale entries are never read.
"""

from __future__ import annotations

import torch


class LayerCache:
    """View of one layer of a ``KVCache``: ``k``/``v`` ``[B, H_kv, S_max, D]``."""

    __slots__ = ("k", "v")

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k, self.v = k, v

    def write(self, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor, span: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``/``v`` ``[B, H_kv, S, D]`` at ``positions [B, S]``; return the first ``span`` slots of
        keys and values, ``[B, H_kv, span, D]`` each."""
        B, H, S, D = k.shape
        if torch.compiler.is_compiling():
            # Inside a compiled region inductor writes ``index_put_`` in place, while a ``scatter_`` into the
            # cache (a graph input) copied the whole cache every call: 16 MiB per talker layer at 2048 slots in
            # float32, +2 ms per layer on CPU. Eagerly ``scatter_`` needs no index tensors (no allocation).
            rows = torch.arange(B, device=k.device)[:, None, None]
            heads = torch.arange(H, device=k.device)[None, :, None]
            index = (rows, heads, positions[:, None, :])  # [B, H, S] after broadcasting
            self.k.index_put_(index, k.to(self.k.dtype))
            self.v.index_put_(index, v.to(self.v.dtype))
        else:
            index = positions[:, None, :, None].expand(B, H, S, D)
            self.k.scatter_(2, index, k.to(self.k.dtype))
            self.v.scatter_(2, index, v.to(self.v.dtype))
        return self.k[:, :, :span], self.v[:, :, :span]


class KVCache:
    """Keys and values of all layers: ``[L, B, H_kv, S_max, D]`` each, allocated once."""

    def __init__(self, layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 device: torch.device | str, dtype: torch.dtype) -> None:
        shape = (layers, batch, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.layers = [LayerCache(self.k[i], self.v[i]) for i in range(layers)]

    def grow(self, max_len: int) -> None:
        """Reallocate to ``max_len`` slots per row (keeping contents); views from ``rows()`` go stale."""
        if max_len <= self.max_len:
            return
        pad = max_len - self.max_len
        self.k = torch.nn.functional.pad(self.k, (0, 0, 0, pad))
        self.v = torch.nn.functional.pad(self.v, (0, 0, 0, pad))
        self.layers = [LayerCache(self.k[i], self.v[i]) for i in range(self.k.shape[0])]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    def head(self, n: int) -> KVCache:
        """A view of rows ``0..n-1`` (shares storage; a later ``grow`` of this cache detaches it)."""
        view = object.__new__(KVCache)
        view.k, view.v = self.k[:, :n], self.v[:, :n]
        view.layers = [LayerCache(view.k[i], view.v[i]) for i in range(view.k.shape[0])]
        return view

    def rows(self, index: slice) -> list[LayerCache]:
        """Per-layer views of batch rows ``index`` (views, so writes land in this cache)."""
        return [LayerCache(layer.k[index], layer.v[index]) for layer in self.layers]


def causal_mask(positions: torch.Tensor, span: int) -> torch.Tensor:
    """Attention mask ``[B, 1, S, span]``: query at position p may attend cache slots ``0..p``."""
    slots = torch.arange(span, device=positions.device)
    return (slots[None, None, None, :] <= positions[:, None, :, None])
