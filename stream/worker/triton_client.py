"""Scoring through Triton: asyncio gRPC, bounded concurrency, retried until Triton answers.

A window's users are split into requests of at most `batch_size` sequences, each padded to
the model's fixed length so Triton's dynamic batcher can merge them. What a failed request
does depends on its gRPC status (stream/faults.py):

- Triton down, slow or full (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`):
  retried with backoff for as long as it takes; the window waits, its events stay
  unacknowledged, and consumption stops (backpressure) until Triton is back. The gRPC
  channel's own reconnect backoff is capped at `reconnect_max_backoff_ms`, and so are
  these retries, so scoring resumes within about that long once Triton answers again.
- `INVALID_ARGUMENT`: this request's sequences are at fault; their rows come back marked
  `rejected` (the pipeline dead-letters their events as `model_rejected`), the rest go on.
- Anything else from a server that answered (an error status, or outputs of the wrong size:
  a model that loaded but cannot run, such as a python backend under the wrong numpy): the
  model is failing. Retried like an outage, so nothing is committed past it, and the worker
  reports itself unhealthy with the reason until a request succeeds again.
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
from stream.faults import is_request_rejected, is_transient_triton_error
from stream.retry import retry_forever, summary
from stream.settings import WorkerSettings
from stream.worker import metrics
from stream.worker.metrics import Health

log = logging.getLogger(__name__)

Columns = dict[str, npt.NDArray[np.float32]]  # output name -> one value per sequence

INPUT = "TOKENS"
OUTPUTS = ("CHURN", "PURCHASE", "ANOMALY")
# The served version's churn alert threshold, per row (trainer/triton_model.py). Requested
# only from a model whose config declares it; rows of a model without it get NaN.
THRESHOLD = "CHURN_THRESHOLD"
MODEL = "model"  # the health component a failing model reports under
# tritonclient's own defaults for these, kept when the channel options are given explicitly.
_MAX_MESSAGE_BYTES = 2**31 - 1
_MIN_RECONNECT_BACKOFF_MS = 100


class ModelMismatch(RuntimeError):
    """The served model's interface is not the one this worker was configured for."""


class ModelFailure(RuntimeError):
    """Triton answered, but not with scores: the model itself is failing."""


@dataclass(frozen=True)
class ModelScores:
    churn: npt.NDArray[np.float32]
    purchase: npt.NDArray[np.float32]
    anomaly: npt.NDArray[np.float32]
    model_versions: list[str]  # per row: a hot swap may land between two requests
    # Per row: why Triton refused the request holding it (INVALID_ARGUMENT), or None; empty
    # when no row was refused.
    rejected: list[str | None] = field(default_factory=list)
    # Per row, from the version that scored it; None or NaN: that version carries none.
    churn_threshold: npt.NDArray[np.float32] | None = None

    def rows(self, keep: list[int]) -> ModelScores:
        """Only these rows, in this order."""
        return ModelScores(
            churn=self.churn[keep],
            purchase=self.purchase[keep],
            anomaly=self.anomaly[keep],
            model_versions=[self.model_versions[i] for i in keep],
            churn_threshold=None if self.churn_threshold is None else self.churn_threshold[keep],
            rejected=[self.rejected[i] for i in keep] if self.rejected else [],
        )


def is_model_failure(exc: BaseException) -> bool:
    """Triton answered with an error that is neither an outage nor this request's fault."""
    if isinstance(exc, ModelFailure):
        return True
    return (
        isinstance(exc, InferenceServerException)
        and not is_transient_triton_error(exc)
        and not is_request_rejected(exc)
    )


def channel_args(settings: WorkerSettings) -> list[tuple[str, int]]:
    """gRPC channel options: tritonclient's message limits, and a short reconnect backoff.

    gRPC backs off reconnecting to a server that refused connections, up to 120 s by
    default, and a call on a channel in backoff fails UNAVAILABLE at once: without a cap,
    a worker keeps failing long after Triton is back.
    """
    backoff = settings.reconnect_max_backoff_ms
    return [
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", min(_MIN_RECONNECT_BACKOFF_MS, backoff)),
        ("grpc.min_reconnect_backoff_ms", min(_MIN_RECONNECT_BACKOFF_MS, backoff)),
        ("grpc.max_reconnect_backoff_ms", backoff),
    ]


class TritonScorer:
    def __init__(
        self,
        settings: WorkerSettings,
        *,
        health: Health | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        self._settings = settings
        self._client: grpcclient.InferenceServerClient | None = None
        self._limit = asyncio.Semaphore(settings.triton_max_concurrency)
        self._outputs: tuple[str, ...] = OUTPUTS
        self._health = health or Health()
        self._stop = stop
        # Waits between retries stay within the channel's reconnect backoff: a longer wait
        # would hold scoring back after Triton is answering again.
        self._max_backoff_s = min(
            settings.retry_max_backoff_s, settings.reconnect_max_backoff_ms / 1000
        )

    async def start(self) -> None:
        """Connect and wait (with backoff) until the model is ready; check its interface."""
        self._client = grpcclient.InferenceServerClient(
            self._settings.triton_grpc_url, channel_args=channel_args(self._settings)
        )
        config = await retry_forever(
            self._model_config,
            is_retriable=lambda exc: True,  # nothing to score until the model is there
            what=f"triton model config at {self._settings.triton_grpc_url} "
            "(CLICKSCORE_TRITON_GRPC_URL)",
            target="triton model config",
            max_backoff_s=self._max_backoff_s,
            stop=self._stop,
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
        rejected: list[str | None] = []
        for (_, version, refused), chunk in zip(results, chunks, strict=True):
            versions += [version] * chunk.shape[0]
            rejected += [refused] * chunk.shape[0]

        def column(name: str) -> npt.NDArray[np.float32]:
            return np.concatenate([columns[name] for columns, _, _ in results])

        return ModelScores(
            churn=column("CHURN"),
            purchase=column("PURCHASE"),
            anomaly=column("ANOMALY"),
            model_versions=versions,
            churn_threshold=column(THRESHOLD),
            rejected=rejected,
        )

    async def _score_chunk(self, tokens: npt.NDArray[np.int32]) -> tuple[Columns, str, str | None]:
        """The chunk's output columns, its model version, and why it was refused (or None)."""
        try:
            columns, version = await self._infer_until_answered(tokens)
        except InferenceServerException as exc:
            if not is_request_rejected(exc):
                raise
            log.error("triton refused a request of %d sequences: %s", len(tokens), summary(exc))
            nan = {n: np.full(tokens.shape[0], np.nan, np.float32) for n in (*OUTPUTS, THRESHOLD)}
            return nan, "", summary(exc)
        self._health.recover(MODEL)
        columns.setdefault(THRESHOLD, np.full(tokens.shape[0], np.nan, dtype=np.float32))
        return columns, version, None

    def _on_failure(self, exc: BaseException) -> None:
        if is_model_failure(exc):
            self._health.fail(
                MODEL, f"model '{self._settings.triton_model}' fails requests: {summary(exc)}"
            )

    async def _infer_until_answered(self, tokens: npt.NDArray[np.int32]) -> tuple[Columns, str]:
        async def infer() -> tuple[Columns, str]:
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
            columns = {name: self._output(result, name, tokens) for name in self._outputs}
            return columns, result.get_response().model_version

        return await retry_forever(
            infer,
            is_retriable=lambda exc: is_transient_triton_error(exc) or is_model_failure(exc),
            what="triton infer",
            max_backoff_s=self._max_backoff_s,
            stop=self._stop,
            on_failure=self._on_failure,
        )

    @staticmethod
    def _output(result: Any, name: str, tokens: npt.NDArray[np.int32]) -> npt.NDArray[np.float32]:
        """One output, one float per sequence sent; anything else is a failing model."""
        try:
            values = result.as_numpy(name)
        except (ValueError, TypeError) as exc:  # raw bytes that are not the declared tensor
            raise ModelFailure(f"output {name} unreadable: {exc}") from exc
        if values is None or values.size != tokens.shape[0]:
            got = "nothing" if values is None else f"{values.size} values"
            raise ModelFailure(f"output {name} holds {got} for {tokens.shape[0]} sequences")
        out: npt.NDArray[np.float32] = values.reshape(-1).astype(np.float32, copy=False)
        return out
