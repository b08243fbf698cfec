"""The python-based Triton backend "clickscore": one TritonPythonModel for every version.

stream/stack/triton.py places this module as `<backend-dir>/clickscore/model.py`, and
config.pbtxt names it with `backend: "clickscore"`; Triton hands `initialize` the version
folder, which holds data only (stream/serving/version.py reads it). Each request is checked
on its own: a bad one gets INVALID_ARG in its own response (the worker dead-letters its
events), the others of the batch are scored together in one call. An output the version does
not serve is NaN and never computed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from stream.serving.version import ServedVersion
from stream.settings import TritonSettings

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton (tests import check_numpy and the parsing helpers)
    pb_utils = None

OUTPUTS = (
    "CHURN",
    "PURCHASE",
    "ANOMALY",
    "CHURN_THRESHOLD",
    "ANOMALY_THRESHOLD",
    "NEXT_ITEMS",
    "NEXT_ITEM_PROBS",
    "NEXT_PURCHASE",
)
CPU = ("CPUExecutionProvider",)
FEATURE_SCHEMA = "feature_schema"  # config.pbtxt parameter: the schema the worker sends
Array = npt.NDArray[Any]


def check_numpy(version: str = np.__version__) -> None:
    """Refuse to load where Triton 2.51's python backend cannot answer.

    Its stub is built against numpy 1: under numpy 2 the model loads and reports ready, yet
    every response carries zero-byte output tensors, and the worker could only retry them.
    A load that fails with this message is found at once instead.
    """
    if int(version.split(".")[0]) >= 2:
        raise RuntimeError(
            f"clickscore: numpy {version} is installed where this model runs, but Triton "
            "2.51's python backend needs numpy<2 (under numpy 2 it answers every request "
            "with empty outputs). Install numpy<2 in the environment whose bin is first on "
            "tritonserver's PATH, or point the model's EXECUTION_ENV_PATH at one."
        )


def parameter(config: dict[str, Any], key: str, default: str = "") -> str:
    value: str = config.get("parameters", {}).get(key, {}).get("string_value", default)
    return value


def check_feature_schema(version: ServedVersion, config: dict[str, Any]) -> None:
    """The worker sends FEATURES of the schema config.pbtxt declares: a version whose feature
    head was trained on another refuses to load."""
    if version.head is None:
        return
    trained = version.head["schema"]["version"]
    declared = parameter(config, FEATURE_SCHEMA) or None
    if declared != trained:
        raise RuntimeError(
            f"clickscore: this version's feature head was trained on {trained}, "
            f"but config.pbtxt declares {FEATURE_SCHEMA} {declared!r}"
        )


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        check_numpy()
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        # This backend is an entry point of the Triton deployable: its settings come from the
        # environment tritonserver was started with (CLICKSCORE_SERVING_*_THREADS).
        settings = TritonSettings.load()
        gpu = args.get("model_instance_kind") == "GPU"
        # CUDA on a GPU instance (the NGC image with onnxruntime-gpu), else the CPU.
        providers = ("CUDAExecutionProvider", "CPUExecutionProvider") if gpu else CPU
        self.version = ServedVersion.load(
            folder,
            intra_op_threads=settings.serving_intra_op_threads,
            inter_op_threads=settings.serving_inter_op_threads,
            providers=providers,
        )
        check_feature_schema(self.version, config)
        dims = [o["dims"] for o in config.get("output", []) if o["name"] == "NEXT_ITEMS"]
        self.k = int(dims[0][0]) if dims else 0
        self.outputs = [o["name"] for o in config.get("output", []) if o["name"] in OUTPUTS]

    def _inputs(self, request: Any) -> tuple[Array, Array | None, Array | None]:
        def given(name: str) -> Array | None:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            return None if tensor is None else tensor.as_numpy()

        tokens = given("TOKENS")
        if tokens is None:
            raise ValueError("TOKENS is missing")
        hashes, features = given("ITEM_HASHES"), given("FEATURES")
        self.version.check(tokens, hashes, features)
        return tokens, hashes, features

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        good: list[tuple[int, Array, Array | None, Array | None]] = []
        for i, request in enumerate(requests):
            try:
                good.append((i, *self._inputs(request)))
            except Exception as exc:  # one bad request must not fail the others
                # INVALID_ARG: the worker dead-letters this request's events (model_rejected).
                responses[i] = self._error(exc, pb_utils.TritonError.INVALID_ARG)
        try:
            for group in _same_inputs(good):
                self._score(group, responses)
        except Exception as exc:  # the model fails: every request not yet answered says so
            for i, *_ in good:
                if responses[i] is None:
                    responses[i] = self._error(exc)
        return responses

    def _score(
        self, group: list[tuple[int, Array, Array | None, Array | None]], responses: list[Any]
    ) -> None:
        """Score requests that sent the same optional inputs in one call."""
        tokens = np.concatenate([t for _, t, _, _ in group])
        hashes = None if group[0][2] is None else np.concatenate([h for _, _, h, _ in group])
        features = None if group[0][3] is None else np.concatenate([f for *_, f in group])
        columns = self.version.score(tokens, hashes, features, self.k)
        start = 0
        for i, rows, _, _ in group:
            end = start + rows.shape[0]
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(columns[name][start:end]))
                for name in self.outputs
            ]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
            start = end

    @staticmethod
    def _error(exc: Exception, code: Any = None) -> Any:
        if code is None:  # Triton's default: INTERNAL, a failing model
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"clickscore: {exc}"))
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"clickscore: {exc}", code))


def _same_inputs(
    good: list[tuple[int, Array, Array | None, Array | None]],
) -> list[list[tuple[int, Array, Array | None, Array | None]]]:
    """Requests grouped by which optional inputs they sent (a worker sends the same ones)."""
    groups: dict[tuple[bool, bool], list[tuple[int, Array, Array | None, Array | None]]] = {}
    for entry in good:
        groups.setdefault((entry[2] is None, entry[3] is None), []).append(entry)
    return list(groups.values())
