"""Choosing the next-items strategy on validation (trainer/fit/next_items.py): session kNN
where it clearly wins, the network where it wins, on the same positions for both."""

from __future__ import annotations

import numpy as np
import torch

from stream.contract.events import Event
from stream.contract.tokenizer import Vocabulary, item_hash
from trainer.fit.next_event import FIRST_ITEM, ItemVocabulary
from trainer.fit.next_items import choose_next_items, positions
from trainer.labels import sessions as data

LENGTH = 8


class Successor:
    """A stand-in next-event network that knows one rule: after item iN comes i(N+1)."""

    def __init__(self, vocab: ItemVocabulary) -> None:
        self.vocab = vocab

    def eval(self) -> Successor:
        return self

    def recommend(
        self, items: torch.Tensor, types: torch.Tensor, gaps: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        last = [self.vocab.item_of(int(i)) for i in items[:, -1]]
        after = [item_hash(f"i{int(name[1:]) + 1}") if name else 0 for name in last]
        ids = torch.from_numpy(self.vocab.ids(np.array(after)))
        top = torch.zeros((len(last), k), dtype=torch.int64)
        top[:, 0] = torch.where(ids >= FIRST_ITEM, ids, 0)
        probs = torch.zeros((len(last), k))
        probs[:, 0] = 0.9
        return top, probs, torch.zeros(len(last))


def _sequences(sessions: list[list[int]], start: int) -> list[data.Sequence]:
    events = [
        Event(
            f"s{start + n}-{t}",
            f"u{start + n}",
            1_700_000_000_000 + (start + n) * 60_000 + t,
            "view",
            session_id=f"s{start + n}",
            item_id=f"i{item}",
        )
        for n, items in enumerate(sessions)
        for t, item in enumerate(items)
    ]
    return data.sequences(data.by_key(events, sessions=True), Vocabulary())


def _vocab(*parts: list[data.Sequence]) -> ItemVocabulary:
    names = sorted(
        {i for p in parts for s in p for i in s.raw_items if i}, key=lambda i: int(i[1:])
    )
    return ItemVocabulary(tuple(names), tuple(item_hash(i) for i in names), 4)


def test_positions_are_every_next_item_after_the_events_before_it() -> None:
    seqs = _sequences([[1, 2, 3], [4, 5]], 0)
    vocab = _vocab(seqs)
    p = positions(seqs, vocab, LENGTH)
    assert len(p) == 3
    names = sorted(vocab.item_of(int(t)) or "" for t in p.target)
    assert names == ["i2", "i3", "i5"]
    assert (p.items[:, :-2] == 0).all() and (p.items[:, -1] >= FIRST_ITEM).all()


def test_knn_is_chosen_where_it_clearly_wins() -> None:
    # Pairs that recur: kNN reads the partner from earlier sessions; the successor rule misses.
    rng = np.random.default_rng(0)
    partner = {
        x: int(y) for x, y in zip(range(0, 40), rng.permutation(range(100, 140)), strict=True)
    }
    fitting = _sequences([[x, partner[x]] for x in range(40) for _ in range(3)], 0)
    validation = _sequences([[x, partner[x]] for x in range(40)], 1000)
    vocab = _vocab(fitting, validation)
    choice = choose_next_items(
        Successor(vocab),
        vocab,
        fitting,
        validation,
        sequence_length=LENGTH,  # type: ignore[arg-type]
    )
    assert choice.strategy == "session_knn" and choice.blend_weight is None
    assert choice.validation["session_knn"]["hr@20"] == 1.0
    assert choice.validation["network"]["hr@20"] == 0.0
    assert choice.index.sessions == len(fitting) + len(validation)  # the served index: both
    assert choice.to_dict()["session_knn"] == choice.index.config.to_dict()


def test_the_network_is_chosen_where_it_wins() -> None:
    # Validation sessions walk i(N), i(N+1), ... over items no training session holds.
    fitting = _sequences([[x, (x * 7) % 50] for x in range(50)], 0)
    validation = _sequences([list(range(s, s + 4)) for s in range(200, 260, 5)], 1000)
    vocab = _vocab(fitting, validation)
    choice = choose_next_items(
        Successor(vocab),
        vocab,
        fitting,
        validation,
        sequence_length=LENGTH,  # type: ignore[arg-type]
    )
    assert choice.strategy == "network"
    assert choice.validation["network"]["hr@20"] == 1.0
    assert choice.validation["session_knn"]["hr@20"] == 0.0
    assert choice.to_dict()["session_knn"] is None


def test_without_a_network_session_knn_is_the_only_candidate() -> None:
    seqs = _sequences([[1, 2], [2, 3], [1, 2], [3, 4]], 0)
    vocab = _vocab(seqs)
    choice = choose_next_items(None, vocab, seqs[:3], seqs[3:], sequence_length=LENGTH)
    assert choice.strategy == "session_knn" and set(choice.validation) == {"session_knn"}
