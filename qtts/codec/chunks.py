"""Decoding a stream's next chunk of frames: eagerly, or on fixed buffers replayed as CUDA graphs.

The runner decodes each stream's chunk with its own :class:`~qtts.codec.decoder.DecoderState` (batch 1).
``ChunkDecoder`` simply calls ``CodecDecoder.decode_step``. ``StaticChunkDecoder`` runs the same computation
on buffers whose addresses never change, so that on CUDA each chunk size can be captured once as a CUDA
graph and replayed (the decoder is ~200 small kernels per call; replaying removes their launch cost):

* one working state (batch 1) and one code buffer ``[1, 16, t]`` per captured size ``t`` (1, 2, 4, ... up
  to ``largest``);
* a call copies the stream's state into the working state, decodes the chunk as pieces of captured sizes
  (largest first: 5 frames = 4 + 1), and copies the working state back. Streaming decode gives the same
  samples however a sequence is cut into chunks, so the pieces change nothing.

The decode step has no host synchronisation and updates its state in place (see ``codec/streaming.py``),
which is what makes it capturable. Without ``graphs`` the static decoder runs the pieces eagerly on the
same buffers (how the CPU tests check the buffer logic).
"""

from __future__ import annotations

import dataclasses
import time

import torch

from .decoder import CodecDecoder, DecoderState
from .streaming import State


def state_tensors(state: object) -> list[torch.Tensor]:
    """Every tensor of a streaming state, in a fixed order (dataclass fields, lists, nested states)."""
    out: list[torch.Tensor] = []

    def walk(value: object) -> None:
        if isinstance(value, torch.Tensor):
            out.append(value)
        elif isinstance(value, State):
            for field in dataclasses.fields(value):
                walk(getattr(value, field.name))
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(state)
    return out


class ChunkDecoder:
    """Eager chunk decode: ``codes [1, 16, t]`` (int64, on the codec's device) with the stream's ``state``
    -> pcm ``[1, 1, 1920 * t]``; ``state`` is updated in place."""

    graphs = False

    def __init__(self, decoder: CodecDecoder) -> None:
        self.decoder = decoder
        self.capture_seconds = 0.0

    @torch.no_grad()
    def __call__(self, codes: torch.Tensor, state: DecoderState) -> torch.Tensor:
        return self.decoder.decode_step(codes, state)


class StaticChunkDecoder(ChunkDecoder):
    """Chunk decode on fixed buffers, one piece size at a time; with ``graphs`` (CUDA) each piece size is a
    CUDA graph captured on first use and replayed afterwards. ``largest``: the largest piece (a power of 2)."""

    def __init__(self, decoder: CodecDecoder, graphs: bool = False, largest: int = 8) -> None:
        super().__init__(decoder)
        if largest < 1 or largest & (largest - 1):
            raise ValueError(f"largest must be a power of 2, got {largest}")
        p = next(decoder.parameters())
        if graphs and p.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the codec on a CUDA device, not {p.device.type}")
        self.graphs = graphs
        self.sizes = [1 << i for i in range(largest.bit_length() - 1, -1, -1)]  # largest first
        self.work = decoder.init_state(1)
        self._work = state_tensors(self.work)
        groups = decoder.cfg.num_quantizers
        self.codes = {t: torch.zeros(1, groups, t, dtype=torch.long, device=p.device) for t in self.sizes}
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def pieces(self, frames: int) -> list[int]:
        """Piece sizes for a chunk of ``frames`` frames (largest first; sums to ``frames``)."""
        out = []
        for t in self.sizes:
            while frames >= t:
                out.append(t)
                frames -= t
        return out

    @torch.no_grad()
    def __call__(self, codes: torch.Tensor, state: DecoderState) -> torch.Tensor:
        theirs = state_tensors(state)
        torch._foreach_copy_(self._work, theirs)
        outs, start = [], 0
        for t in self.pieces(codes.shape[-1]):
            self.codes[t].copy_(codes[..., start:start + t])
            start += t
            outs.append(self._run(t).clone())
        torch._foreach_copy_(theirs, self._work)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    def _run(self, t: int) -> torch.Tensor:
        if not self.graphs:
            return self.decoder.decode_step(self.codes[t], self.work)
        entry = self._graphs.get(t)
        if entry is None:
            entry = self._capture(t)
            self._graphs[t] = entry
        graph, out = entry
        graph.replay()
        return out

    def _capture(self, t: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Warm up and capture the decode of a ``t``-frame piece; the working state is restored afterwards
        (warm-up and capture both run the step once)."""
        t0 = time.perf_counter()
        saved = [x.clone() for x in self._work]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.decoder.decode_step(self.codes[t], self.work)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = self.decoder.decode_step(self.codes[t], self.work)
        torch._foreach_copy_(self._work, saved)
        torch.cuda.synchronize()
        self.capture_seconds += time.perf_counter() - t0
        return graph, out


def make_chunk_decoder(decoder: CodecDecoder, cuda_graphs: bool) -> ChunkDecoder:
    """The chunk decoder for a runner: graphed when ``cuda_graphs`` (CUDA only), else eager."""
    return StaticChunkDecoder(decoder, graphs=True) if cuda_graphs else ChunkDecoder(decoder)
