"""The worker's requests with and without FEATURES, as the served model's config declares it
(no services: the config is parsed from the repository, the requests are built, not sent)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from stream.contract.features import NAMES, FeatureSchema, user_features
from stream.contract.state import UserState
from stream.contract.tokenizer import Vocabulary
from stream.settings import PROJECT_ROOT
from stream.worker.triton_client import ModelMismatch, ModelScores, TritonScorer
from stream.worker.window import Message
from tests.conftest import make_settings
from tests.support.pipeline import MemoryTable, RecordingOutputs
from tests.unit.test_pipeline import NOW_MS, message, pipeline

CONFIG = PROJECT_ROOT / "model_repo" / "clickscore" / "config.pbtxt"
ROWS, LENGTH = 3, 64


def config(edit: str = "") -> model_config_pb2.ModelConfig:
    parsed = text_format.Parse(CONFIG.read_text(), model_config_pb2.ModelConfig())
    if edit == "no features":
        kept = [i for i in parsed.input if i.name != "FEATURES"]
        del parsed.input[:]
        parsed.input.extend(kept)
    elif edit == "other schema":
        parsed.parameters["feature_schema"].string_value = "behaviour-v0:3:000000000000"
    return parsed


def inputs_of(scorer: TritonScorer, features: npt.NDArray[np.float32] | None) -> dict[str, object]:
    tokens = np.ones((ROWS, LENGTH, 6), dtype=np.int32)
    hashes = np.arange(ROWS * LENGTH, dtype=np.int64).reshape(ROWS, LENGTH)
    inputs, _ = scorer.request(tokens, hashes, features)
    return {i.name(): (i.datatype(), i.shape()) for i in inputs}


def test_the_served_config_takes_features_of_the_workers_schema() -> None:
    scorer = TritonScorer(make_settings())
    scorer.configure(config())
    assert scorer.takes_features
    features = np.zeros((ROWS, len(NAMES)), dtype=np.float32)
    assert inputs_of(scorer, features) == {
        "TOKENS": ("INT64", [ROWS, LENGTH, 6]),
        "ITEM_HASHES": ("INT64", [ROWS, LENGTH]),
        "FEATURES": ("FP32", [ROWS, len(NAMES)]),
    }
    with pytest.raises(ValueError, match="FEATURES must be"):
        inputs_of(scorer, np.zeros((ROWS, 5), dtype=np.float32))


def test_a_config_without_features_gets_none() -> None:
    scorer = TritonScorer(make_settings())
    scorer.configure(config("no features"))
    assert not scorer.takes_features
    sent = inputs_of(scorer, np.zeros((ROWS, len(NAMES)), dtype=np.float32))
    assert set(sent) == {"TOKENS", "ITEM_HASHES"}


def test_a_config_of_another_feature_schema_is_refused() -> None:
    scorer = TritonScorer(make_settings())
    with pytest.raises(ModelMismatch, match="behaviour-v0"):
        scorer.configure(config("other schema"))
    assert FeatureSchema(Vocabulary()).version in CONFIG.read_text()


class FeatureScorer:
    takes_features = True

    def __init__(self) -> None:
        self.features: list[npt.NDArray[np.float32]] = []

    async def score(
        self,
        tokens: npt.NDArray[np.int32],
        item_hashes: npt.NDArray[np.int64] | None = None,
        features: npt.NDArray[np.float32] | None = None,
    ) -> ModelScores:
        assert features is not None
        self.features.append(features)
        n = tokens.shape[0]
        half = np.full(n, 0.5, dtype=np.float32)
        return ModelScores(half, half, half, ["6"] * n)


async def test_the_pipeline_sends_each_users_features_at_their_last_event() -> None:
    scorer, table = FeatureScorer(), MemoryTable()
    await pipeline(RecordingOutputs(), scorer, table).process(
        [message("alice", 0, 0), message("alice", 1, 1), message("bob", 0, 2)]
    )
    (sent,) = scorer.features
    states = {k.decode(): UserState.from_bytes(v) for k, v in table.rows.items()}
    vocab = Vocabulary()
    for row, user in enumerate(("alice", "bob")):
        expected = user_features(states[user], states[user].last_ts_ms, vocab)
        np.testing.assert_allclose(sent[row], expected, rtol=1e-6)
    assert states["alice"].event_count == 2 and NOW_MS - states["alice"].last_ts_ms < 1000


def _at(user: str, n: int, ts_ms: int, offset: int) -> Message:
    value = b'{"event_id":"%s-%d","user_id":"%s","ts":%d,"event_type":"view"}' % (
        user.encode(),
        n,
        user.encode(),
        ts_ms,
    )
    return Message(user.encode(), value, "events", 0, offset)


async def test_a_silent_re_score_sends_the_features_at_the_silence_level() -> None:
    scorer, table = FeatureScorer(), MemoryTable()
    scoring = pipeline(RecordingOutputs(), scorer, table)
    day = 86_400_000
    start = NOW_MS - 3 * day
    await scoring.process([_at("alice", 0, start, 0), _at("alice", 1, start + 1000, 1)])
    # bob's event moves the partition's clock 2 days and a bit past alice's last event: she
    # is due at the 1 d and 2 d levels together, re-scored once at 2 d.
    await scoring.process([_at("bob", 0, start + 1000 + 2 * day + 5, 2)])
    sent = scorer.features[-1]
    assert sent.shape == (2, len(NAMES))  # bob, then alice's silent re-score
    alice = UserState.from_bytes(table.rows[b"alice"])
    expected = user_features(alice, alice.last_ts_ms + 2 * day, Vocabulary())
    np.testing.assert_allclose(sent[1], expected, rtol=1e-6)
    assert sent[1][NAMES.index("log_silence_hours")] == pytest.approx(np.log1p(48))
