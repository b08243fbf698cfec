"""Events -> next-event sequences, folded through the worker's own state code.

Each user (or session) becomes one `Sequence`: per event its item hash, event type token and
gap token, exactly what the worker's state holds and sends to Triton. Training cuts long
histories into windows of `sequence_length + 1` events (inputs, then next-event targets).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import torch

from stream.contract.events import Event
from stream.contract.state import UserState, apply_event
from stream.contract.tokenizer import Vocabulary, item_hash
from trainer.fit.next_event import ItemVocabulary

EVENT_TYPE, GAP = 0, 4  # token fields (stream.contract.tokenizer.FIELDS)
MAX_EVENTS = 0xFFFF  # a state's most rows


@dataclass(frozen=True)
class Sequence:
    key: str  # user or session
    raw_items: tuple[str | None, ...]  # the item of each event, for the baselines
    hashes: npt.NDArray[np.int64]  # (events,) item hashes, 0 for none
    types: npt.NDArray[np.int64]
    gaps: npt.NDArray[np.int64]
    start_ms: int
    end_ms: int

    def __len__(self) -> int:
        return int(self.hashes.shape[0])


def by_key(events: Iterable[Event], *, sessions: bool) -> dict[str, list[Event]]:
    """Events per session (or per user), in time order; ties keep arrival order."""
    grouped: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        key = (event.session_id or event.user_id) if sessions else event.user_id
        grouped[key].append(event)
    for group in grouped.values():
        group.sort(key=lambda e: e.ts_ms)
    return dict(grouped)


def fold(key: str, events: list[Event], vocab: Vocabulary) -> Sequence:
    """The rows the worker's state would hold after these events (duplicates skipped)."""
    state: UserState | None = None
    raw: list[str | None] = []
    for event in events[-MAX_EVENTS:]:
        state, fresh = apply_event(state, event, vocab, MAX_EVENTS)
        if fresh:
            raw.append(event.item_id)
    assert state is not None
    return Sequence(
        key=key,
        raw_items=tuple(raw),
        hashes=state.item_hashes.astype(np.int64),
        types=state.tokens[:, EVENT_TYPE].astype(np.int64),
        gaps=state.tokens[:, GAP].astype(np.int64),
        start_ms=events[0].ts_ms,
        end_ms=events[-1].ts_ms,
    )


def sequences(groups: Mapping[str, list[Event]], vocab: Vocabulary) -> list[Sequence]:
    """One sequence per group with at least two events, by start time."""
    out = [fold(k, g, vocab) for k, g in groups.items() if len(g) >= 2]
    return sorted(out, key=lambda s: (s.start_ms, s.key))


def item_vocabulary(
    groups: Mapping[str, list[Event]], size: int, oov_buckets: int
) -> ItemVocabulary:
    """The `size` most frequent items (ties: first seen) get their own ids."""
    counts = Counter(e.item_id for g in groups.values() for e in g if e.item_id is not None)
    items = tuple(item for item, _ in counts.most_common(size))
    return ItemVocabulary(items, tuple(item_hash(i) for i in items), oov_buckets)


def keep_items(groups: Mapping[str, list[Event]], known: set[str]) -> dict[str, list[Event]]:
    """session-rec's test filter: drop events on items never seen in training."""
    return {k: [e for e in g if e.item_id in known] for k, g in groups.items()}


def keep_known(s: Sequence, known: set[str]) -> Sequence:
    """A sequence without its events on items outside `known` (events without items stay)."""
    keep = np.array([i is None or i in known for i in s.raw_items], dtype=bool)
    return replace(
        s,
        raw_items=tuple(i for i, k in zip(s.raw_items, keep, strict=True) if k),
        hashes=s.hashes[keep],
        types=s.types[keep],
        gaps=s.gaps[keep],
    )


def split_by_end(seqs: list[Sequence], fraction: float) -> tuple[list[Sequence], list[Sequence]]:
    """The `fraction` of sequences that end last are held out (ties broken by key)."""
    ordered = sorted(seqs, key=lambda s: (s.end_ms, s.key))
    held = max(1, round(len(ordered) * fraction))
    if len(ordered) - held < 1:
        raise ValueError(f"cannot hold out the latest {fraction:.0%} of {len(seqs)} sequences")
    return ordered[:-held], ordered[-held:]


@dataclass(frozen=True)
class Batch:
    items: torch.Tensor  # (batch, length) vocabulary ids, left-padded
    types: torch.Tensor
    gaps: torch.Tensor
    next_items: torch.Tensor  # targets, PAD where there is none
    next_types: torch.Tensor


def windows(seqs: list[Sequence], length: int) -> list[Sequence]:
    """Cut each sequence into pieces of at most length + 1 events, newest piece last."""
    out: list[Sequence] = []
    for s in seqs:
        for end in range(len(s), 1, -length):
            start = max(0, end - length - 1)
            piece = slice(start, end)
            out.append(
                replace(
                    s,
                    raw_items=s.raw_items[piece],
                    hashes=s.hashes[piece],
                    types=s.types[piece],
                    gaps=s.gaps[piece],
                )
            )
    return out


def batches(
    seqs: list[Sequence],
    vocab: ItemVocabulary,
    size: int,
    generator: torch.Generator | None = None,
) -> Iterator[Batch]:
    """Batches of similar lengths (little padding); shuffled batch order with a generator."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    chunks = [order[i : i + size] for i in range(0, len(order), size)]
    if generator is not None:
        chunks = [chunks[int(i)] for i in torch.randperm(len(chunks), generator=generator)]
    for chunk in chunks:
        width = max(len(seqs[i]) for i in chunk) - 1
        grid = np.zeros((5, len(chunk), width), dtype=np.int64)
        for row, i in enumerate(chunk):
            s = seqs[i]
            n = len(s) - 1
            ids = vocab.ids(s.hashes)
            grid[0, row, width - n :] = ids[:-1]
            grid[1, row, width - n :] = s.types[:-1]
            grid[2, row, width - n :] = s.gaps[:-1]
            grid[3, row, width - n :] = ids[1:]
            grid[4, row, width - n :] = s.types[1:]
        t = torch.from_numpy(grid)
        yield Batch(t[0], t[1], t[2], t[3], t[4])
