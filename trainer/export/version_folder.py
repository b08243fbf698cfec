"""Write a served version as a format-2 folder: data only, what stream/serving/version.py runs.

    model_config.json   the manifest: served outputs, vocabulary, heads, thresholds, record
    encoder.onnx        only if churn, purchase or anomaly is served by the encoder
    next_event.onnx     only if the next-items strategy uses the network
    items.json          the item vocabulary of next items
    session_knn.npz     written by the session index itself, only if the strategy uses it

Written to `<parent>/.<name>.tmp` and renamed, so Triton and the repository never see a
half-written version; nothing writes into a version folder afterwards.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream.contract.tokenizer import Vocabulary
from stream.serving.version import ENCODER, FORMAT, ITEMS, MANIFEST, NEXT_EVENT
from trainer.export import onnx
from trainer.fit.encoder import ANOMALY_EXPONENT, ANOMALY_LEVELS, ClickscoreModel
from trainer.fit.next_event import ItemVocabulary, NextEventModel

NEXT_ITEMS_K = 10  # config.pbtxt NEXT_ITEMS dims
STRATEGIES = ("network", "session_knn", "blend")


@dataclass
class ServedParts:
    served: dict[str, str | None]  # churn, purchase, anomaly, next_items -> where from
    vocabulary: Vocabulary
    encoder: ClickscoreModel | None
    feature_head: dict[str, Any] | None
    next_event: tuple[NextEventModel, ItemVocabulary, dict[str, Any]] | None
    session_knn: Any  # stream/serving/session_knn.py SessionIndex (writes its own files)
    blend_weight: float | None
    alert_thresholds: dict[str, dict[str, Any]]
    record: dict[str, Any]  # metrics, gate, training record: merged into model_config.json
    session_knn_config: dict[str, Any] | None = None
    k: int = NEXT_ITEMS_K
    sequence_length: int = 64  # what the worker pads to; the networks must read the same


def _check(parts: ServedParts) -> None:
    served = parts.served
    uses = set(served.values())
    if "encoder" in uses and parts.encoder is None:
        raise ValueError("an output is served by the encoder, but there is none")
    if "feature_head" in uses and parts.feature_head is None:
        raise ValueError("an output is served by the feature head, but there is none")
    strategy = served.get("next_items")
    if strategy is not None and strategy not in STRATEGIES:
        raise ValueError(f"next_items strategy {strategy!r} is not one of {STRATEGIES}")
    if strategy in ("network", "blend") and parts.next_event is None:
        raise ValueError(f"next items by {strategy!r} need the next-event network")
    if strategy in ("session_knn", "blend") and parts.session_knn is None:
        raise ValueError(f"next items by {strategy!r} need the session-kNN index")
    if strategy == "blend" and parts.blend_weight is None:
        raise ValueError("a blend needs its weight")
    encoder = parts.encoder
    if encoder is not None and tuple(encoder.config.field_sizes) != parts.vocabulary.field_sizes:
        raise ValueError("the encoder was built for another vocabulary")


def manifest(parts: ServedParts, *, quantize: bool, sequence_length: int) -> dict[str, Any]:
    served = {t: parts.served.get(t) for t in ("churn", "purchase", "anomaly", "next_items")}
    uses = set(served.values())
    meta: dict[str, Any] = {
        **parts.record,
        "format": FORMAT,
        "served": served,
        "sequence_length": sequence_length,
        "vocabulary": parts.vocabulary.to_dict(),
        "alert_thresholds": parts.alert_thresholds,
        "onnx": {"opset": onnx.OPSET, "quantized": "int8" if quantize else None},
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if "encoder" in uses:
        assert parts.encoder is not None
        meta["model"] = parts.encoder.config.to_dict()
        meta["anomaly_quantiles"] = [float(q) for q in parts.encoder.anomaly_quantiles]
        # The calibrated score at each quantile (stream/serving/version.py calibrated).
        marks = np.asarray(ANOMALY_LEVELS, dtype=np.float32) ** np.float32(ANOMALY_EXPONENT)
        meta["anomaly_marks"] = [float(m) for m in marks]
    if "feature_head" in uses:
        meta["feature_head"] = parts.feature_head
    strategy = served["next_items"]
    if strategy in ("network", "blend"):
        assert parts.next_event is not None
        network, _, report = parts.next_event
        meta["next_event"] = {"model": network.config.to_dict(), "training": report}
    meta["next_items"] = {
        "strategy": strategy,
        "blend_weight": parts.blend_weight if strategy == "blend" else None,
        "session_knn": parts.session_knn_config if strategy in ("session_knn", "blend") else None,
        "k": parts.k,
    }
    return meta


def export_version(parts: ServedParts, folder: Path, *, quantize: bool = False) -> Path:
    """Write the version folder (`folder` must not exist yet); returns it."""
    _check(parts)
    if folder.exists():
        raise FileExistsError(f"{folder} exists: a version folder is never written twice")
    staging = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        length = _write_networks(parts, staging, quantize=quantize)
        meta = manifest(parts, quantize=quantize, sequence_length=length)
        (staging / MANIFEST).write_text(json.dumps(meta, indent=2, sort_keys=True))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.rename(folder)
    return folder


def _write_networks(parts: ServedParts, staging: Path, *, quantize: bool) -> int:
    """The ONNX graphs and item files the served outputs need; returns the sequence length."""
    served = parts.served
    lengths = {parts.sequence_length}
    if "encoder" in served.values():
        assert parts.encoder is not None
        scores = "encoder" in (served.get("churn"), served.get("purchase"))
        surprise = served.get("anomaly") == "encoder"
        onnx.export_encoder(parts.encoder, staging / ENCODER, scores=scores, surprise=surprise)
        lengths.add(parts.encoder.config.sequence_length)
    strategy = served.get("next_items")
    if strategy in ("network", "blend"):
        assert parts.next_event is not None
        network = parts.next_event[0]
        onnx.export_next_event(network, staging / NEXT_EVENT, parts.k)
        lengths.add(network.config.sequence_length)
    if strategy is not None:
        vocab = parts.next_event[1] if parts.next_event else parts.session_knn.items
        (staging / ITEMS).write_text(json.dumps(vocab.to_dict()))
    if strategy in ("session_knn", "blend"):
        parts.session_knn.save(staging)
    if quantize:
        for graph in (staging / ENCODER, staging / NEXT_EVENT):
            if graph.exists():
                onnx.quantize(graph)
    if len(lengths) > 1:
        raise ValueError(f"the networks read different sequence lengths: {sorted(lengths)}")
    return parts.sequence_length
