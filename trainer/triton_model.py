"""Triton python-backend entry point of one exported clickscore version.

The exporter copies this file into `model_repo/<model>/<version>/model.py`, next to
`network.py` (the network's code), `weights.pt` and `model_config.json`, so the folder is
self-contained. Batching is declared in config.pbtxt; this runs whatever batch Triton forms
in one forward pass and answers every request on its own, errors included.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: trainer.export imports load_network from here
    pb_utils = None

HERE = Path(__file__).resolve().parent
OUTPUTS = ("CHURN", "PURCHASE", "ANOMALY", "CHURN_THRESHOLD")


def churn_threshold(meta: dict[str, Any]) -> float:
    """The version's churn alert threshold (model_config.json alert_thresholds.churn).

    NaN when the version carries none (the worker then uses its configured threshold);
    infinity when the trainer found no threshold reaching the target precision, so that
    version raises no churn alert at all.
    """
    picked = meta.get("alert_thresholds", {}).get("churn")
    if picked is None:
        return float("nan")
    value = picked.get("threshold")
    return float("inf") if value is None else float(value)


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


def load_network(folder: Path) -> Any:
    """network.py of a version folder as a module (registered, for its dataclasses).

    The one loader of a version's network: Triton runs it from the folder's model.py, and
    trainer.export imports it from here to load a version for the promotion gate.
    """
    name = f"clickscore_network_v{folder.name}_{abs(hash(str(folder.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, folder / "network.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        check_numpy()
        meta = json.loads((HERE / "model_config.json").read_text())
        self.churn_threshold = churn_threshold(meta)
        network = load_network(HERE)
        self.config = network.ModelConfig.from_dict(meta["model"])
        gpu = args.get("model_instance_kind") == "GPU" and torch.cuda.is_available()
        self.device = torch.device(f"cuda:{args['model_instance_device_id']}" if gpu else "cpu")
        model = network.ClickscoreModel(self.config)
        model.load_state_dict(torch.load(HERE / "weights.pt", map_location="cpu"))
        model.eval().to(self.device)
        self.model = model.half() if gpu else model
        parameters = json.loads(args.get("model_config", "{}")).get("parameters", {})
        compile_requested = parameters.get("torch_compile", {}).get("string_value") == "true"
        if gpu and compile_requested:
            # Fewer kernel launches, which is what a GPU call of under ~1,000 sequences costs.
            # dynamic: the batcher forms batches of any size up to max_batch_size.
            self.model.score = torch.compile(self.model.score, dynamic=True)
        self.shape = (self.config.sequence_length, len(self.config.field_sizes))
        self.limits = torch.tensor(self.config.field_sizes, device=self.device)

    def _tokens(self, request: Any) -> npt.NDArray[Any]:
        tokens: npt.NDArray[Any] = pb_utils.get_input_tensor_by_name(request, "TOKENS").as_numpy()
        if tokens.ndim != 3 or tokens.shape[1:] != self.shape:
            raise ValueError(
                f"TOKENS must be (batch, {self.shape[0]}, {self.shape[1]}), got {tokens.shape}"
            )
        if tokens.min(initial=0) < 0 or (tokens >= self.config.field_sizes).any():
            raise ValueError("TOKENS holds ids outside the vocabulary this model was trained on")
        return tokens

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        good: list[tuple[int, npt.NDArray[Any]]] = []
        for i, request in enumerate(requests):
            try:
                good.append((i, self._tokens(request)))
            except Exception as exc:  # one bad request must not fail the others
                # INVALID_ARGUMENT: the worker dead-letters this request's events
                # (model_rejected) instead of retrying them.
                responses[i] = self._error(exc, pb_utils.TritonError.INVALID_ARG)
        if good:
            try:
                batch = torch.from_numpy(np.concatenate([t for _, t in good]).astype(np.int64))
                with torch.inference_mode():
                    scores = self.model.score(batch.to(self.device))
                columns = [
                    s.float().cpu().numpy().reshape(-1, 1)
                    for s in (scores.churn, scores.purchase, scores.anomaly)
                ]
                columns.append(np.full_like(columns[0], self.churn_threshold))
                start = 0
                for i, tokens in good:
                    end = start + tokens.shape[0]
                    tensors = [
                        pb_utils.Tensor(name, np.ascontiguousarray(col[start:end]))
                        for name, col in zip(OUTPUTS, columns, strict=True)
                    ]
                    responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                    start = end
            except Exception as exc:
                for i, _ in good:
                    responses[i] = self._error(exc)
        return responses

    @staticmethod
    def _error(exc: Exception, code: Any = None) -> Any:
        if code is None:  # Triton's default: INTERNAL, a failing model
            error = pb_utils.TritonError(f"clickscore: {exc}")
        else:
            error = pb_utils.TritonError(f"clickscore: {exc}", code)
        return pb_utils.InferenceResponse(error=error)
