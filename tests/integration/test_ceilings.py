"""`clickscore bench broker | faust | triton | gpu | latency` against the real services (figures
are not asserted: these machines are noisy; the commands must work and count what they did)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from stream.bench.ceilings import broker_ceiling, sample_tokens, triton_grid
from stream.bench.gpu import gpu_bench
from stream.bench.latency import measure_rate, rate_events
from stream.contract.tokenizer import Vocabulary
from stream.datasets.synthetic import SyntheticConfig, generate
from stream.db import migrate
from stream.settings import Settings
from tests.support.checks import prepare, worker_settings

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


@pytest.mark.parametrize("through", [[], ["--batches"]])
def test_faust_ceiling_receives_every_record(settings: Settings, through: list[str]) -> None:
    # A Faust worker owns its process's event loop and signals: run the command as a child.
    env = {**os.environ, **settings.as_environment()}
    argv = [sys.executable, "-m", "stream.cli", "bench", "faust", "--records", "3000", *through]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    received = re.search(r"received: ([\d,]+) events/s at (\d+)% of one core", done.stdout)
    assert received is not None, done.stdout
    assert int(received.group(1).replace(",", "")) > 0


async def test_latency_bench_measures_an_offered_rate(settings: Settings) -> None:
    settings = worker_settings(settings)
    await prepare(settings)
    history, _ = generate(SyntheticConfig(users=40, days=2, seed=3))
    events = rate_events(history, rate=200, seconds=3, prefix="t-")
    point = await measure_rate(settings, events, rate=200, timeout_s=120)
    assert point.events == 600 and point.achieved_per_s > 0
    p50, p95, p99 = point.score_ms
    assert 0 < p50 <= p95 <= p99
    assert point.window_events > 0
    assert {"fold", "score", "results", "table"} <= set(point.stage_ms)


async def test_gpu_bench_sets_triton_against_the_in_process_ceiling(
    stack_settings: Settings,
) -> None:
    # On the CPU with tiny sizes: the same code a GPU run takes, but the device.
    result = await gpu_bench(
        stack_settings, [1, 4, 512], [1, 2], seconds=0.3, repeats=3, device="cpu"
    )
    assert (result.device, result.dtype) == ("cpu", "float32")
    assert [p.batch for p in result.ceiling] == [1, 4, 512]
    assert all(p.median_ms > 0 and p.sequences_per_s > 0 for p in result.ceiling)
    # 512 is above the CPU config's max_batch_size (256): measured in process only.
    assert result.max_batch_size == 256
    assert sorted({(p.batch, p.concurrency) for p in result.triton}) == [
        (1, 1),
        (1, 2),
        (4, 1),
        (4, 2),
    ]
    best = result.best_triton(4)
    assert best is not None and best.requests > 0
    assert result.best_triton(512) is None


def test_bench_gpu_command_prints_one_row_per_batch(stack_settings: Settings) -> None:
    # --config reloads the served model through the repository API; the CPU config here,
    # as a GPU run passes config.gpu.pbtxt.
    config = stack_settings.model_repo / stack_settings.triton_model / "config.pbtxt"
    argv = [sys.executable, "-m", "stream.cli", "bench", "gpu", "--device", "cpu"]
    argv += ["--config", str(config)]
    argv += ["--batches", "1,2", "--concurrency", "1", "--seconds", "0.2", "--repeats", "2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSCORE_")}
    done = subprocess.run(
        argv, env=env | stack_settings.as_environment(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    rows = [
        line
        for line in done.stdout.splitlines()
        if line.startswith("| 1 ") or line.startswith("| 2 ")
    ]
    assert len(rows) == 2, done.stdout


@pytest.mark.parametrize("workers", [None, 2])
def test_bench_worker_reports_throughput_and_the_workers_cpu_per_event(
    settings: Settings, workers: int | None
) -> None:
    settings = worker_settings(settings)
    migrate.upgrade(settings)  # the bench makes its own topics, not the database
    argv = [sys.executable, "-m", "stream.cli", "bench", "worker", "--json"]
    argv += ["--users", "30", "--days", "2", "--timeout", "240"]
    argv += ["--workers", str(workers)] if workers else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSCORE_")}
    done = subprocess.run(
        argv, env=env | settings.as_environment(), capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["workers"] == (workers or 1)
    assert result["events"] > 0 and result["events_per_s"] > 0
    assert result["worker_cpu_us_per_event"] > 0 and result["worker_cpu_s"] > 0


def test_bench_serving_measures_each_runtime_and_names_what_it_cannot(
    stack_settings: Settings,
) -> None:
    from stream.bench.serving import RUNTIMES, bench_serving

    rows, missing = bench_serving(
        stack_settings,
        folder=None,
        torch_from=None,
        runtimes=RUNTIMES,
        batches=[1, 4],
        threads=1,
        seconds=0.05,
        triton_cores_given=None,
    )
    measured = {(r.runtime, r.batch) for r in rows}
    assert measured == {(rt, b) for rt in ("ort_fp32", "ort_int8", "triton") for b in (1, 4)}
    assert all(r.calls >= 3 and r.sequences_per_s > 0 and r.cores >= 1 for r in rows)
    # The served version was migrated from version 6, whose torch weights left the
    # repository: the torch row is named as not measured, with how to give them.
    assert len(missing) == 1 and missing[0].startswith("torch:"), missing
    assert "--torch-from" in missing[0]


def test_bench_latency_command_measures_saturation_then_half_of_it_and_ends_with_json(
    settings: Settings,
) -> None:
    settings = worker_settings(settings)
    migrate.upgrade(settings)
    argv = [sys.executable, "-m", "stream.cli", "bench", "latency", "--json", "--users", "40"]
    argv += ["--days", "2", "--seconds", "2", "--saturation-events", "600"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSCORE_")}
    done = subprocess.run(
        argv, env=env | settings.as_environment(), capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    saturation = line["saturation_events_per_s"]
    assert saturation > 0
    offered = [r["offered_events_per_s"] for r in line["rates"]]
    assert offered and any(r <= saturation / 2 for r in offered)
    for rate in line["rates"]:
        assert 0 < rate["p50_ms"] <= rate["p99_ms"]
    assert "saturation:" in done.stdout and "| offered events/s |" in done.stdout  # the text too
