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
from dataclasses import dataclass
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
OUTPUTS = ("CHURN", "PURCHASE", "ANOMALY")
# The served version's churn alert threshold, per row (trainer/triton_model.py). Requested
# only from a model whose config declares it; rows of a model without it get NaN.
THRESHOLD = "CHURN_THRESHOLD"
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
    # Per row, from the version that scored it; None or NaN: that version carries none.
    churn_threshold: npt.NDArray[np.float32] | None = None


def is_retriable(exc: BaseException) -> bool:
    if isinstance(exc, InferenceServerException):
        return str(exc.status()) not in NOT_RETRIABLE
    return isinstance(exc, (OSError, asyncio.TimeoutError, ConnectionError))


class TritonScorer:
    def __init__(self, settings: WorkerSettings) -> None:
        self._settings = settings
        self._client: grpcclient.InferenceServerClient | None = None
        self._limit = asyncio.Semaphore(settings.triton_max_concurrency)
        self._outputs: tuple[str, ...] = OUTPUTS

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
        if any(o.name == THRESHOLD for o in config.output):
            self._outputs = (*OUTPUTS, THRESHOLD)

    async def _model_config(self) -> Any:
        assert self._client is not None
        if not await self._client.is_model_ready(self._settings.triton_model):
            raise ConnectionError(f"model '{self._settings.triton_model}' is not ready")
        response = await self._client.get_model_config(self._settings.triton_model)
        return response.config

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def score(self, tokens: npt.NDArray[np.int32]) -> ModelScores:
        """tokens: (users, sequence_length, NUM_FIELDS) int32 -> one score per user."""
        size = self._settings.batch_size
        chunks = [tokens[i : i + size] for i in range(0, tokens.shape[0], size)]
        results = await asyncio.gather(*(self._score_chunk(c) for c in chunks))
        versions: list[str] = []
        for (_, version), chunk in zip(results, chunks, strict=True):
            versions += [version] * chunk.shape[0]

        def column(name: str) -> npt.NDArray[np.float32]:
            return np.concatenate([r[0][name] for r in results]).astype(np.float32)

        return ModelScores(
            churn=column("CHURN"),
            purchase=column("PURCHASE"),
            anomaly=column("ANOMALY"),
            model_versions=versions,
            churn_threshold=column(THRESHOLD),
        )

    async def _score_chunk(
        self, tokens: npt.NDArray[np.int32]
    ) -> tuple[dict[str, npt.NDArray[np.float32]], str]:
        async def infer() -> tuple[dict[str, npt.NDArray[np.float32]], str]:
            assert self._client is not None
            tensor = grpcclient.InferInput(INPUT, list(tokens.shape), "INT64")
            tensor.set_data_from_numpy(tokens.astype(np.int64))
            outputs = [grpcclient.InferRequestedOutput(name) for name in self._outputs]
            async with self._limit:
                started = time.perf_counter()
                result = await self._client.infer(
                    self._settings.triton_model,
                    [tensor],
                    outputs=outputs,
                    client_timeout=self._settings.triton_timeout_s,
                )
                metrics.TRITON_LATENCY.observe(time.perf_counter() - started)
            columns = {name: result.as_numpy(name).reshape(-1) for name in self._outputs}
            columns.setdefault(THRESHOLD, np.full(tokens.shape[0], np.nan, dtype=np.float32))
            return columns, result.get_response().model_version

        return await retry_forever(
            infer,
            is_retriable=is_retriable,
            what="triton infer",
            max_backoff_s=self._settings.retry_max_backoff_s,
        )
