"""`clickscore bench serving`: one version's sequences/s per core, by runtime and batch size.

Every row scores the same version folder through the same request path,
`stream.serving.version.ServedVersion.score` (item hashes to ids, the feature head, only the
networks the version's `served` outputs need), so the runtimes differ in nothing else:

- torch: the version's networks in eager PyTorch (the modules trainer/export/onnx.py exports,
  with the weights of the format-1 folder the version was migrated from), put in place of its
  ONNX sessions; `torch.set_num_threads(threads)`;
- ort_fp32: ONNX Runtime on the folder's own graphs, `intra_op_threads=threads`;
- ort_int8: the same graphs dynamically quantised to int8 (trainer/export/onnx.py `quantize`,
  in a temporary copy of the folder, unless the folder already is int8);
- triton: the running Triton over gRPC with the worker's own client (TritonScorer), one
  request in flight at a time (closed loop), batch_size raised so each call is one request.

Per core: in-process rows divide by the threads the runtime was allowed; the triton row by
the cores its served config allows (instances x CLICKSCORE_SERVING_INTRA_OP_THREADS, at most
the machine's), or `--triton-cores`; tritonserver's own gRPC threads are not counted.
Each point: a warm-up, then calls for `seconds`; sequences / elapsed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from stream.bench.ceilings import sample_tokens
from stream.settings import Settings

RUNTIMES = ("torch", "ort_fp32", "ort_int8", "triton")
WARMUP_CALLS = 3
MIN_CALLS = 3


@dataclass(frozen=True)
class ServingRow:
    runtime: str
    batch: int
    calls: int
    sequences_per_s: float
    cores: float  # what the runtime was allowed: threads in process, Triton's served cores
    # In process only: sequences per second of this process's CPU time, which a loaded
    # machine's waits for a core do not dilute (None for Triton, another process).
    sequences_per_cpu_s: float | None = None

    @property
    def sequences_per_s_per_core(self) -> float:
        return self.sequences_per_s / self.cores


class RuntimeMissing(RuntimeError):
    """A runtime this checkout or this version folder cannot provide (said, never faked)."""


@dataclass(frozen=True)
class Inputs:
    tokens: npt.NDArray[np.int64]
    hashes: npt.NDArray[np.int64]
    features: npt.NDArray[np.float32] | None


def sample_inputs(batch: int, length: int, features: int, seed: int = 0) -> Inputs:
    """Full-length valid tokens, item hashes (mostly unknown to the version: the same cost),
    standard-normal behaviour features (None for a version without a feature head)."""
    rng = np.random.default_rng(seed + 1)
    hashes = rng.integers(1, 1 << 32, size=(batch, length), dtype=np.int64)
    values = rng.standard_normal((batch, features)).astype(np.float32) if features else None
    return Inputs(sample_tokens(batch, length, seed), hashes, values)


def timed_calls(call: Callable[[], object], seconds: float) -> tuple[int, float, float]:
    """(calls, elapsed s, process CPU s): a warm-up, then calls until `seconds` have passed
    (at least a few)."""
    for _ in range(WARMUP_CALLS):
        call()
    calls, started, cpu = 0, time.perf_counter(), time.process_time()
    while calls < MIN_CALLS or time.perf_counter() - started < seconds:
        call()
        calls += 1
    return calls, time.perf_counter() - started, time.process_time() - cpu


def rows_json(rows: Sequence[ServingRow]) -> dict[str, object]:
    return {
        "rows": [
            {
                "runtime": r.runtime,
                "batch": r.batch,
                "sequences_per_s_per_core": round(r.sequences_per_s_per_core, 1),
                "sequences_per_s": round(r.sequences_per_s, 1),
                "cores": r.cores,
                "sequences_per_cpu_s": (
                    None if r.sequences_per_cpu_s is None else round(r.sequences_per_cpu_s, 1)
                ),
            }
            for r in rows
        ]
    }


def ratios(rows: Sequence[ServingRow], base: str = "ort_fp32") -> dict[tuple[str, int], float]:
    """Each row's per-core throughput over `base`'s at the same batch."""
    per_core = {(r.runtime, r.batch): r.sequences_per_s_per_core for r in rows}
    return {
        (runtime, batch): value / per_core[(base, batch)]
        for (runtime, batch), value in per_core.items()
        if per_core.get((base, batch))
    }


def in_process_rows(
    version: Any, runtime: str, batches: Sequence[int], threads: int, seconds: float, k: int
) -> list[ServingRow]:
    rows = []
    for batch in batches:
        x = sample_inputs(batch, version.sequence_length, version.feature_count)

        def call(x: Inputs = x) -> object:
            return version.score(x.tokens, x.hashes, x.features, k)

        calls, elapsed, cpu = timed_calls(call, seconds)
        per_cpu = calls * batch / cpu if cpu > 0 else None
        rows.append(
            ServingRow(runtime, batch, calls, calls * batch / elapsed, float(threads), per_cpu)
        )
    return rows


def load_ort(folder: Path, threads: int) -> Any:
    from stream.serving.version import ServedVersion

    return ServedVersion.load(folder, intra_op_threads=threads, inter_op_threads=1)


@contextmanager
def int8_copy(folder: Path) -> Iterator[Path]:
    """The folder with every ONNX graph dynamically quantised to int8, in a temporary copy."""
    manifest = json.loads((folder / "model_config.json").read_text())
    if (manifest.get("onnx") or {}).get("quantized") == "int8":
        yield folder
        return
    from trainer.export.onnx import quantize

    with tempfile.TemporaryDirectory(prefix="clickscore-int8-") as tmp:
        copy = Path(tmp) / folder.name
        shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("__pycache__"))
        graphs = sorted(copy.glob("*.onnx"))
        if not graphs:
            raise RuntimeMissing(f"{folder} holds no ONNX graph to quantise")
        for graph in graphs:
            quantize(graph)
        yield copy


def torch_version(folder: Path, torch_from: Path, threads: int) -> Any:
    """The ORT version with its networks replaced by the same modules in eager PyTorch."""
    from stream.bench.torch_networks import replace_with_torch

    version = load_ort(folder, threads)
    replace_with_torch(version, torch_from, threads)
    return version


def triton_cores(config: Any, cpus: int, threads_per_instance: int) -> float:
    """Cores the served config lets Triton's runtime use: its instances x the ONNX Runtime
    intra-op threads each runs (CLICKSCORE_SERVING_INTRA_OP_THREADS, which the clickscore
    backend reads), at most `cpus`."""
    instances = sum(max(1, g.count) for g in config.instance_group) or 1
    return float(min(cpus, instances * threads_per_instance))


async def triton_rows(
    settings: Settings, batches: Sequence[int], seconds: float, cores: float | None
) -> list[ServingRow]:
    import tritonclient.grpc.aio as grpcclient

    from stream.worker.triton_client import FEATURE_INPUT, TritonScorer

    reader = grpcclient.InferenceServerClient(settings.triton_grpc_url)
    try:
        config = (await reader.get_model_config(settings.triton_model)).config
    finally:
        await reader.close()
    threads = settings.serving_intra_op_threads
    allowed = cores or triton_cores(config, os.cpu_count() or 1, threads)
    width = next((int(i.dims[0]) for i in config.input if i.name == FEATURE_INPUT), 0)
    # One request per call: the worker's client splits a window at batch_size.
    scorer = TritonScorer(settings.model_copy(update={"batch_size": max(batches)}))
    await scorer.start()
    try:
        rows = []
        for batch in batches:
            x = sample_inputs(batch, settings.sequence_length, width)
            tokens = x.tokens.astype(np.int32)  # what the worker's padding hands the client
            for _ in range(WARMUP_CALLS):
                await scorer.score(tokens, x.hashes, x.features)
            calls, started = 0, time.perf_counter()
            while calls < MIN_CALLS or time.perf_counter() - started < seconds:
                await scorer.score(tokens, x.hashes, x.features)
                calls += 1
            elapsed = time.perf_counter() - started
            rows.append(ServingRow("triton", batch, calls, calls * batch / elapsed, allowed))
        return rows
    finally:
        await scorer.close()


def served_folder(settings: Settings) -> Path:
    """The newest version folder of the served model: what Triton's `latest` policy loads."""
    root = settings.model_repo / settings.triton_model
    found = sorted((int(p.name), p) for p in root.iterdir() if p.name.isdigit())
    if not found:
        raise FileNotFoundError(f"no version folder under {root}")
    return found[-1][1]


def bench_serving(
    settings: Settings,
    *,
    folder: Path | None,
    torch_from: Path | None,
    runtimes: Sequence[str],
    batches: Sequence[int],
    threads: int,
    seconds: float,
    triton_cores_given: float | None,
    k: int = 10,
    on_row: Callable[[ServingRow], None] = lambda row: None,
) -> tuple[list[ServingRow], list[str]]:
    """The rows measured, and one line per runtime that could not be measured (why)."""
    folder = folder or served_folder(settings)
    rows: list[ServingRow] = []
    missing: list[str] = []

    def run(runtime: str, measure: Callable[[], list[ServingRow]]) -> None:
        if runtime not in runtimes:
            return
        try:
            measured = measure()
        except (RuntimeMissing, ImportError, ValueError, FileNotFoundError) as exc:
            missing.append(f"{runtime}: {type(exc).__name__}: {exc}")
            return
        for row in measured:
            on_row(row)
        rows.extend(measured)

    def torch_rows() -> list[ServingRow]:
        source = torch_from or format1_source(folder)
        version = torch_version(folder, source, threads)
        return in_process_rows(version, "torch", batches, threads, seconds, k)

    def ort_rows(int8: bool) -> list[ServingRow]:
        if not int8:
            version = load_ort(folder, threads)
            return in_process_rows(version, "ort_fp32", batches, threads, seconds, k)
        with int8_copy(folder) as copy:
            version = load_ort(copy, threads)
            return in_process_rows(version, "ort_int8", batches, threads, seconds, k)

    run("torch", torch_rows)
    run("ort_fp32", lambda: ort_rows(False))
    run("ort_int8", lambda: ort_rows(True))
    run(
        "triton",
        lambda: asyncio.run(triton_rows(settings, batches, seconds, triton_cores_given)),
    )
    return rows, missing


def format1_source(folder: Path) -> Path:
    """The format-1 folder (code and torch weights) this version's networks came from: the
    manifest's `migrated_from` version, else the newest format-1 sibling."""
    manifest = json.loads((folder / "model_config.json").read_text())
    named = manifest.get("migrated_from") or (manifest.get("training") or {}).get("migrated_from")
    if named is not None:
        source = folder.parent / str(named)
        if not source.is_dir():
            raise RuntimeMissing(
                f"{folder.name} was migrated from version {named}, whose folder is gone from "
                f"{folder.parent} (retired; git history keeps it): extract it, e.g. "
                f"`git archive <commit> {folder.parent.name}/{named} | tar -x -C /tmp`, and "
                "give --torch-from"
            )
        return source
    format1 = [
        p
        for p in sorted(
            folder.parent.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1
        )
        if p.name.isdigit() and ((p / "weights.pt").exists() or (p / "next_event.pt").exists())
    ]
    if not format1:
        raise RuntimeMissing(
            f"no format-1 folder (torch weights) beside {folder}: give --torch-from"
        )
    return format1[-1]
