"""Which errors are retried, by type and status code, and retries that observe a stop."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
)
from sqlalchemy.exc import IntegrityError, OperationalError
from tritonclient.grpc._utils import raise_error_grpc
from tritonclient.utils import InferenceServerException

from stream.faults import (
    grpc_status,
    is_request_rejected,
    is_retriable_db_error,
    is_retriable_kafka_error,
    is_transient_triton_error,
)
from stream.retry import Stopping, retry_forever
from stream.worker import metrics
from stream.worker.triton_client import (
    ModelFailure,
    TritonScorer,
    channel_args,
    is_model_failure,
)
from tests.conftest import make_settings


def triton_error(code: grpc.StatusCode) -> InferenceServerException:
    """The exception tritonclient raises for a failed gRPC call, made the way it makes it."""
    rpc = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="x")
    try:
        try:
            raise rpc
        except grpc.RpcError as rpc_error:
            raise_error_grpc(rpc_error)
    except InferenceServerException as exc:
        return exc
    raise AssertionError("raise_error_grpc did not raise")


@pytest.mark.parametrize(
    ("exc", "retriable"),
    [
        (KafkaConnectionError(), True),
        (NotLeaderForPartitionError(), True),
        (MessageSizeTooLargeError(), False),
        (TopicAuthorizationFailedError(), False),
        (ConnectionRefusedError(), True),
        (TypeError("bug"), False),
    ],
)
def test_kafka_errors_are_retried_as_aiokafka_marks_them(
    exc: BaseException, retriable: bool
) -> None:
    assert is_retriable_kafka_error(exc) is retriable


@pytest.mark.parametrize(
    ("code", "transient", "rejected", "model_failing"),
    [
        (grpc.StatusCode.UNAVAILABLE, True, False, False),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True, False, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, True, False, False),
        (grpc.StatusCode.INVALID_ARGUMENT, False, True, False),
        (grpc.StatusCode.INTERNAL, False, False, True),
        (grpc.StatusCode.UNKNOWN, False, False, True),
    ],
)
def test_triton_errors_by_grpc_status_code(
    code: grpc.StatusCode, transient: bool, rejected: bool, model_failing: bool
) -> None:
    exc = triton_error(code)
    assert grpc_status(exc) is code
    assert is_transient_triton_error(exc) is transient
    assert is_request_rejected(exc) is rejected
    assert is_model_failure(exc) is model_failing


def test_a_triton_error_without_a_status_is_a_failing_model() -> None:
    # What the client raised for the zero-byte outputs of a python backend under numpy 2.
    exc = InferenceServerException("")
    assert not is_transient_triton_error(exc) and not is_request_rejected(exc)
    assert is_model_failure(exc) and is_model_failure(ModelFailure("empty outputs"))


def test_database_connection_errors_are_retried_and_query_errors_are_not() -> None:
    assert is_retriable_db_error(OperationalError("SELECT 1", {}, ConnectionError("down")))
    assert is_retriable_db_error(OSError("unreachable"))
    assert not is_retriable_db_error(IntegrityError("INSERT", {}, ValueError("duplicate")))


def test_grpc_reconnect_backoff_is_capped_by_the_setting() -> None:
    args = dict(channel_args(make_settings(reconnect_max_backoff_ms=700)))
    assert args["grpc.max_reconnect_backoff_ms"] == 700
    assert args["grpc.initial_reconnect_backoff_ms"] <= 700
    assert args["grpc.min_reconnect_backoff_ms"] <= 700


async def test_a_stop_request_ends_a_retry_loop_and_the_attempt_in_flight() -> None:
    stop = asyncio.Event()
    attempts = 0

    async def hangs_then_fails() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("down")
        await asyncio.Event().wait()  # the second attempt never answers

    task = asyncio.ensure_future(
        retry_forever(
            hangs_then_fails,
            is_retriable=lambda exc: True,
            what="unit stop",
            max_backoff_s=0.01,
            stop=stop,
        )
    )
    while attempts < 2:
        await asyncio.sleep(0.01)
    stop.set()
    with pytest.raises(Stopping):
        await asyncio.wait_for(task, 5)
    with pytest.raises(Stopping):  # set before the call: no attempt at all
        await retry_forever(
            hangs_then_fails, is_retriable=lambda exc: True, what="u", max_backoff_s=1, stop=stop
        )
    assert attempts == 2


class _NeverAnswers(grpc.GenericRpcHandler):
    """A gRPC server that takes every call and never answers it."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        async def hang(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await asyncio.Event().wait()
            return b""

        return grpc.unary_unary_rpc_method_handler(hang)


async def test_a_triton_that_takes_calls_and_never_answers_is_retried() -> None:
    """The model check must fail on its deadline and be retried (counted, logged), not wait
    for an answer that never comes."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_NeverAnswers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        settings = make_settings(
            triton_grpc_url=f"127.0.0.1:{port}", triton_timeout_s=0.2, retry_max_backoff_s=0.05
        )
        retries = metrics.RETRIES.labels("triton model config")
        before = retries._value.get()
        stop = asyncio.Event()
        scorer = TritonScorer(settings, stop=stop)
        task = asyncio.ensure_future(scorer.start())
        for _ in range(200):  # 10 s
            if retries._value.get() >= before + 2 or task.done():
                break
            await asyncio.sleep(0.05)
        stop.set()
        with pytest.raises(Stopping):
            await asyncio.wait_for(task, 5)
        await scorer.close()
        assert retries._value.get() >= before + 2
    finally:
        await server.stop(None)
