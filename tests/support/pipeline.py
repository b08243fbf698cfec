"""In-process stand-ins for the scoring pipeline's table, scorer and outputs (unit tests only:
the integration tests run the real broker, Triton and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from stream.contract.events import Rejection
from stream.scoring.alerts import Alert
from stream.scoring.scores import Score
from stream.worker.triton_client import ModelScores
from stream.worker.window import Message


class MemoryTable:
    """The state table's load/put, on a dict (partitions ignored)."""

    def __init__(self) -> None:
        self.rows: dict[bytes, bytes] = {}

    def load(self, key: bytes, partition: int) -> bytes | None:
        return self.rows.get(key)

    def put(self, key: bytes, value: bytes, partition: int) -> None:
        self.rows[key] = value

    def stored(self) -> Iterable[tuple[bytes, bytes]]:
        return list(self.rows.items())


class ConstantScorer:
    """The same churn, purchase and anomaly scores for every row, from model version "1"."""

    def __init__(self, churn: float = 0.5, purchase: float = 0.5, anomaly: float = 0.5) -> None:
        self.values = (churn, purchase, anomaly)

    async def score(
        self, tokens: npt.NDArray[np.int32], item_hashes: npt.NDArray[np.int64] | None = None
    ) -> ModelScores:
        n = tokens.shape[0]
        churn, purchase, anomaly = (np.full(n, v, dtype=np.float32) for v in self.values)
        return ModelScores(churn, purchase, anomaly, ["1"] * n)


class RecordingOutputs:
    """A result sink (`write`) and a publisher (`results`, `dead_letters`) in one, keeping
    what each was given."""

    def __init__(self) -> None:
        self.scores: list[Score] = []  # written
        self.alerts: list[Alert] = []
        self.published_scores: list[Score] = []
        self.published_alerts: list[Alert] = []
        self.dead: list[tuple[Message, Rejection]] = []

    async def write(self, scores: Sequence[Score], alerts: Sequence[Alert]) -> None:
        self.scores += scores
        self.alerts += alerts

    async def results(self, scores: Sequence[Score], alerts: Sequence[Alert]) -> None:
        self.published_scores += scores
        self.published_alerts += alerts

    async def dead_letters(self, rejected: Sequence[tuple[Message, Rejection]]) -> None:
        self.dead += rejected


def view_message(user: str, n: int, offset: int, now_ms: int) -> Message:
    """`user`'s n-th view, n ms after `now_ms` - 1 s, at `offset` of partition 0."""
    value = b'{"event_id":"%s-%d","user_id":"%s","ts":%d,"event_type":"view"}' % (
        user.encode(),
        n,
        user.encode(),
        now_ms - 1000 + n,
    )
    return Message(user.encode(), value, "events", 0, offset)
