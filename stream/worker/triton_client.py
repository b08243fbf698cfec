"""Scoring through Triton: asyncio gRPC, bounded concurrency, retried until Triton answers.

A window's users are split into requests of at most `batch_size` sequences, each padded to
the model's fixed length so Triton's dynamic batcher can merge them; with them go the users'
item hashes (ITEM_HASHES) and back come their next items (NEXT_*) where the served model
declares those; their behaviour features (FEATURES, stream/contract/features.py) go where it
declares that input, and the worker then checks at start that the config's `feature_schema`
is its own and refuses to run otherwise, as for a sequence length it does not send. What a
failed request does depends on its gRPC status (stream/faults.py):

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

from stream.contract.features import FeatureSchema
from stream.contract.tokenizer import NUM_FIELDS, Vocabulary
from stream.faults import is_request_rejected, is_transient_triton_error
from stream.retry import retry_forever, summary
from stream.settings import WorkerSettings
from stream.worker import metrics
from stream.worker.metrics import Health

log = logging.getLogger(__name__)

Columns = dict[str, npt.NDArray[np.float32]]  # output name -> one value per sequence

INPUT = "TOKENS"
ITEM_INPUT = "ITEM_HASHES"
FEATURE_INPUT = "FEATURES"
FEATURE_SCHEMA = "feature_schema"  # the config.pbtxt parameter naming FEATURES' schema
OUTPUTS = ("CHURN", "PURCHASE", "ANOMALY")
# The served version's churn alert threshold, per row (stream/serving/version.py). Requested
# only from a model whose config declares it; rows of a model without it get NaN.
THRESHOLD = "CHURN_THRESHOLD"
# The served version's anomaly alert threshold, per row, likewise; a version folder older than
# its config.pbtxt answers without it, and its rows get NaN (the worker's setting applies).
ANOMALY_THRESHOLD = "ANOMALY_THRESHOLD"
MODEL = "model"  # the health component a failing model reports under
# tritonclient's own defaults for these, kept when the channel options are given explicitly.
_MAX_MESSAGE_BYTES = 2**31 - 1
_MIN_RECONNECT_BACKOFF_MS = 100
# Requested, with ITEM_HASHES sent, only from a model whose config declares them.
NEXT_OUTPUTS = ("NEXT_ITEMS", "NEXT_ITEM_PROBS", "NEXT_PURCHASE")
NextItems = list[tuple[str, float]]  # (raw item id, probability), most likely first
NEXT_PURCHASE = NEXT_OUTPUTS[2]


class ModelMismatch(RuntimeError):
    """The served model's interface is not the one this worker was configured for."""


class ModelFailure(RuntimeError):
    """Triton answered, but not with scores: the model itself is failing."""


@dataclass(frozen=True)
class ModelScores:
    churn: npt.NDArray[np.float32]
    purchase: npt.NDArray[np.float32]
    anomaly: npt.NDArray[np.float32]  # NaN: the version serves none (no alert, NULL stored)
    model_versions: list[str]  # per row: a hot swap may land between two requests
    # Per row: why Triton refused the request holding it (INVALID_ARGUMENT), or None; empty
    # when no row was refused.
    rejected: list[str | None] = field(default_factory=list)
    # Per row, from the version that scored it; None or NaN: that version carries none.
    churn_threshold: npt.NDArray[np.float32] | None = None
    # Per row, likewise: NaN falls back to the worker's setting, infinity never alerts.
    anomaly_threshold: npt.NDArray[np.float32] | None = None
    # Per row; empty when the served model declares no next-event outputs (NaN purchase).
    next_items: list[NextItems] = field(default_factory=list)
    next_purchase: npt.NDArray[np.float32] = field(
        default_factory=lambda: np.zeros(0, dtype=np.float32)
    )

    def rows(self, keep: list[int]) -> ModelScores:
        """Only these rows, in this order."""
        return ModelScores(
            churn=self.churn[keep],
            purchase=self.purchase[keep],
            anomaly=self.anomaly[keep],
            model_versions=[self.model_versions[i] for i in keep],
            churn_threshold=None if self.churn_threshold is None else self.churn_threshold[keep],
            anomaly_threshold=(
                None if self.anomaly_threshold is None else self.anomaly_threshold[keep]
            ),
            rejected=[self.rejected[i] for i in keep] if self.rejected else [],
            next_items=[self.next_items[i] for i in keep] if self.next_items else [],
            next_purchase=(
                self.next_purchase[keep] if self.next_purchase.size else self.next_purchase
            ),
        )


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
        vocab: Vocabulary | None = None,
    ) -> None:
        self._settings = settings
        self._schema = FeatureSchema(vocab or Vocabulary())
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
        self._items = False  # the model takes ITEM_HASHES and returns the next items
        self._anomaly_threshold = False  # the model declares ANOMALY_THRESHOLD
        self.takes_features = False  # the model takes FEATURES (ScoringPipeline reads this)

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
        self.configure(config)

    def configure(self, config: Any) -> None:
        """Adopt the served model's interface (its config, as Triton reports it)."""
        dims = [list(i.dims) for i in config.input if i.name == INPUT]
        expected = [self._settings.sequence_length, NUM_FIELDS]
        if dims != [expected]:
            raise ModelMismatch(
                f"model '{self._settings.triton_model}' takes {INPUT} {dims}, but this worker "
                f"sends {expected} (CLICKSCORE_SEQUENCE_LENGTH)"
            )
        if any(o.name == THRESHOLD for o in config.output):
            self._outputs = (*OUTPUTS, THRESHOLD)
        self._anomaly_threshold = any(o.name == ANOMALY_THRESHOLD for o in config.output)
        self._items = any(i.name == ITEM_INPUT for i in config.input) and any(
            o.name == NEXT_OUTPUTS[0] for o in config.output
        )
        features = [list(i.dims) for i in config.input if i.name == FEATURE_INPUT]
        self.takes_features = bool(features)
        if not features:
            return
        declared = config.parameters[FEATURE_SCHEMA].string_value
        if features != [[self._schema.count]] or declared != self._schema.version:
            raise ModelMismatch(
                f"model '{self._settings.triton_model}' takes {FEATURE_INPUT} {features} of "
                f"schema {declared!r}, but this worker computes {self._schema.count} features "
                f"of schema {self._schema.version!r}"
            )

    async def _model_config(self) -> Any:
        assert self._client is not None
        # A deadline on every call: a server that takes the connection and never answers
        # is retried (and logged) like one that refuses it, never waited on in silence.
        model, deadline = self._settings.triton_model, self._settings.triton_timeout_s
        if not await self._client.is_model_ready(model, client_timeout=deadline):
            raise ConnectionError(f"model '{model}' is not ready")
        response = await self._client.get_model_config(model, client_timeout=deadline)
        return response.config

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def score(
        self,
        tokens: npt.NDArray[np.int32],
        item_hashes: npt.NDArray[np.int64] | None = None,
        features: npt.NDArray[np.float32] | None = None,
    ) -> ModelScores:
        """tokens: (users, sequence_length, NUM_FIELDS) int32, item_hashes: (users,
        sequence_length), features: (users, features) -> one score per user. Features are
        sent only to a model that declares FEATURES."""
        size = self._settings.batch_size
        if item_hashes is None:
            item_hashes = np.zeros(tokens.shape[:2], dtype=np.int64)
        starts = range(0, tokens.shape[0], size)
        results = await asyncio.gather(
            *(
                self._score_chunk(
                    tokens[i : i + size],
                    item_hashes[i : i + size],
                    None if features is None else features[i : i + size],
                )
                for i in starts
            )
        )
        versions: list[str] = []
        rejected: list[str | None] = []
        items: list[NextItems] = []
        for (_, version, refused, chunk_items), start in zip(results, starts, strict=True):
            rows = min(size, tokens.shape[0] - start)
            versions += [version] * rows
            rejected += [refused] * rows
            items += chunk_items

        def column(name: str) -> npt.NDArray[np.float32]:
            return np.concatenate([columns[name] for columns, _, _, _ in results])

        return ModelScores(
            churn=column("CHURN"),
            purchase=column("PURCHASE"),
            anomaly=column("ANOMALY"),
            model_versions=versions,
            churn_threshold=column(THRESHOLD),
            anomaly_threshold=column(ANOMALY_THRESHOLD),
            rejected=rejected,
            next_items=items,
            next_purchase=column(NEXT_PURCHASE),
        )

    async def _score_chunk(
        self,
        tokens: npt.NDArray[np.int32],
        item_hashes: npt.NDArray[np.int64],
        features: npt.NDArray[np.float32] | None,
    ) -> tuple[Columns, str, str | None, list[NextItems]]:
        """The chunk's output columns, its model version, why it was refused (or None), and
        its rows' next items."""
        rows = tokens.shape[0]
        try:
            columns, version, items = await self._infer_until_answered(
                tokens, item_hashes, features
            )
        except InferenceServerException as exc:
            if not is_request_rejected(exc):
                raise
            log.error("triton refused a request of %d sequences: %s", rows, summary(exc))
            names = (*OUTPUTS, THRESHOLD, ANOMALY_THRESHOLD, NEXT_PURCHASE)
            nan = {n: np.full(rows, np.nan, np.float32) for n in names}
            return nan, "", summary(exc), [[] for _ in range(rows)]
        self._health.recover(MODEL)
        for name in (THRESHOLD, ANOMALY_THRESHOLD, NEXT_PURCHASE):
            columns.setdefault(name, np.full(rows, np.nan, dtype=np.float32))
        return columns, version, None, items

    def _on_failure(self, exc: BaseException) -> None:
        if is_model_failure(exc):
            self._health.fail(
                MODEL, f"model '{self._settings.triton_model}' fails requests: {summary(exc)}"
            )

    def request(
        self,
        tokens: npt.NDArray[np.int32],
        item_hashes: npt.NDArray[np.int64],
        features: npt.NDArray[np.float32] | None,
    ) -> tuple[list[grpcclient.InferInput], tuple[str, ...]]:
        """The inputs of one request and the outputs to ask for, as the served model's
        interface (`configure`) has them."""
        tensor = grpcclient.InferInput(INPUT, list(tokens.shape), "INT64")
        tensor.set_data_from_numpy(tokens.astype(np.int64))
        inputs = [tensor]
        names: tuple[str, ...] = self._outputs
        if self._anomaly_threshold:
            names += (ANOMALY_THRESHOLD,)
        if self._items:
            hashes = grpcclient.InferInput(ITEM_INPUT, list(item_hashes.shape), "INT64")
            hashes.set_data_from_numpy(item_hashes.astype(np.int64))
            inputs.append(hashes)
            names += NEXT_OUTPUTS
        if self.takes_features and features is not None:
            if features.shape != (tokens.shape[0], self._schema.count):
                raise ValueError(
                    f"{FEATURE_INPUT} must be ({tokens.shape[0]}, {self._schema.count}), "
                    f"got {features.shape}"
                )
            values = grpcclient.InferInput(FEATURE_INPUT, list(features.shape), "FP32")
            values.set_data_from_numpy(features.astype(np.float32))
            inputs.append(values)
        return inputs, names

    async def _infer_until_answered(
        self,
        tokens: npt.NDArray[np.int32],
        item_hashes: npt.NDArray[np.int64],
        features: npt.NDArray[np.float32] | None,
    ) -> tuple[Columns, str, list[NextItems]]:
        async def infer() -> tuple[Columns, str, list[NextItems]]:
            assert self._client is not None
            inputs, names = self.request(tokens, item_hashes, features)
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
            columns = {name: self._output(result, name, tokens) for name in self._outputs}
            if self._anomaly_threshold and result.as_numpy(ANOMALY_THRESHOLD) is not None:
                columns[ANOMALY_THRESHOLD] = self._output(result, ANOMALY_THRESHOLD, tokens)
            items = self._next_items(result, tokens, columns)
            return columns, result.get_response().model_version, items

        return await retry_forever(
            infer,
            is_retriable=lambda exc: is_transient_triton_error(exc) or is_model_failure(exc),
            what="triton infer",
            max_backoff_s=self._max_backoff_s,
            stop=self._stop,
            on_failure=self._on_failure,
        )

    def _next_items(
        self, result: Any, tokens: npt.NDArray[np.int32], columns: Columns
    ) -> list[NextItems]:
        """The rows' next items, and NEXT_PURCHASE into columns, where the model answers them.

        A version folder older than its config.pbtxt answers without them: no items, NaN.
        """
        rows = tokens.shape[0]
        found = [result.as_numpy(name) for name in NEXT_OUTPUTS] if self._items else []
        if not found or any(f is None for f in found):
            return [[] for _ in range(rows)]
        names, probs, _ = found
        if names.shape[0] != rows or probs.shape != names.shape:
            raise ModelFailure(
                f"outputs {NEXT_OUTPUTS[0]} {names.shape} and {NEXT_OUTPUTS[1]} {probs.shape} "
                f"do not hold one row per sequence for {rows} sequences"
            )
        columns[NEXT_PURCHASE] = self._output(result, NEXT_PURCHASE, tokens)
        return next_items(names, probs)

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
