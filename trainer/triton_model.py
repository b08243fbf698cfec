"""Triton python-backend entry point of one exported clickscore version.

The exporter copies this file into `model_repo/<model>/<version>/model.py`, next to
`network.py` (the network's code), `weights.pt` and `model_config.json`, and, for a version
with a next-event model, `next_event.py`, `next_event.pt` and `items.json` (its item
vocabulary), so the folder is self-contained.

Inputs: TOKENS (batch, length, 6), the optional ITEM_HASHES (batch, length), the per-event
item hashes of the user's state (this version maps them to its own item ids), and the optional
FEATURES (batch, F), the user's behaviour features at the scoring time (stream/contract/
features.py). A version with a `feature_head` in its model_config.json (since version 6)
scores CHURN and PURCHASE from FEATURES with that head (`head_scores`, plain numpy) and keeps
the network's ANOMALY and next items; it refuses to load when config.pbtxt declares another
feature schema than the one it was trained on. A request without FEATURES gets the network's
churn and purchase and a NaN CHURN_THRESHOLD (the threshold belongs to the head). Outputs: CHURN,
PURCHASE, ANOMALY, CHURN_THRESHOLD and ANOMALY_THRESHOLD (the version's churn and anomaly alert
thresholds, NaN if it carries none, infinity if none reached the target precision), and
where config.pbtxt declares them NEXT_ITEMS (batch, K) raw item ids,
NEXT_ITEM_PROBS (batch, K) and NEXT_PURCHASE (batch, 1), the probability that the next event
is a purchase. K is NEXT_ITEMS' dims in config.pbtxt. A version without a next-event model
answers "" / 0 / NaN there. Batching is declared in config.pbtxt; this runs whatever batch
Triton forms in one forward pass and answers every request on its own, errors included.
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
OUTPUTS = ("CHURN", "PURCHASE", "ANOMALY", "CHURN_THRESHOLD", "ANOMALY_THRESHOLD")
FEATURES = "FEATURES"
FEATURE_SCHEMA = "feature_schema"  # config.pbtxt parameter: the schema the worker sends
NEXT_OUTPUTS = ("NEXT_ITEMS", "NEXT_ITEM_PROBS", "NEXT_PURCHASE")
NEXT_EVENT_CODE = "next_event.py"
NEXT_EVENT_WEIGHTS = "next_event.pt"
ITEMS = "items.json"
EVENT_TYPE, GAP = 0, 4  # TOKENS fields the next-event model reads


def churn_threshold(meta: dict[str, Any]) -> float:
    """The version's churn alert threshold (model_config.json alert_thresholds.churn)."""
    return alert_threshold(meta, "churn")


def alert_threshold(meta: dict[str, Any], kind: str) -> float:
    """The version's alert threshold of this kind (model_config.json alert_thresholds).

    NaN when the version carries none (the worker then uses its configured threshold);
    infinity when the trainer found no threshold reaching the target precision, so that
    version raises no alert of that kind at all.
    """
    picked = meta.get("alert_thresholds", {}).get(kind)
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


def load_network(folder: Path, code: str = "network.py") -> Any:
    """network.py of a version folder as a module (registered, for its dataclasses).

    The one loader of a version's network: Triton runs it from the folder's model.py, and
    trainer.export imports it from here to load a version for the promotion gate.
    """
    name = f"clickscore_{Path(code).stem}_v{folder.name}_{abs(hash(str(folder.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, folder / code)
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
        self.anomaly_threshold = alert_threshold(meta, "anomaly")
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
        outputs = json.loads(args.get("model_config", "{}")).get("output", [])
        dims = [o["dims"] for o in outputs if o["name"] == "NEXT_ITEMS"]
        self.k = int(dims[0][0]) if dims else 0
        self.next_event, self.items = load_next_event(HERE, meta)
        if self.next_event is not None:
            self.next_event.to(self.device)
        self.head = load_feature_head(meta, parameters)

    def _tokens(self, request: Any) -> npt.NDArray[Any]:
        tokens: npt.NDArray[Any] = pb_utils.get_input_tensor_by_name(request, "TOKENS").as_numpy()
        if tokens.ndim != 3 or tokens.shape[1:] != self.shape:
            raise ValueError(
                f"TOKENS must be (batch, {self.shape[0]}, {self.shape[1]}), got {tokens.shape}"
            )
        if tokens.min(initial=0) < 0 or (tokens >= self.config.field_sizes).any():
            raise ValueError("TOKENS holds ids outside the vocabulary this model was trained on")
        return tokens

    def _hashes(self, request: Any, rows: int) -> npt.NDArray[Any]:
        given = pb_utils.get_input_tensor_by_name(request, "ITEM_HASHES")
        if given is None:  # an older worker: no items, the event types and gaps still count
            return np.zeros((rows, self.shape[0]), dtype=np.int64)
        hashes: npt.NDArray[Any] = given.as_numpy()
        if hashes.shape != (rows, self.shape[0]):
            raise ValueError(f"ITEM_HASHES must be ({rows}, {self.shape[0]}), got {hashes.shape}")
        return hashes

    def _features(self, request: Any, rows: int) -> npt.NDArray[Any] | None:
        given = pb_utils.get_input_tensor_by_name(request, FEATURES)
        if given is None or self.head is None:
            return None
        features: npt.NDArray[Any] = given.as_numpy()
        width = len(self.head["churn"]["mean"])
        if features.shape != (rows, width):
            raise ValueError(f"{FEATURES} must be ({rows}, {width}), got {features.shape}")
        return features

    def _next(self, tokens: npt.NDArray[Any], hashes: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        """NEXT_ITEMS, NEXT_ITEM_PROBS, NEXT_PURCHASE for the batch ("" / 0 / NaN if none)."""
        rows = tokens.shape[0]
        names = np.full((rows, self.k), b"", dtype=object)
        probs = np.zeros((rows, self.k), dtype=np.float32)
        purchase = np.full((rows, 1), np.nan, dtype=np.float32)
        if self.next_event is not None and self.k:
            ids = torch.from_numpy(self.items.ids(hashes)).to(self.device)
            t = torch.from_numpy(tokens).to(self.device)
            with torch.inference_mode():
                top, p, buy = self.next_event.recommend(
                    ids, t[:, :, EVENT_TYPE], t[:, :, GAP], self.k
                )
            width = top.shape[1]
            for r, row in enumerate(top.cpu().numpy()):
                names[r, :width] = [(self.items.item_of(int(i)) or "").encode() for i in row]
            probs[:, :width] = p.float().cpu().numpy()
            purchase[:, 0] = buy.float().cpu().numpy()
        return [names, probs, purchase]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        good: list[tuple[int, npt.NDArray[Any], npt.NDArray[Any]]] = []
        features: list[npt.NDArray[Any] | None] = []
        for i, request in enumerate(requests):
            try:
                tokens = self._tokens(request)
                hashes = self._hashes(request, tokens.shape[0])
                features.append(self._features(request, tokens.shape[0]))
                good.append((i, tokens, hashes))
            except Exception as exc:  # one bad request must not fail the others
                # INVALID_ARGUMENT: the worker dead-letters this request's events
                # (model_rejected) instead of retrying them.
                responses[i] = self._error(exc, pb_utils.TritonError.INVALID_ARG)
        if good:
            try:
                tokens = np.concatenate([t for _, t, _ in good]).astype(np.int64)
                batch = torch.from_numpy(tokens)
                with torch.inference_mode():
                    scores = self.model.score(batch.to(self.device))
                columns = [
                    s.float().cpu().numpy().reshape(-1, 1)
                    for s in (scores.churn, scores.purchase, scores.anomaly)
                ]
                columns.append(np.full_like(columns[0], self.churn_threshold))
                columns.append(np.full_like(columns[0], self.anomaly_threshold))
                if self.head is not None:
                    self._head_columns(columns, [t.shape[0] for _, t, _ in good], features)
                names: tuple[str, ...] = OUTPUTS
                if self.k:
                    hashes = np.concatenate([h for _, _, h in good]).astype(np.int64)
                    columns += self._next(tokens, hashes)
                    names = OUTPUTS + NEXT_OUTPUTS
                start = 0
                for i, rows, _ in good:
                    end = start + rows.shape[0]
                    tensors = [
                        pb_utils.Tensor(name, np.ascontiguousarray(col[start:end]))
                        for name, col in zip(names, columns, strict=True)
                    ]
                    responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                    start = end
            except Exception as exc:
                for i, _, _ in good:
                    responses[i] = self._error(exc)
        return responses

    def _head_columns(
        self,
        columns: list[npt.NDArray[Any]],
        rows: list[int],
        features: list[npt.NDArray[Any] | None],
    ) -> None:
        """CHURN and PURCHASE from the feature head for the requests that sent FEATURES; the
        others keep the network's, with no threshold (NaN)."""
        assert self.head is not None
        start = 0
        for count, given in zip(rows, features, strict=True):
            end = start + count
            if given is None:
                columns[3][start:end] = np.nan
            else:
                for column, task in ((0, "churn"), (1, "purchase")):
                    scores = head_scores(self.head[task], given)
                    columns[column][start:end, 0] = scores.astype(np.float32)
            start = end

    @staticmethod
    def _error(exc: Exception, code: Any = None) -> Any:
        if code is None:  # Triton's default: INTERNAL, a failing model
            error = pb_utils.TritonError(f"clickscore: {exc}")
        else:
            error = pb_utils.TritonError(f"clickscore: {exc}", code)
        return pb_utils.InferenceResponse(error=error)


def load_feature_head(meta: dict[str, Any], parameters: dict[str, Any]) -> Any:
    """The version's feature head (model_config.json `feature_head`), or None.

    Refuses to load when config.pbtxt declares another feature schema than the head's: the
    worker sends what the config declares, so they must agree.
    """
    head = meta.get("feature_head")
    if head is None:
        return None
    declared = parameters.get(FEATURE_SCHEMA, {}).get("string_value")
    if declared != head["schema"]["version"]:
        raise RuntimeError(
            f"clickscore: this version's feature head was trained on {head['schema']['version']}"
            f", but config.pbtxt declares {FEATURE_SCHEMA} {declared!r}"
        )
    return head


def load_next_event(folder: Path, meta: dict[str, Any]) -> tuple[Any, Any]:
    """The version's next-event network (eval mode) and item vocabulary, or (None, None)."""
    if "next_event" not in meta:
        return None, None
    module = load_network(folder, NEXT_EVENT_CODE)
    items = module.ItemVocabulary.from_dict(json.loads((folder / ITEMS).read_text()))
    model = module.NextEventModel(module.NextEventConfig.from_dict(meta["next_event"]["model"]))
    model.load_state_dict(torch.load(folder / NEXT_EVENT_WEIGHTS, map_location="cpu"))
    return model.eval(), items


def head_scores(head: dict[str, Any], features: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """A behaviour-feature head's probabilities: standardise, then a logistic regression.

    `head` is one task's entry of model_config.json `feature_head` (mean, scale, coef,
    intercept, written by trainer/fit/feature_head.py); plain numpy, so the served model needs
    no scikit-learn. Non-finite features (a damaged request) give NaN, which never alerts.
    """
    x = np.asarray(features, dtype=np.float64)
    z = (x - np.asarray(head["mean"])) / np.asarray(head["scale"])
    logit = z @ np.asarray(head["coef"]) + float(head["intercept"])
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(logit, -60.0, 60.0))), dtype=np.float64)
