"""Write a trained model as a self-contained Triton version folder, and read one back.

<model_dir>/<version>/model.py           trainer/triton_model.py (the thin Triton entry)
                      network.py         trainer/fit/encoder.py (the network's code)
                      weights.pt         the state dict (anomaly quantiles included)
                      model_config.json  model config, vocabulary, quantiles, metrics, data,
                                         alert thresholds (trainer/thresholds.py)
                      next_event.py      trainer/fit/next_event.py   } with a next-event
                      next_event.pt      its state dict                 } model: top-K next
                      items.json         its item vocabulary            } items, P(purchase)

A version with a feature head (`with_feature_head`, version 6 on) also carries, in
model_config.json, `feature_head`: the feature schema and, per task (churn, purchase), the
standardisation and logistic regression trainer/triton_model.py `head_scores` applies.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from stream.contract.tokenizer import Vocabulary
from trainer.fit import encoder as network_module
from trainer.fit import next_event as next_event_module
from trainer.fit.encoder import ClickscoreModel, ModelConfig
from trainer.fit.next_event import ItemVocabulary, NextEventModel
from trainer.triton_model import (
    ITEMS,
    NEXT_EVENT_CODE,
    NEXT_EVENT_WEIGHTS,
    load_network,
    load_next_event,
)

META = "model_config.json"
WEIGHTS = "weights.pt"
# Copied as the version's model.py; outside Triton only its load_network is used.
TRITON_ENTRY = Path(__file__).with_name("triton_model.py")


def versions(*folders: Path) -> list[int]:
    """Numeric version folders found in any of these model directories."""
    found = {int(p.name) for f in folders if f.is_dir() for p in f.iterdir() if p.name.isdigit()}
    return sorted(found)


def next_version(*folders: Path) -> int:
    return max(versions(*folders), default=0) + 1


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
    """Write the version folder (folder must not exist yet); returns it.

    `next_event`: the network, its item vocabulary and its training report, if any.
    """
    if tuple(model.config.field_sizes) != vocab.field_sizes:
        raise ValueError("the model was built for another vocabulary")
    staging = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copyfile(TRITON_ENTRY, staging / "model.py")
    shutil.copyfile(network_module.__file__, staging / "network.py")
    state = {k: v.detach().cpu().float().clone() for k, v in model.state_dict().items()}
    torch.save(state, staging / WEIGHTS)
    meta = {
        "model": model.config.to_dict(),
        "vocabulary": vocab.to_dict(),
        "anomaly_quantiles": [float(q) for q in model.anomaly_quantiles],
        "metrics": metrics,
        "training_data": training_data,
        # Read by triton_model.churn_threshold and returned with every score.
        "alert_thresholds": alert_thresholds or {},
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if next_event is not None:
        network, items, report = next_event
        shutil.copyfile(next_event_module.__file__, staging / NEXT_EVENT_CODE)
        weights = {k: v.detach().cpu().float().clone() for k, v in network.state_dict().items()}
        torch.save(weights, staging / NEXT_EVENT_WEIGHTS)
        (staging / ITEMS).write_text(json.dumps(items.to_dict()))
        meta["next_event"] = {"model": network.config.to_dict(), "training": report}
    (staging / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    # A rename, so Triton never sees a half-written version folder.
    staging.rename(folder)
    return folder


def read_meta(folder: Path) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((folder / META).read_text())
    return meta


def tokenisation(meta: dict[str, Any]) -> tuple[Vocabulary, int]:
    """The vocabulary and sequence length a version was exported with."""
    return Vocabulary.from_dict(meta["vocabulary"]), int(meta["model"]["sequence_length"])


def load(folder: Path) -> ClickscoreModel:
    """A version folder's model, built from ITS OWN network.py (what Triton serves)."""
    meta = read_meta(folder)
    Vocabulary.from_dict(meta["vocabulary"])  # refuses a vocabulary this code tokenises otherwise
    network = load_network(folder)
    model = network.ClickscoreModel(network.ModelConfig.from_dict(meta["model"]))
    model.load_state_dict(torch.load(folder / WEIGHTS, map_location="cpu"))
    model.eval()
    return model  # type: ignore[no-any-return]


def load_config(folder: Path) -> ModelConfig:
    return ModelConfig.from_dict(read_meta(folder)["model"])


def load_next(folder: Path) -> tuple[NextEventModel | None, ItemVocabulary | None]:
    """A version folder's next-event network and item vocabulary, from ITS OWN code."""
    model, items = load_next_event(folder, read_meta(folder))
    return model, items


def with_feature_head(
    base: Path,
    folder: Path,
    feature_head: dict[str, Any],
    *,
    alert_thresholds: dict[str, dict[str, Any]],
    training_data: dict[str, Any],
    metrics: dict[str, Any],
) -> Path:
    """A new version folder: `base`'s networks and weights unchanged (anomaly and next items
    stay theirs), this code's Triton entry, and the feature head that scores churn and
    purchase, with its churn alert threshold. `metrics` (the head's) replace the base's,
    which stay as `network_metrics`. `folder` must not exist yet."""
    staging = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(base, staging, ignore=shutil.ignore_patterns("__pycache__", ".*"))
    shutil.copyfile(TRITON_ENTRY, staging / "model.py")
    meta = read_meta(base)
    meta["feature_head"] = feature_head
    meta["network_metrics"] = meta.get("metrics", {})
    meta["metrics"] = metrics
    meta["alert_thresholds"] = alert_thresholds
    meta["feature_head_training_data"] = training_data
    meta["networks_from_version"] = base.name
    meta["exported_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (staging / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    staging.rename(folder)
    return folder
