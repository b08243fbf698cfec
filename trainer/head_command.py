"""`clickscore model head`: fit the served churn and purchase feature head on synthetic users,
measure its churn alerts per user as the demo counts them, and export it as a new version
over a base version's networks (trainer/labels/scoring_points.py, trainer/export.py).

    clickscore model head [--base 5] [--no-write] [--json]

Registered under `clickscore model` by trainer/cli.py.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from stream.settings import TrainerSettings

# The demo's generator settings (stream/demo/run.py DemoOptions: 300 users, 7 days, seed 0);
# the threshold and the held-out measure use the same settings with other seeds.
DEMO_USERS, DEMO_DAYS, DEMO_SEED = 300, 7, 0


def add_head_parser(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    head = actions.add_parser(
        "head",
        help="fit the churn and purchase feature head on synthetic users and export it as a "
        "new version over a base version's networks",
    )
    head.add_argument("--base", type=int, help="version whose networks to keep (default: served)")
    head.add_argument("--users", type=int, default=2000, help="synthetic training users")
    head.add_argument("--days", type=int, default=14, help="days of the training data")
    head.add_argument("--seed", type=int, default=1, help="training data seed")
    head.add_argument(
        "--threshold-seeds", type=int, nargs="+", default=[2, 3], help="validation data seeds"
    )
    head.add_argument(
        "--heldout-seeds", type=int, nargs="+", default=[4, 5, 6, 7], help="held-out data seeds"
    )
    head.add_argument(
        "--churn-label",
        choices=("stopped", "protocol"),
        default="stopped",
        help="churn label of the training rows (trainer/labels/scoring_points.py)",
    )
    head.add_argument(
        "--check-users",
        type=int,
        default=DEMO_USERS,
        help="users per threshold and held-out data set (default: the demo's)",
    )
    head.add_argument("--no-write", action="store_true", help="measure only, write no version")
    head.add_argument("--json", action="store_true", help="print the report as JSON")
    head.set_defaults(handler=run_head)


def run_head(settings: TrainerSettings, args: argparse.Namespace) -> int:
    import numpy as np

    from stream.contract.features import FeatureSchema
    from stream.datasets.synthetic import SyntheticConfig
    from trainer import export, promote
    from trainer.fit.feature_head import pick_head
    from trainer.labels import scoring_points as serving
    from trainer.labels.sequences import held_out
    from trainer.reference import write_reference
    from trainer.thresholds import precision_recall_at, threshold_for_precision

    # Measuring on the demo's own users (--heldout-seeds 0) is allowed: nothing is fitted there.
    if {args.seed, *args.threshold_seeds} & {DEMO_SEED, *args.heldout_seeds}:
        raise SystemExit(
            "training and threshold seeds must differ from the demo's and the held-out ones"
        )
    found = promote.version_dir(settings, args.base)
    if found is None:
        print("no base version")
        return 1
    version, base = found
    meta = export.read_meta(base)
    vocab, length = export.tokenisation(meta)
    train_config = SyntheticConfig(users=args.users, days=args.days, seed=args.seed)
    by_user, _, end_ms = serving.synthetic_users(train_config)
    spec = serving.RowSpec(
        churn_horizon_ms=settings.churn_horizon_s * 1000,
        purchase_horizon_ms=settings.purchase_horizon_s * 1000,
        sequence_length=length,
        seed=args.seed,
        churn_label=args.churn_label,
    )
    rows = serving.labelled_rows(by_user, vocab, spec, end_ms)
    check = np.array([held_out(u, 0.2, args.seed) for u in rows.users])
    x = rows.features.astype(np.float64)
    heads, validation = {}, {}
    for task in ("churn", "purchase"):
        y = getattr(rows, task)
        picked = pick_head(x[~check], y[~check], x[check], y[check])
        heads[task], validation[task] = picked.head, picked.validation
    demo = {"users": args.check_users, "days": DEMO_DAYS}
    labels, scores = serving.user_level(
        [SyntheticConfig(**demo, seed=s) for s in args.threshold_seeds],
        heads["churn"],
        vocab,
        length,
    )
    target = settings.churn_alert_precision
    chosen = threshold_for_precision(labels, scores, target)
    held_labels, held_scores = serving.user_level(
        [SyntheticConfig(**demo, seed=s) for s in args.heldout_seeds], heads["churn"], vocab, length
    )
    heldout = precision_recall_at(held_labels, held_scores, chosen.threshold) if chosen else None
    report: dict[str, Any] = {
        "base_version": version,
        "training": {
            **serving.describe(train_config),
            "rows": len(rows.users),
            "churn_label": args.churn_label,
        },
        "positive_rates": {
            "churn": float(rows.churn.mean()),
            "purchase": float(rows.purchase.mean()),
        },
        "validation": validation,
        "picked": {task: head.candidate for task, head in heads.items()},
        "threshold": (
            {**chosen.to_dict(), "unit": "users", "seeds": args.threshold_seeds}
            if chosen
            else {"threshold": None, "target_precision": target}
        ),
        "heldout": {"seeds": args.heldout_seeds, **demo, **(heldout or {})},
    }
    if not args.no_write:
        folder = promote.served_dir(settings) / str(
            export.next_version(promote.served_dir(settings))
        )
        feature_head = {
            "schema": FeatureSchema(vocab).to_dict(),
            **{task: head.to_dict() for task, head in heads.items()},
        }
        churn = report["threshold"]
        metrics = {
            f"{task}_{metric}": validation[task][heads[task].candidate][metric]
            for task in heads
            for metric in ("roc_auc", "pr_auc")
        }
        for key in ("precision", "recall", "base_rate"):
            metrics[f"churn_alert_heldout_{key}"] = report["heldout"].get(key)
        export.with_feature_head(
            base,
            folder,
            feature_head,
            alert_thresholds={"churn": {k: v for k, v in churn.items() if k != "seeds"}},
            training_data={
                "training": report["training"],
                "validation": validation,
                "threshold_seeds": args.threshold_seeds,
                "heldout": report["heldout"],
            },
            metrics=metrics,
        )
        write_reference(folder)  # reference.json: what drift is measured against
        report["written"] = str(folder)
    print(json.dumps(report, indent=2) if args.json else render_head(report))
    return 0


def render_head(report: dict[str, Any]) -> str:
    training = report["training"]
    lines = [
        f"feature head over v{report['base_version']}'s networks; trained on "
        f"{training['users']} synthetic users, {training['days']} days, seed {training['seed']} "
        f"({training['rows']} rows; churn label {training['churn_label']}: churn "
        f"{report['positive_rates']['churn']:.1%}, purchase "
        f"{report['positive_rates']['purchase']:.1%} positive)",
    ]
    for task, picked in report["picked"].items():
        best = report["validation"][task][picked]
        lines.append(
            f"  {task:8} {picked}: validation ROC-AUC {best['roc_auc']:.3f}, "
            f"PR-AUC {best['pr_auc']:.3f}"
        )
    chosen, held = report["threshold"], report["heldout"]
    if chosen.get("threshold") is None:
        lines.append(f"no churn threshold reaches precision {chosen['target_precision']}")
    else:
        lines.append(
            f"churn alerts at {chosen['threshold']:.3f} for precision "
            f"{chosen['target_precision']} (validation users, seeds {chosen['seeds']}: "
            f"precision {chosen['validation_precision']:.2f}, recall "
            f"{chosen['validation_recall']:.2f}, base rate {chosen['validation_base_rate']:.2f})"
        )
        lines.append(
            f"held-out users ({held['users']} users x {len(held['seeds'])} data sets, "
            f"{held['days']} days, seeds {held['seeds']}): precision {_num(held['precision'])}, "
            f"recall {_num(held['recall'])}, base rate {_num(held['base_rate'])} "
            f"({int(held['alerts'])} flagged)"
        )
    if "written" in report:
        lines.append(f"wrote {report['written']}; Triton serves it as the latest version")
    return "\n".join(lines)


def _num(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"
