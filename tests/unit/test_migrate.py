"""`clickscore model migrate`: a format-1 folder (its own code copies and torch weights) becomes
a new format-2 version that serves what it served, computed as its own code computed it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stream.contract.tokenizer import Vocabulary, item_hash
from stream.serving.version import ServedVersion
from stream.settings import PROJECT_ROOT
from trainer.export.migrate import migrate
from trainer.fit import encoder as encoder_code
from trainer.fit import next_event as next_event_code
from trainer.fit.encoder import ClickscoreModel, ModelConfig
from trainer.fit.next_event import ItemVocabulary, NextEventConfig, NextEventModel

SERVED = PROJECT_ROOT / "model_repo" / "clickscore" / "7"
LENGTH = 16


def _format_1(root: Path, anomaly_threshold: float | None) -> tuple[Path, NextEventModel]:
    """Version 3 of a repository, as `clickscore train` + `model head` wrote them before."""
    torch.manual_seed(0)
    folder = root / "3"
    folder.mkdir(parents=True)
    vocab = Vocabulary()
    config = ModelConfig(field_sizes=vocab.field_sizes, sequence_length=LENGTH, hidden=16)
    encoder = ClickscoreModel(config).eval()
    encoder.calibrate(torch.linspace(0.5, 3.0, 200))
    items = tuple(f"i{n}" for n in range(50))
    vocabulary = ItemVocabulary(items, tuple(item_hash(i) for i in items), 8)
    sizes = vocab.field_sizes
    next_config = NextEventConfig(50, 8, sizes[0], sizes[4], sequence_length=LENGTH, hidden=16)
    network = NextEventModel(next_config).eval()
    torch.save(encoder.state_dict(), folder / "weights.pt")
    torch.save(network.state_dict(), folder / "next_event.pt")
    shutil.copyfile(encoder_code.__file__, folder / "network.py")
    shutil.copyfile(next_event_code.__file__, folder / "next_event.py")
    (folder / "items.json").write_text(json.dumps(vocabulary.to_dict()))
    head = json.loads((SERVED / "model_config.json").read_text())["feature_head"]
    meta = {
        "model": config.to_dict(),
        "vocabulary": vocab.to_dict(),
        "anomaly_quantiles": [float(q) for q in encoder.anomaly_quantiles],
        "metrics": {"churn_roc_auc": 0.9},
        "training_data": {"source": "synthetic"},
        "feature_head": head,
        "alert_thresholds": {
            "churn": {"threshold": 0.3},
            "anomaly": {"threshold": anomaly_threshold},
        },
        "next_event": {"model": next_config.to_dict(), "training": {"best_epoch": 1}},
    }
    (folder / "model_config.json").write_text(json.dumps(meta))
    return folder, network


@pytest.fixture
def small_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The drift reference on fewer synthetic users: this test checks where it goes."""
    monkeypatch.setattr("trainer.reference.USERS", 20)
    monkeypatch.setattr("trainer.reference.DAYS", 2)


def test_a_version_without_an_anomaly_threshold_migrates_to_no_encoder_at_all(
    tmp_path: Path, small_reference: None
) -> None:
    old, network = _format_1(tmp_path / "clickscore", anomaly_threshold=None)
    new = migrate(old, tmp_path / "clickscore")
    assert new.name == "4" and sorted(
        p.name for p in tmp_path.joinpath("clickscore").iterdir()
    ) == [
        "3",
        "4",
    ]
    assert sorted(p.name for p in new.iterdir()) == [
        "items.json",
        "model_config.json",
        "next_event.onnx",
        "reference.json",
    ]
    meta = json.loads((new / "model_config.json").read_text())
    assert meta["format"] == 2 and meta["migrated_from"] == 3
    assert meta["served"] == {
        "churn": "feature_head",
        "purchase": "feature_head",
        "anomaly": None,
        "next_items": "network",
    }
    assert "reason" in meta["alert_thresholds"]["anomaly"]
    assert meta["metrics"] == {"churn_roc_auc": 0.9}
    reference = json.loads((new / "reference.json").read_text())
    assert reference["version"] == "4" and "anomaly" not in reference["scores"]
    # Next items as the old folder's network gives them.
    version = ServedVersion.load(new)
    tokens = np.zeros((4, LENGTH, 6), dtype=np.int64)
    tokens[:, -3:, 0], tokens[:, -3:, 4] = 3, 5
    hashes = np.zeros((4, LENGTH), dtype=np.int64)
    hashes[:, -3:] = [item_hash(f"i{n}") for n in (1, 2, 3)]
    served = version.score(tokens, hashes, None, 10)
    items = ItemVocabulary.from_dict(json.loads((new / "items.json").read_text()))
    t = torch.from_numpy(tokens)
    ids = torch.from_numpy(items.ids(hashes))
    _, probs, buy = network.recommend(ids, t[:, :, 0], t[:, :, 4], 10)
    np.testing.assert_allclose(served["NEXT_ITEM_PROBS"], probs.numpy(), atol=1e-5)
    np.testing.assert_allclose(served["NEXT_PURCHASE"][:, 0], buy.numpy(), atol=1e-5)
    assert np.isnan(served["ANOMALY"]).all()


def test_a_version_with_an_anomaly_threshold_keeps_its_encoder_and_refuses_a_second_run(
    tmp_path: Path, small_reference: None
) -> None:
    old, _ = _format_1(tmp_path / "clickscore", anomaly_threshold=0.97)
    new = migrate(old, tmp_path / "clickscore")
    meta = json.loads((new / "model_config.json").read_text())
    assert meta["served"]["anomaly"] == "encoder" and (new / "encoder.onnx").exists()
    served = ServedVersion.load(new).score(np.zeros((2, LENGTH, 6), np.int64), None, None, 0)
    assert np.isfinite(served["ANOMALY"]).all()
    assert (served["ANOMALY_THRESHOLD"] == np.float32(0.97)).all()
    with pytest.raises(ValueError, match="already format 2"):
        migrate(new, tmp_path / "clickscore")
