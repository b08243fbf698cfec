"""The trainer's pure parts, and a tiny CPU pretrain + fine-tune on synthetic data."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from stream import tokenizer as tk
from stream.events import Event
from stream.state import apply_event, stack_padded
from tests.conftest import make_settings
from trainer import data, model
from trainer.refresh import TrainArgs, configs, load_events, split
from trainer.train import fit, predict

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


def test_tiny_training_beats_chance_quickly() -> None:
    started = time.monotonic()
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
    assert time.monotonic() - started < 60
