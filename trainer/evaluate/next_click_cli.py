"""`clickscore evaluate next-click`: the next-event model against session baselines.

    clickscore evaluate next-click --format yoochoose --train TRAIN --test TEST [--json]
    clickscore evaluate next-click --format diginetica --train PATH [--json]

Registered under the `evaluate` command group by stream/cli.py. Without --test, the sessions
that start in the last --test-fraction of TRAIN are the test sessions. With --json it prints
one object, {"positions": N, "models": {"model": {"hr@20": x, "mrr@20": y}, ...,
"served": {"hr@20": ..., "mrr@20": ..., "strategy": ..., "blend_weight": ...}}, "next_items":
{the choice and its validation table}}; the training time and the tuned settings go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from stream.settings import TrainerSettings


def add_parsers(evaluations: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = evaluations.add_parser(
        "next-click",
        help="HR@20 / MRR@20 of the next-event model and session baselines on session data",
    )
    command.add_argument("--format", choices=("yoochoose", "diginetica"), required=True)
    command.add_argument("--train", type=Path, required=True)
    command.add_argument("--test", type=Path, help="default: the latest sessions of TRAIN")
    command.add_argument("--test-fraction", type=float, default=0.2)
    command.add_argument("--items", type=int, default=50_000, help="item vocabulary size")
    command.add_argument("--max-epochs", type=int, default=60)
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--json", action="store_true", help="print one JSON object")
    command.set_defaults(handler=run_next_click)


def run_next_click(settings: TrainerSettings, args: argparse.Namespace) -> int:
    from trainer.evaluate.next_click import NextClickArgs, evaluate

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    defaults = NextClickArgs(format=args.format, train=args.train)
    result = evaluate(
        replace(
            defaults,
            test=args.test,
            test_fraction=args.test_fraction,
            items=args.items,
            knn_max_sessions=settings.session_knn_max_sessions,
            train_config=replace(defaults.train_config, max_epochs=args.max_epochs, seed=args.seed),
        )
    )
    fit = result.details["fit"]
    summary = (
        f"positions {result.positions}; train sessions {result.details['train_sessions']}, "
        f"test sessions {result.details['test_sessions']}, items {result.details['items']}; "
        f"model trained {fit['epochs_run']} epochs (best {fit['best_epoch'] + 1}) in "
        f"{fit['seconds']:.0f} s ({fit['cpu_seconds']:.0f} s CPU); "
        f"V-SkNN tuned on validation: {result.details['vsknn']}; served (chosen on "
        f"validation): {result.details['next_items']['strategy']}, validation "
        f"{result.details['next_items']['validation']}"
    )
    if args.json:
        print(summary, file=sys.stderr)
        print(json.dumps(result.to_json()))
        return 0
    print(summary)
    print("\n| model | HR@20 | MRR@20 |\n| --- | --- | --- |")
    for name, m in result.models.items():
        print(f"| {name} | {m['hr@20']:.4f} | {m['mrr@20']:.4f} |")
    return 0
