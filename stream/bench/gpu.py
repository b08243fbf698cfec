"""`clickscore bench gpu`: the served version through Triton against its in-process ceiling.

One run measures both, on the same machine and the same version folder (the ONNX artifacts
Triton serves):

- in process: `ServedVersion.score` (stream/serving/version.py, the clickscore backend's own
  code) on full-length sequences at each batch size, with ONNX Runtime's CUDA execution
  provider on a GPU (`--device cuda`, CPU fallback for what CUDA does not run) or the CPU
  provider (`--device cpu`: how this is tried where no GPU is lent), median of `repeats`
  calls after a warm-up; ORT's `run` returns host arrays, so the wall clock is the time;
- through Triton: `bench triton`'s closed-loop gRPC clients at each batch size and
  concurrency (with FEATURES where the served config takes them), of which the best
  sequences/s per batch is set against the ceiling.

Batches above the served config's `max_batch_size` are not sent to Triton (it would refuse
them). The target on a GPU: Triton at least half of the in-process ceiling at batch 4,096.
On a GPU machine, with the stack up: `clickscore bench gpu --config
model_repo/clickscore/config.gpu.pbtxt --device cuda` (the config reload serves the version on
KIND_GPU; the clickscore backend then asks ORT for CUDA).
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from stream.bench.ceilings import TritonPoint, triton_grid
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


PROVIDERS = {
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "cpu": ("CPUExecutionProvider",),
}


def providers_for(device: str, available: list[str]) -> tuple[str, tuple[str, ...]]:
    """(device used, ORT providers): "auto" is CUDA where ORT has it, else the CPU; "cuda"
    where ORT lacks it is refused, never silently measured on the CPU."""
    if device == "auto":
        device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError(
                f"ONNX Runtime here has no CUDAExecutionProvider (it has {available}): "
                "install onnxruntime-gpu, or pass --device cpu"
            )
        return device, PROVIDERS["cuda"]
    if device != "cpu":
        raise ValueError(f"--device is cuda, cuda:N, cpu or auto, not {device!r}")
    return device, PROVIDERS["cpu"]


def in_process_ceiling(
    folder: Path, batches: list[int], device_name: str, repeats: int, threads: int = 1
) -> tuple[str, str, list[CeilingPoint]]:
    """(device, dtype, points): the version's `score`, timed per batch size."""
    import onnxruntime as ort

    from stream.bench.serving import sample_inputs
    from stream.serving.version import ServedVersion

    device, providers = providers_for(device_name, ort.get_available_providers())
    version = ServedVersion.load(folder, intra_op_threads=threads, providers=providers)
    quantized = (version.manifest.get("onnx") or {}).get("quantized")
    points: list[CeilingPoint] = []
    for batch in batches:
        x = sample_inputs(batch, version.sequence_length, version.feature_count)
        times_ms: list[float] = []
        for _ in range(3):  # warm-up: allocator, kernels, caches
            version.score(x.tokens, x.hashes, x.features, 10)
        for _ in range(repeats):
            began = time.perf_counter()
            version.score(x.tokens, x.hashes, x.features, 10)
            times_ms.append((time.perf_counter() - began) * 1000)
        median = statistics.median(times_ms)
        points.append(CeilingPoint(batch, median, batch / (median / 1000)))
    return device, quantized or "float32", points


async def gpu_bench(
    settings: Settings,
    batches: list[int],
    concurrencies: list[int],
    seconds: float,
    repeats: int,
    device: str = "auto",
    config: Path | None = None,
    threads: int = 1,
) -> GpuBench:
    if config is not None:
        load_config(settings, config)
    folder = served_folder(settings)
    device_used, dtype, ceiling = in_process_ceiling(folder, batches, device, repeats, threads)
    max_batch = served_max_batch_size(settings)
    servable = [b for b in batches if b <= max_batch]
    triton = await triton_grid(settings, servable, concurrencies, seconds)
    return GpuBench(device_used, dtype, folder.name, max_batch, ceiling, triton)
