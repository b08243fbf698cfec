"""Session baselines for the next click, as session-rec implements them.

popularity   the 20 most clicked training items, for everyone
item-kNN     session-rec's ItemKNN: items co-occurring in training sessions with the last
             click, scored count(i, j) / (support(i) ** alpha * support(j) ** (1 - alpha)
             + lambda)
V-SkNN       session-rec's VMContextKNN: the training sessions that share an item with the
             current session, the `sample_size` most recent of them; similarity is the sum of
             the position weights of the shared items over the session length (weighting:
             the latest click weighs most); the `k` most similar are the neighbours; an item
             scores the sum over the neighbours holding it of similarity, times the decay of
             the neighbour's latest match in the current session (weighting_score), times
             (1 + idf_weighting * idf(item)).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Session = tuple[list[str], int]  # items in order, end time (ms)
K = 20


def _position_weight(kind: str) -> Callable[[int, int], float]:
    """Weight of the click at 1-based position i of a session of length n."""
    return {
        "div": lambda i, n: i / n,
        "linear": lambda i, n: max(0.0, 1 - 0.1 * (n - i)),
        "same": lambda i, n: 1.0,
    }[kind]


def _match_decay(kind: str) -> Callable[[int], float]:
    """Decay by how many clicks back (1: the latest) the neighbour matched the session."""
    return {
        "div": lambda step: 1 / step,
        "linear": lambda step: max(0.0, 1 - 0.1 * step),
        "same": lambda step: 1.0,
    }[kind]


class Popularity:
    def __init__(self, sessions: Mapping[str, Session]) -> None:
        counts = Counter(i for items, _ in sessions.values() for i in items)
        self.top = [i for i, _ in counts.most_common(K)]

    def recommend(self, prefix: list[str]) -> list[str]:
        return self.top


class ItemKNN:
    def __init__(
        self, sessions: Mapping[str, Session], lambda_: float = 20.0, alpha: float = 0.5
    ) -> None:
        pairs: dict[str, Counter[str]] = defaultdict(Counter)
        support: Counter[str] = Counter()
        for items, _ in sessions.values():
            unique = set(items)
            support.update(unique)
            for a in unique:
                pairs[a].update(unique - {a})
        self.similar: dict[str, list[str]] = {}
        for a, counts in pairs.items():
            scored = {
                b: c / (support[a] ** alpha * support[b] ** (1 - alpha) + lambda_)
                for b, c in counts.items()
            }
            self.similar[a] = heapq.nlargest(K, scored, key=lambda b: (scored[b], b))

    def recommend(self, prefix: list[str]) -> list[str]:
        return self.similar.get(prefix[-1], [])


@dataclass(frozen=True)
class VSkNNConfig:
    k: int = 100
    sample_size: int = 500
    weighting: str = "div"
    weighting_score: str = "div"
    idf_weighting: float = 1.0


class VSkNN:
    def __init__(self, sessions: Mapping[str, Session], config: VSkNNConfig) -> None:
        self.config = config
        self.items = {key: set(items) for key, (items, _) in sessions.items()}
        self.end = {key: end for key, (_, end) in sessions.items()}
        self.sessions_of: dict[str, set[str]] = defaultdict(set)
        for key, items in self.items.items():
            for item in items:
                self.sessions_of[item].add(key)
        n = max(len(sessions), 1)
        self.idf = {i: math.log(n / len(keys)) for i, keys in self.sessions_of.items()}
        self._weight = _position_weight(config.weighting)
        self._decay = _match_decay(config.weighting_score)

    def scores(self, prefix: list[str]) -> dict[str, float]:
        c = self.config
        candidates: set[str] = set()
        for item in prefix:
            candidates |= self.sessions_of.get(item, set())
        pool = list(candidates)
        if c.sample_size and len(pool) > c.sample_size:
            pool = heapq.nlargest(c.sample_size, pool, key=lambda s: (self.end[s], s))
        n = len(prefix)
        weight = {item: self._weight(i, n) for i, item in enumerate(prefix, 1)}  # latest wins
        current = set(prefix)
        neighbours = []
        for key in pool:
            similarity = sum(weight[i] for i in current & self.items[key]) / len(weight)
            # Rounded: equal similarities summed in another order must tie exactly, so that
            # the session key breaks the tie here and in stream/serving/session_knn.py alike.
            similarity = round(similarity, 9)
            if similarity > 0:
                neighbours.append((similarity, key))
        scores: dict[str, float] = defaultdict(float)
        for similarity, key in heapq.nlargest(c.k, neighbours):
            items = self.items[key]
            step = next(s for s, item in enumerate(reversed(prefix), 1) if item in items)
            decay = self._decay(step)
            for item in items:
                boost = 1 + c.idf_weighting * self.idf[item]
                scores[item] += similarity * boost * decay
        return scores

    def recommend(self, prefix: list[str]) -> list[str]:
        scores = self.scores(prefix)
        return heapq.nlargest(K, scores, key=lambda i: (scores[i], i))


VSKNN_GRID = tuple(
    VSkNNConfig(weighting=w, weighting_score=s, idf_weighting=idf)
    for w in ("div", "linear", "same")
    for s in ("div", "linear", "same")
    for idf in (0.0, 1.0)
)
