"""Scoring through Triton: asyncio gRPC, bounded concurrency, retried until Triton answers.

A window's users are split into requests of at most `batch_size` sequences, each padded to
the model's fixed length so Triton's dynamic batcher can merge them. A failed request is
retried with backoff for as long as it takes: the worker's window waits, its events stay
unacknowledged, and consumption stops (backpressure) until Triton is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from stream.contract.tokenizer import NUM_FIELDS
from stream.retry import retry_forever
from stream.settings import WorkerSettings
from stream.worker import metrics

log = logging.getLogger(__name__)

INPUT = "TOKENS"
ITEM_INPUT = "ITEM_HASHES"
OUTPUTS = ("CHURN", "PURCHASE", "ANOMALY")
NEXT_OUTPUTS = ("NEXT_ITEMS", "NEXT_ITEM_PROBS", "NEXT_PURCHASE")
NextItems = list[tuple[str, float]]  # (raw item id, probability), most likely first
# Our own request is malformed: retrying cannot help, so these fail loudly instead.
NOT_RETRIABLE = ("StatusCode.INVALID_ARGUMENT",)


class ModelMismatch(RuntimeError):
    """The served model's interface is not the one this worker was configured for."""


@dataclass(frozen=True)
class ModelScores:
    churn: npt.NDArray[np.float32]
    purchase: npt.NDArray[np.float32]
    anomaly: npt.NDArray[np.float32]
    model_versions: list[str]  # per row: a hot swap may land between two requests
    # Per row; empty when the served model declares no next-event outputs (NaN purchase).
    next_items: list[NextItems] = field(default_factory=list)
    next_purchase: npt.NDArray[np.float32] = field(
        default_factory=lambda: np.zeros(0, dtype=np.float32)
    )


@dataclass(frozen=True)
class _Chunk:
    churn: npt.NDArray[np.float32]
    purchase: npt.NDArray[np.float32]
    anomaly: npt.NDArray[np.float32]
    version: str
    next_items: list[NextItems]
    next_purchase: npt.NDArray[np.float32]


def next_items(names: npt.NDArray[Any], probs: npt.NDArray[np.float32]) -> list[NextItems]:
    """NEXT_ITEMS (bytes) and NEXT_ITEM_PROBS rows -> [(item id, probability)], "" dropped."""
    return [
        [
            (n.decode() if isinstance(n, bytes) else str(n), float(p))
            for n, p in zip(row_names, row_probs, strict=True)
            if n
        ]
        for row_names, row_probs in zip(names, probs, strict=True)
    ]


def is_retriable(exc: BaseException) -> bool:
    if isinstance(exc, InferenceServerException):
        return str(exc.status()) not in NOT_RETRIABLE
    return isinstance(exc, (OSError, asyncio.TimeoutError, ConnectionError))


class TritonScorer:
    def __init__(self, settings: WorkerSettings) -> None:
        self._settings = settings
        self._client: grpcclient.InferenceServerClient | None = None
        self._limit = asyncio.Semaphore(settings.triton_max_concurrency)
        self._items = False  # the model takes ITEM_HASHES and returns the next items

    async def start(self) -> None:
        """Connect and wait (with backoff) until the model is ready; check its interface."""
        self._client = grpcclient.InferenceServerClient(self._settings.triton_grpc_url)
        config = await retry_forever(
            self._model_config,
            is_retriable=lambda exc: True,  # nothing to score until the model is there
            what="triton model config",
            max_backoff_s=self._settings.retry_max_backoff_s,
        )
        dims = [list(i.dims) for i in config.input if i.name == INPUT]
        expected = [self._settings.sequence_length, NUM_FIELDS]
        if dims != [expected]:
            raise ModelMismatch(
                f"model '{self._settings.triton_model}' takes {INPUT} {dims}, but this worker "
                f"sends {expected} (CLICKSCORE_SEQUENCE_LENGTH)"
            )
        self._items = any(i.name == ITEM_INPUT for i in config.input) and any(
            o.name == NEXT_OUTPUTS[0] for o in config.output
        )

    async def _model_config(self) -> Any:
        assert self._client is not None
        if not await self._client.is_model_ready(self._settings.triton_model):
            raise ConnectionError(f"model '{self._settings.triton_model}' is not ready")
        response = await self._client.get_model_config(self._settings.triton_model)
        return response.config

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def score(
        self, tokens: npt.NDArray[np.int32], item_hashes: npt.NDArray[np.int64] | None = None
    ) -> ModelScores:
        """tokens: (users, sequence_length, NUM_FIELDS) int32, item_hashes: (users,
        sequence_length) -> one score per user."""
        size = self._settings.batch_size
        if item_hashes is None:
            item_hashes = np.zeros(tokens.shape[:2], dtype=np.int64)
        starts = range(0, tokens.shape[0], size)
        results = await asyncio.gather(
            *(self._score_chunk(tokens[i : i + size], item_hashes[i : i + size]) for i in starts)
        )
        versions: list[str] = []
        items: list[NextItems] = []
        for r in results:
            versions += [r.version] * r.churn.shape[0]
            items += r.next_items
        return ModelScores(
            churn=np.concatenate([r.churn for r in results]),
            purchase=np.concatenate([r.purchase for r in results]),
            anomaly=np.concatenate([r.anomaly for r in results]),
            model_versions=versions,
            next_items=items,
            next_purchase=np.concatenate([r.next_purchase for r in results]),
        )

    async def _score_chunk(
        self, tokens: npt.NDArray[np.int32], item_hashes: npt.NDArray[np.int64]
    ) -> _Chunk:
        async def infer() -> _Chunk:
            assert self._client is not None
            tensor = grpcclient.InferInput(INPUT, list(tokens.shape), "INT64")
            tensor.set_data_from_numpy(tokens.astype(np.int64))
            inputs = [tensor]
            names: tuple[str, ...] = OUTPUTS
            if self._items:
                hashes = grpcclient.InferInput(ITEM_INPUT, list(item_hashes.shape), "INT64")
                hashes.set_data_from_numpy(item_hashes.astype(np.int64))
                inputs.append(hashes)
                names = OUTPUTS + NEXT_OUTPUTS
            outputs = [grpcclient.InferRequestedOutput(name) for name in names]
            async with self._limit:
                started = time.perf_counter()
                result = await self._client.infer(
                    self._settings.triton_model,
                    inputs,
                    outputs=outputs,
                    client_timeout=self._settings.triton_timeout_s,
                )
                metrics.TRITON_LATENCY.observe(time.perf_counter() - started)
            churn, purchase, anomaly = (result.as_numpy(name).reshape(-1) for name in OUTPUTS)
            rows = churn.shape[0]
            found = [result.as_numpy(name) for name in NEXT_OUTPUTS] if self._items else []
            # A version folder older than its config.pbtxt answers without them.
            if found and all(f is not None for f in found):
                items, buy = next_items(found[0], found[1]), found[2].reshape(-1)
            else:
                items, buy = [[] for _ in range(rows)], np.full(rows, np.nan, dtype=np.float32)
            version = result.get_response().model_version
            return _Chunk(churn, purchase, anomaly, version, items, buy)

        return await retry_forever(
            infer,
            is_retriable=is_retriable,
            what="triton infer",
            max_backoff_s=self._settings.retry_max_backoff_s,
        )
