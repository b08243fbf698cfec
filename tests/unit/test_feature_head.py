"""The served feature head: exported numbers that give the fitted model's probabilities, and the
clickscore backend answering with them for the served version (run in process with a stand-in
for Triton's python-backend utilities)."""

from __future__ import annotations

import json
import math
import types
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tritonclient.grpc import model_config_pb2

from stream.contract.events import Event
from stream.contract.features import NAMES, FeatureSchema, stack_features
from stream.contract.state import UserState, apply_event, stack_item_hashes, stack_padded
from stream.contract.tokenizer import Vocabulary
from stream.settings import PROJECT_ROOT
from trainer import export
from trainer.fit.feature_head import CANDIDATES, FeatureHead, fit_head, pick_head

MODEL = PROJECT_ROOT / "model_repo" / "clickscore"
SERVED = MODEL / "7"


def rows(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)) * [1.0, 3.0, 0.1, 10.0, 1.0] + [0, 5, 1, 50, 0]
    x[:, 4] = 2.0  # a constant column: scale 1, no effect
    logit = 0.8 * x[:, 0] - 0.3 * (x[:, 1] - 5) + 0.05 * (x[:, 3] - 50)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return x, y


@pytest.mark.parametrize("candidate", list(CANDIDATES))
def test_the_exported_head_gives_the_fitted_models_probabilities(candidate: str) -> None:
    x, y = rows()
    head = FeatureHead.from_dict(json.loads(json.dumps(fit_head(x, y, candidate).to_dict())))
    reference = make_pipeline(
        StandardScaler(), LogisticRegression(C=CANDIDATES[candidate], max_iter=5000)
    ).fit(x, y)
    x_new, _ = rows(20, seed=1)
    np.testing.assert_allclose(head.scores(x_new), reference.predict_proba(x_new)[:, 1], atol=1e-6)
    assert head.scale[4] == 1.0 and abs(head.coef[4]) < 1e-9


def test_the_pick_is_made_on_the_check_rows() -> None:
    x, y = rows(600)
    picked = pick_head(x[:400], y[:400], x[400:], y[400:])
    assert set(picked.validation) == set(CANDIDATES)
    best = max(picked.validation.values(), key=lambda m: m["roc_auc"] + m["pr_auc"])
    assert picked.validation[picked.head.candidate] == best
    assert best["roc_auc"] > 0.75
    assert picked.check_scores.shape == (200,)


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Response:
    def __init__(self, output_tensors: list[_Tensor] | None = None, error: Any = None) -> None:
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors or []}
        self.error = error


class _TritonError:
    INVALID_ARG = "INVALID_ARG"

    def __init__(self, message: str, code: Any = None) -> None:
        self.message, self.code = message, code


def _stand_in_pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor  # type: ignore[attr-defined]
    module.InferenceResponse = _Response  # type: ignore[attr-defined]
    module.TritonError = _TritonError  # type: ignore[attr-defined]
    module.get_input_tensor_by_name = lambda request, name: (  # type: ignore[attr-defined]
        _Tensor(name, request[name]) if name in request else None
    )
    return module


def _served_model(monkeypatch: pytest.MonkeyPatch, schema: str | None = None) -> Any:
    from stream.serving import backend as module

    monkeypatch.setattr(module, "pb_utils", _stand_in_pb_utils())
    config = text_format.Parse((MODEL / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    if schema is not None:
        config.parameters["feature_schema"].string_value = schema
    as_triton_gives_it = json_format.MessageToDict(config, preserving_proto_field_name=True)
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps(as_triton_gives_it),
            "model_repository": str(MODEL),
            "model_version": SERVED.name,
        }
    )
    return model


def _users(vocab: Vocabulary) -> list[UserState]:
    states = []
    for u in range(3):
        state: UserState | None = None
        for i in range(5 + 7 * u):
            kind = ("view", "add_to_cart", "purchase")[(i + u) % 3]
            ts = 1_700_000_000_000 + i * 3_600_000 * (u + 1)
            event = Event(f"{u}-{i}", f"u{u}", ts, kind, item_id=f"i{i % 4}", price=3.0 + i)
            state, _ = apply_event(state, event, vocab, 64)
        assert state is not None
        states.append(state)
    return states


def test_the_served_version_scores_churn_and_purchase_from_features(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    meta = export.read_meta(SERVED)
    vocab = Vocabulary.from_dict(meta["vocabulary"])
    assert meta["feature_head"]["schema"]["version"] == FeatureSchema(vocab).version
    model = _served_model(monkeypatch)
    states = _users(vocab)
    tokens = stack_padded(states, 64).astype(np.int64)
    hashes = stack_item_hashes(states, 64)
    now = [s.last_ts_ms + 86_400_000 * k for k, s in enumerate(states)]
    features = stack_features(states, now, vocab)
    with_features = {"TOKENS": tokens, "ITEM_HASHES": hashes, "FEATURES": features}
    without = {"TOKENS": tokens, "ITEM_HASHES": hashes}
    too_narrow = {"TOKENS": tokens[:1], "FEATURES": features[:1, :5]}
    answered, old_worker, refused = model.execute([with_features, without, too_narrow])

    heads = meta["feature_head"]
    for output, task in (("CHURN", "churn"), ("PURCHASE", "purchase")):
        expected = FeatureHead.from_dict(heads[task]).scores(features)
        np.testing.assert_allclose(answered.outputs[output][:, 0], expected, rtol=1e-5)
    threshold = meta["alert_thresholds"]["churn"]["threshold"]
    np.testing.assert_allclose(answered.outputs["CHURN_THRESHOLD"][:, 0], threshold, rtol=1e-6)
    # Next items come from the network with or without features, named from items.json.
    assert (old_worker.outputs["NEXT_ITEMS"] == answered.outputs["NEXT_ITEMS"]).all()
    known = set(json.loads((SERVED / "items.json").read_text())["items"])
    assert {n.decode() for n in answered.outputs["NEXT_ITEMS"].ravel()} <= known
    probs = answered.outputs["NEXT_ITEM_PROBS"]
    assert (np.diff(probs, axis=1) <= 0).all() and (probs > 0).all()
    assert np.isfinite(answered.outputs["NEXT_PURCHASE"]).all()
    # Anomaly is not served (its threshold is null): NaN, and a threshold no score reaches.
    assert meta["served"]["anomaly"] is None and not (SERVED / "encoder.onnx").exists()
    for response in (answered, old_worker):
        assert np.isnan(response.outputs["ANOMALY"]).all()
        assert (response.outputs["ANOMALY_THRESHOLD"] == math.inf).all()
    # A request without features (an older worker): the feature head cannot score it.
    assert np.isnan(old_worker.outputs["CHURN"]).all()
    assert np.isnan(old_worker.outputs["PURCHASE"]).all()
    # Features of the wrong width: that request alone is refused.
    assert refused.error is not None and refused.error.code == "INVALID_ARG"
    assert f"({1}, {len(NAMES)})" in refused.error.message
    assert answered.error is None and old_worker.error is None


def test_a_version_refuses_a_config_of_another_feature_schema(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(RuntimeError, match=r"config\.pbtxt declares feature_schema 'behaviour-v0"):
        _served_model(monkeypatch, schema="behaviour-v0:3:000000000000")
