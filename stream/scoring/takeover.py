"""The account-takeover rule: what a shop's fraud team looks for, read from the token rows a
user's state keeps (stream/contract/state.py). Pure: no I/O, no clock.

The newest session is the trailing run of rows on the newest row's platform. It looks like a
takeover when

    - the rows before it hold at least `min_history` events (a new account has no habits yet)
      and none of them is on that platform (a device the account has not used lately), and
    - it holds at least `min_unfamiliar` carts or purchases in categories none of those earlier
      rows touched, and they make up at least `min_share` of its events (an intruder goes
      straight for the goods; an owner on a new phone also browses).

What it cannot see: an intruder on a platform the owner used within the kept rows (the last
`sequence_length` events), an unknown platform (token OTHER), carts without a category, and
an intruder who browses the owner's own categories. Calibration: docs/evaluation.md,
"Takeovers: the rule".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from stream.contract.tokenizer import EVENT_TYPES, FIELDS, NONE, NUM_SPECIAL, OTHER, PLATFORMS

EVENT_FIELD = FIELDS.index("event_type")
CATEGORY_FIELD = FIELDS.index("category_bucket")
PLATFORM_FIELD = FIELDS.index("platform")
_CART_TOKENS = tuple(NUM_SPECIAL + EVENT_TYPES.index(t) for t in ("add_to_cart", "purchase"))


@dataclass(frozen=True)
class NewestSession:
    """The newest session as the takeover rule sees it."""

    platform: str  # PLATFORMS name of the newest event's platform; "other" when unknown
    events: int  # rows in the trailing run on that platform
    earlier_events: int  # rows kept before it
    platform_is_new: bool  # known platform, absent from every earlier row
    unfamiliar_carts: int  # carts/purchases in the run in categories no earlier row has

    @property
    def unfamiliar_share(self) -> float:
        return self.unfamiliar_carts / self.events if self.events else 0.0


def newest_session(tokens: npt.NDArray[np.uint16]) -> NewestSession:
    """Split the rows (oldest first) into the newest session and what came before it."""
    if tokens.shape[0] == 0:
        return NewestSession("other", 0, 0, False, 0)
    platforms = tokens[:, PLATFORM_FIELD]
    platform = int(platforms[-1])
    # Index of the first row of the trailing run on `platform`.
    other_rows = np.flatnonzero(platforms != platform)
    start = int(other_rows[-1]) + 1 if other_rows.size else 0
    earlier, session = tokens[:start], tokens[start:]
    carts = np.isin(session[:, EVENT_FIELD], _CART_TOKENS)
    categories = session[:, CATEGORY_FIELD]
    unfamiliar = carts & (categories != NONE) & ~np.isin(categories, earlier[:, CATEGORY_FIELD])
    known = platform > OTHER and platform - NUM_SPECIAL < len(PLATFORMS)
    return NewestSession(
        platform=PLATFORMS[platform - NUM_SPECIAL] if known else "other",
        events=int(session.shape[0]),
        earlier_events=int(earlier.shape[0]),
        platform_is_new=known
        and earlier.shape[0] > 0
        and not bool((earlier[:, PLATFORM_FIELD] == platform).any()),
        unfamiliar_carts=int(unfamiliar.sum()),
    )


def looks_like_takeover(
    session: NewestSession, min_history: int, min_unfamiliar: int, min_share: float
) -> bool:
    """The rule above; min_unfamiliar 0 turns it off."""
    return (
        min_unfamiliar > 0
        and session.platform_is_new
        and session.earlier_events >= min_history
        and session.unfamiliar_carts >= min_unfamiliar
        and session.unfamiliar_share >= min_share
    )
