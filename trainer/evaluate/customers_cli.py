"""`clickscore evaluate churn|purchase`: the served scorer and its baselines on real customers.

    clickscore evaluate churn --format cdnow PATH [--json]
    clickscore evaluate purchase --format taobao PATH [--json]

Registered under the `evaluate` command group by stream/cli.py (`add_parsers` takes that
group's subparsers). Text by default; `--json` prints the scorecard (trainer/customers/
scorecard.py) with the shape {"customers": N, "models": {"model": {...}, "rfm_gbdt": ...}}.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from stream.settings import TrainerSettings

FORMATS = ("cdnow", "taobao", "rees46", "retailrocket", "jsonl")


def _duration_s(text: str) -> int:
    from trainer.cli import duration_s

    return duration_s(text)


def add_parsers(evaluations: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    churn = evaluations.add_parser(
        "churn", help="churn on a purchase log: calibration period, then who buys again"
    )
    purchase = evaluations.add_parser(
        "purchase", help="a purchase within the horizon, at daily cut-offs of a clickstream"
    )
    for command, default in ((churn, "cdnow"), (purchase, "taobao")):
        command.add_argument("path", type=Path)
        command.add_argument("--format", choices=FORMATS, default=default)
        command.add_argument("--json", action="store_true", help="print the scorecard as JSON")
        command.add_argument(
            "--bootstrap", type=int, default=1000, help="resamples of the held-out customers"
        )
        command.add_argument("--seed", type=int, default=0)
        command.add_argument(
            "--alert-precision",
            type=float,
            help="target precision of the alert threshold "
            "(default: CLICKSCORE_CHURN_ALERT_PRECISION)",
        )
        command.add_argument(
            "--alert-max-rate",
            type=float,
            help="most of the validation rows the alert may flag "
            "(default: CLICKSCORE_CHURN_ALERT_MAX_RATE)",
        )
        command.set_defaults(handler=run_evaluate, task=command.prog.split()[-1])
    churn.add_argument("--calibration-weeks", type=int, default=39)
    churn.add_argument("--holdout-weeks", type=int, default=39)
    purchase.add_argument("--horizon", type=_duration_s, default=86_400, help="e.g. 1d, 12h")
    purchase.add_argument("--step", type=_duration_s, default=86_400, help="between cut-offs")
    purchase.add_argument(
        "--min-history", type=_duration_s, default=3 * 86_400, help="before the first cut-off"
    )


def _events(args: argparse.Namespace) -> Any:
    from stream.datasets import loaders
    from stream.datasets.cdnow import load_cdnow

    if args.format == "cdnow":
        return load_cdnow(args.path)
    return loaders.load(args.format, args.path)


def run_evaluate(settings: TrainerSettings, args: argparse.Namespace) -> int:
    from trainer.evaluate.customers import ScorecardArgs, scorecard
    from trainer.labels import cohorts

    events = _events(args)
    if args.task == "churn":
        cohort = cohorts.churn_cohort(
            events, cohorts.ChurnProtocol(args.calibration_weeks, args.holdout_weeks)
        )
    else:
        protocol = cohorts.PurchaseProtocol(
            args.horizon * 1000, args.step * 1000, args.min_history * 1000
        )
        cohort = cohorts.purchase_cohort(events, protocol)
    report = scorecard(
        cohort,
        ScorecardArgs(
            task=args.task,
            bootstrap=args.bootstrap,
            alert_precision=args.alert_precision or settings.churn_alert_precision,
            alert_max_rate=args.alert_max_rate or settings.churn_alert_max_rate,
            seed=args.seed,
        ),
    )
    report["format"] = args.format
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def _ci(entry: dict[str, Any], metric: str) -> str:
    low, high = entry[f"{metric}_ci95"]
    return f"{entry[metric]:.3f} [{low:.3f}, {high:.3f}]"


def render(report: dict[str, Any]) -> str:
    what = "churned (no purchase)" if report["task"] == "churn" else "bought"
    lines = [
        f"{report['task']} on {report['customers']} held-out customers "
        f"({report['rows']} cut-offs; {report['training_customers']} customers trained on); "
        f"{report['base_rate']:.1%} {what} within {_horizon(report['horizon_weeks'])}",
        "",
        f"{'':12} {'ROC-AUC [95% interval]':>26} {'PR-AUC [95% interval]':>26}",
    ]
    for name, entry in report["models"].items():
        lines.append(f"{name:12} {_ci(entry, 'roc_auc'):>26} {_ci(entry, 'pr_auc'):>26}")
    lines += ["", "model minus baseline (paired bootstrap of the difference):"]
    for name, entry in report["differences"].items():
        verdict = [f"{m} {_verdict(entry, m)}" for m in ("roc_auc", "pr_auc")]
        lines.append(
            f"  {name:12} ROC-AUC {_ci(entry, 'roc_auc')}  PR-AUC {_ci(entry, 'pr_auc')}  "
            f"({', '.join(verdict)})"
        )
    lines.append(
        f"\nmodel (served): feature head {report['served']['candidate']} on the user state's "
        "features (picked on validation)"
    )
    if "full_history" in report:
        lines.append(
            f"full_history (not served): {report['full_history']['candidate']} on features of "
            "the whole history and BG/NBD (picked on validation)"
        )
    alert = report["alert"]
    if alert.get("threshold") is None:
        lines.append(f"alerts: none ({alert['reason']})")
    else:
        held = alert["heldout"]
        lines.append(
            f"alerts at {alert['threshold']:.3f} (validation: precision "
            f"{alert['validation_precision']:.2f}, 95 % lower bound "
            f"{alert['validation_precision_low95']:.2f}, recall {alert['validation_recall']:.2f}, "
            f"{alert['validation_alert_rate']:.0%} of rows flagged, base rate "
            f"{alert['validation_base_rate']:.2f}): held-out precision {_num(held['precision'])}, "
            f"recall {_num(held['recall'])}, {held['alerts']:.0f} flagged, base rate "
            f"{_num(held['base_rate'])}"
        )
    return "\n".join(lines)


def _verdict(entry: dict[str, Any], metric: str) -> str:
    if entry[f"{metric}_wins"]:
        return "wins"
    return "loses" if entry[f"{metric}_ci95"][1] < 0 else "within the interval"


def _horizon(weeks: float) -> str:
    return f"{weeks:g} weeks" if weeks >= 1 else f"{weeks * 7 * 24:g} hours"


def _num(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"
