"""Versions as artifacts: write a format-2 version folder, and read one back for serving.

trainer/export/onnx.py turns the served networks into ONNX graphs;
trainer/export/version_folder.py (`ServedParts`, `export_version`) writes the folder;
trainer/export/migrate.py turns a format-1 folder (code copies and weights) into a new
format-2 version. Reading a version back is stream/serving/version.py's `ServedVersion`: the
trainer's gate and reference scores go through exactly what Triton serves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.contract.tokenizer import Vocabulary

if TYPE_CHECKING:  # torch and onnxruntime load only where a version is written or read
    from stream.serving.version import ServedVersion
    from trainer.fit.encoder import ClickscoreModel
    from trainer.fit.next_event import ItemVocabulary, NextEventModel

META = "model_config.json"  # stream.serving.version.MANIFEST


def versions(*folders: Path) -> list[int]:
    """Numeric version folders found in any of these model directories."""
    found = {int(p.name) for f in folders if f.is_dir() for p in f.iterdir() if p.name.isdigit()}
    return sorted(found)


def next_version(*folders: Path) -> int:
    return max(versions(*folders), default=0) + 1


def read_meta(folder: Path) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((folder / META).read_text())
    return meta


def tokenisation(meta: dict[str, Any]) -> tuple[Vocabulary, int]:
    """The vocabulary and sequence length a version was exported with (format 1 or 2)."""
    length = meta.get("sequence_length", meta.get("model", {}).get("sequence_length"))
    return Vocabulary.from_dict(meta["vocabulary"]), int(length)


def load(folder: Path, *, intra_op_threads: int = 1) -> ServedVersion:
    """A version folder as Triton serves it."""
    from stream.serving.version import ServedVersion

    return ServedVersion.load(folder, intra_op_threads=intra_op_threads)


def export(
    model: ClickscoreModel,
    vocab: Vocabulary,
    folder: Path,
    *,
    metrics: dict[str, Any],
    training_data: dict[str, Any],
    alert_thresholds: dict[str, dict[str, Any]] | None = None,
    next_event: tuple[NextEventModel, ItemVocabulary, dict[str, Any]] | None = None,
) -> Path:
    """An encoder-only version (churn, purchase and anomaly from the encoder, next items from
    the network if given): the shape of `clickscore train` before the pipeline's ServedParts."""
    from trainer.export.version_folder import ServedParts, export_version

    parts = ServedParts(
        served={
            "churn": "encoder",
            "purchase": "encoder",
            "anomaly": "encoder",
            "next_items": "network" if next_event else None,
        },
        vocabulary=vocab,
        encoder=model,
        feature_head=None,
        next_event=next_event,
        session_knn=None,
        blend_weight=None,
        alert_thresholds=alert_thresholds or {},
        record={"metrics": metrics, "training_data": training_data},
        sequence_length=model.config.sequence_length,
    )
    return export_version(parts, folder)
