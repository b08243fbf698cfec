"""ONNX export and ServedVersion against PyTorch eager, on real sequences: synthetic users
folded through the worker's state code (trainer/labels/scoring_points.py), scored at the
points where the worker scores them.

Tolerances (stated, and held with room on this data): fp32 ONNX Runtime against eager
PyTorch within 1e-5 on churn, purchase and calibrated anomaly probabilities and 1e-4 on the
raw surprise (float reduction order differs); the same top next items wherever eager's
probabilities are not tied within 1e-5. int8 dynamic quantisation moves probabilities by
a few hundredths (measured on version 6's encoder over 42,826 scoring points of 300
synthetic users: churn up to 0.045, purchase 0.011, anomaly 0.030; 38 churn alert decisions
of 42,826 differ at the 85th percentile; version 7's next items keep the same top item on
99.96 %), so here it is only bounded loosely (0.1), enough for a broken quantisation to fail.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from stream.contract.state import stack_item_hashes, stack_padded
from stream.contract.tokenizer import Vocabulary, item_hash
from stream.datasets.synthetic import SyntheticConfig
from stream.serving.version import ServedVersion
from stream.settings import PROJECT_ROOT
from trainer.export.version_folder import ServedParts, export_version
from trainer.fit.encoder import ClickscoreModel, ModelConfig
from trainer.fit.next_event import ItemVocabulary, NextEventConfig, NextEventModel
from trainer.labels.scoring_points import ScoringRules, scoring_points, synthetic_users

LENGTH = 32
Array = npt.NDArray[Any]


def _sequences(seed: int, users: int = 30) -> tuple[Array, Array]:
    """Tokens and item hashes at every scoring point of `users` synthetic users."""
    vocab = Vocabulary()
    by_user, _, end_ms = synthetic_users(SyntheticConfig(users=users, days=4, seed=seed))
    states = [
        point.state
        for user in sorted(by_user)
        for point in scoring_points(by_user[user], vocab, LENGTH, end_ms, ScoringRules())
    ]
    tokens = stack_padded(states, LENGTH).astype(np.int64)
    return tokens, stack_item_hashes(states, LENGTH).astype(np.int64)


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[Array, Array]]:
    return {"calibration": _sequences(seed=11), "heldout": _sequences(seed=12)}


@pytest.fixture(scope="module")
def encoder(data: dict[str, tuple[Array, Array]]) -> ClickscoreModel:
    torch.manual_seed(0)
    config = ModelConfig(field_sizes=Vocabulary().field_sizes, sequence_length=LENGTH)
    model = ClickscoreModel(config).eval()
    tokens = torch.from_numpy(data["calibration"][0])
    with torch.inference_mode():
        model.calibrate(model.score(tokens).surprise)
    return model


def _item_vocabulary() -> ItemVocabulary:
    # The synthetic catalogue's item ids (stream/datasets/synthetic.py), most of them known.
    items = tuple(f"i{n}" for n in range(2400))
    return ItemVocabulary(items, tuple(item_hash(i) for i in items), oov_buckets=16)


@pytest.fixture(scope="module")
def next_event() -> tuple[NextEventModel, ItemVocabulary, dict[str, object]]:
    torch.manual_seed(1)
    items = _item_vocabulary()
    sizes = Vocabulary().field_sizes
    config = NextEventConfig(
        known_items=len(items.items),
        oov_buckets=items.oov_buckets,
        event_types=sizes[0],
        gaps=sizes[4],
        sequence_length=LENGTH,
    )
    network = NextEventModel(config).eval()
    with torch.no_grad():  # untrained embeddings of std 0.02 give near-uniform, tied items
        network.item.weight.normal_(0.0, 1.0)
    return network, items, {"test": True}


def _parts(
    encoder: ClickscoreModel | None,
    next_event: tuple[NextEventModel, ItemVocabulary, dict[str, object]] | None,
    served: dict[str, str | None],
    thresholds: dict[str, Any],
) -> ServedParts:
    return ServedParts(
        served=served,
        vocabulary=Vocabulary(),
        encoder=encoder,
        feature_head=None,
        next_event=next_event,  # type: ignore[arg-type]
        session_knn=None,
        blend_weight=None,
        alert_thresholds=thresholds,
        record={"metrics": {}},
        sequence_length=LENGTH,
    )


ALL_ENCODER = {"churn": "encoder", "purchase": "encoder", "anomaly": "encoder"}


def _midpoint_threshold(scores: Array, quantile: float) -> float:
    """A threshold halfway between two neighbouring eager scores: no score sits on it."""
    ordered = np.unique(scores)
    i = int(quantile * (len(ordered) - 1))
    return float((ordered[i] + ordered[i + 1]) / 2)


def test_encoder_onnx_matches_eager_and_every_churn_alert_agrees(
    encoder: ClickscoreModel, data: dict[str, tuple[Array, Array]], tmp_path: Path
) -> None:
    tokens, _ = data["heldout"]
    padded = (tokens[:, 0, 0] == 0).mean()
    assert len(tokens) > 500 and 0.1 < padded < 0.9  # short rows and full ones
    with torch.inference_mode():
        eager = encoder.score(torch.from_numpy(tokens))  # slices shared padding off
    churn_at = _midpoint_threshold(eager.churn.numpy(), 0.8)
    thresholds = {"churn": {"threshold": churn_at}, "anomaly": {"threshold": 0.9}}
    folder = export_version(
        _parts(encoder, None, {**ALL_ENCODER, "next_items": None}, thresholds), tmp_path / "1"
    )
    version = ServedVersion.load(folder)
    served = version.score(tokens, None, None, k=0)
    for name, want in (("CHURN", eager.churn), ("PURCHASE", eager.purchase)):
        np.testing.assert_allclose(served[name][:, 0], want.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(served["ANOMALY"][:, 0], eager.anomaly.numpy(), atol=1e-5, rtol=0)
    # Every churn alert decision on the held-out users is the same.
    alerts = served["CHURN"][:, 0] >= served["CHURN_THRESHOLD"][:, 0]
    assert 0 < alerts.sum() < len(alerts)
    assert (alerts == (eager.churn.numpy() >= churn_at)).all()
    assert (served["ANOMALY_THRESHOLD"] == np.float32(0.9)).all()


def test_next_event_onnx_gives_eagers_top_items(
    next_event: tuple[NextEventModel, ItemVocabulary, dict[str, object]],
    data: dict[str, tuple[Array, Array]],
    tmp_path: Path,
) -> None:
    network, items, _ = next_event
    tokens, hashes = data["heldout"]
    served_by = {"churn": None, "purchase": None, "anomaly": None, "next_items": "network"}
    folder = export_version(_parts(None, next_event, served_by, {}), tmp_path / "1")
    assert sorted(p.name for p in folder.iterdir()) == [
        "items.json",
        "model_config.json",
        "next_event.onnx",
    ]
    served = ServedVersion.load(folder).score(tokens, hashes, None, k=10)
    ids = torch.from_numpy(items.ids(hashes))
    t = torch.from_numpy(tokens)
    _, probs, purchase = network.recommend(ids, t[:, :, 0], t[:, :, 4], 10)
    np.testing.assert_allclose(served["NEXT_ITEM_PROBS"], probs.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(served["NEXT_PURCHASE"][:, 0], purchase.numpy(), atol=1e-5)
    assert (served["NEXT_ITEMS"] != b"").all()  # a special id never wins a tie
    # The served items are eager's top 10: each has the eager probability served with it (the
    # probabilities above are eager's top 10), so ties may only swap equally likely items.
    full, every, _ = network.recommend(ids, t[:, :, 0], t[:, :, 4], len(items.items))
    eager = np.zeros((len(tokens), items.size))
    np.put_along_axis(eager, full.numpy(), every.numpy(), axis=1)
    index = {name.encode(): n + 2 for n, name in enumerate(items.items)}
    served_ids = np.vectorize(index.__getitem__)(served["NEXT_ITEMS"])
    got = np.take_along_axis(eager, served_ids, axis=1)
    np.testing.assert_allclose(got, served["NEXT_ITEM_PROBS"], atol=1e-5, rtol=0)
    # Nothing else is served, so nothing else is computed: NaN, and no alert thresholds.
    assert np.isnan(served["CHURN"]).all() and np.isnan(served["ANOMALY"]).all()
    assert (served["ANOMALY_THRESHOLD"] == math.inf).all()


def test_a_version_without_anomaly_ships_no_surprise_and_int8_stays_close(
    encoder: ClickscoreModel, data: dict[str, tuple[Array, Array]], tmp_path: Path
) -> None:
    tokens, _ = data["heldout"]
    served_by = {"churn": "encoder", "purchase": "encoder", "anomaly": None, "next_items": None}
    thresholds = {"anomaly": {"threshold": None, "reason": "none reached the target"}}
    fp32 = ServedVersion.load(
        export_version(_parts(encoder, None, served_by, thresholds), tmp_path / "1")
    )
    int8_folder = export_version(
        _parts(encoder, None, served_by, thresholds), tmp_path / "2", quantize=True
    )
    int8 = ServedVersion.load(int8_folder)
    assert fp32.encoder is not None
    assert [o.name for o in fp32.encoder.get_outputs()] == ["CHURN", "PURCHASE"]
    meta = json.loads((int8_folder / "model_config.json").read_text())
    assert meta["onnx"]["quantized"] == "int8" and meta["served"]["anomaly"] is None
    small = (int8_folder / "encoder.onnx").stat().st_size
    assert small < (tmp_path / "1" / "encoder.onnx").stat().st_size / 2
    a, b = fp32.score(tokens, None, None, 0), int8.score(tokens, None, None, 0)
    assert np.isnan(a["ANOMALY"]).all() and (a["ANOMALY_THRESHOLD"] == math.inf).all()
    gap = np.abs(a["CHURN"] - b["CHURN"]).max()
    assert 0 < gap < 0.1, gap


def test_a_version_folder_is_written_once_and_atomically(
    next_event: tuple[NextEventModel, ItemVocabulary, dict[str, object]], tmp_path: Path
) -> None:
    served_by = {"churn": None, "purchase": None, "anomaly": None, "next_items": "network"}
    parts = _parts(None, next_event, served_by, {})
    folder = export_version(parts, tmp_path / "3")
    with pytest.raises(FileExistsError):
        export_version(parts, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3"]  # no staging folder left
    broken = _parts(None, None, served_by, {})
    with pytest.raises(ValueError, match="need the next-event network"):
        export_version(broken, tmp_path / "4")
    assert not (tmp_path / "4").exists()


def test_a_format_1_folder_is_refused_with_the_migrate_command(tmp_path: Path) -> None:
    folder = tmp_path / "6"
    folder.mkdir()
    (folder / "model_config.json").write_text(json.dumps({"model": {}, "vocabulary": {}}))
    with pytest.raises(ValueError, match="clickscore model migrate --version 6"):
        ServedVersion.load(folder)


def _session_index(items: ItemVocabulary, hashes: Array) -> Any:
    """An index of sessions cut from other users' item sequences (the calibration users)."""
    from stream.serving.session_knn import KnnConfig, SessionIndex

    rows = [r[r >= 2] for r in items.ids(hashes)[::7]]
    sessions = [r[-8:] for r in rows if r.size]
    return SessionIndex.build(
        sessions,
        list(range(len(sessions))),
        [f"s{i}" for i in range(len(sessions))],
        KnnConfig(k=50, sample_size=200),
        first_id=2,
        end_id=2 + len(items.items),
        items=items,
    )


@pytest.mark.parametrize("strategy", ["session_knn", "blend"])
def test_session_knn_and_blend_are_served_as_the_index_and_blend_top_give_them(
    strategy: str,
    next_event: tuple[NextEventModel, ItemVocabulary, dict[str, object]],
    data: dict[str, tuple[Array, Array]],
    tmp_path: Path,
) -> None:
    from stream.serving.session_knn import blend_top

    items = next_event[1]
    index = _session_index(items, data["calibration"][1])
    tokens, hashes = data["heldout"]
    tokens, hashes = tokens[:300], hashes[:300]
    parts = _parts(
        None,
        next_event if strategy == "blend" else None,
        {"churn": None, "purchase": None, "anomaly": None, "next_items": strategy},
        {},
    )
    parts.session_knn = index
    parts.session_knn_config = index.config.to_dict()
    parts.blend_weight = 0.5 if strategy == "blend" else None
    folder = export_version(parts, tmp_path / "1")
    assert (folder / "session_knn.npz").exists()
    assert (folder / "next_event.onnx").exists() == (strategy == "blend")
    version = ServedVersion.load(folder)
    served = version.score(tokens, hashes, None, k=10)
    ids = items.ids(hashes)
    want_ids, want_scores = index.recommend(ids, 10)
    if strategy == "blend":
        # The network's side as served (ORT; its parity with eager is tested above): a row
        # whose mass went to a hashed bucket ties every item, and eager breaks ties otherwise.
        assert version.next_event is not None
        feeds = {"ITEMS": ids, "TYPES": tokens[:, :, 0].copy(), "GAPS": tokens[:, :, 4].copy()}
        top, probs, _ = version.next_event.run(None, feeds)
        want_ids, want_scores = blend_top(top, probs, want_ids, want_scores, 0.5, 10)
    else:
        assert np.isnan(served["NEXT_PURCHASE"]).all()  # the index knows no event types
    names = np.array([b"", b"", *(i.encode() for i in items.items)], dtype=object)
    expected = np.where(want_ids > 0, names[np.clip(want_ids, 0, len(names) - 1)], b"")
    assert (served["NEXT_ITEMS"] != b"").any()
    np.testing.assert_allclose(served["NEXT_ITEM_PROBS"], want_scores, atol=1e-5, rtol=0)
    assert (served["NEXT_ITEMS"] == expected).all()


def test_anomaly_beside_a_feature_head_runs_only_the_encoders_surprise_pass(
    encoder: ClickscoreModel, data: dict[str, tuple[Array, Array]], tmp_path: Path
) -> None:
    served_by = {"churn": "feature_head", "purchase": "feature_head", "anomaly": "encoder"}
    parts = _parts(encoder, None, {**served_by, "next_items": None}, {})
    head = json.loads((PROJECT_ROOT / "model_repo/clickscore/7/model_config.json").read_text())
    parts.feature_head = head["feature_head"]
    version = ServedVersion.load(export_version(parts, tmp_path / "1"))
    assert version.encoder is not None
    assert [o.name for o in version.encoder.get_outputs()] == ["SURPRISE"]
    tokens, _ = data["heldout"]
    features = np.zeros((len(tokens), version.feature_count), dtype=np.float32)
    served = version.score(tokens, None, features, 0)
    with torch.inference_mode():
        eager = encoder.score(torch.from_numpy(tokens))
    np.testing.assert_allclose(served["ANOMALY"][:, 0], eager.anomaly.numpy(), atol=1e-5, rtol=0)
    assert np.isfinite(served["CHURN"]).all() and np.isnan(served["ANOMALY_THRESHOLD"]).all()
