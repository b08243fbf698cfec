"""Triton on a GPU against the in-process ceiling, at batch 4,096, in one prepared run.

On a machine lent with a GPU, from the checkout, with the project's venv (numpy<2 where
tritonserver's python stub runs, onnxruntime-gpu, nvidia-pytriton, tritonclient):

    .venv/bin/python deploy/gpu/bench_gpu.py            # the GPU: KIND_GPU, ORT's CUDA provider
    .venv/bin/python deploy/gpu/bench_gpu.py --cpu      # the same run on the CPU (tried first)

It starts a tritonserver of its own (free ports, a temporary run directory) on a copy of
model_repo/clickscore whose config.pbtxt is config.gpu.pbtxt (max_batch_size 8,192; with
--cpu its instance is KIND_CPU), so no broker or database is needed, then runs `clickscore
bench gpu` against it (ServedVersion with the same provider in process; Triton's closed-loop
gRPC clients) and prints its table and its JSON line, then stops the server. The target:
Triton at least half of the in-process ceiling at batch 4,096.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from stream.settings import Settings  # noqa: E402
from stream.stack import process, triton  # noqa: E402
from stream.stack.process import free_port  # noqa: E402


def repository(into: Path, cpu: bool) -> Path:
    """model_repo/clickscore's served version under config.gpu.pbtxt (KIND_CPU with --cpu)."""
    source = ROOT / "model_repo" / "clickscore"
    model = into / "clickscore"
    shutil.copytree(source, model, ignore=shutil.ignore_patterns("__pycache__", "config*.pbtxt"))
    config = (source / "config.gpu.pbtxt").read_text()
    (model / "config.pbtxt").write_text(config.replace("KIND_GPU", "KIND_CPU") if cpu else config)
    return into


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="KIND_CPU and ORT's CPU provider")
    parser.add_argument("--batches", default="1,256,1024,4096,8192")
    parser.add_argument("--concurrency", default="1,2,4")
    parser.add_argument("--seconds", default="3")
    parser.add_argument("--repeats", default="30")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clickscore-gpu-") as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        http, grpc, metrics = free_port(), free_port(), free_port()
        settings = Settings().model_copy(
            update={
                "model_repo": repository(Path(tmp) / "repo", args.cpu),
                "run_dir": run_dir,
                "triton_http_url": f"127.0.0.1:{http}",
                "triton_grpc_url": f"127.0.0.1:{grpc}",
                "triton_metrics_port": metrics,
            }
        )
        install = triton.locate()
        backends = triton.prepare_backend_dir(install, run_dir)
        argv = triton.argv(settings, install, backends)
        record = process.spawn(triton.NAME, argv, run_dir, env=triton.environment(install))
        try:
            deadline = time.monotonic() + 300
            while not triton.is_ready(settings):
                if not process.is_alive(record) or time.monotonic() > deadline:
                    print(Path(record.log).read_text()[-4000:], file=sys.stderr)
                    return 1
                time.sleep(0.5)
            command = [sys.executable, "-m", "stream.cli", "bench", "gpu", "--json"]
            command += ["--device", "cpu" if args.cpu else "cuda", "--batches", args.batches]
            command += ["--concurrency", args.concurrency, "--seconds", args.seconds]
            command += ["--repeats", args.repeats]
            env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSCORE_")}
            return subprocess.run(command, env=env | settings.as_environment(), cwd=ROOT).returncode
        finally:
            process.stop(run_dir, triton.NAME)


if __name__ == "__main__":
    sys.exit(main())
