"""The pure parts of `clickscore bench latency`: which rates to offer, where a window's time
went on Triton's side, and the one-line JSON it prints. No I/O: text and numbers in and out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from stream.ops.promstats import Histogram, histogram_quantile

# Offered rates as fractions of the measured saturation: one well below, one at half (the
# target's rate) and one above it, short of saturation so the run still drains.
DEFAULT_FRACTIONS = (0.25, 0.5, 0.75)
RATE_STEP = 10  # rates are rounded down to this many events/s, so each stays at or below

# Triton's cumulative per-model counters (microseconds, or counts), summed over versions.
_TRITON_COUNTERS = {
    "nv_inference_request_success": "requests",
    "nv_inference_count": "sequences",
    "nv_inference_exec_count": "executions",
    "nv_inference_request_duration_us": "request_us",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_input_duration_us": "input_us",
    "nv_inference_compute_infer_duration_us": "infer_us",
    "nv_inference_compute_output_duration_us": "output_us",
}


def default_rates(
    saturation_per_s: float, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> list[float]:
    """Rates at these fractions of the saturation, each rounded down (to RATE_STEP, or to
    0.1 below it), ascending and distinct: the half-saturation rate stays at or below S / 2."""
    if not saturation_per_s > 0 or math.isinf(saturation_per_s):
        raise ValueError(f"saturation must be a positive rate, not {saturation_per_s}")
    rates = set()
    for fraction in fractions:
        rate = saturation_per_s * fraction
        rounded = math.floor(rate / RATE_STEP) * RATE_STEP
        rates.add(float(rounded) if rounded > 0 else math.floor(rate * 10) / 10)
    return sorted(r for r in rates if r > 0)


@dataclass(frozen=True)
class TritonTimes:
    """Triton's own accounting of one model over an interval (the difference of two scrapes)."""

    requests: float = 0.0
    sequences: float = 0.0
    executions: float = 0.0  # batches the dynamic batcher ran (requests merged into one)
    request_us: float = 0.0  # arrival to response, all in
    queue_us: float = 0.0  # waiting in the dynamic batcher's queue for an instance
    input_us: float = 0.0
    infer_us: float = 0.0  # the backend's execute (for the python backend, stub IPC included)
    output_us: float = 0.0

    def minus(self, earlier: TritonTimes) -> TritonTimes:
        return TritonTimes(
            **{name: getattr(self, name) - getattr(earlier, name) for name in _FIELDS}
        )

    def per_request_ms(self) -> dict[str, float]:
        """Mean ms per request of queue, compute (input + infer + output) and the whole,
        and mean sequences per request and per execution."""
        if self.requests <= 0:
            return {}
        per = 1000.0 * self.requests
        return {
            "queue_ms": self.queue_us / per,
            "compute_ms": (self.input_us + self.infer_us + self.output_us) / per,
            "request_ms": self.request_us / per,
            "sequences_per_request": self.sequences / self.requests,
            "sequences_per_execution": self.sequences / max(self.executions, 1.0),
        }


_FIELDS = tuple(_TRITON_COUNTERS.values())

TRITON_CLIENT = "clickscore_triton_latency_seconds"  # one request, as the worker's client saw it
STAGES = "clickscore_window_stage_seconds"


def histograms(text: str, name: str, label: str | None = None) -> dict[str, Histogram]:
    """The histogram `name` from Prometheus text, one per value of `label` ("" without)."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.labels.get(label, "") if label else ""
            if sample.name == f"{name}_bucket":
                buckets.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
            elif sample.name == f"{name}_sum":
                sums[key] = float(sample.value)
    return {k: Histogram(tuple(sorted(b)), sums.get(k, 0.0)) for k, b in buckets.items()}


def _since(text: str, before: str, name: str, label: str | None) -> dict[str, Histogram]:
    earlier = histograms(before, name, label)
    return {
        k: h.minus(earlier[k]) if k in earlier else h
        for k, h in histograms(text, name, label).items()
    }


def stage_quantiles_ms(text: str, before: str, q: float) -> dict[str, float]:
    """The q-quantile ms of each window stage observed between two scrapes of a worker."""
    quantiles = {
        k: histogram_quantile(h, q) for k, h in _since(text, before, STAGES, "stage").items()
    }
    return {k: v * 1000 for k, v in quantiles.items() if v is not None}


def stage_means_ms(text: str, before: str) -> dict[str, float]:
    """The mean ms of each window stage observed between two scrapes of a worker."""
    means = {k: h.mean for k, h in _since(text, before, STAGES, "stage").items()}
    return {k: v * 1000 for k, v in means.items() if v is not None}


def histogram_mean_ms(text: str, before: str, name: str) -> float:
    """The mean ms of `name` observed between two scrapes (NaN without an observation)."""
    mean = _since(text, before, name, None).get("", Histogram()).mean
    return math.nan if mean is None else mean * 1000


def triton_times(text: str, model: str) -> TritonTimes:
    """`model`'s counters from Triton's Prometheus text, summed over its versions."""
    totals = dict.fromkeys(_FIELDS, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            field = _TRITON_COUNTERS.get(sample.name.removesuffix("_total"))
            if field is not None and sample.labels.get("model") == model:
                totals[field] += float(sample.value)
    return TritonTimes(**totals)


def rate_row(
    offered_per_s: float, score_ms: tuple[float, float, float], **extra: object
) -> dict[str, object]:
    """One rate of the JSON line: the issue's three keys first, then anything measured."""
    p50, p95, p99 = score_ms
    return {
        "offered_events_per_s": offered_per_s,
        "p50_ms": json_number(p50),
        "p99_ms": json_number(p99),
        "p95_ms": json_number(p95),
        **extra,
    }


def latency_json(saturation_per_s: float, rows: Sequence[dict[str, object]]) -> dict[str, object]:
    return {"saturation_events_per_s": saturation_per_s, "rates": list(rows)}


def json_number(value: float) -> float | None:
    """NaN (no score read) as JSON null: json.dumps would write NaN, which is not JSON."""
    return None if math.isnan(value) else round(value, 1)
