"""tritonserver from the nvidia-pytriton wheel, serving model_repo/ with the clickscore backend."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from stream.contract.features import FeatureSchema
from stream.contract.tokenizer import Vocabulary
from stream.faults import is_request_rejected
from stream.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.integration

FIELDS = 6


def _tokens(batch: int, length: int) -> np.ndarray:
    tokens = np.zeros((batch, length, FIELDS), dtype=np.int64)
    tokens[:, -10:, 0] = 3  # ten views at the end of each sequence
    tokens[:, -10:, 4] = 6  # a few seconds apart
    return tokens


async def _infer(
    settings: Settings, tokens: np.ndarray, features: np.ndarray | None = None
) -> grpcclient.InferResult:
    client = grpcclient.InferenceServerClient(settings.triton_grpc_url)
    try:
        tensor = grpcclient.InferInput("TOKENS", list(tokens.shape), "INT64")
        tensor.set_data_from_numpy(tokens)
        inputs = [tensor]
        if features is not None:
            inputs.append(grpcclient.InferInput("FEATURES", list(features.shape), "FP32"))
            inputs[-1].set_data_from_numpy(features)
        outputs = [grpcclient.InferRequestedOutput(n) for n in ("CHURN", "PURCHASE", "ANOMALY")]
        return await client.infer(settings.triton_model, inputs, outputs=outputs)
    finally:
        await client.close()


async def test_model_is_ready_with_the_declared_interface(stack_settings: Settings) -> None:
    client = grpcclient.InferenceServerClient(stack_settings.triton_grpc_url)
    try:
        assert await client.is_server_ready()
        assert await client.is_model_ready(stack_settings.triton_model)
        config = (await client.get_model_config(stack_settings.triton_model)).config
    finally:
        await client.close()
    assert config.max_batch_size >= stack_settings.batch_size
    assert [i.name for i in config.input] == ["TOKENS", "ITEM_HASHES", "FEATURES"]
    assert list(config.input[0].dims) == [stack_settings.sequence_length, FIELDS]
    assert list(config.input[1].dims) == [stack_settings.sequence_length]
    assert config.input[1].optional
    schema = FeatureSchema(Vocabulary())
    assert list(config.input[2].dims) == [schema.count] and config.input[2].optional
    assert config.parameters["feature_schema"].string_value == schema.version
    outputs = {o.name: list(o.dims) for o in config.output}
    assert outputs["NEXT_ITEMS"] == outputs["NEXT_ITEM_PROBS"] == [10]
    assert outputs["NEXT_PURCHASE"] == outputs["CHURN_THRESHOLD"] == [1]
    assert outputs["ANOMALY_THRESHOLD"] == [1]
    assert config.HasField("dynamic_batching")


async def test_batch_inference_returns_one_score_per_sequence(stack_settings: Settings) -> None:
    """The served version (7) scores churn and purchase from the features and serves no
    anomaly: NaN, never computed (its folder has no encoder)."""
    tokens = _tokens(batch=5, length=stack_settings.sequence_length)
    features = np.zeros((5, FeatureSchema(Vocabulary()).count), dtype=np.float32)
    features[1] = 1.0  # another user
    result = await _infer(stack_settings, tokens, features)
    churn, purchase, anomaly = (result.as_numpy(n) for n in ("CHURN", "PURCHASE", "ANOMALY"))
    for scores in (churn, purchase):
        assert scores.shape == (5, 1)
        assert np.all((scores >= 0) & (scores <= 1))
    assert churn[1, 0] != churn[0, 0] and purchase[1, 0] != purchase[0, 0]
    assert anomaly.shape == (5, 1) and np.isnan(anomaly).all()
    # The served version is the latest numbered folder (`clickscore train` writes them).
    served = max(
        (p for p in (stack_settings.model_repo / "clickscore").iterdir() if p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    assert result.get_response().model_version == served.name
    assert not (served / "encoder.onnx").exists()


async def test_a_wrong_shape_is_refused_with_a_clear_error(stack_settings: Settings) -> None:
    with pytest.raises(InferenceServerException, match=r"TOKENS|shape|dims"):
        await _infer(stack_settings, _tokens(batch=2, length=stack_settings.sequence_length + 1))


async def test_a_bad_request_fails_alone_among_requests_batched_with_it(
    stack_settings: Settings,
) -> None:
    """Sent together, so the dynamic batcher may merge them: the bad one (an id outside the
    vocabulary) gets INVALID_ARGUMENT in its own response, every other one its scores."""
    tokens = _tokens(batch=2, length=stack_settings.sequence_length)
    features = np.zeros((2, FeatureSchema(Vocabulary()).count), dtype=np.float32)
    bad = tokens.copy()
    bad[0, -1, 0] = 60_000
    sent = [bad if i == 3 else tokens for i in range(8)]
    results = await asyncio.gather(
        *(_infer(stack_settings, t, features) for t in sent), return_exceptions=True
    )
    refused = results[3]
    assert isinstance(refused, InferenceServerException)
    assert is_request_rejected(refused) and "vocabulary" in str(refused)
    for i, result in enumerate(results):
        if i != 3:
            assert isinstance(result, grpcclient.InferResult), result
            assert np.isfinite(result.as_numpy("CHURN")).all()


async def test_served_version_returns_real_next_items(stack_settings: Settings) -> None:
    """The latest version in model_repo/ names items of its own vocabulary, most likely first,
    and a purchase probability, for item hashes the way the worker sends them."""
    folder = max(
        (p for p in (PROJECT_ROOT / "model_repo/clickscore").iterdir() if p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    items = json.loads((folder / "items.json").read_text())
    tokens = _tokens(batch=3, length=stack_settings.sequence_length)
    hashes = np.zeros(tokens.shape[:2], dtype=np.int64)
    hashes[:, -10:] = np.array(items["hashes"][:30], dtype=np.int64).reshape(3, 10)
    client = grpcclient.InferenceServerClient(stack_settings.triton_grpc_url)
    try:
        inputs = [
            grpcclient.InferInput("TOKENS", list(tokens.shape), "INT64"),
            grpcclient.InferInput("ITEM_HASHES", list(hashes.shape), "INT64"),
        ]
        inputs[0].set_data_from_numpy(tokens)
        inputs[1].set_data_from_numpy(hashes)
        names = ("NEXT_ITEMS", "NEXT_ITEM_PROBS", "NEXT_PURCHASE", "CHURN")
        result = await client.infer(
            stack_settings.triton_model,
            inputs,
            outputs=[grpcclient.InferRequestedOutput(n) for n in names],
        )
    finally:
        await client.close()
    served = result.as_numpy("NEXT_ITEMS")
    probs = result.as_numpy("NEXT_ITEM_PROBS")
    assert served.shape == probs.shape == (3, 10)
    assert {i.decode() for i in served.reshape(-1)} <= set(items["items"])
    assert (np.diff(probs, axis=1) <= 0).all() and (probs > 0).all()
    assert ((result.as_numpy("NEXT_PURCHASE") >= 0) & (result.as_numpy("NEXT_PURCHASE") <= 1)).all()
    assert result.get_response().model_version == folder.name


async def test_served_version_returns_its_churn_threshold_with_every_score(
    stack_settings: Settings,
) -> None:
    """CHURN_THRESHOLD is the served version's model_config.json alert_thresholds.churn, for
    requests with the behaviour features its churn head reads (NaN without them)."""
    folder = max(
        (p for p in (PROJECT_ROOT / "model_repo/clickscore").iterdir() if p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    meta = json.loads((folder / "model_config.json").read_text())
    expected = meta["alert_thresholds"]["churn"]["threshold"]
    tokens = _tokens(batch=3, length=stack_settings.sequence_length)
    features = np.zeros((3, FeatureSchema(Vocabulary()).count), dtype=np.float32)
    client = grpcclient.InferenceServerClient(stack_settings.triton_grpc_url)
    try:
        tensor = grpcclient.InferInput("TOKENS", list(tokens.shape), "INT64")
        tensor.set_data_from_numpy(tokens)
        given = grpcclient.InferInput("FEATURES", list(features.shape), "FP32")
        given.set_data_from_numpy(features)
        outputs = [grpcclient.InferRequestedOutput("CHURN_THRESHOLD")]
        result = await client.infer(stack_settings.triton_model, [tensor, given], outputs=outputs)
        without = await client.infer(stack_settings.triton_model, [tensor], outputs=outputs)
    finally:
        await client.close()
    assert result.as_numpy("CHURN_THRESHOLD").reshape(-1).tolist() == pytest.approx([expected] * 3)
    assert np.isnan(without.as_numpy("CHURN_THRESHOLD")).all()
