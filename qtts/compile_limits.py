"""dynamo's recompile limit, raised in each thread that runs our compiled code.

dynamo compiles a function once per input shape class and, past ``torch._dynamo.config.recompile_limit`` graphs
(8 by default), runs it eagerly from then on. A frame step needs more than 8 for its compiled regions (prompt
lengths, batch buckets, attention spans, the predictor's first and later steps) and the row kernels one per dtype
and shape class, so the limit is raised. torch (2.13) keeps a config value set by assignment per thread, in a
``ContextVar``: a limit raised in the thread that built the frame step does not hold in the thread that runs it,
e.g. a server's engine thread, where the talker blocks fell back to eager for the larger batch buckets. So
``Runner.step`` raises it in its own thread, through its frame step, before any compiled call.
"""

from __future__ import annotations

import torch

RECOMPILE_LIMIT = 64  # graphs per compiled function (dynamo's default: 8)


def raise_recompile_limit(at_least: int = RECOMPILE_LIMIT) -> None:
    """Raise dynamo's recompile limit to ``at_least`` in the calling thread (and context); never lowers it.
    Costs a config read (~2 µs) when already done."""
    config = torch._dynamo.config
    if config.recompile_limit < at_least:
        config.recompile_limit = at_least
