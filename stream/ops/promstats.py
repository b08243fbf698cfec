"""Reading the worker's Prometheus metrics: parse the text format, and quantiles and means
from histogram buckets, the way Prometheus's `histogram_quantile` computes them.

Pure: text in, numbers out. Fetching the text over HTTP is `stream.ops.scrape`'s job.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

INF = float("inf")


@dataclass(frozen=True)
class Histogram:
    """Cumulative buckets as Prometheus exposes them: (upper bound `le`, observations <= le),
    ascending, the last one +Inf."""

    buckets: tuple[tuple[float, float], ...] = ()
    total: float = 0.0  # the _sum series

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def minus(self, earlier: Histogram) -> Histogram:
        """Observations made since `earlier` (same buckets; a restarted worker resets)."""
        if [le for le, _ in earlier.buckets] != [le for le, _ in self.buckets]:
            return self
        if self.count < earlier.count:  # counters reset: the worker restarted
            return self
        buckets = tuple(
            (le, now - before)
            for (le, now), (_, before) in zip(self.buckets, earlier.buckets, strict=True)
        )
        return Histogram(buckets, self.total - earlier.total)


def histogram_quantile(histogram: Histogram, q: float) -> float | None:
    """The q-quantile (0..1), linearly interpolated inside its bucket; None without data.

    As in Prometheus: the first bucket's lower bound is 0 and a quantile that falls in the
    +Inf bucket is reported as the highest finite bound (we cannot know more).
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within 0..1, not {q}")
    total = histogram.count
    if total <= 0:
        return None
    rank = q * total
    counts = [count for _, count in histogram.buckets]
    index = bisect_left(counts, rank)
    index = min(index, len(counts) - 1)
    upper, upper_count = histogram.buckets[index]
    if math.isinf(upper):
        finite = [le for le, _ in histogram.buckets if not math.isinf(le)]
        return finite[-1] if finite else None
    lower, lower_count = (0.0, 0.0) if index == 0 else histogram.buckets[index - 1]
    in_bucket = upper_count - lower_count
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * (rank - lower_count) / in_bucket


def histogram_of(values: Iterable[float], bounds: Sequence[float]) -> Histogram:
    """A cumulative histogram of `values` over `bounds` (ascending; +Inf is added)."""
    ordered = sorted(values)
    edges = [*bounds, INF]
    buckets = tuple((le, float(_count_at_most(ordered, le))) for le in edges)
    return Histogram(buckets, float(sum(ordered)))


def _count_at_most(ordered: Sequence[float], bound: float) -> int:
    low, high = 0, len(ordered)
    while low < high:
        middle = (low + high) // 2
        if ordered[middle] <= bound:
            low = middle + 1
        else:
            high = middle
    return low


@dataclass(frozen=True)
class WorkerMetrics:
    """What the demo's live view shows, from one scrape of the worker's /metrics."""

    events_consumed: float = 0.0
    scores_emitted: float = 0.0
    dead_letters: float = 0.0
    alerts: dict[str, float] = field(default_factory=dict)
    window_events: Histogram = Histogram()
    window_users: Histogram = Histogram()
    event_to_score: Histogram = Histogram()  # event-triggered scores only
    assigned_partitions: int = 0  # partitions with a consumer-lag sample
    # clickscore_assigned_partitions: owned and restored (None: a worker without the gauge)
    ready_partitions: int | None = None
    silent_rescored: float = 0.0
    silent_due: float | None = None  # None: a worker that does not export the gauge


_HISTOGRAMS = {
    "clickscore_window_events": "window_events",
    "clickscore_window_users": "window_users",
    "clickscore_event_to_score_seconds": "event_to_score",
}


def parse_worker_metrics(text: str) -> WorkerMetrics:
    counters: dict[str, float] = {}
    alerts: dict[str, float] = {}
    buckets: dict[str, list[tuple[float, float]]] = {name: [] for name in _HISTOGRAMS}
    sums: dict[str, float] = {}
    lag_partitions = 0
    ready: int | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if name == "clickscore_dead_letters_total":
                counters["dead_letters"] = counters.get("dead_letters", 0.0) + value
            elif name == "clickscore_alerts_total":
                alerts[labels.get("kind", "?")] = value
            elif name == "clickscore_consumer_lag":
                lag_partitions += 1
            elif name == "clickscore_assigned_partitions":
                ready = int(value)
            elif name in (
                "clickscore_events_consumed_total",
                "clickscore_scores_emitted_total",
                "clickscore_silent_rescored_total",
                "clickscore_silent_rescores_due",
            ):
                counters[name] = value
            elif name.endswith("_bucket") and name[: -len("_bucket")] in buckets:
                buckets[name[: -len("_bucket")]].append((float(labels["le"]), value))
            elif name.endswith("_sum") and name[: -len("_sum")] in buckets:
                sums[name[: -len("_sum")]] = value
    histograms = {
        field_name: Histogram(tuple(sorted(buckets[metric])), sums.get(metric, 0.0))
        for metric, field_name in _HISTOGRAMS.items()
    }
    return WorkerMetrics(
        events_consumed=counters.get("clickscore_events_consumed_total", 0.0),
        scores_emitted=counters.get("clickscore_scores_emitted_total", 0.0),
        dead_letters=counters.get("dead_letters", 0.0),
        alerts=alerts,
        assigned_partitions=lag_partitions,
        ready_partitions=ready,
        silent_rescored=counters.get("clickscore_silent_rescored_total", 0.0),
        silent_due=counters.get("clickscore_silent_rescores_due"),
        **histograms,
    )


def stage_means(text: str) -> dict[str, float]:
    """Mean seconds per window of each `clickscore_window_stage_seconds` stage."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            stage = sample.labels.get("stage")
            if sample.name == "clickscore_window_stage_seconds_sum" and stage:
                sums[stage] = float(sample.value)
            elif sample.name == "clickscore_window_stage_seconds_count" and stage:
                counts[stage] = float(sample.value)
    return {stage: sums[stage] / counts[stage] for stage in sums if counts.get(stage)}
