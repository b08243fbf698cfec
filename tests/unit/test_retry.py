from __future__ import annotations

import asyncio
import itertools

import pytest

from stream.retry import backoff_delays, retry_forever
from stream.worker import metrics


def test_backoff_doubles_up_to_the_cap_within_its_jitter() -> None:
    top = list(itertools.islice(backoff_delays(max_s=1.0, rng=lambda: 1.0), 6))
    assert top == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    bottom = list(itertools.islice(backoff_delays(max_s=1.0, rng=lambda: 0.0), 3))
    assert bottom == [0.05, 0.1, 0.2]


async def test_retriable_errors_are_retried_until_success_and_counted() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("down")
        return "done"

    before = metrics.RETRIES.labels("unit flaky")._value.get()
    result = await retry_forever(
        flaky,
        is_retriable=lambda e: isinstance(e, ConnectionError),
        what="unit flaky",
        max_backoff_s=0.01,
    )
    assert (result, calls) == ("done", 3)
    assert metrics.RETRIES.labels("unit flaky")._value.get() - before == 2


async def test_other_errors_are_raised_at_once() -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bug")

    with pytest.raises(ValueError):
        await retry_forever(
            broken,
            is_retriable=lambda e: isinstance(e, ConnectionError),
            what="unit broken",
            max_backoff_s=0.01,
        )
    assert calls == 1


async def test_cancellation_passes_through() -> None:
    async def forever_down() -> None:
        raise ConnectionError("down")

    task = asyncio.ensure_future(
        retry_forever(
            forever_down, is_retriable=lambda e: True, what="unit cancel", max_backoff_s=0.05
        )
    )
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
