"""`clickscore model thresholds --kind anomaly`: pick a version's anomaly alert threshold per
user on validation users, measure it with and without the rules on held-out users, and store
it in the version's model_config.json as `alert_thresholds.anomaly` (trainer/customers/
anomaly.py). No threshold reaching CLICKSCORE_ANOMALY_ALERT_PRECISION stores none (null):
Triton then returns infinity and the model raises no anomaly alert, the burst and takeover
rules alone flag bots, scrapers and takeovers.

    clickscore model thresholds --kind anomaly [--version 6] [--no-write] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from stream.settings import TrainerSettings
from trainer.head_command import DEMO_DAYS, DEMO_SEED, DEMO_USERS


def add_anomaly_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kind",
        choices=("churn", "anomaly"),
        default="churn",
        help="churn: on the version's own validation users; anomaly: per user on synthetic "
        "users with the demo's settings",
    )
    parser.add_argument(
        "--threshold-seeds", type=int, nargs="+", default=[2, 3], help="validation data seeds"
    )
    parser.add_argument(
        "--heldout-seeds", type=int, nargs="+", default=[4, 5, 6, 7], help="held-out data seeds"
    )
    parser.add_argument(
        "--check-users", type=int, default=DEMO_USERS, help="users per data set (the demo's)"
    )
    parser.add_argument("--no-write", action="store_true", help="measure only, write nothing")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run_anomaly_threshold(settings: TrainerSettings, args: argparse.Namespace) -> int:
    from stream.datasets.synthetic import SyntheticConfig, generate
    from stream.scoring.alerts import AlertRules
    from trainer import export, promote
    from trainer.evaluate.anomaly_per_user import (
        precision_recall,
        rules_flagged,
        score_users,
        user_level,
    )
    from trainer.thresholds import best_precision, precision_recall_at, threshold_for_precision

    # Measuring on the demo's own users (--heldout-seeds 0) is allowed: nothing is picked there.
    if set(args.threshold_seeds) & {DEMO_SEED, *args.heldout_seeds}:
        raise SystemExit("threshold seeds must differ from the demo's and the held-out ones")
    found = promote.version_dir(settings, args.version)
    if found is None:
        print("no served version")
        return 1
    version, folder = found
    meta = export.read_meta(folder)
    vocab, length = export.tokenisation(meta)
    model = export.load(folder)
    demo = {"users": args.check_users, "days": DEMO_DAYS}
    labels, scores = user_level(
        [SyntheticConfig(**demo, seed=s) for s in args.threshold_seeds], model, vocab, length
    )
    target = settings.anomaly_alert_precision
    chosen = threshold_for_precision(labels, scores, target)
    rules = AlertRules()
    fixed = rules.anomaly_threshold
    picked: dict[str, Any] = (
        chosen.to_dict()
        if chosen
        else {
            "threshold": None,
            "target_precision": target,
            "validation_base_rate": float(labels.mean()),
            "validation_best": best_precision(labels, scores),
        }
    )
    picked.update(
        unit="users",
        seeds=args.threshold_seeds,
        validation_at_fixed=precision_recall_at(labels, scores, fixed),
    )
    threshold = chosen.threshold if chosen else math.inf
    model_flags: dict[str, set[str]] = {"served": set(), "fixed": set()}
    rule_flags: set[str] = set()
    anomalous: set[str] = set()
    population = 0
    for seed in args.heldout_seeds:
        config = SyntheticConfig(**demo, seed=seed)
        truth, best = score_users(config, model, vocab, length)
        population += len(truth)
        anomalous |= {f"{seed}:{u}" for u, t in truth.items() if t.anomaly is not None}
        model_flags["served"] |= {f"{seed}:{u}" for u, s in best.items() if s >= threshold}
        model_flags["fixed"] |= {f"{seed}:{u}" for u, s in best.items() if s >= fixed}
        events, _ = generate(config)
        rule_flags |= {f"{seed}:{u}" for u in rules_flagged(events, rules, vocab, length)}
    served, fixed_flags = model_flags["served"], model_flags["fixed"]
    rows = {
        "model at the served threshold": precision_recall(served, anomalous),
        f"model at {fixed}": precision_recall(fixed_flags, anomalous),
        "burst+takeover": precision_recall(rule_flags, anomalous),
        "model (served threshold)+burst+takeover": precision_recall(served | rule_flags, anomalous),
        f"model at {fixed}+burst+takeover": precision_recall(fixed_flags | rule_flags, anomalous),
    }
    report: dict[str, Any] = {
        "version": version,
        "threshold": picked,
        "heldout": {
            "seeds": args.heldout_seeds,
            **demo,
            "population": population,
            "rows": [{"label": label, **row} for label, row in rows.items()],
        },
    }
    if not args.no_write:
        combined = rows["model (served threshold)+burst+takeover"]
        meta.setdefault("alert_thresholds", {})["anomaly"] = {
            **picked,
            "heldout": report["heldout"],
        }
        meta.setdefault("metrics", {}).update(
            anomaly_alert_heldout_combined_precision=combined["precision"],
            anomaly_alert_heldout_combined_recall=combined["recall"],
        )
        staging = folder / f".{export.META}.tmp"
        staging.write_text(json.dumps(meta, indent=2, sort_keys=True))
        staging.replace(folder / export.META)
        report["written"] = str(folder / export.META)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def render(report: dict[str, Any]) -> str:
    picked, held = report["threshold"], report["heldout"]
    seeds = picked["seeds"]
    if picked["threshold"] is None:
        best = picked["validation_best"]
        lines = [
            f"v{report['version']}: no anomaly threshold reaches precision "
            f"{picked['target_precision']} per user (validation users, seeds {seeds}, base "
            f"rate {picked['validation_base_rate']:.2f}; the best any threshold reaches is "
            f"precision {_num(best and best['precision'])}, recall "
            f"{_num(best and best['recall'])} at {_num(best and best['threshold'], 3)}): "
            "the model raises no anomaly alert"
        ]
    else:
        lines = [
            f"v{report['version']}: anomaly alerts at {picked['threshold']:.4f} for precision "
            f"{picked['target_precision']} per user (validation users, seeds {seeds}: precision "
            f"{picked['validation_precision']:.2f}, recall {picked['validation_recall']:.2f}, "
            f"base rate {picked['validation_base_rate']:.2f})"
        ]
    lines.append(
        f"held-out users ({held['users']} users x {len(held['seeds'])} data sets, "
        f"{held['days']} days, seeds {held['seeds']}), against the anomalies:"
    )
    for row in held["rows"]:
        lines.append(
            f"  {row['label']:<42} precision {_num(row['precision'])}  recall "
            f"{_num(row['recall'])}  ({row['flagged']} flagged, {row['anomalous']} true)"
        )
    if "written" in report:
        lines.append(f"wrote {report['written']}; reload the model to serve it")
    return "\n".join(lines)


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"
