"""`clickscore bench broker | triton` against the real broker and tritonserver (figures are
not asserted: these machines are noisy; the commands must work and count what they did)."""

from __future__ import annotations

import numpy as np
import pytest

from stream.ceilings import broker_ceiling, sample_tokens, triton_grid
from stream.settings import Settings
from stream.tokenizer import Vocabulary

pytestmark = pytest.mark.integration


def test_sample_tokens_are_full_sequences_within_each_vocabulary() -> None:
    tokens = sample_tokens(5, 64, seed=1)
    assert tokens.shape == (5, 64, len(Vocabulary().field_sizes)) and tokens.dtype == np.int64
    assert (tokens >= 1).all()  # no padding: full-length sequences
    assert (tokens < np.array(Vocabulary().field_sizes)).all()


async def test_broker_ceiling_reads_back_every_record(settings: Settings) -> None:
    result = await broker_ceiling(settings, records=3000, record_bytes=200)
    assert result.records == 3000 and result.produce_per_s > 0 and result.consume_per_s > 0


async def test_triton_grid_measures_every_point(stack_settings: Settings) -> None:
    points = await triton_grid(stack_settings, [1, 16], [1, 3], duration_s=0.3)
    assert [(p.batch, p.concurrency) for p in points] == [(1, 1), (1, 3), (16, 1), (16, 3)]
    for p in points:
        assert p.requests >= p.concurrency  # each closed-loop client finished at least one
        assert p.sequences_per_s > 0 and 0 < p.p50_ms <= p.p99_ms
