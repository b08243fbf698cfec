"""Session kNN at serving time: V-SkNN over a version's training sessions (numpy only).

The same recommender as trainer/baselines/sessions.py's VSkNN (session-rec's VMContextKNN),
on the version's integer item ids instead of raw item strings, for a batch at once:
  - the current session is a row of item ids (the worker's last events, oldest first); ids
    outside the version's known items (padding 0, no item 1, hashed buckets) are left out;
  - candidates are the training sessions sharing an item with it, the `sample_size` most
    recent of them; similarity is the sum of the position weights (`weighting`; the latest
    click weighs most) of the shared items over the number of distinct items in the session;
  - the `k` most similar are the neighbours (ties: the later session key, as heapq does on
    (similarity, key) tuples); an item scores the sum over the neighbours holding it of
    similarity x decay(`weighting_score`, clicks back to the neighbour's latest match) x
    (1 + idf_weighting x idf(item)).

Scores are normalised to sum to 1 over every candidate item of a row, so they read like the
network's NEXT_ITEM_PROBS (a share of the mass), but they are normalised neighbourhood scores,
not calibrated probabilities. Ties between items go to the lower id (the more frequent item).

The index keeps only the `max_sessions` most recent sessions: a version folder is committed to
git, and V-SkNN samples recent sessions anyway.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FILE = "session_knn.npz"
# Neighbour ranking packs (row, similarity to 1e-9, session key rank) into one int64.
SIMILARITY_SCALE = 1e9  # < 2**30
SIMILARITY_BITS, KEY_BITS = 30, 22
LOW_MASK = (1 << (SIMILARITY_BITS + KEY_BITS)) - 1
MAX_SESSIONS = 1 << KEY_BITS
MAX_ROWS = 1 << 11
Ids = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class KnnConfig:
    """trainer/baselines/sessions.py VSkNNConfig, field for field."""

    k: int = 100
    sample_size: int = 500
    weighting: str = "div"
    weighting_score: str = "div"
    idf_weighting: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def position_weight(kind: str, position: Floats, length: Floats) -> Floats:
    """Weight of the click at 1-based position i of a session of n clicks."""
    if kind == "div":
        return position / length
    if kind == "linear":
        return np.maximum(0.0, 1 - 0.1 * (length - position))
    if kind == "same":
        return np.ones_like(position)
    raise ValueError(f"unknown weighting {kind!r}")


def match_decay(kind: str, step: Floats) -> Floats:
    """Decay by how many clicks back (1: the latest) a neighbour matched the session."""
    if kind == "div":
        return 1 / step
    if kind == "linear":
        return np.maximum(0.0, 1 - 0.1 * step)
    if kind == "same":
        return np.ones_like(step)
    raise ValueError(f"unknown weighting {kind!r}")


def _group_starts(sorted_keys: Ids) -> Ids:
    if not len(sorted_keys):
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])


def _rank_in_group(groups: Ids) -> Ids:
    """0-based position of each element within its run of equal (sorted) group values."""
    starts = _group_starts(groups)
    sizes = np.diff(np.r_[starts, len(groups)])
    return np.arange(len(groups)) - np.repeat(starts, sizes)


def _expand(starts: Ids, counts: Ids) -> tuple[Ids, Ids]:
    """For runs (start, count): the owner of each expanded element and its flat index."""
    owner = np.repeat(np.arange(len(counts)), counts)
    offsets = np.cumsum(counts) - counts
    return owner, np.repeat(starts - offsets, counts) + np.arange(int(counts.sum()))


class SessionIndex:
    def __init__(
        self,
        session_items: Ids,
        session_offsets: Ids,
        session_keys_rank: Ids,
        config: KnnConfig,
        *,
        first_id: int,
        end_id: int,
        items: Any = None,
    ) -> None:
        """Sessions oldest first (their order is their recency); session_keys_rank orders
        their keys as strings (the neighbour tie-break). Item ids in [first_id, end_id)."""
        self.session_items = np.asarray(session_items, dtype=np.int64)
        self.session_offsets = np.asarray(session_offsets, dtype=np.int64)
        self.key_rank = np.asarray(session_keys_rank, dtype=np.int64)
        self.config = config
        self.first_id, self.end_id = int(first_id), int(end_id)
        self.items = items  # the ItemVocabulary the ids belong to (set by the trainer)
        sessions = len(self.session_offsets) - 1
        if sessions > MAX_SESSIONS:
            raise ValueError(f"at most {MAX_SESSIONS} sessions in an index, not {sessions}")
        held = self.session_items
        if held.size and (held.min() < self.first_id or held.max() >= self.end_id):
            raise ValueError(f"session items outside the ids [{first_id}, {end_id}) of the index")
        owner = np.repeat(np.arange(sessions), np.diff(self.session_offsets))
        # Postings: per item, the sessions holding it, most recent first.
        order = np.lexsort((-owner, self.session_items))
        self.postings = owner[order]
        counts = np.bincount(self.session_items, minlength=self.end_id)[: self.end_id]
        self.item_offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
        # (item, age) of each posting, ascending: finds how many of an item's sessions are at
        # least as recent as a given one with one searchsorted.
        self.posting_age = self.session_items[order] * (sessions + 1) + (sessions - self.postings)
        with np.errstate(divide="ignore"):
            self.idf = np.where(counts > 0, np.log(max(sessions, 1) / np.maximum(counts, 1)), 0.0)

    @property
    def sessions(self) -> int:
        return len(self.session_offsets) - 1

    @classmethod
    def build(
        cls,
        sessions: Sequence[npt.ArrayLike],
        end_ms: Sequence[int],
        keys: Sequence[str],
        config: KnnConfig,
        *,
        first_id: int,
        end_id: int,
        max_sessions: int | None = None,
        items: Any = None,
    ) -> SessionIndex:
        """An index of the most recent `max_sessions` sessions (item id arrays, any order of
        clicks; ids outside [first_id, end_id) and repeats are dropped; empty ones skipped)."""
        order = sorted(range(len(sessions)), key=lambda i: (end_ms[i], keys[i]))
        kept: list[Ids] = []
        kept_keys: list[str] = []
        for i in order:
            ids = np.asarray(sessions[i], dtype=np.int64)
            ids = np.unique(ids[(ids >= first_id) & (ids < end_id)])
            if ids.size:
                kept.append(ids)
                kept_keys.append(keys[i])
        if max_sessions is not None:
            kept, kept_keys = kept[-max_sessions:], kept_keys[-max_sessions:]
        rank = np.empty(len(kept_keys), dtype=np.int64)
        rank[sorted(range(len(kept_keys)), key=kept_keys.__getitem__)] = np.arange(len(kept_keys))
        offsets = np.r_[0, np.cumsum([len(s) for s in kept])].astype(np.int64)
        flat = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
        return cls(flat, offsets, rank, config, first_id=first_id, end_id=end_id, items=items)

    def with_config(self, config: KnnConfig) -> SessionIndex:
        return SessionIndex(
            self.session_items,
            self.session_offsets,
            self.key_rank,
            config,
            first_id=self.first_id,
            end_id=self.end_id,
            items=self.items,
        )

    def save(self, folder: Path) -> Path:
        path = Path(folder) / FILE
        meta = {"config": self.config.to_dict(), "first_id": self.first_id, "end_id": self.end_id}
        # int32 halves the file a version folder commits to git (ids and ranks fit easily).
        np.savez_compressed(
            path,
            session_items=self.session_items.astype(np.int32),
            session_offsets=self.session_offsets,
            key_rank=self.key_rank.astype(np.int32),
            meta=np.array(json.dumps(meta)),
        )
        return path

    @classmethod
    def load(cls, folder: Path) -> SessionIndex:
        with np.load(Path(folder) / FILE, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return cls(
                data["session_items"],
                data["session_offsets"],
                data["key_rank"],
                KnnConfig(**meta["config"]),
                first_id=meta["first_id"],
                end_id=meta["end_id"],
            )

    def recommend(self, item_ids: npt.ArrayLike, k: int) -> tuple[Ids, npt.NDArray[np.float32]]:
        """Top k item ids per row (0 where fewer candidates) and their normalised scores."""
        c = self.config
        ids = np.asarray(item_ids, dtype=np.int64)
        rows = ids.shape[0]
        if rows > MAX_ROWS:  # the packed sort key holds 11 bits of row
            parts = [self.recommend(ids[i : i + MAX_ROWS], k) for i in range(0, rows, MAX_ROWS)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        out_ids = np.zeros((rows, k), dtype=np.int64)
        out_scores = np.zeros((rows, k), dtype=np.float32)
        valid = (ids >= self.first_id) & (ids < self.end_id)
        if not valid.any() or not self.sessions or not k:
            return out_ids, out_scores
        # The session's distinct items, each at its latest position among the kept clicks.
        position = np.cumsum(valid, axis=1)
        length = valid.sum(axis=1)
        r, col = np.nonzero(valid)
        item, pos = ids[r, col], position[r, col]
        key = r * self.end_id + item
        order = np.lexsort((pos, key))
        last = np.r_[key[order][1:] != key[order][:-1], True]
        r, item, pos = r[order][last], item[order][last], pos[order][last]
        n = length[r].astype(np.float64)
        weight = position_weight(c.weighting, pos.astype(np.float64), n)
        step = n - pos + 1
        distinct = np.bincount(r, minlength=rows)
        # Candidate sessions: per item its sample_size most recent suffice for the union's, and
        # once one item holds sample_size sessions, the union's sample holds none older than
        # that item's oldest of them: each row skips every posting older than its items' latest
        # such session (exact, and the costly part of a long session with popular items).
        start = self.item_offsets[item]
        count = self.item_offsets[item + 1] - start
        if c.sample_size:
            full = count >= c.sample_size
            oldest = np.full(len(item), -1, dtype=np.int64)
            oldest[full] = self.postings[start[full] + c.sample_size - 1]
            floor = np.full(rows, -1, dtype=np.int64)
            np.maximum.at(floor, r, oldest)
            limit = item * (self.sessions + 1) + (self.sessions - floor[r])
            within = np.searchsorted(self.posting_age, limit, side="right") - start
            count = np.minimum(within, c.sample_size)
        owner, flat = _expand(start, count)
        pair = r[owner] * self.sessions + self.postings[flat]
        if not pair.size:
            return out_ids, out_scores
        order = np.argsort(pair, kind="stable")
        pair = pair[order]
        starts = _group_starts(pair)
        similarity = np.add.reduceat(weight[owner][order], starts)
        nearest = np.minimum.reduceat(step[owner][order], starts)
        pair = pair[starts]
        prow, session = pair // self.sessions, pair % self.sessions
        if c.sample_size:  # the most recent sessions are the last of each row
            from_end = np.bincount(prow, minlength=rows).cumsum()[prow] - 1 - np.arange(len(prow))
            keep = from_end < c.sample_size
            prow, session = prow[keep], session[keep]
            similarity, nearest = similarity[keep], nearest[keep]
        # Rounded as trainer/baselines/sessions.py does: sums of equal weights in another
        # order tie exactly, and the session key breaks the tie.
        quantum = np.rint(similarity / distinct[prow] * SIMILARITY_SCALE).astype(np.int64)
        keep = quantum > 0
        prow, session, quantum, nearest = prow[keep], session[keep], quantum[keep], nearest[keep]
        if not prow.size:
            return out_ids, out_scores
        # One int64 sort: row ascending, then similarity and key rank descending.
        rank_key = (quantum << KEY_BITS) | self.key_rank[session]
        order = np.argsort((prow << (SIMILARITY_BITS + KEY_BITS)) | (LOW_MASK - rank_key))
        top = order[_rank_in_group(prow[order]) < c.k]
        similarity = quantum / SIMILARITY_SCALE
        prow, session = prow[top], session[top]
        base = similarity[top] * match_decay(c.weighting_score, nearest[top])
        # Their items, scored.
        s_start = self.session_offsets[session]
        owner, flat = _expand(s_start, self.session_offsets[session + 1] - s_start)
        cand = self.session_items[flat]
        value = base[owner] * (1 + c.idf_weighting * self.idf[cand])
        key = prow[owner] * self.end_id + cand
        order = np.argsort(key, kind="stable")
        key = key[order]
        starts = _group_starts(key)
        score = np.add.reduceat(value[order], starts)
        key = key[starts]
        srow, sitem = key // self.end_id, key % self.end_id
        # A neighbour matched too far back (linear decay 0) adds nothing: no evidence.
        keep = score > 0
        srow, sitem, score = srow[keep], sitem[keep], score[keep]
        total = np.bincount(srow, weights=score, minlength=rows)
        # Row ascending, then share descending (exact within 2**-40), then id ascending: rows
        # and ids are already in order, and a stable sort keeps the ids' order among ties.
        order = np.argsort(srow * 2.0 + (1 - score / total[srow]), kind="stable")
        rank = _rank_in_group(srow[order])
        top = order[rank < k]
        out_ids[srow[top], rank[rank < k]] = sitem[top]
        out_scores[srow[top], rank[rank < k]] = score[top] / total[srow[top]]
        return out_ids, out_scores


def blend_top(
    network_ids: npt.ArrayLike,
    network_probs: npt.ArrayLike,
    knn_ids: npt.ArrayLike,
    knn_scores: npt.ArrayLike,
    weight: float,
    k: int,
) -> tuple[Ids, npt.NDArray[np.float32]]:
    """Mix the network's top items with the kNN's: each side's scores are normalised to a
    distribution over its own candidates, mixed as weight x network + (1 - weight) x kNN, and
    scaled back by the mixed mass the two sides gave their candidates, so weight 1 returns
    the network's probabilities and 0 the kNN's scores. A row where one side has nothing
    (kNN found no neighbour) takes the other side alone. Id 0 is padding."""
    a_ids, b_ids = np.asarray(network_ids, np.int64), np.asarray(knn_ids, np.int64)
    a = np.where(a_ids > 0, np.asarray(network_probs, np.float64), 0.0)
    b = np.where(b_ids > 0, np.asarray(knn_scores, np.float64), 0.0)
    rows = a_ids.shape[0]
    mass_a, mass_b = a.sum(axis=1), b.sum(axis=1)
    w = np.where(mass_b <= 0, 1.0, np.where(mass_a <= 0, 0.0, float(weight)))
    scale = w * mass_a + (1 - w) * mass_b
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.nan_to_num(a / mass_a[:, None]) * (w * scale)[:, None]
        b = np.nan_to_num(b / mass_b[:, None]) * ((1 - w) * scale)[:, None]
    row = np.repeat(np.arange(rows), a_ids.shape[1] + b_ids.shape[1])
    ids = np.concatenate([a_ids, b_ids], axis=1).ravel()
    values = np.concatenate([a, b], axis=1).ravel()
    present = ids > 0
    row, ids, values = row[present], ids[present], values[present]
    key = row * (int(ids.max(initial=0)) + 1) + ids
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = _group_starts(key)
    score = np.add.reduceat(values[order], starts) if len(key) else np.zeros(0)
    crow, cid = row[order][starts], ids[order][starts]
    # Candidates with no mass (weight 0 or 1) do not enter the top: each side stays itself.
    keep = score > 0
    crow, cid, score = crow[keep], cid[keep], score[keep]
    out_ids = np.zeros((rows, k), dtype=np.int64)
    out_scores = np.zeros((rows, k), dtype=np.float32)
    order = np.lexsort((cid, -score, crow))
    rank = _rank_in_group(crow[order])
    top = order[rank < k]
    out_ids[crow[top], rank[rank < k]] = cid[top]
    out_scores[crow[top], rank[rank < k]] = score[top]
    return out_ids, out_scores
