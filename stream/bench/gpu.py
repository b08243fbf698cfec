"""`clickscore bench gpu`: the served model through Triton against its in-process ceiling.

One run measures both, on the same machine and the same version folder:

- in process: the served version as Triton runs it (stream/serving/version.py
  `ServedVersion.score`, ONNX Runtime with the CUDA provider on a GPU) on full-length
  sequences at each batch size, timed with the wall clock (outputs back on the host),
  median of `repeats` calls after a warm-up;
- through Triton: `bench triton`'s closed-loop gRPC clients at each batch size and
  concurrency, of which the best sequences/s per batch is set against the ceiling.

Batches above the served config's `max_batch_size` are not sent to Triton (it would refuse
them). The target on a GPU: Triton at least half of the in-process ceiling at batch 4,096.
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from stream.bench.ceilings import TritonPoint, sample_tokens, triton_grid
from stream.settings import Settings


@dataclass(frozen=True)
class CeilingPoint:
    batch: int
    median_ms: float
    sequences_per_s: float


@dataclass(frozen=True)
class GpuBench:
    device: str
    dtype: str
    version: str
    max_batch_size: int
    ceiling: list[CeilingPoint]
    triton: list[TritonPoint]

    def best_triton(self, batch: int) -> TritonPoint | None:
        points = [p for p in self.triton if p.batch == batch]
        return max(points, key=lambda p: p.sequences_per_s) if points else None


def served_folder(settings: Settings) -> Path:
    """The newest version folder of the served model: what Triton's `latest` policy loads."""
    root = settings.model_repo / settings.triton_model
    versions = sorted((int(p.name), p) for p in root.iterdir() if p.name.isdigit())
    if not versions:
        raise FileNotFoundError(f"no version folder under {root}")
    return versions[-1][1]


def load_config(settings: Settings, config: Path) -> None:
    """(Re)load the served model with `config` (a config.pbtxt) through the repository API.

    How a GPU run serves config.gpu.pbtxt from the local stack's repository, whose own
    config.pbtxt is the CPU variant. The old config keeps serving if Triton refuses it.
    """
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    parsed = text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())
    body = json.dumps({"parameters": {"config": json_format.MessageToJson(parsed)}}).encode()
    url = f"http://{settings.triton_http_url}/v2/repository/models/{settings.triton_model}/load"
    request = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=300) as response:
        response.read()


def served_max_batch_size(settings: Settings) -> int:
    url = f"http://{settings.triton_http_url}/v2/models/{settings.triton_model}/config"
    with urllib.request.urlopen(url, timeout=10) as response:
        return int(json.loads(response.read())["max_batch_size"])


def in_process_ceiling(
    folder: Path, batches: list[int], device_name: str, repeats: int, compile: bool = False
) -> tuple[str, str, list[CeilingPoint]]:
    """(device, dtype, points): the version's `ServedVersion.score`, timed per batch size."""
    import numpy as np
    import onnxruntime as ort

    from stream.serving.version import ServedVersion

    if compile:
        raise ValueError("--compile is gone: versions are ONNX graphs, served by ONNX Runtime")
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device_name == "auto":
        device_name = "cuda" if cuda else "cpu"
    providers = ("CUDAExecutionProvider",) if device_name.startswith("cuda") else ()
    version = ServedVersion.load(folder, providers=(*providers, "CPUExecutionProvider"))
    rng = np.random.default_rng(0)
    points: list[CeilingPoint] = []
    for batch in batches:
        tokens = sample_tokens(batch, version.sequence_length).astype(np.int64)
        hashes = rng.integers(1, 2**31, size=tokens.shape[:2], dtype=np.int64)
        width = version.feature_count
        features = rng.normal(size=(batch, width)).astype(np.float32) if width else None
        times_ms: list[float] = []
        for _ in range(3):  # warm-up: allocator, kernels, caches
            version.score(tokens, hashes, features, 10)
        for _ in range(repeats):
            began = time.perf_counter()
            version.score(tokens, hashes, features, 10)  # outputs come back to the host
            times_ms.append((time.perf_counter() - began) * 1000)
        median = statistics.median(times_ms)
        points.append(CeilingPoint(batch, median, batch / (median / 1000)))
    return device_name, "float32", points


async def gpu_bench(
    settings: Settings,
    batches: list[int],
    concurrencies: list[int],
    seconds: float,
    repeats: int,
    device: str = "auto",
    compile: bool = False,
    config: Path | None = None,
) -> GpuBench:
    if config is not None:
        load_config(settings, config)
    folder = served_folder(settings)
    device_used, dtype, ceiling = in_process_ceiling(folder, batches, device, repeats, compile)
    max_batch = served_max_batch_size(settings)
    servable = [b for b in batches if b <= max_batch]
    triton = await triton_grid(settings, servable, concurrencies, seconds)
    return GpuBench(device_used, dtype, folder.name, max_batch, ceiling, triton)
