"""Which errors can succeed later: one classification, by type, for every client the worker uses.

Retrying is only worth it for a fault outside the request: a broker, Triton or database that
is down, restarting or overloaded. An error about the request itself (too large, refused,
malformed) fails the same way on every attempt; retrying it forever stalls every partition
behind one message, which is what this module exists to prevent.

- Kafka: aiokafka marks each of its errors `retriable` (aiokafka/errors.py); a socket error
  or a timeout of the client's own is a broker that is not answering.
- Triton: the gRPC status code (the `grpc.StatusCode` enum) of the call. `UNAVAILABLE`,
  `DEADLINE_EXCEEDED` and `RESOURCE_EXHAUSTED` are a server that is down, slow or full.
  `INVALID_ARGUMENT` is this request's fault (`is_request_rejected`). Anything else from a
  server that answered (`INTERNAL`, `UNKNOWN`, a malformed response) is the model failing
  (`ModelFailure` in the Triton client): retried too, but it makes the worker unhealthy.
- Database: connection errors (SQLAlchemy `OperationalError`/`InterfaceError`, asyncpg's
  connection errors, OSError) and the SQLSTATEs of a server restarting or a transaction to
  run again; never a constraint or a syntax error.
"""

from __future__ import annotations

import asyncio

import grpc
from aiokafka.errors import KafkaError, KafkaTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from tritonclient.utils import InferenceServerException

# --- Kafka -----------------------------------------------------------------------------------


def is_retriable_kafka_error(exc: BaseException) -> bool:
    if isinstance(exc, KafkaTimeoutError):
        return True
    if isinstance(exc, KafkaError):
        return bool(exc.retriable)
    return isinstance(exc, OSError | asyncio.TimeoutError)


# --- Triton (gRPC) -----------------------------------------------------------------------------

TRANSIENT_GRPC_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
_CODES_BY_NAME = {str(code): code for code in grpc.StatusCode}


def grpc_status(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status code of a failed Triton call, as the enum.

    tritonclient re-raises the channel's `grpc.RpcError` as an `InferenceServerException`
    (`raise ... from None`, which keeps the original as `__context__`): the code comes from
    that error itself. An exception the client made up without one (a call it cancelled)
    carries only the enum's printed name, mapped back to the member here.
    """
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            break
        if isinstance(seen, grpc.RpcError) and hasattr(seen, "code"):
            code = seen.code()  # grpc.aio.AioRpcError and grpc.Call both have one
            if isinstance(code, grpc.StatusCode):
                return code
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, InferenceServerException) and exc.status() is not None:
        named: grpc.StatusCode | None = _CODES_BY_NAME.get(str(exc.status()))
        return named
    return None


def is_transient_triton_error(exc: BaseException) -> bool:
    """Triton is down, slow or full: the same request can succeed later."""
    if isinstance(exc, InferenceServerException | grpc.RpcError):
        code = grpc_status(exc)
        return code is not None and code in TRANSIENT_GRPC_CODES
    return isinstance(exc, OSError | asyncio.TimeoutError)


def is_request_rejected(exc: BaseException) -> bool:
    """Triton refused this request's content: only these inputs are at fault."""
    return grpc_status(exc) is grpc.StatusCode.INVALID_ARGUMENT


# --- Database --------------------------------------------------------------------------------

# SQLSTATEs worth waiting out: 08 connection exception; 57P admin/crash shutdown or "cannot
# connect now" (a restart); 53300 too many connections; 40 serialization failure or deadlock,
# where the whole transaction is meant to be run again. Anything else (constraint, syntax,
# missing table) would fail again the same way.
_RETRIABLE_SQLSTATES = ("08", "57P", "53300", "40")
# SQLite reports a missing table as OperationalError too; only a busy or locked file passes.
_RETRIABLE_SQLITE_ERRORS = ("SQLITE_BUSY", "SQLITE_LOCKED")


def _sqlstate(exc: BaseException) -> str | None:
    seen: BaseException | None = exc
    for _ in range(4):  # the error, SQLAlchemy's .orig, the driver's own cause
        if seen is None:
            return None
        code = getattr(seen, "sqlstate", None)
        if isinstance(code, str):
            return code
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


def is_retriable_db_error(exc: BaseException) -> bool:
    """True for a database that is down, restarting or unreachable; False for a bad query."""
    if isinstance(exc, OSError | TimeoutError):  # ConnectionError is an OSError
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlite_error = getattr(exc.orig, "sqlite_errorname", None)
        if sqlite_error is not None:
            return str(sqlite_error).startswith(_RETRIABLE_SQLITE_ERRORS)
        if isinstance(exc, OperationalError | InterfaceError):
            return True
    code = _sqlstate(exc)
    if code is not None:
        return code.startswith(_RETRIABLE_SQLSTATES)
    import asyncpg

    # Raised by asyncpg itself while connecting, before SQLAlchemy wraps anything.
    return isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.InterfaceError)
