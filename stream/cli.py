"""The `clickscore` command. It builds the one Settings object and hands it down."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from stream.settings import (
    ActionsSettings,
    CoreSettings,
    KafkaSettings,
    OutcomesSettings,
    ReplaySettings,
    Settings,
    StackSettings,
    TrainerSettings,
    WorkerSettings,
)

Handler = Callable[[Any, argparse.Namespace], int]

# What each command reads: its --help lists these settings, and only they are loaded and
# validated when it runs. The demo and the benchmarks run every part, so they read them all.
SETTINGS_OF: dict[str, type[CoreSettings]] = {
    "worker": WorkerSettings,
    "actions": ActionsSettings,
    "stack": StackSettings,
    "db": StackSettings,
    "replay": ReplaySettings,
    "generate": ReplaySettings,
    "dlq": KafkaSettings,
    "train": TrainerSettings,
    "model": TrainerSettings,
    "evaluate": TrainerSettings,
    "outcomes": OutcomesSettings,
    "demo": Settings,
    "bench": Settings,
}


def _stack_up(settings: StackSettings, args: argparse.Namespace) -> int:
    from stream.stack import local

    statuses = local.up(settings, timeout_s=args.timeout)
    return _print_statuses(statuses)


def _stack_down(settings: StackSettings, args: argparse.Namespace) -> int:
    from stream.stack import local

    stopped = local.down(settings)
    print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    return 0


def _stack_status(settings: StackSettings, args: argparse.Namespace) -> int:
    from stream.stack import local

    return _print_statuses(local.status(settings))


def _print_statuses(statuses: Sequence[object]) -> int:
    healthy = True
    for status in statuses:
        ok = getattr(status, "healthy", False)
        healthy &= ok
        print(
            f"{'ok  ' if ok else 'DOWN'}  {getattr(status, 'name', '?'):<9} "
            f"{getattr(status, 'detail', '')}"
        )
    return 0 if healthy else 1


def _db_upgrade(settings: StackSettings, args: argparse.Namespace) -> int:
    from stream.db import migrate

    migrate.upgrade(settings, args.revision)
    print(f"database at {migrate.current(settings)}")
    return 0


def _db_downgrade(settings: StackSettings, args: argparse.Namespace) -> int:
    from stream.db import migrate

    migrate.downgrade(settings, args.revision)
    print(f"database at {migrate.current(settings)}")
    return 0


def _worker(settings: WorkerSettings, args: argparse.Namespace) -> int:
    from stream.worker.main import run_worker

    run_worker(settings)
    return 0


def _actions(settings: ActionsSettings, args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from stream.ops import action_metrics
    from stream.ops.actions import run_actions

    async def serve() -> None:
        # A signal only sets the event: the batch in hand finishes and its offsets commit.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_actions(settings, stop=stop)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    action_metrics.serve(settings)
    asyncio.run(serve())
    return 0


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from stream.demo.run import DEFAULT_RATE, DemoOptions, run_demo

    options = DemoOptions(
        users=args.users,
        days=args.days,
        seed=args.seed,
        keep_running=args.keep,
        rate=DEFAULT_RATE if args.rate is None else args.rate,
        report_root=args.report_dir,
        dataset=(args.dataset[0], Path(args.dataset[1])) if args.dataset else None,
        max_events=args.max_events,
    )
    return run_demo(settings, options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clickscore", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    stack = commands.add_parser("stack", help="the local broker, Triton and database")
    stack_commands = stack.add_subparsers(dest="action", required=True)
    up = stack_commands.add_parser("up", help="start them and wait until each is ready")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait per service")
    up.set_defaults(handler=_stack_up)
    stack_commands.add_parser("down", help="stop what `up` started").set_defaults(
        handler=_stack_down
    )
    stack_commands.add_parser("status", help="check each service").set_defaults(
        handler=_stack_status
    )

    db = commands.add_parser("db", help="database migrations (Alembic)")
    db_commands = db.add_subparsers(dest="action", required=True)
    db_up = db_commands.add_parser("upgrade", help="migrate up")
    db_up.add_argument("revision", nargs="?", default="head")
    db_up.set_defaults(handler=_db_upgrade)
    db_down = db_commands.add_parser("downgrade", help="migrate down")
    db_down.add_argument("revision")
    db_down.set_defaults(handler=_db_downgrade)

    commands.add_parser("worker", help="run the scoring worker (Faust)").set_defaults(
        handler=_worker
    )
    commands.add_parser(
        "actions", help="turn churn alerts into retention actions (database, webhook)"
    ).set_defaults(handler=_actions)
    from stream.bench import cli as bench
    from stream.ops import dlq, outcomes, replay
    from trainer import cli as trainer_cli  # its handlers import torch lazily, not this

    bench.add_parsers(commands)
    dlq.add_parsers(commands)
    outcomes.add_parsers(commands)
    replay.add_parsers(commands)
    trainer_cli.add_parsers(commands)
    from trainer.evaluate import (
        customers_cli,  # lazy too: scipy/sklearn in handlers
        next_click_cli,  # lazy too: torch in its handler
    )

    evaluate = commands.add_parser(
        "evaluate", help="held-out metrics of the models against the baselines"
    )
    evaluations = evaluate.add_subparsers(dest="evaluation", required=True)
    customers_cli.add_parsers(evaluations)
    next_click_cli.add_parsers(evaluations)
    demo = commands.add_parser("demo", help="run the main job on the local stack")
    demo.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    demo.add_argument("--users", type=int, default=300, help="synthetic users to replay")
    demo.add_argument("--days", type=int, default=7, help="days of their history")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--rate",
        type=float,
        default=None,
        help="events/s sent, so latencies are the pipeline's (default: a rate measured to be "
        "sustained on a two-core machine; more for a stress run; 0: as fast as possible)",
    )
    demo.add_argument(
        "--report-dir",
        type=Path,
        default=Path("reports"),
        help="where reports/demo-<time>/index.html goes",
    )
    demo.add_argument(
        "--dataset",
        nargs=2,
        metavar=("FORMAT", "PATH"),
        help="replay real data instead (taobao, yoochoose, diginetica, rees46, retailrocket)",
    )
    demo.add_argument(
        "--max-events", type=int, default=50_000, help="of a --dataset, the earliest this many"
    )
    demo.set_defaults(handler=_demo)
    for name, command in _subcommands(parser):
        settings_class = SETTINGS_OF.get(name, Settings)
        command.set_defaults(settings_class=settings_class)
        for each in (command, *(sub for _, sub in _subcommands(command))):
            each.epilog = settings_class.environment_help()
            each.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = args.settings_class.load()
    handler: Handler = args.handler
    try:
        return handler(settings, args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from stream.stack.process import StackError
        from stream.worker.preflight import StartupError

        if isinstance(exc, StackError | StartupError):
            print(f"clickscore: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
