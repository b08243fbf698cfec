"""One model version as served: a format-2 folder run with ONNX Runtime and numpy (no torch).

The folder (trainer/export/version_folder.py writes it) holds data only: model_config.json
(the manifest), encoder.onnx and next_event.onnx where a served output needs them, items.json,
session_knn.npz. `served` in the manifest says where each output comes from; an output the
version does not serve is NaN (NEXT_ITEMS: "") and nothing is computed for it, so a version
whose anomaly output has no threshold ships no encoder at all.

The same object answers Triton (stream/serving/backend.py), the trainer's gate and the
benchmarks, so each of them measures exactly what is served.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from stream.serving.items import FIRST_ITEM, ItemVocabulary

FORMAT = 2
MANIFEST = "model_config.json"
ENCODER = "encoder.onnx"
NEXT_EVENT = "next_event.onnx"
ITEMS = "items.json"
EVENT_TYPE, GAP = 0, 4  # TOKENS fields the next-event network reads
TASKS = ("churn", "purchase", "anomaly", "next_items")
KNN_STRATEGIES = ("session_knn", "blend")

Array = npt.NDArray[Any]


def alert_threshold(meta: dict[str, Any], kind: str) -> float:
    """The version's alert threshold of this kind (model_config.json alert_thresholds).

    NaN when the version carries none (the worker then uses its configured threshold);
    infinity when its threshold is null (none was clearly above the base rate), so that
    version raises no alert of that kind at all.
    """
    picked = meta.get("alert_thresholds", {}).get(kind)
    if picked is None:
        return math.nan
    value = picked.get("threshold")
    return math.inf if value is None else float(value)


def head_scores(head: dict[str, Any], features: Array) -> npt.NDArray[np.float64]:
    """A behaviour-feature head's probabilities: standardise, then a logistic regression.

    `head` is one task's entry of model_config.json `feature_head` (mean, scale, coef,
    intercept, written by trainer/fit/feature_head.py); plain numpy, so serving needs no
    scikit-learn. Non-finite features (a damaged request) give NaN, which never alerts.
    """
    x = np.asarray(features, dtype=np.float64)
    z = (x - np.asarray(head["mean"])) / np.asarray(head["scale"])
    logit = z @ np.asarray(head["coef"]) + float(head["intercept"])
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(logit, -60.0, 60.0))), dtype=np.float64)


def calibrated(surprise: Array, quantiles: Array, marks: Array) -> npt.NDArray[np.float32]:
    """Raw surprise -> 0..1: piecewise linear through (quantile, mark), 1 above the top.

    What trainer/fit/encoder.py ClickscoreModel.calibrated computes, outside the graph.
    """
    q = np.asarray(quantiles, dtype=np.float32)
    m = np.asarray(marks, dtype=np.float32)
    s = np.asarray(surprise, dtype=np.float32)
    idx = np.clip(np.searchsorted(q, s, side="left"), 1, len(q) - 1)
    lo, hi = q[idx - 1], q[idx]
    frac = np.clip((s - lo) / np.maximum(hi - lo, 1e-6), 0.0, 1.0)
    score = m[idx - 1] + frac * (m[idx] - m[idx - 1])
    score = np.where(s <= q[0], 0.0, score)
    return np.where(s > q[-1], 1.0, np.clip(score, 0.0, 1.0)).astype(np.float32)


def session(
    path: Path, intra_op_threads: int, inter_op_threads: int, providers: Sequence[str]
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # Explicit: ORT's default takes every core, which Triton, the worker and the broker share.
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=list(providers))


class ServedVersion:
    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.manifest = manifest
        self.served: dict[str, str | None] = {t: manifest["served"].get(t) for t in TASKS}
        self.field_sizes = np.asarray(manifest["vocabulary"]["field_sizes"], dtype=np.int64)
        self.sequence_length = int(manifest["sequence_length"])
        self.churn_threshold = alert_threshold(manifest, "churn")
        anomaly = self.served["anomaly"] is not None
        self.anomaly_threshold = alert_threshold(manifest, "anomaly") if anomaly else math.inf
        self.head: dict[str, Any] | None = manifest.get("feature_head")
        self.encoder: ort.InferenceSession | None = None
        self.next_event: ort.InferenceSession | None = None
        self.knn: Any = None
        self.items: ItemVocabulary | None = None
        self._names: Array = np.zeros(0, dtype=object)

    @classmethod
    def load(
        cls,
        folder: Path,
        *,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> ServedVersion:
        folder = Path(folder)
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(
                f"{folder} is not a format-{FORMAT} version (its networks are code and weights, "
                f"not ONNX): turn it into a new version with `clickscore model migrate "
                f"--version {folder.name}`"
            )
        version = cls(folder, manifest)
        served = version.served
        threads = (intra_op_threads, inter_op_threads, providers)
        if "encoder" in (served["churn"], served["purchase"], served["anomaly"]):
            version.encoder = session(folder / ENCODER, *threads)
        if "feature_head" in (served["churn"], served["purchase"]) and version.head is None:
            raise ValueError(f"{folder} serves a feature head but carries none")
        strategy = served["next_items"]
        if strategy is not None:
            version.items = ItemVocabulary.from_dict(json.loads((folder / ITEMS).read_text()))
            names = [b""] * FIRST_ITEM + [item.encode() for item in version.items.items]
            version._names = np.array([*names, b""], dtype=object)  # the last: out of range
        if strategy in ("network", "blend"):
            version.next_event = session(folder / NEXT_EVENT, *threads)
        if strategy in KNN_STRATEGIES:
            version.knn = _session_index(folder, strategy)
        return version

    @property
    def feature_count(self) -> int:
        return 0 if self.head is None else len(self.head["churn"]["mean"])

    def check(self, tokens: Array, hashes: Array | None, features: Array | None) -> None:
        """Raise ValueError for a request this version cannot score (the caller's fault)."""
        shape = (self.sequence_length, len(self.field_sizes))
        if tokens.ndim != 3 or tokens.shape[1:] != shape:
            raise ValueError(f"TOKENS must be (batch, {shape[0]}, {shape[1]}), got {tokens.shape}")
        if tokens.size and (tokens.min() < 0 or (tokens >= self.field_sizes).any()):
            raise ValueError("TOKENS holds ids outside the vocabulary this model was trained on")
        rows = tokens.shape[0]
        if hashes is not None and hashes.shape != (rows, shape[0]):
            raise ValueError(f"ITEM_HASHES must be ({rows}, {shape[0]}), got {hashes.shape}")
        width = self.feature_count
        if features is not None and width and features.shape != (rows, width):
            raise ValueError(f"FEATURES must be ({rows}, {width}), got {features.shape}")

    def score(
        self, tokens: Array, hashes: Array | None, features: Array | None, k: int
    ) -> dict[str, Array]:
        """tokens int64 (B, L, 6), hashes int64 (B, L) or None, features float32 (B, F) or None
        -> every output (B, 1) or (B, k); NaN where not served (or, for a feature-head task,
        where no FEATURES came)."""
        rows = tokens.shape[0]
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        nan = np.full((rows, 1), np.nan, dtype=np.float32)
        out: dict[str, Array] = {"CHURN": nan.copy(), "PURCHASE": nan.copy(), "ANOMALY": nan}
        if self.encoder is not None:
            names = [o.name for o in self.encoder.get_outputs()]
            values = dict(zip(names, self.encoder.run(None, {"TOKENS": tokens}), strict=True))
            for task in ("churn", "purchase"):
                if self.served[task] == "encoder":
                    out[task.upper()] = values[task.upper()].reshape(rows, 1)
            if self.served["anomaly"] == "encoder":
                levels = calibrated(
                    values["SURPRISE"],
                    self.manifest["anomaly_quantiles"],
                    self.manifest["anomaly_marks"],
                )
                out["ANOMALY"] = levels.reshape(rows, 1)
        if self.head is not None and features is not None:
            for task in ("churn", "purchase"):
                if self.served[task] == "feature_head":
                    column = head_scores(self.head[task], features).astype(np.float32)
                    out[task.upper()] = column.reshape(rows, 1)
        # No features, no feature-head churn: and no threshold, as before format 2.
        unscored = self.served["churn"] == "feature_head" and features is None
        churn_at = math.nan if unscored else self.churn_threshold
        out["CHURN_THRESHOLD"] = np.full((rows, 1), churn_at, dtype=np.float32)
        out["ANOMALY_THRESHOLD"] = np.full((rows, 1), self.anomaly_threshold, dtype=np.float32)
        out.update(self._next_items(tokens, hashes, k))
        return out

    def _next_items(self, tokens: Array, hashes: Array | None, k: int) -> dict[str, Array]:
        rows = tokens.shape[0]
        names = np.full((rows, k), b"", dtype=object)
        probs = np.zeros((rows, k), dtype=np.float32)
        purchase = np.full((rows, 1), np.nan, dtype=np.float32)
        strategy = self.served["next_items"]
        if strategy is not None and k and self.items is not None:
            if hashes is None:  # no items known: the event types and gaps still count
                hashes = np.zeros(tokens.shape[:2], dtype=np.int64)
            item_ids = self.items.ids(hashes)
            ids: Array | None = None
            scores: Array | None = None
            if self.next_event is not None:
                ids, scores, buy = self.next_event.run(
                    None,
                    {
                        "ITEMS": item_ids,
                        "TYPES": np.ascontiguousarray(tokens[:, :, EVENT_TYPE]),
                        "GAPS": np.ascontiguousarray(tokens[:, :, GAP]),
                    },
                )
                purchase = buy.reshape(rows, 1).astype(np.float32)
            if self.knn is not None:
                knn_ids, knn_scores = self.knn.recommend(item_ids, k)
                if ids is None or scores is None:
                    ids, scores = knn_ids, knn_scores
                else:
                    from stream.serving.session_knn import blend_top

                    weight = self.manifest["next_items"]["blend_weight"]
                    ids, scores = blend_top(ids, scores, knn_ids, knn_scores, weight, k)
            assert ids is not None and scores is not None
            width = min(k, ids.shape[1])
            shown = np.clip(ids[:, :width], 0, len(self._names) - 1)
            names[:, :width] = self._names[shown]
            probs[:, :width] = scores[:, :width]
        return {"NEXT_ITEMS": names, "NEXT_ITEM_PROBS": probs, "NEXT_PURCHASE": purchase}


def _session_index(folder: Path, strategy: str) -> Any:
    try:
        from stream.serving.session_knn import SessionIndex
    except ImportError as exc:
        raise ValueError(
            f"{folder} serves next items by {strategy!r}, which needs "
            "stream/serving/session_knn.py; this checkout has none"
        ) from exc
    return SessionIndex.load(folder)
