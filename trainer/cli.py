"""`clickscore train` and `clickscore model status|rollback`, registered by stream/cli.py.

Handlers take (settings, args) and return an exit code; TrainerSettings are built by the caller.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import time
from pathlib import Path

from stream.settings import TrainerSettings

log = logging.getLogger(__name__)
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def duration_s(text: str) -> int:
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m, 6h or 1d")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = subparsers.add_parser("train", help="train, gate and serve a new model version")
    train.add_argument(
        "--data",
        nargs="+",
        default=["synthetic"],
        metavar="SOURCE",
        help="synthetic | topic | FORMAT PATH (taobao, yoochoose, diginetica, rees46, ...)",
    )
    train.add_argument("--every", type=duration_s, help="keep refreshing, e.g. 6h")
    train.add_argument("--tiny", action="store_true", help="the small CPU smoke-test model")
    train.add_argument("--lora", action="store_true", help="LoRA fine-tuning (peft)")
    train.add_argument("--users", type=int, default=2000, help="synthetic users")
    train.add_argument("--days", type=int, default=14, help="synthetic days")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--no-promote", action="store_true", help="only write the candidate under the store"
    )
    train.set_defaults(handler=run_train)

    model = subparsers.add_parser("model", help="served model versions")
    actions = model.add_subparsers(dest="model_command", required=True)
    actions.add_parser("status", help="versions on disk and in model_versions").set_defaults(
        handler=run_status
    )
    actions.add_parser("rollback", help="serve the previous version again").set_defaults(
        handler=run_rollback
    )
    thresholds = actions.add_parser(
        "thresholds",
        help="pick and store a version's churn (or, --kind anomaly, anomaly) alert threshold "
        "on validation users",
    )
    thresholds.add_argument("--version", type=int, help="default: the served version")
    from trainer.anomaly_command import add_anomaly_arguments

    add_anomaly_arguments(thresholds)
    thresholds.set_defaults(handler=run_thresholds)
    from trainer.head_command import add_head_parser

    add_head_parser(actions)
    reference = actions.add_parser(
        "reference",
        help="write a version's reference distributions of its scores and behaviour features "
        "(reference.json), which the worker's drift gauges compare served traffic with",
    )
    chosen = reference.add_mutually_exclusive_group()
    chosen.add_argument("--version", type=int, help="default: the served version")
    chosen.add_argument("--all", action="store_true", help="every version in the repository")
    reference.set_defaults(handler=run_reference)


def _train_args(args: argparse.Namespace) -> object:
    from trainer.refresh import TrainArgs

    source = args.data
    if source[0] in ("synthetic", "topic") and len(source) == 1:
        data, path = source[0], None
    elif len(source) == 2:
        data, path = source[0], Path(source[1])
    else:
        raise SystemExit("--data takes synthetic, topic, or FORMAT PATH")
    return TrainArgs(
        data=data,
        path=path,
        users=args.users,
        days=args.days,
        seed=args.seed,
        tiny=args.tiny,
        lora=args.lora,
        promote=not args.no_promote,
    )


def run_train(settings: TrainerSettings, args: argparse.Namespace) -> int:
    from stream.console import StepBars
    from trainer import promote
    from trainer.refresh import TrainArgs, train_candidate

    train_args = _train_args(args)
    assert isinstance(train_args, TrainArgs)
    while True:
        started = time.monotonic()
        with StepBars() as bars:
            folder, heldout = train_candidate(settings, train_args, bars.advance)
        print(f"candidate {folder}")
        if train_args.promote:
            result = asyncio.run(promote.promote(settings, folder, heldout))
            verdict = "promoted" if result.promote else "rejected"
            print(f"{verdict} v{folder.name}: {result.reason}")
        if args.every is None:
            return 0
        time.sleep(max(0.0, args.every - (time.monotonic() - started)))


def run_status(settings: TrainerSettings, args: argparse.Namespace) -> int:
    from trainer import promote
    from trainer.export import versions

    print(
        f"serving (latest in {promote.served_dir(settings)}): v{promote.serving_version(settings)}"
    )
    print(
        f"on disk: {versions(promote.served_dir(settings))}, "
        f"set aside: {versions(promote.store_dir(settings))}"
    )
    for row in asyncio.run(promote.table(settings)):
        auc = row.metrics.get("gate", row.metrics).get(settings.promotion_metric)
        print(
            f"v{row.version} {row.status:12} {settings.promotion_metric}={auc} "
            f"promoted_at={row.promoted_at}"
        )
    return 0


def run_rollback(settings: TrainerSettings, args: argparse.Namespace) -> int:
    from trainer import promote

    try:
        bad, previous = asyncio.run(promote.rollback(settings))
    except RuntimeError as exc:
        print(f"rollback refused: {exc}")
        return 1
    print(f"rolled back v{bad}; serving v{previous}")
    return 0


def run_thresholds(settings: TrainerSettings, args: argparse.Namespace) -> int:
    from trainer import promote
    from trainer.export import read_meta
    from trainer.refresh import store_thresholds

    if getattr(args, "kind", "churn") == "anomaly":
        from trainer.anomaly_command import run_anomaly_threshold

        return run_anomaly_threshold(settings, args)
    found = promote.version_dir(settings, args.version)
    if found is None:
        print("no served version")
        return 1
    version, folder = found
    if "feature_head" in read_meta(folder):
        print(
            f"v{version} scores churn with its feature head; its threshold comes from "
            "`clickscore model head`, which measured it per user"
        )
        return 1
    picked = store_thresholds(settings, folder)["churn"]
    if picked.get("threshold") is None:
        print(f"v{version}: no churn threshold reaches precision {picked['target_precision']}")
    else:
        print(
            f"v{version}: churn alerts at {picked['threshold']:.3f} for precision "
            f"{picked['target_precision']} (validation: precision "
            f"{picked['validation_precision']:.2f}, recall {picked['validation_recall']:.2f}, "
            f"base rate {picked['validation_base_rate']:.2f}); reload the model to serve it"
        )
    return 0


def run_reference(settings: TrainerSettings, args: argparse.Namespace) -> int:
    from trainer import promote
    from trainer.export import versions
    from trainer.reference import write_reference

    if args.all:
        chosen = [
            (v, promote.served_dir(settings) / str(v))
            for v in versions(promote.served_dir(settings))
        ]
    else:
        found = promote.version_dir(settings, args.version)
        chosen = [] if found is None else [found]
    if not chosen:
        print("no version")
        return 1
    for version, folder in chosen:
        started = time.monotonic()
        path = write_reference(folder)
        print(f"v{version}: {path} ({time.monotonic() - started:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m trainer.cli ...`) until stream/cli.py registers these."""
    parser = argparse.ArgumentParser(prog="clickscore")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = TrainerSettings.load()
    return int(args.handler(settings, args))


if __name__ == "__main__":
    raise SystemExit(main())
