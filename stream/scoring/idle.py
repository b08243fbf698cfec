"""Users who went quiet: when to re-score them, and the sequence that shows their silence.

A user's score is otherwise computed only when their events arrive, so the one a churn
alert exists for, the user who stopped coming, would keep the score of their last visit.
This module is pure (no I/O): with each window the pipeline asks it which users of the
window's partitions are due, and scores them with `silence_tokens` in the same Triton call
as the window's own users.

Event time, never the wall clock. A partition's clock is the newest event time read from
it. A user is due at fixed silence levels after their last event: idle_s, then doubling
(2 idle_s, 4 idle_s, ...) up to max_idle_s, and is scored AT a level (elapsed = the level,
not "now - last event"), so a score depends only on the user's own events and the level.
Levels the clock passed together (it jumped, or the worker was behind) make one re-score
at the longest of them. A churn alert's id names the episode (stream/scoring/alerts.py), so
a replay that cuts windows differently raises the same alert id, though maybe at another
level; its event time is last event + level.

Cost is bounded per window: at most max_users_per_pass re-scores; the rest stay due for
the next window. The index is a heap per partition of (due time, user) with one entry per
user per touch; entries made stale by a newer event are dropped when they surface, and the
heap is rebuilt from the live entries when stale ones outnumber them.

The index lives in memory and is rebuilt from the table whenever the worker is assigned a
partition (at start, after a restart, after a rebalance moved it here): stream/scoring/
rebuild.py reads each stored state's header (`silence_point`: its last event time and the
longest silence it was already re-scored at, which the state keeps since format 4) and
`restore` puts the user at the first level beyond it. The partition's clock is the newest
last-event time among its states, the clock it had when they were written. So a user
silent since before a restart is due at the same levels as if nothing had happened, one
whose levels passed while no worker read the partition is re-scored once, at the longest
of them, and no level is scored twice. A partition revoked from this worker is forgotten
(`forget`): its new owner rebuilds it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from stream.contract.events import Event
from stream.contract.state import UserState, stack_item_hashes, stack_padded
from stream.contract.tokenizer import Vocabulary, tokenize

SILENCE = "silence"  # not an event type of the contract: tokenised as OTHER


@dataclass(frozen=True)
class IdlePolicy:
    idle_s: int = 86_400
    max_idle_s: int = 30 * 86_400
    max_users_per_pass: int = 1_000

    def levels_ms(self) -> list[int]:
        levels, level = [], self.idle_s
        while 0 < level <= self.max_idle_s:
            levels.append(level * 1000)
            level *= 2
        return levels


@dataclass(frozen=True)
class Due:
    due_ms: int
    user_id: str
    last_ts_ms: int  # the user's last event when this entry was made
    level: int  # index into IdlePolicy.levels_ms()

    def elapsed_ms(self, policy: IdlePolicy) -> int:
        return policy.levels_ms()[self.level]


# (due time, user, their last event time, level): plain tuples keep the heap fast.
_Entry = tuple[int, str, int, int]


@dataclass
class _Partition:
    heap: list[_Entry] = field(default_factory=list)
    last_ts: dict[str, int] = field(default_factory=dict)  # the live entry per user
    clock_ms: int = 0


class IdleIndex:
    def __init__(self, policy: IdlePolicy) -> None:
        self.policy = policy
        self._levels = policy.levels_ms()
        self._partitions: dict[int, _Partition] = {}

    def __len__(self) -> int:
        return sum(len(p.last_ts) for p in self._partitions.values())

    def entries(self) -> int:
        return sum(len(p.heap) for p in self._partitions.values())

    def touch(self, partition: int, user_id: str, last_ts_ms: int) -> None:
        """The user's newest event is at last_ts_ms: (re)start their silence levels."""
        part = self._partitions.setdefault(partition, _Partition())
        part.clock_ms = max(part.clock_ms, last_ts_ms)
        if not self._levels or part.last_ts.get(user_id) == last_ts_ms:
            return
        part.last_ts[user_id] = last_ts_ms
        heapq.heappush(part.heap, (last_ts_ms + self._levels[0], user_id, last_ts_ms, 0))
        if len(part.heap) > 2 * len(part.last_ts) + 1024:
            part.heap = [e for e in part.heap if part.last_ts.get(e[1]) == e[2]]
            heapq.heapify(part.heap)

    def partitions(self) -> set[int]:
        return set(self._partitions)

    def claim(self, partitions: Iterable[int]) -> None:
        """This worker owns these partitions now, even while they have no user."""
        for partition in partitions:
            self._partitions.setdefault(partition, _Partition())

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop these partitions' users: another worker owns them now."""
        for partition in partitions:
            self._partitions.pop(partition, None)

    def restore(
        self, partition: int, user_id: str, last_ts_ms: int, silence_scored_ms: int = 0
    ) -> None:
        """A user known from their stored state: due at the first level beyond the silence
        they were already re-scored at (none left: nothing to do)."""
        part = self._partitions.setdefault(partition, _Partition())
        part.clock_ms = max(part.clock_ms, last_ts_ms)
        known = part.last_ts.get(user_id)
        if known is not None and known >= last_ts_ms:
            return  # an event read since is newer than the stored state
        level = next((i for i, ms in enumerate(self._levels) if ms > silence_scored_ms), None)
        if level is None:
            return
        part.last_ts[user_id] = last_ts_ms
        heapq.heappush(part.heap, (last_ts_ms + self._levels[level], user_id, last_ts_ms, level))

    def pending(self) -> int:
        """Users whose next level their partition's clock has passed, not yet re-scored.

        Walks only the heap's top, where the due entries are: O(due), not O(users)."""
        count = 0
        for part in self._partitions.values():
            heap, clock = part.heap, part.clock_ms
            stack = [0] if heap else []
            while stack:
                i = stack.pop()
                due_ms, user_id, last_ts_ms, _ = heap[i]
                if due_ms > clock:
                    continue  # nor any entry below it
                count += part.last_ts.get(user_id) == last_ts_ms
                stack += [c for c in (2 * i + 1, 2 * i + 2) if c < len(heap)]
        return count

    def due(self, partition: int, limit: int | None = None) -> list[Due]:
        """Up to `limit` users of the partition whose next level its clock has passed.

        Each is rescheduled at its next level (or forgotten after the last one).
        """
        part = self._partitions.get(partition)
        if part is None:
            return []
        limit = self.policy.max_users_per_pass if limit is None else limit
        out: list[Due] = []
        while part.heap and len(out) < limit and part.heap[0][0] <= part.clock_ms:
            _, user_id, last_ts_ms, level = heapq.heappop(part.heap)
            if part.last_ts.get(user_id) != last_ts_ms:
                continue  # a newer event restarted this user's levels
            # Levels the clock passed together are one re-score, at the longest of them.
            while (
                level + 1 < len(self._levels)
                and last_ts_ms + self._levels[level + 1] <= part.clock_ms
            ):
                level += 1
            out.append(Due(last_ts_ms + self._levels[level], user_id, last_ts_ms, level))
            if level + 1 < len(self._levels):
                due_ms = last_ts_ms + self._levels[level + 1]
                heapq.heappush(part.heap, (due_ms, user_id, last_ts_ms, level + 1))
            else:
                del part.last_ts[user_id]
        return out


def silence_tokens(
    states: list[UserState], elapsed_ms: list[int], vocab: Vocabulary, length: int
) -> npt.NDArray[np.int32]:
    """Each state's padded sequence with one more row: a pseudo-event `elapsed_ms` after the
    last one, of no known type, item, price or platform, whose gap token carries the
    silence. The state itself is unchanged: silence is not an event."""
    tokens = stack_padded(states, length)
    for i, (state, elapsed) in enumerate(zip(states, elapsed_ms, strict=True)):
        pseudo = Event("", "", state.last_ts_ms + elapsed, SILENCE)
        tokens[i, :-1] = tokens[i, 1:]
        tokens[i, -1] = tokenize(pseudo, state.last_ts_ms, vocab)
    return tokens


def silence_item_hashes(states: list[UserState], length: int) -> npt.NDArray[np.int64]:
    """The item hashes aligned with silence_tokens: each state's, shifted by the one
    pseudo-event row, which names no item (0)."""
    hashes = stack_item_hashes(states, length)
    if length:
        hashes[:, :-1] = hashes[:, 1:]
        hashes[:, -1] = 0
    return hashes
