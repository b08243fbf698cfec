"""What the worker served over the last window (say an hour), binned as each version's
reference bins it, and the PSI against that reference (stream/contract/drift.py). Pure: the
caller gives the time, the values and a way to find a version's reference.

Incremental, not a recompute: the window is `slices` time slices of bin counts. Rows wait
in a buffer until `flush_rows` of them (or a scrape) bin them at once, one `searchsorted` per
series and one `bincount` (a paced stream's windows hold a few users each, and binning 39
series per window would cost more than the rows); moving the window on drops whole slices;
the PSI is computed only when asked (a Prometheus scrape), from the summed counts. The window
is therefore between window_s - one slice and window_s long.
A series reports no PSI until its window holds `min_count` values: with 30 bins, sampling
noise alone gives a PSI of about 29 / n between two samples of the same distribution.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from stream.contract.drift import Reference, psi
from stream.contract.features import NAMES

SCORE, FEATURE = "score", "feature"
_Block = npt.NDArray[np.floating[Any]]


class RollingCounts:
    """Bin counts of several series (columns) over the last window_s seconds."""

    def __init__(
        self, edges: Sequence[npt.NDArray[np.float64]], window_s: float, slices: int = 12
    ) -> None:
        self.edges = list(edges)
        sizes = [e.size + 1 for e in self.edges]
        self._offsets = np.cumsum([0, *sizes[:-1]]).astype(np.int64)
        self._sizes = sizes
        self._width = int(sum(sizes))
        self._slices = slices
        self._slice_s = window_s / slices
        self._counts = np.zeros((slices, self._width), dtype=np.int64)
        self._slot_of = np.full(slices, -1, dtype=np.int64)

    def add(self, values: npt.NDArray[np.floating[Any]], now_s: float) -> None:
        """values: (rows, series), in the order of `edges`, as served (float32); non-finite
        values are skipped."""
        slot = int(now_s // self._slice_s)
        at = slot % self._slices
        if self._slot_of[at] != slot:
            self._counts[at] = 0
            self._slot_of[at] = slot
        matrix = np.asarray(values, dtype=np.float32).astype(np.float64)
        bins = []
        for j, edges in enumerate(self.edges):
            column = matrix[:, j]
            column = column[np.isfinite(column)]
            bins.append(np.searchsorted(edges, column, side="right") + self._offsets[j])
        flat = np.concatenate(bins) if bins else np.zeros(0, dtype=np.int64)
        self._counts[at] += np.bincount(flat, minlength=self._width)

    def totals(self, now_s: float) -> list[npt.NDArray[np.int64]]:
        """Each series' bin counts over the slices still inside the window at now_s."""
        slot = int(now_s // self._slice_s)
        live = (self._slot_of > slot - self._slices) & (self._slot_of <= slot)
        summed = self._counts[live].sum(axis=0)
        return [summed[o : o + s] for o, s in zip(self._offsets, self._sizes, strict=True)]


@dataclass(frozen=True)
class Reading:
    version: str
    kind: str  # SCORE or FEATURE
    name: str
    psi: float  # NaN until the window holds min_count values
    count: int


class _VersionWindow:
    def __init__(self, reference: Reference, window_s: float) -> None:
        self.reference = reference
        self.score_names = list(reference.scores)
        self.scores = RollingCounts([h.edges for h in reference.scores.values()], window_s)
        self.feature_names = [n for n in reference.features if n in NAMES]
        self.columns = [NAMES.index(n) for n in self.feature_names]
        edges = [reference.features[n].edges for n in self.feature_names]
        self.features = RollingCounts(edges, window_s) if edges else None


class DriftMonitor:
    """Per served version, the last window's scores and features against its reference.

    observe() runs on the event loop, readings() on the metrics thread at a scrape: a lock
    keeps a reading from summing slices half-way through an update.
    """

    def __init__(
        self,
        reference_of: Callable[[str], Reference | None],
        window_s: float = 3600.0,
        min_count: int = 1000,
        flush_rows: int = 512,
    ) -> None:
        self._reference_of = reference_of
        self._window_s = window_s
        self._min_count = min_count
        self._flush_rows = flush_rows
        self._windows: dict[str, _VersionWindow] = {}
        self._lock = threading.Lock()
        # Per version: rows observed but not binned yet, as (scores, features) blocks.
        self._pending: dict[str, list[tuple[_Block, _Block | None]]] = {}
        self._pending_rows = 0

    def _window(self, version: str) -> _VersionWindow | None:
        window = self._windows.get(version)
        if window is None:
            reference = self._reference_of(version)
            if reference is None:
                return None
            window = self._windows[version] = _VersionWindow(reference, self._window_s)
        return window

    def observe(
        self,
        version: str,
        scores: Mapping[str, npt.NDArray[np.floating[Any]]],
        features: npt.NDArray[np.floating[Any]] | None,
        now_s: float,
    ) -> None:
        """One version's rows of a window: each score's values (NaN: not counted, as the
        anomaly of a silent re-score, which keeps the last event's), and the behaviour
        features the model was sent (columns in stream/contract/features.py NAMES order)."""
        window = self._window(version)
        if window is None:
            return
        rows = next(iter(scores.values())).shape[0] if scores else 0
        if not rows:
            return
        nan = np.full(rows, np.nan)
        score_columns = np.column_stack([scores.get(n, nan) for n in window.score_names])
        chosen = None
        if window.features is not None and features is not None and len(features):
            chosen = features[:, window.columns]
        with self._lock:
            self._pending.setdefault(version, []).append((score_columns, chosen))
            self._pending_rows += rows
            if self._pending_rows >= self._flush_rows:
                self._flush(now_s)

    def _flush(self, now_s: float) -> None:
        """Bin the buffered rows (the lock held)."""
        for version, blocks in self._pending.items():
            window = self._windows[version]
            window.scores.add(np.concatenate([b[0] for b in blocks]), now_s)
            features = [b[1] for b in blocks if b[1] is not None]
            if window.features is not None and features:
                window.features.add(np.concatenate(features), now_s)
        self._pending.clear()
        self._pending_rows = 0

    def readings(self, now_s: float) -> list[Reading]:
        out: list[Reading] = []
        with self._lock:
            self._flush(now_s)
            windows = list(self._windows.items())
            totals = [
                (v, w, w.scores.totals(now_s), w.features.totals(now_s) if w.features else [])
                for v, w in windows
            ]
        for version, window, scores, features in totals:
            ref = window.reference
            for kind, names, counts, refs in (
                (SCORE, window.score_names, scores, ref.scores),
                (FEATURE, window.feature_names, features, ref.features),
            ):
                for name, current in zip(names, counts, strict=False):
                    n = int(current.sum())
                    value = psi(refs[name].counts, current) if n >= self._min_count else math.nan
                    out.append(Reading(version, kind, name, value, n))
        return out
