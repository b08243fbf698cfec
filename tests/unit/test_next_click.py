"""The next-event model's pure parts: item vocabulary, causality, baselines, the protocol."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from stream.contract.events import Event
from stream.contract.state import UserState, apply_event, stack_item_hashes
from stream.contract.tokenizer import Vocabulary, item_hash
from trainer.baselines import sessions as baselines
from trainer.fit.next_event import (
    FIRST_ITEM,
    NO_ITEM,
    ItemVocabulary,
    NextEventConfig,
    NextEventModel,
)
from trainer.fit.next_event_training import NextTrainConfig, fit, ranking, ranks
from trainer.labels import sessions as data


def _vocab(items: list[str], oov: int = 4) -> ItemVocabulary:
    return ItemVocabulary(tuple(items), tuple(item_hash(i) for i in items), oov)


def test_item_vocabulary_maps_hashes_known_unknown_and_none() -> None:
    vocab = _vocab(["a", "b", "c"])
    ids = vocab.ids(np.array([item_hash("b"), item_hash("a"), 0, item_hash("zzz")]))
    assert ids[:3].tolist() == [FIRST_ITEM + 1, FIRST_ITEM, NO_ITEM]
    assert FIRST_ITEM + 3 <= ids[3] < vocab.size  # a hashed bucket, never a known item
    assert vocab.item_of(int(ids[0])) == "b" and vocab.item_of(int(ids[3])) is None
    again = ItemVocabulary.from_dict(vocab.to_dict())
    assert again.ids(np.array([item_hash("c")])).tolist() == [FIRST_ITEM + 2]


def test_empty_vocabulary_sends_every_item_to_a_bucket() -> None:
    vocab = _vocab([])
    assert set(vocab.ids(np.array([item_hash("x"), item_hash("y")])).tolist()) <= set(
        range(FIRST_ITEM, FIRST_ITEM + 4)
    )


def _event(n: int, item: str | None, user: str = "u", start_ms: int = 0) -> Event:
    ts = 1_700_000_000_000 + start_ms + n * 1000
    return Event(f"{user}-{n}", user, ts, "view", item_id=item)


def test_state_keeps_item_hashes_aligned_and_old_states_read_as_no_item() -> None:
    state = None
    for n, item in enumerate(["a", None, "b", "c"]):
        state, _ = apply_event(state, _event(n, item), Vocabulary(), 3)
    assert state is not None
    assert state.item_hashes.tolist() == [0, item_hash("b"), item_hash("c")]
    assert UserState.from_bytes(state.to_bytes()).item_hashes.tolist() == state.item_hashes.tolist()
    padded = stack_item_hashes([state], 5)
    assert padded.tolist() == [[0, 0, 0, item_hash("b"), item_hash("c")]]
    # A state written before item hashes existed (no flag, no trailing section).
    old = bytearray(state.to_bytes()[: -3 * 4])
    old[1] &= ~2
    restored = UserState.from_bytes(bytes(old))
    assert restored.item_hashes.tolist() == [0, 0, 0]


def _config(items: int) -> NextEventConfig:
    sizes = Vocabulary().field_sizes
    return NextEventConfig(
        known_items=items, oov_buckets=4, event_types=sizes[0], gaps=sizes[4], hidden=16, layers=1
    )


def test_predictions_never_look_at_later_events() -> None:
    torch.manual_seed(0)
    model = NextEventModel(replace(_config(10), layers=2)).eval()
    items = torch.tensor([[0, 3, 4, 5, 6], [0, 3, 4, 5, 9]])
    types = torch.tensor([[0, 3, 3, 3, 3], [0, 3, 3, 3, 3]])
    gaps = torch.tensor([[0, 2, 5, 5, 5], [0, 2, 5, 5, 5]])
    with torch.no_grad():
        out = model.item_log_probs(items, model.encode(items, types, gaps))
    torch.testing.assert_close(out[0, :4], out[1, :4])
    assert not torch.allclose(out[0, 4], out[1, 4])
    with torch.no_grad():
        full = model.encode(items, types, gaps)[:, -1:]
        torch.testing.assert_close(model.encode_newest(items, types, gaps), full)
    top, probs, purchase = model.recommend(items, types, gaps, k=5)
    assert top.shape == probs.shape == (2, 5) and purchase.shape == (2,)
    assert bool((top >= FIRST_ITEM).all() and (top < FIRST_ITEM + 10).all())


def _sessions(n: int) -> dict[str, list[Event]]:
    """Sessions where x is always followed by y, around random other items."""
    rng = np.random.default_rng(0)
    out: dict[str, list[Event]] = {}
    for s in range(n):
        items = [f"i{rng.integers(20)}" for _ in range(rng.integers(1, 5))] + ["x", "y"]
        out[f"s{s}"] = [_event(k, item, f"s{s}", s * 60_000) for k, item in enumerate(items)]
    return out


def test_training_learns_a_fixed_successor() -> None:
    groups = _sessions(200)
    vocab = data.item_vocabulary(groups, 100, 4)
    seqs = data.sequences(groups, Vocabulary())
    config = NextTrainConfig(max_epochs=20, patience=20, refit=False, batch_size=16)
    model, report = fit(_config(len(vocab.items)), config, seqs, vocab)
    assert report.epochs_run == 20 and len(report.validation) == 20
    after_x = []
    for seq in seqs:
        ids = torch.from_numpy(vocab.ids(seq.hashes[:-1])).unsqueeze(0)
        types = torch.from_numpy(seq.types[:-1]).unsqueeze(0)
        gaps = torch.from_numpy(seq.gaps[:-1]).unsqueeze(0)
        top, _, _ = model.recommend(ids, types, gaps, k=2)
        after_x.append(vocab.item_of(int(top[0, 0])))
    assert after_x.count("y") >= 0.8 * len(seqs), after_x
    assert ranking(ranks(model, seqs, vocab, 64))["hr@20"] > 0.5


def test_vsknn_recommends_what_similar_recent_sessions_held() -> None:
    sessions = {
        "old": (["a", "b", "z"], 1),
        "new": (["a", "b", "c"], 2),
        "other": (["q", "r"], 3),
    }
    model = baselines.VSkNN(sessions, baselines.VSkNNConfig(sample_size=1))
    assert model.recommend(["a", "b"])[0] in {"a", "b", "c"}  # only the most recent neighbour
    assert "z" not in model.recommend(["a", "b"]) and "q" not in model.recommend(["a", "b"])
    assert baselines.ItemKNN(sessions).recommend(["q"]) == ["r"]
    assert baselines.Popularity(sessions).recommend(["q"])[:2] == ["a", "b"]


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_split_by_end_holds_out_the_latest_sequences(fraction: float) -> None:
    seqs = data.sequences(_sessions(8), Vocabulary())
    fitting, held = data.split_by_end(seqs, fraction)
    assert len(held) == round(8 * fraction)
    assert max(s.end_ms for s in fitting) <= min(s.end_ms for s in held)


def test_keep_items_drops_unseen_items_as_the_protocol_does() -> None:
    kept = data.keep_items({"s": [_event(0, "a"), _event(1, "new"), _event(2, "b")]}, {"a", "b"})
    assert [e.item_id for e in kept["s"]] == ["a", "b"]
