"""A version whose encoder serves churn, purchase and anomaly, through the real tritonserver and
the clickscore backend, against eager PyTorch on real sequences (synthetic users folded
through the worker's state code); served beside the suite's other models."""

from __future__ import annotations

import shutil

import numpy as np
import numpy.typing as npt
import pytest
import torch
import tritonclient.grpc.aio as grpcclient

from stream.contract.state import stack_padded
from stream.contract.tokenizer import Vocabulary
from stream.datasets.synthetic import SyntheticConfig
from stream.settings import PROJECT_ROOT, Settings
from tests.conftest import load_model
from trainer.export.version_folder import ServedParts, export_version
from trainer.fit.encoder import ClickscoreModel, ModelConfig
from trainer.fit.encoder_training import TINY_MODEL
from trainer.labels.scoring_points import ScoringRules, scoring_points, synthetic_users

pytestmark = pytest.mark.integration
ENCODER_MODEL = "clickscore-encoder"
OUTPUTS = ("CHURN", "PURCHASE", "ANOMALY", "ANOMALY_THRESHOLD", "NEXT_ITEMS", "NEXT_PURCHASE")


def _tokens(length: int) -> npt.NDArray[np.int64]:
    vocab = Vocabulary()
    by_user, _, end_ms = synthetic_users(SyntheticConfig(users=12, days=3, seed=5))
    states = [
        point.state
        for user in sorted(by_user)
        for point in scoring_points(by_user[user], vocab, length, end_ms, ScoringRules())
    ]
    return stack_padded(states, length).astype(np.int64)[:: max(1, len(states) // 200)][:200]


@pytest.fixture(scope="module")
def encoder_model(stack_settings: Settings) -> tuple[str, ClickscoreModel]:
    torch.manual_seed(0)
    config = ModelConfig(
        field_sizes=Vocabulary().field_sizes,
        sequence_length=stack_settings.sequence_length,
        **TINY_MODEL,  # type: ignore[arg-type]
    )
    model = ClickscoreModel(config).eval()
    with torch.inference_mode():
        model.calibrate(model.score(torch.from_numpy(_tokens(config.sequence_length))).surprise)
    folder = stack_settings.model_repo / ENCODER_MODEL
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    config_text = (PROJECT_ROOT / "model_repo/clickscore/config.pbtxt").read_text()
    (folder / "config.pbtxt").write_text(
        config_text.replace('name: "clickscore"', f'name: "{ENCODER_MODEL}"')
    )
    parts = ServedParts(
        served={
            "churn": "encoder",
            "purchase": "encoder",
            "anomaly": "encoder",
            "next_items": None,
        },
        vocabulary=Vocabulary(),
        encoder=model,
        feature_head=None,
        next_event=None,
        session_knn=None,
        blend_weight=None,
        alert_thresholds={"anomaly": {"threshold": 0.97}},
        record={"metrics": {}},
        sequence_length=config.sequence_length,
    )
    export_version(parts, folder / "1")
    load_model(stack_settings, ENCODER_MODEL)
    return ENCODER_MODEL, model


async def test_triton_serves_the_encoders_scores_as_eager_pytorch_computes_them(
    stack_settings: Settings, encoder_model: tuple[str, ClickscoreModel]
) -> None:
    name, model = encoder_model
    tokens = _tokens(stack_settings.sequence_length)
    client = grpcclient.InferenceServerClient(stack_settings.triton_grpc_url)
    try:
        tensor = grpcclient.InferInput("TOKENS", list(tokens.shape), "INT64")
        tensor.set_data_from_numpy(tokens)
        outputs = [grpcclient.InferRequestedOutput(n) for n in OUTPUTS]
        result = await client.infer(name, [tensor], outputs=outputs)
    finally:
        await client.close()
    with torch.inference_mode():
        eager = model.score(torch.from_numpy(tokens))
    for output, want in (
        ("CHURN", eager.churn),
        ("PURCHASE", eager.purchase),
        ("ANOMALY", eager.anomaly),
    ):
        np.testing.assert_allclose(result.as_numpy(output)[:, 0], want.numpy(), atol=1e-5, rtol=0)
    assert eager.anomaly.numpy().std() > 0  # calibrated scores that vary, not a constant
    assert (result.as_numpy("ANOMALY_THRESHOLD") == np.float32(0.97)).all()
    # No next items are served: empty names and NaN purchase, as the config says.
    assert (result.as_numpy("NEXT_ITEMS") == b"").all()
    assert np.isnan(result.as_numpy("NEXT_PURCHASE")).all()
