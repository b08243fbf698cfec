"""The alert rules against the generator's ground truth, without the stack.

Fresh synthetic users' events are folded through the worker's own state code (`apply_event`)
and alert rules (`evaluate`), each user evaluated after every event. No model scores it (they
are NaN, so the model's anomaly alert never fires): the figures are the rules' own, the burst
and takeover rules over bots, scrapers and takeovers, per user as in the demo's report.

    .venv/bin/python -m stream.demo.rules_truth --users 400 --days 4 --seed 11
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from stream.contract.state import UserState, apply_event
from stream.contract.tokenizer import Vocabulary
from stream.datasets.synthetic import SyntheticConfig, generate
from stream.demo.report import PrecisionRecall, precision_recall
from stream.scoring.alerts import BURST, TAKEOVER, AlertRules, evaluate
from stream.settings import WorkerSettings

RULE_KINDS = (BURST, TAKEOVER)


@dataclass(frozen=True)
class RulesTruth:
    rows: list[PrecisionRecall]
    events: int
    flagged_before_start: int  # anomalous users flagged before their anomaly began
    people_flagged: dict[str, int]  # persona -> users without an anomaly that were flagged


def measure(config: SyntheticConfig, rules: AlertRules, sequence_length: int) -> RulesTruth:
    events, truth = generate(config)
    vocab = Vocabulary()
    states: dict[str, UserState] = {}
    by_kind: dict[str, set[str]] = {kind: set() for kind in RULE_KINDS}
    early: set[str] = set()
    for event in events:
        user = event.user_id
        state, fresh = apply_event(states.get(user), event, vocab, sequence_length)
        if not fresh:
            continue
        nan = math.nan
        states[user], raised = evaluate(state, user, nan, nan, nan, "rules-only", rules)
        for alert in raised:
            by_kind.setdefault(alert.kind, set()).add(user)
            start = truth[user].anomaly_start_ms
            if start is not None and event.ts_ms < start:
                early.add(user)
    anomalous = {u for u, t in truth.items() if t.anomaly is not None}
    takeovers = {u for u, t in truth.items() if t.anomaly == "takeover"}
    flagged = by_kind[BURST] | by_kind[TAKEOVER]
    people: dict[str, int] = {}
    for user in flagged - anomalous:
        people[truth[user].persona] = people.get(truth[user].persona, 0) + 1
    users = len(truth)
    rows = [
        precision_recall("burst alerts vs anomalies", by_kind[BURST], anomalous, users),
        precision_recall("takeover alerts vs anomalies", by_kind[TAKEOVER], anomalous, users),
        precision_recall("takeover alerts vs takeovers", by_kind[TAKEOVER], takeovers, users),
        precision_recall("burst+takeover vs anomalies", flagged, anomalous, users),
    ]
    return RulesTruth(rows, len(events), len(early), people)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    settings = WorkerSettings.load()
    started = time.monotonic()
    config = SyntheticConfig(users=args.users, days=args.days, seed=args.seed)
    result = measure(config, AlertRules.from_settings(settings), settings.sequence_length)
    print(
        f"{args.users} synthetic users, {args.days} days, seed {args.seed}: "
        f"{result.events:,} events, rules only (no model scores), "
        f"{time.monotonic() - started:.1f} s"
    )
    for row in result.rows:
        print(
            f"  {row.label:<30} precision {_ratio(row.precision)}  recall {_ratio(row.recall)}"
            f"  base rate {_ratio(row.base_rate)}  ({row.flagged} flagged, {row.actual} true)"
        )
    people = ", ".join(f"{p} {n}" for p, n in sorted(result.people_flagged.items())) or "none"
    print(f"  people flagged: {people}")
    print(f"  anomalous users flagged before their anomaly began: {result.flagged_before_start}")
    return 0


def _ratio(value: float | None) -> str:
    return " n/a" if value is None else f"{value:4.2f}"


if __name__ == "__main__":
    raise SystemExit(main())
