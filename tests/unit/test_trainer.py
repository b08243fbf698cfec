"""The trainer's pure parts, and a tiny CPU pretrain + fine-tune on synthetic data."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from stream.contract import tokenizer as tk
from stream.contract.events import Event
from stream.contract.state import apply_event, stack_padded
from tests.conftest import make_settings
from trainer.fit import encoder as model
from trainer.fit.encoder_data import TrainArgs, alert_thresholds, configs, load_events, split
from trainer.fit.encoder_training import fit, predict
from trainer.labels import sequences as data

VOCAB = tk.Vocabulary()
DAY = 86_400_000


def test_network_constants_match_the_tokenizer() -> None:
    assert (model.PAD, model.MASK) == (tk.PAD, tk.MASK)
    assert tk.FIELDS[model.ITEM_FIELD] == "item_bucket"
    assert tk.FIELDS[model.CATEGORY_FIELD] == "category_bucket"


def _events(user: str, times_and_types: list[tuple[int, str]]) -> list[Event]:
    return [
        Event(f"{user}-{i}", user, ts, kind, item_id=f"i{i}", category="c1", price=10.0)
        for i, (ts, kind) in enumerate(times_and_types)
    ]


def test_labels_and_inputs_are_built_like_the_worker() -> None:
    stops = _events("a", [(0, "view"), (DAY, "add_to_cart"), (DAY + 60_000, "purchase")])
    pauses = _events("b", [(0, "view"), (60_000, "view"), (7 * DAY, "view"), (10 * DAY, "view")])
    spec = data.ExampleSpec(
        churn_horizon_ms=2 * DAY,
        purchase_horizon_ms=DAY,
        sequence_length=8,
        cutoffs_per_user=9,
        min_history_ms=0,
    )
    ex = data.build_examples({"a": stops, "b": pauses}, VOCAB, spec, data_end_ms=10 * DAY)
    rows = {(u, int(t)): i for i, (u, t) in enumerate(zip(ex.user_ids, ex.cutoff_ms, strict=True))}
    # a's last event is within 2 days of both cut-offs, then 9 quiet days: a stops (churns).
    assert ex.churn[rows[("a", 0)]] == 1 and ex.churn[rows[("a", DAY)]] == 1
    assert ex.purchase[rows[("a", 0)]] == 0 and ex.purchase[rows[("a", DAY)]] == 1
    # b pauses for 7 days but comes back: a long gap is not churn.
    assert ex.churn[rows[("b", 60_000)]] == 0
    # Under two horizons before the end of the data: undecided, so no example.
    assert ("b", 10 * DAY) not in rows and ("b", 7 * DAY) not in rows
    state = None
    for event in stops[:2]:
        state, _ = apply_event(state, event, VOCAB, 8)
    assert state is not None
    np.testing.assert_array_equal(ex.tokens[rows[("a", DAY)]], stack_padded([state], 8)[0])
    assert ex.next_item[rows[("a", 0)]] == ex.tokens[rows[("a", DAY)]][-1][1]
    # min_history_ms: no cut-off before the user has that much history.
    later = data.build_examples(
        {"a": stops}, VOCAB, replace(spec, min_history_ms=DAY), data_end_ms=10 * DAY
    )
    assert set(later.cutoff_ms.tolist()) == {DAY, DAY + 60_000}


def test_masking_hides_whole_events_and_targets_only_them() -> None:
    tokens = torch.from_numpy(
        data.unlabelled_sequences({"a": _events("a", [(i, "view") for i in range(5)])}, VOCAB, 8)
    )
    inputs, targets = data.mask_events(tokens, 0.5, torch.Generator().manual_seed(0))
    hidden = targets[:, :, 0] != data.IGNORE
    assert hidden.any(dim=1).all()
    assert (inputs[hidden] == tk.MASK).all()
    assert (targets[hidden] == tokens[hidden]).all()
    assert (inputs[~hidden] == tokens[~hidden]).all()


def test_tiny_training_beats_chance() -> None:
    # How long it takes is not asserted: these machines are noisy (a CI run took 68 s).
    settings = make_settings()
    args = TrainArgs(users=400, days=14, tiny=True)
    events, anomalies, _ = load_events(settings, args)
    parts = split(settings, events, anomalies, seed=0)
    model_config, train_config = configs(settings, args)
    net = fit(model_config, train_config, parts.pretrain, parts.train, parts.validation_tokens)
    scores = predict(net, parts.test.tokens, top_items=False)
    churn = roc_auc_score(parts.test.churn, scores["churn"])
    purchase = roc_auc_score(parts.test.purchase, scores["purchase"])
    assert churn > 0.6 and purchase > 0.6, (churn, purchase)
    assert ((scores["anomaly"] >= 0) & (scores["anomaly"] <= 1)).all()

    # The churn alert threshold is picked on the validation users, for the target precision.
    picked = alert_thresholds(settings, net, parts.validation)["churn"]
    assert picked["target_precision"] == settings.churn_alert_precision
    if picked["threshold"] is not None:
        validation = predict(net, parts.validation.tokens, top_items=False)["churn"]
        flagged = validation >= picked["threshold"]
        assert parts.validation.churn[flagged].mean() >= settings.churn_alert_precision
        assert picked["validation_precision"] == pytest.approx(
            parts.validation.churn[flagged].mean()
        )


def test_a_versions_churn_threshold_as_triton_returns_it() -> None:
    from stream.serving.version import alert_threshold

    assert math.isnan(alert_threshold({}, "churn"))  # none: the worker's setting applies
    assert (
        alert_threshold({"alert_thresholds": {"churn": {"threshold": None}}}, "churn") == math.inf
    )
    assert alert_threshold({"alert_thresholds": {"churn": {"threshold": 0.64}}}, "churn") == 0.64


def _left_padded(lengths: list[int], config: model.ModelConfig, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.zeros((len(lengths), config.sequence_length, len(config.field_sizes)))
    for row, length in enumerate(lengths):
        for f, size in enumerate(config.field_sizes):
            ids = torch.randint(2, size, (length,), generator=generator)
            tokens[row, config.sequence_length - length :, f] = ids
    return tokens.long()


def test_leading_padding_counts_columns_padded_in_every_row() -> None:
    config = model.ModelConfig(field_sizes=tk.Vocabulary().field_sizes, sequence_length=16)
    assert model.leading_padding(_left_padded([3, 5, 2], config, seed=0)) == 11
    assert model.leading_padding(_left_padded([16, 1], config, seed=0)) == 0
    # An all-empty batch keeps its newest column, which the encoder always attends.
    assert model.leading_padding(_left_padded([0, 0], config, seed=0)) == 15


def test_scoring_without_padding_changes_no_score() -> None:
    torch.manual_seed(0)
    config = model.ModelConfig(field_sizes=tk.Vocabulary().field_sizes, sequence_length=32)
    network = model.ClickscoreModel(config).eval()
    network.calibrate(torch.linspace(0.5, 3.0, 200))
    # Short rows only (23 shared padding columns are dropped), then with one full row too.
    for lengths in ([1, 2, 5, 9, 3, 0], [1, 2, 5, 9, 3, 32]):
        tokens = _left_padded(lengths, config, seed=1)
        with torch.inference_mode():
            trimmed = network.score(tokens)
            full = network.forward(tokens)  # every column, positions from 0
            full_surprise = network.surprise(tokens)
        churn, purchase = torch.sigmoid(full["churn"]), torch.sigmoid(full["purchase"])
        torch.testing.assert_close(trimmed.churn, churn, atol=1e-5, rtol=0)
        torch.testing.assert_close(trimmed.purchase, purchase, atol=1e-5, rtol=0)
        torch.testing.assert_close(trimmed.surprise, full_surprise, atol=1e-5, rtol=0)
    # Without the position offset the trimmed columns would read other positions' embeddings.
    short = tokens[:5]
    with torch.inference_mode():
        shifted = network.forward(short[:, model.leading_padding(short) :])
    assert not torch.allclose(torch.sigmoid(shifted["churn"]), trimmed.churn[:5], atol=1e-4)
