"""A synthetic clickstream with ground truth, for tests, the demo and labelled evaluation.

Shoppers visit in sessions (a login, searches, views, clicks, carts, sometimes a purchase and a
logout, seconds to minutes apart) on most days, around a few favourite categories, a price level
and a main platform. On top of that each user follows one persona:

    regular   keeps shopping at a steady rate
    churner   visits less and less, and stops for good at `churn_ms`
    intender  carts more and more, then buys at `purchase_ms` (spread over the second half of the
              period, so labels of "buys within a horizon after a cutoff" exist)
    bot       turns into a script at `anomaly_start_ms`: bursts of events exactly N ms apart
    takeover  someone else logs in at `anomaly_start_ms`: another platform, other categories,
              expensive carts
    scraper   at `anomaly_start_ms` starts paging through the catalogue: views only, every item
              once, at a steady pace

Anomalous accounts are ordinary shoppers until their anomaly starts; from then on every event of
theirs is anomalous, so `anomaly_start_ms` splits their history into clean and labelled parts.
No torch here: the replay command imports this module.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from stream.contract.events import Event, Rejection, ValidationLimits, event_to_json, parse_event
from stream.contract.tokenizer import PLATFORMS

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
DEFAULT_START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z; `clickscore replay` shifts to now

PERSONAS: tuple[str, ...] = ("regular", "churner", "intender", "bot", "takeover", "scraper")
ANOMALIES: tuple[str, ...] = ("bot", "takeover", "scraper")

# Shoppers visit in the daytime and evening; the weights are relative visits per UTC hour.
_HOUR_WEIGHTS = (1, 1, 1, 1, 1, 2, 3, 5, 6, 6, 6, 7, 8, 7, 6, 6, 7, 8, 9, 10, 10, 8, 5, 2)
_SESSIONS_PER_DAY = ((1, 2, 3, 4), (45, 30, 17, 8))
_MAIN_PLATFORM_WEIGHTS = (50, 40, 10)  # web, app, partner
_GAP_LOG_MEDIAN = math.log(15_000.0)
_BOT_INTERVALS_MS = (50, 100, 200, 250, 500, 1000)
_SCRAPER_PACES_MS = (1000, 1500, 2000, 3000)
# Our own files are replayed years after they were written: accept any time when reading them.
_ANY_TIME = ValidationLimits(max_age_s=1 << 40, max_future_s=1 << 40)


@dataclass(frozen=True)
class SyntheticConfig:
    users: int = 2000
    days: int = 14
    seed: int = 0
    start_ms: int = DEFAULT_START_MS
    churn_rate: float = 0.25
    intent_rate: float = 0.25
    bot_rate: float = 0.02
    takeover_rate: float = 0.02
    scraper_rate: float = 0.02
    categories: int = 50
    items_per_category: int = 200

    def __post_init__(self) -> None:
        if self.users < 1 or self.days < 1:
            raise ValueError("users and days must be positive")
        rates = self.persona_rates.values()
        if any(not 0 <= r <= 1 for r in rates) or sum(rates) > 1:
            raise ValueError("persona rates must lie in 0..1 and sum to at most 1")
        # A takeover moves to categories the owner never used: three favourites plus at least one.
        if self.categories < 4 or self.items_per_category < 1:
            raise ValueError("need at least 4 categories and 1 item per category")

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.days * DAY_MS

    @property
    def persona_rates(self) -> dict[str, float]:
        return {
            "churner": self.churn_rate,
            "intender": self.intent_rate,
            "bot": self.bot_rate,
            "takeover": self.takeover_rate,
            "scraper": self.scraper_rate,
        }


@dataclass(frozen=True)
class UserTruth:
    user_id: str
    persona: str
    churn_ms: int | None = None  # churners: no event at or after this time
    anomaly: str | None = None  # "bot" | "takeover" | "scraper"
    anomaly_start_ms: int | None = None  # the first anomalous event is exactly at this time
    purchase_ms: int | None = None  # intenders: when the purchase they worked towards happened


@dataclass
class _Track:
    """One user's events, strictly increasing in time, none at or after `stop_ms`."""

    user_id: str
    id_prefix: str
    stop_ms: int
    events: list[Event] = field(default_factory=list)
    last_ts: int = -1

    def emit(
        self,
        ts: int,
        event_type: str,
        session: str,
        platform: str,
        item: tuple[str, str, float] | None = None,
        category: str | None = None,
    ) -> int | None:
        """Append one event; returns its time, or None once the track has stopped."""
        # Equal times would leave one user's order to the sort; one ms later keeps it.
        if ts <= self.last_ts:
            ts = self.last_ts + 1
        if ts >= self.stop_ms:
            return None
        eid, user = f"{self.id_prefix}{len(self.events)}", self.user_id
        # Positional: this runs once per event and keywords cost a measurable share of it.
        if item is None:
            event = Event(eid, user, ts, event_type, None, category, None, session, platform)
        else:
            event = Event(eid, user, ts, event_type, item[0], item[1], item[2], session, platform)
        self.events.append(event)
        self.last_ts = ts
        return ts


class _Catalogue:
    """Items per category, cheapest first, so a price level is an index quantile."""

    def __init__(self, config: SyntheticConfig, rng: random.Random) -> None:
        self.per_category = config.items_per_category
        self.categories = config.categories
        self._prices: list[list[float]] = []
        self.base_prices: list[float] = []
        for _ in range(config.categories):
            base = rng.lognormvariate(math.log(40.0), 0.9)
            self.base_prices.append(base)
            steps = max(1, self.per_category - 1)
            self._prices.append(
                [
                    round(base * math.exp(2.4 * (k / steps - 0.5)), 2)
                    for k in range(self.per_category)
                ]
            )

    def item(self, category: int, index: int) -> tuple[str, str, float]:
        return (
            f"i{category * self.per_category + index}",
            f"c{category}",
            self._prices[category][index],
        )

    def pick(
        self, rng: random.Random, category: int, price_quantile: float
    ) -> tuple[str, str, float]:
        quantile = min(0.999, max(0.0, rng.gauss(price_quantile, 0.12)))
        return self.item(category, int(quantile * self.per_category))


@dataclass
class _Shopper:
    user_id: str
    favourites: tuple[int, ...]
    price_quantile: float
    platform: str
    daily_activity: float  # chance of visiting on a given day
    cart_rate: float  # chance a viewed item goes into the cart
    sessions: int = 0

    def next_session(self) -> str:
        self.sessions += 1
        return f"{self.user_id}-s{self.sessions}"


def _human_gap(rng: random.Random) -> int:
    # Reading a page takes seconds to minutes; a person is never regular to the millisecond.
    gap = math.exp(_GAP_LOG_MEDIAN + 0.9 * rng.gauss())  # lognormal, median 15 s
    return 1_000 if gap < 1_000 else 600_000 if gap > 600_000 else int(gap)


def _shopping_session(
    track: _Track,
    shopper: _Shopper,
    catalogue: _Catalogue,
    rng: random.Random,
    start: int,
    *,
    steps: int,
    cart_rate: float,
    buy_rate: float,
    target: tuple[str, str, float] | None = None,
    must_buy: bool = False,
) -> tuple[int, int | None]:
    """One visit; returns (when it ended, when it bought or None)."""
    session = shopper.next_session()
    platform = shopper.platform if rng.random() < 0.9 else rng.choice(PLATFORMS)
    emit = track.emit
    t = start
    if rng.random() < 0.6 and emit(t, "login", session, platform) is None:
        return t, None
    category = (
        rng.choice(shopper.favourites)
        if rng.random() < 0.85
        else rng.randrange(catalogue.categories)
    )
    cart: list[tuple[str, str, float]] = []
    for _ in range(steps):
        t += _human_gap(rng)
        r = rng.random()
        if r < 0.1:
            if rng.random() < 0.3:
                category = rng.choice(shopper.favourites)
            if emit(t, "search", session, platform, category=f"c{category}") is None:
                return t, None
            continue
        item = (
            target
            if target is not None and rng.random() < 0.3
            else catalogue.pick(rng, category, shopper.price_quantile)
        )
        if emit(t, "click" if r < 0.22 else "view", session, platform, item) is None:
            return t, None
        r = rng.random()
        if r < cart_rate:
            cart.append(item)
            t += _human_gap(rng) // 3
            emit(t, "add_to_cart", session, platform, item)
        elif r < cart_rate + 0.03:
            t += _human_gap(rng) // 3
            emit(t, "add_to_wishlist", session, platform, item)
        if cart and rng.random() < 0.04:
            t += _human_gap(rng) // 3
            emit(t, "remove_from_cart", session, platform, cart.pop(rng.randrange(len(cart))))
    if must_buy and not cart:
        cart.append(target or catalogue.pick(rng, category, shopper.price_quantile))
        t += _human_gap(rng)
        emit(t, "add_to_cart", session, platform, cart[0])
    bought: int | None = None
    if cart and (must_buy or rng.random() < buy_rate):
        t += _human_gap(rng)
        for item in cart:
            t += rng.randrange(50, 400)  # one order, one line per item
            at = emit(t, "purchase", session, platform, item)
            bought = bought if bought is not None or at is None else at
    if rng.random() < 0.25:
        t += _human_gap(rng)
        emit(t, "logout", session, platform)
    return t, bought


def _visit_times(
    rng: random.Random,
    config: SyntheticConfig,
    activity: Callable[[int], float],
    until_ms: int,
) -> list[int]:
    """Session start times: on each day with chance activity(day start), 1-4 visits."""
    starts: list[int] = []
    for day in range(config.days):
        day_ms = config.start_ms + day * DAY_MS
        if day_ms >= until_ms or rng.random() >= activity(day_ms):
            continue
        count = rng.choices(*_SESSIONS_PER_DAY)[0]
        for _ in range(count):
            hour = rng.choices(range(24), weights=_HOUR_WEIGHTS)[0]
            starts.append(day_ms + hour * HOUR_MS + rng.randrange(HOUR_MS))
    return sorted(starts)


def _anomaly_bot(track: _Track, rng: random.Random, catalogue: _Catalogue, start: int) -> None:
    interval = rng.choice(_BOT_INTERVALS_MS)
    platform = rng.choice(PLATFORMS)
    hoarding = rng.random() < 0.5  # cart-hoarding bot, or a click-fraud bot
    items = [catalogue.pick(rng, rng.randrange(catalogue.categories), 0.5) for _ in range(5)]
    burst_start = start
    for burst in range(rng.randint(3, 6)):
        session = f"{track.user_id}-b{burst}"
        for n in range(rng.randint(100, 400)):
            item = items[(n // 2) % len(items)]
            kind = ("view", "add_to_cart" if hoarding else "click")[n % 2]
            if track.emit(burst_start + n * interval, kind, session, platform, item) is None:
                return
        burst_start = track.last_ts + rng.randrange(HOUR_MS, 6 * HOUR_MS)


def _anomaly_takeover(
    track: _Track, shopper: _Shopper, rng: random.Random, catalogue: _Catalogue, start: int
) -> None:
    # Somewhere the owner never was, if there is such a place: that is the signal to learn.
    used_platforms = {e.platform for e in track.events} | {shopper.platform}
    platform = rng.choice(
        [p for p in PLATFORMS if p not in used_platforms]
        or [p for p in PLATFORMS if p != shopper.platform]
    )
    # Resale value is the point: the dearest third of the catalogue, outside the owner's
    # favourites and, where there are enough, outside anything the owner ever looked at.
    dearest = sorted(range(catalogue.categories), key=lambda c: -catalogue.base_prices[c])
    dearest = [
        c for c in dearest[: max(6, catalogue.categories // 3)] if c not in shopper.favourites
    ]
    seen = {e.category for e in track.events}
    fresh = [c for c in dearest if f"c{c}" not in seen]
    categories = rng.sample(fresh if len(fresh) >= 2 else dearest, 2)
    t = start
    for visit in range(rng.randint(1, 3)):
        session = f"{track.user_id}-t{visit}"
        # The intruder knows what they want: few views, quick, straight to the dearest items.
        track.emit(t, "login", session, platform)
        cart = [catalogue.pick(rng, rng.choice(categories), 0.95) for _ in range(rng.randint(2, 4))]
        for item in cart:
            t += rng.randrange(2_000, 10_000)
            track.emit(t, "view", session, platform, item)
            t += rng.randrange(1_000, 5_000)
            track.emit(t, "add_to_cart", session, platform, item)
        if rng.random() < 0.7:
            for item in cart:
                t += rng.randrange(500, 3_000)
                track.emit(t, "purchase", session, platform, item)
        t += rng.randrange(HOUR_MS, 6 * HOUR_MS)


def _anomaly_scraper(track: _Track, rng: random.Random, catalogue: _Catalogue, start: int) -> None:
    pace = rng.choice(_SCRAPER_PACES_MS)
    position = rng.randrange(catalogue.categories * catalogue.per_category)
    total = catalogue.categories * catalogue.per_category
    t = start
    for visit in range(rng.randint(2, 4)):
        session = f"{track.user_id}-r{visit}"
        for _ in range(rng.randint(250, 700)):
            # Walks the catalogue item by item; a small jitter, but no human pauses.
            category, index = divmod(position % total, catalogue.per_category)
            position += 1
            if track.emit(t, "view", session, "web", catalogue.item(category, index)) is None:
                return
            t += pace + rng.randrange(-pace // 50, pace // 50 + 1)
        t += rng.randrange(2 * HOUR_MS, 8 * HOUR_MS)


def _assign_personas(config: SyntheticConfig, rng: random.Random) -> list[str]:
    personas: list[str] = []
    for persona, rate in config.persona_rates.items():
        personas += [persona] * min(round(rate * config.users), config.users - len(personas))
    personas += ["regular"] * (config.users - len(personas))
    rng.shuffle(personas)
    return personas


def _user(
    config: SyntheticConfig, catalogue: _Catalogue, index: int, persona: str
) -> tuple[list[Event], UserTruth]:
    # One generator per user: a user's history depends on the seed and their index only.
    rng = random.Random(f"clickscore-synthetic:{config.seed}:{index}")
    user_id = f"u{index:05d}"
    span = config.days * DAY_MS
    favourites = tuple(rng.sample(range(config.categories), rng.randint(1, 3)))
    platform = rng.choices(PLATFORMS, weights=_MAIN_PLATFORM_WEIGHTS)[0]
    shopper = _Shopper(
        user_id=user_id,
        favourites=favourites,
        price_quantile=rng.betavariate(2.0, 2.0),
        platform=platform,
        daily_activity=rng.uniform(0.35, 0.85),
        cart_rate=rng.uniform(0.03, 0.1),
    )
    track = _Track(user_id, f"syn{config.seed}-{user_id}-", config.end_ms)
    truth: dict[str, Any] = {"user_id": user_id, "persona": persona}
    start = config.start_ms

    human_until = config.end_ms
    if persona == "churner":
        human_until = start + int(rng.uniform(0.3, 0.8) * span)
        truth["churn_ms"] = human_until
    elif persona in ANOMALIES:
        human_until = start + int(rng.uniform(0.3, 0.85) * span)
    track.stop_ms = human_until

    def activity(t: int) -> float:
        if persona == "churner":  # fades to a sixth of the usual rate by the churn time
            return shopper.daily_activity * (1.0 - 0.85 * (t - start) / (human_until - start))
        return shopper.daily_activity

    visits = [(t, False) for t in _visit_times(rng, config, activity, human_until)]
    if persona in ANOMALIES:
        # A clean history first, even for a rare visitor: the change is what gets scored.
        while len(visits) < 3:
            visits = [(t, False) for t in _visit_times(rng, config, activity, human_until)]
        truth.update(anomaly=persona, anomaly_start_ms=human_until)
    target: tuple[str, str, float] | None = None
    purchase_plan = config.end_ms
    if persona == "intender":
        # Late enough that the buying visit ends inside the period.
        purchase_plan = start + int(rng.uniform(0.5, 1.0) * span) - 3 * HOUR_MS
        target = catalogue.pick(
            rng, rng.choice(favourites), min(0.95, shopper.price_quantile + 0.2)
        )
        visits.append((purchase_plan, True))
        visits.sort()
    free_at = start
    for visit_at, buying in visits:
        at = max(visit_at, free_at + 10 * MINUTE_MS)
        steps = min(40, 2 + int(rng.expovariate(1 / 8)))
        if persona == "churner":
            steps = max(2, int(steps * (1.0 - 0.6 * (at - start) / (human_until - start))))
        cart_rate, focus = shopper.cart_rate, None
        ramp = 1.0 - (purchase_plan - at) / (5 * DAY_MS)
        if target is not None and "purchase_ms" not in truth and ramp > 0:
            # In the days before buying: back to the same item, and more and more carts.
            cart_rate, focus = cart_rate + 0.35 * ramp, target
        free_at, bought = _shopping_session(
            track,
            shopper,
            catalogue,
            rng,
            at,
            steps=steps,
            cart_rate=cart_rate,
            buy_rate=0.12,
            target=focus,
            must_buy=buying,
        )
        if buying and bought is not None:
            truth["purchase_ms"] = bought

    track.stop_ms = config.end_ms
    anomaly_start = truth.get("anomaly_start_ms")
    if anomaly_start is not None:
        if persona == "bot":
            _anomaly_bot(track, rng, catalogue, anomaly_start)
        elif persona == "takeover":
            _anomaly_takeover(track, shopper, rng, catalogue, anomaly_start)
        else:
            _anomaly_scraper(track, rng, catalogue, anomaly_start)
    return track.events, UserTruth(**truth)


def generate(config: SyntheticConfig) -> tuple[list[Event], dict[str, UserTruth]]:
    """All users' events sorted by time (ties by user), and each user's ground truth."""
    rng = random.Random(f"clickscore-synthetic:{config.seed}")
    catalogue = _Catalogue(config, rng)
    events: list[Event] = []
    truth: dict[str, UserTruth] = {}
    for index, persona in enumerate(_assign_personas(config, rng)):
        user_events, user_truth = _user(config, catalogue, index, persona)
        events += user_events
        truth[user_truth.user_id] = user_truth
    events.sort(key=lambda e: (e.ts_ms, e.user_id))
    return events, truth


def write_jsonl(events: Iterable[Event], path: Path) -> int:
    """One event per line in the wire contract; returns how many were written."""
    count = 0
    with path.open("wb") as out:
        for event in events:
            out.write(event_to_json(event) + b"\n")
            count += 1
    return count


def read_jsonl(path: Path) -> Iterator[Event]:
    """Read back what write_jsonl wrote; a line that breaks the contract is an error here."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            parsed = parse_event(line, 0, _ANY_TIME)
            if isinstance(parsed, Rejection):
                raise ValueError(f"{path}:{number}: {parsed.reason}: {parsed.detail}")
            yield parsed


def write_truth(truth: dict[str, UserTruth], path: Path) -> None:
    rows = [asdict(t) for t in truth.values()]
    path.write_bytes(orjson.dumps({"users": rows}, option=orjson.OPT_INDENT_2))


def read_truth(path: Path) -> dict[str, UserTruth]:
    rows = orjson.loads(path.read_bytes())["users"]
    return {row["user_id"]: UserTruth(**row) for row in rows}
