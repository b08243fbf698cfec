"""Retry with exponential backoff and jitter, shared by the broker, Triton and database clients.

The caller says which errors are retriable (by type, not by message; stream/faults.py). A
retriable fault is retried until it succeeds or the process is asked to stop: the work is not
done, so the offsets behind it must not be committed either; giving up would mean dropping it.
A stop request (`stop`, set on SIGTERM) ends the wait and the attempt in flight at once with
`Stopping`, so a worker waiting out a fault still shuts down promptly, its window unacknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from stream.worker import metrics

T = TypeVar("T")

_log = logging.getLogger(__name__)

INITIAL_BACKOFF_S = 0.1


class Stopping(Exception):
    """The process was asked to stop while this call was failing: the work is not done."""


def backoff_delays(
    *,
    initial_s: float = INITIAL_BACKOFF_S,
    max_s: float,
    factor: float = 2.0,
    rng: Callable[[], float] = random.random,
) -> Iterator[float]:
    """Endless waits: initial_s, doubling up to max_s, each drawn from [half, full] of its step.

    The jitter keeps many workers that lost the same server from retrying in lockstep; keeping
    the lower half still lets the wait grow, so a server that is down is not hammered.
    """
    step = min(initial_s, max_s)
    while True:
        yield step * (0.5 + 0.5 * rng())
        step = min(step * factor, max_s)


def summary(exc: BaseException) -> str:
    """Type and first line of an error: drivers append SQL and parameters after the first."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line[:300]}"


async def retry_forever(
    op: Callable[[], Awaitable[T]],
    *,
    is_retriable: Callable[[BaseException], bool],
    what: str,
    max_backoff_s: float,
    log: logging.Logger | None = None,
    target: str | None = None,
    stop: asyncio.Event | None = None,
    on_failure: Callable[[BaseException], None] | None = None,
) -> T:
    """Await `op()` until it succeeds; a non-retriable error is raised at once.

    Each failure is logged as a warning with `what` and the error's type and first line, never
    the payload, to `log` (default: this module's), and counted in clickscore_retries_total
    under `target` (default `what`; pass a fixed one when `what` carries counts, so the
    metric keeps a bounded set of labels); `on_failure` sees each retried error first.
    Cancellation (not an Exception) passes through; `stop` set raises `Stopping`.
    """
    log = log or _log
    delays = backoff_delays(max_s=max_backoff_s)
    attempt = 0
    while True:
        attempt += 1
        try:
            return await _unless_stopped(op(), stop, what)
        except Stopping:
            raise
        except Exception as exc:
            if not is_retriable(exc):
                raise
            if on_failure is not None:
                on_failure(exc)
            delay = next(delays)
            metrics.RETRIES.labels(target or what).inc()
            log.warning(
                "%s failed (attempt %d), retrying in %.2f s: %s", what, attempt, delay, summary(exc)
            )
        await _unless_stopped(asyncio.sleep(delay), stop, what)


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event | None, what: str) -> T:
    """`work`'s result, or `Stopping` (with `work` cancelled) as soon as `stop` is set."""
    if stop is None:
        return await work
    if stop.is_set():
        if asyncio.iscoroutine(work):
            work.close()
        raise Stopping(f"{what}: stop requested")
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    raise Stopping(f"{what}: stop requested")
