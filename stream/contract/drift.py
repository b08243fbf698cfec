"""Reference distributions and the population stability index (PSI): pure, shared by the
trainer, which writes a version's reference (`reference.json` in its folder), and the worker,
which compares what it serves with it.

A reference holds, per served score and per behaviour feature the version reads, bin edges
and the count of reference values in each bin. The edges are quantiles of the reference
values (up to BINS bins, Evidently's default of 30; repeated quantiles, a point mass such as
"never purchased", merge into one bin), with open outer bins, so every value falls in a bin:
value v is in bin `searchsorted(edges, v, side="right")`. Non-finite values are not counted.
Values are taken at float32, the precision the worker sends and Triton returns: a score with
few distinct values (a rule, a head on a few counts) sits on its edges, and the float64 of
the same computation would fall on the other side of them.

PSI = sum over bins of (a - e) * ln(a / e), with e and a the reference's and the current
window's shares of each bin, each raised to at least EPSILON so an empty bin stays finite
(Evidently replaces empty shares by 0.0001 the same way). The usual reading: below 0.1
stable, 0.1 to 0.25 a moderate shift, above 0.25 a significant one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

BINS = 30
EPSILON = 1e-4
STABLE, SIGNIFICANT = 0.1, 0.25
FORMAT = 1
REFERENCE_FILE = "reference.json"  # in a version's folder
SCORES = ("churn_risk", "purchase_intent", "anomaly")  # as the score record names them


def served(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The finite values, at the float32 precision they are served at."""
    x = np.asarray(values, dtype=np.float32).astype(np.float64)
    finite: npt.NDArray[np.float64] = x[np.isfinite(x)]
    return finite


def quantile_edges(values: npt.ArrayLike, bins: int = BINS) -> npt.NDArray[np.float64]:
    """Inner bin edges: the 1/bins ... (bins-1)/bins quantiles of the finite values, repeats
    merged (at most bins - 1 edges, so at most `bins` bins)."""
    x = served(values)
    if x.size == 0:
        return np.zeros(0, dtype=np.float64)
    edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    # A point mass (silence 0 after every event, no purchase yet) takes many quantiles and
    # leaves the rest of the distribution a bin or two: spend the merged ones on the rest.
    rest = x[~np.isin(x, edges)]
    spare = bins - 1 - edges.size
    if spare > 0 and rest.size:
        more = np.quantile(rest, np.linspace(0.0, 1.0, spare + 2)[1:-1])
        edges = np.unique(np.concatenate([edges, more]))
    return np.asarray(edges, dtype=np.float64)


def bin_counts(values: npt.ArrayLike, edges: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """How many finite values fall in each of the len(edges) + 1 bins."""
    x = served(values)
    return np.bincount(np.searchsorted(edges, x, side="right"), minlength=edges.size + 1)


def psi(
    expected: Sequence[float] | npt.NDArray[Any], actual: Sequence[float] | npt.NDArray[Any]
) -> float:
    """PSI of `actual` counts (or shares) against `expected` ones, bin by bin; NaN when
    either side is empty."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape:
        raise ValueError(f"{e.shape[0]} reference bins but {a.shape[0]} current ones")
    if e.sum() <= 0 or a.sum() <= 0:
        return math.nan
    e = np.maximum(e / e.sum(), EPSILON)
    a = np.maximum(a / a.sum(), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class Histogram:
    """One series' reference: inner bin edges and the reference count in each bin."""

    edges: npt.NDArray[np.float64]
    counts: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        if self.counts.shape != (self.edges.size + 1,):
            raise ValueError("a histogram has one more bin than inner edges")

    @classmethod
    def of(cls, values: npt.ArrayLike, bins: int = BINS) -> Histogram:
        edges = quantile_edges(values, bins)
        return cls(edges, bin_counts(values, edges))

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        return {"edges": [float(e) for e in self.edges], "counts": [int(c) for c in self.counts]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        return cls(
            np.asarray(data["edges"], dtype=np.float64),
            np.asarray(data["counts"], dtype=np.int64),
        )


@dataclass(frozen=True)
class ChurnPromise:
    """What a version's churn alerts promised on validation data: their precision, how many
    alerts that was measured on, and the half-width of its 95 % interval (normal
    approximation, 1.96 * sqrt(p (1 - p) / n))."""

    precision: float
    alerts: int

    @property
    def interval(self) -> float:
        if self.alerts <= 0:
            return math.nan
        p = self.precision
        return 1.96 * math.sqrt(p * (1 - p) / self.alerts)


@dataclass(frozen=True)
class Reference:
    """A version's reference distributions (`reference.json`)."""

    version: str
    scores: dict[str, Histogram]
    features: dict[str, Histogram] = field(default_factory=dict)
    churn: ChurnPromise | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": self.version,
            "bins": BINS,
            "source": self.source,
            "scores": {name: h.to_dict() for name, h in self.scores.items()},
            "features": {name: h.to_dict() for name, h in self.features.items()},
            "churn_alerts": None
            if self.churn is None
            else {
                "validation_precision": self.churn.precision,
                "validation_alerts": self.churn.alerts,
                "interval": self.churn.interval,
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reference:
        if data.get("format") != FORMAT:
            raise ValueError(f"reference format {data.get('format')!r}, expected {FORMAT}")
        churn = data.get("churn_alerts")
        return cls(
            version=str(data["version"]),
            scores={k: Histogram.from_dict(v) for k, v in data["scores"].items()},
            features={k: Histogram.from_dict(v) for k, v in data.get("features", {}).items()},
            churn=None
            if churn is None
            else ChurnPromise(
                float(churn["validation_precision"]), int(churn["validation_alerts"])
            ),
            source=dict(data.get("source", {})),
        )
