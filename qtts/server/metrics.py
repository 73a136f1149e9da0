"""Prometheus metrics, written in the text exposition format by hand (no extra dependency).

``Metrics.observe(stats)`` is registered in ``Engine.observers`` (called on the engine thread for every
finished stream); ``render(engine_stats)`` produces the ``/metrics`` body: histograms of time to first audio
and real-time factor, counters of finished streams (by finish reason), their frames and audio seconds (so
``rate(qtts_frames_total[1m])`` is frames per second), batched frame steps, HTTP requests (by route and
status), and gauges of active and queued streams read from each engine at scrape time (labelled
``engine="main"`` / ``engine="clone"``: a server started with ``--clone-model`` runs two engine threads, both
observed).
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Mapping, Sequence

from ..engine import StreamStats

TTFA_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
RTF_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0)


class Histogram:
    """A cumulative Prometheus histogram (not thread-safe; ``Metrics`` holds the lock)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip(self.buckets, self.counts, strict=False):
            running += n
            out.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {self.total:.6f}")
        out.append(f"{name}_count {self.count}")
        return out


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Thread-safe server metrics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ttfa = Histogram(TTFA_BUCKETS)
        self.rtf = Histogram(RTF_BUCKETS)
        self.streams: Counter[str] = Counter()
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.frames = 0  # frames (80 ms of audio each) of finished streams
        self.audio_seconds = 0.0

    def observe(self, stats: StreamStats) -> None:
        """Record one finished engine stream (an ``Engine.observers`` callback)."""
        with self._lock:
            self.streams[stats.finish_reason] += 1
            self.frames += stats.frames
            self.audio_seconds += stats.audio
            if stats.ttfa is not None:
                self.ttfa.observe(stats.ttfa)
            if stats.rtf is not None and stats.finish_reason in ("stop", "length"):
                self.rtf.observe(stats.rtf)

    def request(self, method: str, route: str, status: int) -> None:
        """Count one finished HTTP request or WebSocket connection."""
        with self._lock:
            self.requests[(method, route, status)] += 1

    def render(self, engines: Mapping[str, Mapping[str, float]]) -> str:
        """The ``/metrics`` body (Prometheus text format 0.0.4). ``engines``: each engine's ``Engine.stats()``
        by label (``main``, and ``clone`` with a clone model): its frame steps and live gauges carry an
        ``engine`` label; the stream histograms and counters cover the streams of every engine."""
        with self._lock:
            lines = [
                "# HELP qtts_time_to_first_audio_seconds Seconds from request submission to the first audio chunk.",
                "# TYPE qtts_time_to_first_audio_seconds histogram",
                *self.ttfa.lines("qtts_time_to_first_audio_seconds"),
                "# HELP qtts_real_time_factor Wall seconds per second of audio of completed streams.",
                "# TYPE qtts_real_time_factor histogram",
                *self.rtf.lines("qtts_real_time_factor"),
                "# HELP qtts_streams_total Finished streams by finish reason.",
                "# TYPE qtts_streams_total counter",
                *(f'qtts_streams_total{{finish_reason="{_label(r)}"}} {n}' for r, n in sorted(self.streams.items())),
                "# HELP qtts_frames_total Frames (80 ms of audio each) generated, counted when each stream ends.",
                "# TYPE qtts_frames_total counter",
                f"qtts_frames_total {self.frames}",
                "# HELP qtts_audio_seconds_total Seconds of audio generated, counted when each stream ends.",
                "# TYPE qtts_audio_seconds_total counter",
                f"qtts_audio_seconds_total {self.audio_seconds:.3f}",
                "# HELP qtts_http_requests_total Finished HTTP requests and WebSocket connections.",
                "# TYPE qtts_http_requests_total counter",
                *(f'qtts_http_requests_total{{method="{_label(m)}",route="{_label(r)}",status="{s}"}} {n}'
                  for (m, r, s), n in sorted(self.requests.items())),
            ]
        per_engine = (
            ("qtts_frame_steps_total", "counter", "frames_total",
             "Batched frame steps run by each engine (one frame for every live stream)."),
            ("qtts_active_streams", "gauge", "active", "Streams holding a batch slot, per engine."),
            ("qtts_queued_streams", "gauge", "waiting", "Streams waiting for a slot or for text, per engine."),
            ("qtts_max_batch", "gauge", "max_batch", "Batch slots of each engine."),
            ("qtts_warmup_seconds", "gauge", "warmup_seconds",
             "Seconds each engine has spent compiling and capturing CUDA graphs (once per bucket / piece size)."),
        )
        for name, kind, key, help_text in per_engine:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            lines += [f'{name}{{engine="{_label(label)}"}} {stats.get(key, 0)}' for label, stats in engines.items()]
        return "\n".join(lines) + "\n"
