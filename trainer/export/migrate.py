"""`clickscore model migrate --version N`: a format-1 version as a NEW format-2 version.

A format-1 folder carries its own code (model.py, network.py, next_event.py) and torch weights.
Its weights load into this checkout's networks and are exported to ONNX; what it served stays
what it serves: churn and purchase from its feature head where it has one (else the encoder),
anomaly only where its anomaly threshold is not null (null: it never raised a model anomaly
alert, so the new version ships no encoder at all when the head serves churn and purchase),
next items from its next-event network. The migration refuses when this checkout's networks
do not reproduce the folder's own code on sample sequences. The new folder carries its drift
reference (trainer/reference.py) from the start. The old folder is left as it is:
versions are immutable, and retiring it is a separate, deliberate `git rm`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream.contract.tokenizer import Vocabulary
from trainer.export import next_version, read_meta
from trainer.export.version_folder import ServedParts, export_version
from trainer.fit.encoder import ClickscoreModel, ModelConfig
from trainer.fit.next_event import ItemVocabulary, NextEventConfig, NextEventModel

TOLERANCE = 1e-4  # probabilities: this checkout's networks against the folder's own code


def _own_module(folder: Path, code: str) -> Any:
    """The folder's own copy of a network's code, as a module (format 1 only)."""
    name = f"clickscore_migrate_{folder.name}_{Path(code).stem}"
    spec = importlib.util.spec_from_file_location(name, folder / code)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def served_of(meta: dict[str, Any]) -> dict[str, str | None]:
    """What a format-1 version served, output by output."""
    head = "feature_head" if "feature_head" in meta else "encoder"
    anomaly = meta.get("alert_thresholds", {}).get("anomaly")
    no_anomaly = anomaly is not None and anomaly.get("threshold") is None
    return {
        "churn": head,
        "purchase": head,
        "anomaly": None if no_anomaly else "encoder",
        "next_items": "network" if "next_event" in meta else None,
    }


def _sample(config: ModelConfig, rows: int = 32) -> torch.Tensor:
    """Left-padded random sequences of every length, for the equivalence check."""
    generator = torch.Generator().manual_seed(0)
    length = config.sequence_length
    tokens = torch.zeros((rows, length, len(config.field_sizes)), dtype=torch.long)
    for row in range(rows):
        used = (row * 7) % (length + 1)
        for f, size in enumerate(config.field_sizes):
            tokens[row, length - used :, f] = torch.randint(2, size, (used,), generator=generator)
    return tokens


def _next_event(folder: Path, meta: dict[str, Any], vocab: ModelConfig) -> NextEventModel:
    config = NextEventConfig.from_dict(meta["next_event"]["model"])
    state = torch.load(folder / "next_event.pt", map_location="cpu")
    model = NextEventModel(config)
    model.load_state_dict(state)
    own = _own_module(folder, "next_event.py")
    theirs = own.NextEventModel(own.NextEventConfig.from_dict(meta["next_event"]["model"]))
    theirs.load_state_dict(state)
    tokens = _sample(vocab)
    generator = torch.Generator().manual_seed(1)
    items = torch.randint(2, config.items, tokens.shape[:2], generator=generator)
    items = items * (tokens[:, :, 0] != 0)
    args = (items, tokens[:, :, 0], tokens[:, :, 4], 10)
    ours, expected = model.eval().recommend(*args), theirs.eval().recommend(*args)
    _same("next items", ours[1], expected[1])
    _same("next purchase", ours[2], expected[2])
    return model


def _encoder(folder: Path, meta: dict[str, Any]) -> ClickscoreModel:
    config = ModelConfig.from_dict(meta["model"])
    state = torch.load(folder / "weights.pt", map_location="cpu")
    model = ClickscoreModel(config)
    model.load_state_dict(state)
    own = _own_module(folder, "network.py")
    theirs = own.ClickscoreModel(own.ModelConfig.from_dict(meta["model"]))
    theirs.load_state_dict(state)
    tokens = _sample(config)
    ours, expected = model.eval().score(tokens), theirs.eval().score(tokens)
    for name in ("churn", "purchase", "anomaly"):
        _same(name, getattr(ours, name), getattr(expected, name))
    return model


def _same(what: str, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    gap = float((ours.float() - theirs.float()).abs().max())
    if not np.isfinite(gap) or gap > TOLERANCE:
        raise RuntimeError(f"this checkout's network gives other {what} (max gap {gap:.2g})")


def migrate(folder: Path, root: Path, *, quantize: bool = False) -> Path:
    """Write `folder` (format 1) as version next_version(root) in format 2; returns it."""
    meta = read_meta(folder)
    if meta.get("format", 1) != 1:
        raise ValueError(f"{folder} is already format {meta['format']}")
    served = served_of(meta)
    config = ModelConfig.from_dict(meta["model"])
    encoder = _encoder(folder, meta) if "encoder" in served.values() else None
    next_event = None
    if served["next_items"] == "network":
        items = ItemVocabulary.from_dict(json.loads((folder / "items.json").read_text()))
        network = _next_event(folder, meta, config)
        next_event = (network, items, meta["next_event"].get("training", {}))
    thresholds = dict(meta.get("alert_thresholds", {}))
    if served["anomaly"] is None:
        thresholds["anomaly"] = {
            **thresholds["anomaly"],
            "reason": "no threshold reached the target precision on validation users: "
            "this version raises no model anomaly alert, and the anomaly output is not served",
        }
    kept = ("metrics", "network_metrics", "training_data", "feature_head_training_data")
    record = {key: meta[key] for key in kept if key in meta}
    record["migrated_from"] = int(folder.name)
    parts = ServedParts(
        served=served,
        vocabulary=Vocabulary.from_dict(meta["vocabulary"]),
        encoder=encoder,
        feature_head=meta.get("feature_head"),
        next_event=next_event,
        session_knn=None,
        blend_weight=None,
        alert_thresholds=thresholds,
        record=record,
        sequence_length=config.sequence_length,
    )
    # Staged under a name Triton ignores, completed with its drift reference (scored through
    # the staged folder, as served), then renamed: nothing writes into a version afterwards.
    from trainer.reference import version_reference, write_reference

    final = root / str(next_version(root))
    staged = export_version(parts, root / f".{final.name}.migrating", quantize=quantize)
    try:
        reference = dataclasses.replace(version_reference(staged), version=final.name)
        write_reference(staged, reference)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    staged.rename(final)
    return final
