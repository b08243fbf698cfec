"""Pseudonymised user ids for outgoing scores and alerts (pure, no I/O).

With `pseudonymise_key` set, downstream consumers of the scores and alerts topics and
tables see HMAC-SHA256(key, user_id) instead of the raw id: stable (the same user always
maps to the same pseudonym, so joins and upserts still work), not reversible without the
key, and not guessable by hashing candidate ids (unlike a plain hash). Alert ids are keyed
the same way, since they hash the raw user id, and so are event ids (`last_event_id`,
`event_ids`), which producers often build from the user id. The worker's state table, its
changelog and the dead-letter topic keep raw ids: they stay inside the worker's trust
boundary.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import replace

from stream.scoring.alerts import Alert
from stream.scoring.scores import Score


class Pseudonymiser:
    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("an empty key would make pseudonyms a plain, guessable hash")
        self._key = key

    def user(self, user_id: str) -> str:
        data = user_id.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()

    def alert_id(self, alert_id: str) -> str:
        # Still 32 hex chars and still deterministic, so consumers deduplicate as before.
        mac = hmac.new(self._key, b"alert|" + alert_id.encode(), hashlib.sha256)
        return mac.hexdigest()[:32]

    def event_id(self, event_id: str) -> str:
        data = b"event|" + event_id.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()[:32]

    def scores(self, scores: Sequence[Score]) -> list[Score]:
        return [
            replace(
                s,
                user_id=self.user(s.user_id),
                last_event_id=self.event_id(s.last_event_id) if s.last_event_id else "",
            )
            for s in scores
        ]

    def alerts(self, alerts: Sequence[Alert]) -> list[Alert]:
        return [
            replace(
                a,
                user_id=self.user(a.user_id),
                alert_id=self.alert_id(a.alert_id),
                event_ids=tuple(self.event_id(e) for e in a.event_ids),
            )
            for a in alerts
        ]
