"""The local Triton server: `tritonserver` from the `nvidia-pytriton` wheel, python backend.

Run standalone against our classic model repository it needs three things computed from
this interpreter (nothing hard-coded): a backend directory holding the python backend, the
stub built for our Python version and the python-based backend `clickscore` (its model.py
imports stream/serving/backend.py, the one serving module of every version), `LD_LIBRARY_PATH`
with our libpython before the wheel's bundled libraries, and our venv's `bin` first on `PATH`
so the stub's interpreter imports our numpy, onnxruntime and this package.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from stream.settings import StackSettings, host_port
from stream.stack.process import StackError

NAME = "triton"
BACKEND = "clickscore"
BACKEND_MODEL = (
    '"""The clickscore backend (written by stream/stack/triton.py)."""\n'
    "from stream.serving.backend import TritonPythonModel  # noqa: F401\n"
)
INSTALL_HINT = (
    "install it with `pip install 'nvidia-pytriton==0.7.0' 'numpy<2'` "
    "(the [model] extra; `make test` and `make demo` do)"
)


@dataclass(frozen=True)
class TritonInstall:
    server: Path
    python_backend: Path
    stub: Path
    bundled_libs: Path


def locate() -> TritonInstall:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise StackError(f"tritonserver is missing: {INSTALL_HINT}.")
    package = Path(spec.origin).parent
    root = package / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        server=root / "bin" / "tritonserver",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        bundled_libs=package.parent / "nvidia_pytriton.libs",
    )
    for path in (install.server, install.python_backend, install.stub, install.bundled_libs):
        if not path.exists():
            raise StackError(f"nvidia-pytriton is incomplete, {path} is missing: {INSTALL_HINT}.")
    return install


def prepare_backend_dir(install: TritonInstall, run_dir: Path) -> Path:
    backends = run_dir / "triton-backends"
    python_dir = backends / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    # Copies, not links: Triton refuses a python-based backend (clickscore below) whose
    # libtriton_python.so resolves outside the backend directory.
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        target = python_dir / name
        target.unlink(missing_ok=True)
        shutil.copy2(install.python_backend / name, target)
    shutil.copy2(install.stub, python_dir / "triton_python_backend_stub")
    # A python-based backend (config.pbtxt `backend: "clickscore"`): Triton runs its model.py
    # with the python backend above, for every model and version that names it.
    clickscore = backends / BACKEND
    clickscore.mkdir(exist_ok=True)
    (clickscore / "model.py").write_text(BACKEND_MODEL)
    return backends


def environment(install: TritonInstall) -> dict[str, str]:
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ld_path = [libdir, str(install.bundled_libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in ld_path if p)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def argv(settings: StackSettings, install: TritonInstall, backend_dir: Path) -> list[str]:
    http_host, http_port = host_port(settings.triton_http_url)
    grpc_host, grpc_port = host_port(settings.triton_grpc_url)
    model_repo = settings.model_repo.resolve()
    if not (model_repo / settings.triton_model / "config.pbtxt").is_file():
        raise StackError(
            f"No model '{settings.triton_model}' in {model_repo}: "
            "train one with `clickscore train` or check CLICKSCORE_MODEL_REPO."
        )
    return [
        str(install.server),
        f"--model-repository={model_repo}",
        f"--backend-directory={backend_dir}",
        # Loopback unless configured otherwise: tritonserver binds 0.0.0.0 by default.
        f"--http-address={http_host}",
        f"--http-port={http_port}",
        f"--grpc-address={grpc_host}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={http_host}",
        f"--metrics-port={settings.triton_metrics_port}",
        "--metrics-config=summary_latencies=true",
        # Explicit control: the trainer loads new versions through the repository API.
        "--model-control-mode=explicit",
        f"--load-model={settings.triton_model}",
        "--disable-auto-complete-config",
        "--log-verbose=0",
    ]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def is_ready(settings: StackSettings) -> bool:
    base = f"http://{settings.triton_http_url}"
    return _http_ok(f"{base}/v2/health/ready") and _http_ok(
        f"{base}/v2/models/{settings.triton_model}/ready"
    )
