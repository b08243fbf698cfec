"""Served quality the worker can see by itself: drift of what it serves against each
version's reference, as Prometheus gauges.

    clickscore_score_psi{version, score}        PSI of the last window's scores
    clickscore_feature_psi{version, feature}    PSI of the last window's behaviour features
    clickscore_drift_window_values{version, kind, name}   values in that window

A version's reference is `reference.json` in its folder of the model repository the worker
is configured with (CLICKSCORE_MODEL_REPO / CLICKSCORE_TRITON_MODEL / <version>), written by
`clickscore model reference` or `clickscore train`. A version without one is not monitored
(logged once; looked for again every REREAD_S). The gauges are computed at each scrape from
the window's counts (stream/scoring/drift.py), so a quiet worker's window empties as time
passes and the PSI disappears once fewer than the minimum count remain.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from stream.contract.drift import REFERENCE_FILE, Reference
from stream.scoring.drift import SCORE, DriftMonitor

log = logging.getLogger(__name__)
REREAD_S = 60.0


class ReferenceFiles:
    """reference_of(version) for DriftMonitor: the version folder's reference.json."""

    def __init__(self, model_dir: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self._dir = model_dir
        self._clock = clock
        self._missing: dict[str, float] = {}  # version -> when it was last looked for

    def __call__(self, version: str) -> Reference | None:
        looked = self._missing.get(version)
        if looked is not None and self._clock() - looked < REREAD_S:
            return None
        path = self._dir / version / REFERENCE_FILE
        try:
            reference = Reference.from_dict(orjson.loads(path.read_bytes()))
        except FileNotFoundError:
            if looked is None:
                log.warning(
                    "model version %s has no reference distributions (%s): its drift is not "
                    "monitored; write them with `clickscore model reference --version %s`",
                    version,
                    path,
                    version,
                )
            self._missing[version] = self._clock()
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.error("unreadable reference %s: %s; drift not monitored", path, exc)
            self._missing[version] = self._clock()
            return None
        self._missing.pop(version, None)
        return reference


class DriftCollector(Collector):
    """The PSI gauges, read from the monitor the pipeline feeds (none until one is set)."""

    def __init__(self) -> None:
        self.monitor: DriftMonitor | None = None
        self.clock: Callable[[], float] = time.time

    def watch(self, monitor: DriftMonitor, clock: Callable[[], float]) -> None:
        self.monitor, self.clock = monitor, clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        scores = GaugeMetricFamily(
            "clickscore_score_psi",
            "PSI of the scores served over the last drift window against the version's "
            "reference (absent until the window holds CLICKSCORE_DRIFT_MIN_COUNT values).",
            labels=["version", "score"],
        )
        features = GaugeMetricFamily(
            "clickscore_feature_psi",
            "PSI of the behaviour features sent to the model over the last drift window "
            "against the version's reference.",
            labels=["version", "feature"],
        )
        counts = GaugeMetricFamily(
            "clickscore_drift_window_values",
            "Values in the drift window, per version and series.",
            labels=["version", "kind", "name"],
        )
        readings = self.monitor.readings(self.clock()) if self.monitor is not None else []
        for r in readings:
            counts.add_metric([r.version, r.kind, r.name], r.count)
            if math.isnan(r.psi):
                continue
            family = scores if r.kind == SCORE else features
            family.add_metric([r.version, r.name], r.psi)
        yield scores
        yield features
        yield counts


COLLECTOR = DriftCollector()
REGISTRY.register(COLLECTOR)


def observe(
    monitor: DriftMonitor,
    versions: Sequence[str],
    churn: npt.NDArray[np.floating[Any]],
    purchase: npt.NDArray[np.floating[Any]],
    anomaly: npt.NDArray[np.floating[Any]],
    silent_ms: Sequence[int],
    features: npt.NDArray[np.floating[Any]] | None,
    now_s: float,
) -> None:
    """A window's scored rows, by the version that scored them. A silent re-score's anomaly
    is the last event's (stream/scoring/alerts.py), so it is not counted again."""
    silent = np.asarray(silent_ms) > 0
    columns = {
        "churn_risk": np.asarray(churn, dtype=np.float64),
        "purchase_intent": np.asarray(purchase, dtype=np.float64),
        "anomaly": np.where(silent, np.nan, np.asarray(anomaly, dtype=np.float64)),
    }
    served = dict.fromkeys(versions)
    if len(served) == 1:  # the usual window: one version scored every row
        monitor.observe(next(iter(served)), columns, features, now_s)
        return
    names = np.asarray(versions)
    for version in served:
        rows = names == version
        monitor.observe(
            version,
            {name: values[rows] for name, values in columns.items()},
            None if features is None else features[rows],
            now_s,
        )
