"""Operations per frame step: how many tensor operations one frame launches, by component.

Under CUDA graphs without compilation every operation is a kernel node of the graph, replayed at a few µs
each, so a frame's operation count sets its time on a GPU (session 6: 9022 operations, bfloat16 and counted
as here, ran a graphed 0.6b frame in 19.7 ms on an H100); this counts them on any machine. Counted with a
``TorchDispatchMode`` around one ``decode_frame`` on the static path (whole-cache attention, the sampling filter
always run, as under CUDA graphs), one sampled stream, without view-only operations. On CPU ``rms_norm``
decomposes into five operations where CUDA (torch >= 2.8) runs one fused kernel; it is counted as one, as on
CUDA, unless ``--cpu-norms``.
``--dtype bfloat16`` counts the casts a bfloat16 model adds (what a GPU runs); ``--fused`` counts with
``qtts.model.fuse`` applied (``--accel fused``).

    python bench/frame_ops.py [--shape 0.6b] [--dtype float32] [--fused] [--cpu-norms] [--top 15]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qtts import Speaker, SynthesisOptions  # noqa: E402
from qtts.checkpoint import random_tts  # noqa: E402
from qtts.generate import Kernels, decode_frame  # noqa: E402

VIEWS = {"view", "unsqueeze", "t", "_unsafe_view", "transpose", "alias", "split", "split_with_sizes", "expand",
         "slice", "select", "squeeze", "as_strided", "detach", "chunk", "unbind", "permute", "_reshape_alias",
         "reshape"}


class Count(TorchDispatchMode):
    """Counts operations by (component, name); ``tag`` is the component being run."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.tag = "glue"
        self.muted = False  # inside an operation counted as one (``as_one``)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket).split(".")[-1]
        if name not in VIEWS and not self.muted:
            self.ops[(self.tag, name)] += 1
        return func(*args, **(kwargs or {}))

    def as_one(self, name: str, fn):
        """``fn`` counted as one operation ``name`` (a composite torch runs as one kernel on CUDA)."""
        @functools.wraps(fn)
        def run(*args, **kwargs):
            if self.muted:
                return fn(*args, **kwargs)
            self.ops[(self.tag, name)] += 1
            self.muted = True
            try:
                return fn(*args, **kwargs)
            finally:
                self.muted = False
        return run

    def tagged(self, tag: str, fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            outer, self.tag = self.tag, tag
            try:
                return fn(*args, **kwargs)
            finally:
                self.tag = outer
        return run


def count_frame(shape: str, dtype: torch.dtype = torch.float32, fused: bool = False, cuda_norms: bool = True
                ) -> Count:
    """Operations of one frame step of a random ``shape`` model in ``dtype`` (``fused``: projections fused)."""
    tts = random_tts(shape, "custom_voice", torch.device("cpu"), dtype)
    if fused:
        tts.accelerate(fused=True)
    runner = tts.new_runner(1, decode=False)
    prepared = tts.prepare("Counting the operations of one frame.", voice=Speaker(tts.speakers[0]), seed=0,
                           options=SynthesisOptions(max_new_tokens=50))
    runner.submit(prepared.job(lambda _chunk: None))
    runner.step()  # prefill and a first frame
    count = Count()
    base = Kernels(fixed_span=True, greedy_shortcut=False)
    kernels = dataclasses.replace(base, sample=count.tagged("sample", base.sample),
                                  code0_logits=count.tagged("code0 rules", base.code0_logits),
                                  noise=count.tagged("noise", base.noise))
    talker = tts.model.talker
    talker.model.forward = count.tagged("talker", talker.model.forward)
    talker.code_predictor.forward = count.tagged("predictor", talker.code_predictor.forward)
    norm = torch.nn.functional.rms_norm
    if cuda_norms:
        torch.nn.functional.rms_norm = count.as_one("rms_norm", norm)
    try:
        with torch.no_grad(), count:
            decode_frame(talker, runner.state, runner.state.cache.max_len, kernels)
    finally:
        torch.nn.functional.rms_norm = norm
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="0.6b")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--fused", action="store_true", help="count with the projections fused (--accel fused)")
    ap.add_argument("--cpu-norms", action="store_true", help="count rms_norm as the CPU's five operations")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    count = count_frame(args.shape, getattr(torch, args.dtype), args.fused, not args.cpu_norms)
    by_part: collections.Counter = collections.Counter()
    for (part, _), n in count.ops.items():
        by_part[part] += n
    print(f"{args.shape} {args.dtype}{' fused' if args.fused else ''}: {sum(by_part.values())} operations per "
          f"frame step (rms_norm counted as {'five' if args.cpu_norms else 'one'})")
    for part, n in by_part.most_common():
        print(f"  {part:12s} {n}")
    print("most frequent:")
    for (part, name), n in count.ops.most_common(args.top):
        print(f"  {part:12s} {name:40s} {n}")


if __name__ == "__main__":
    main()
