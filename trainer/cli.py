"""`clickscore train` and `clickscore model status|rollback|reference`, registered by
stream/cli.py.

Handlers take (settings, args) and return an exit code; TrainerSettings are built by the caller.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
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
    train.add_argument("--users", type=int, default=2000, help="synthetic users")
    train.add_argument("--days", type=int, default=14, help="synthetic days")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--no-promote",
        action="store_true",
        help="gate and report only: the candidate stays under the store, nothing is served",
    )
    train.add_argument(
        "--json", action="store_true", help="print the gate as one JSON object, last line"
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
    reference = actions.add_parser(
        "reference",
        help="write a version's reference distributions of its scores and behaviour features "
        "(reference.json), which the worker's drift gauges compare served traffic with",
    )
    chosen = reference.add_mutually_exclusive_group()
    chosen.add_argument("--version", type=int, help="default: the served version")
    chosen.add_argument("--all", action="store_true", help="every version in the repository")
    reference.set_defaults(handler=run_reference)
    from trainer.export.commands import add_migrate_parser

    add_migrate_parser(actions)


def _train_args(args: argparse.Namespace) -> object:
    from trainer.history import Source
    from trainer.pipeline import TrainArgs

    source = args.data
    if source[0] in ("synthetic", "topic") and len(source) == 1:
        data, path = source[0], None
    elif len(source) == 2:
        data, path = source[0], Path(source[1])
    else:
        raise SystemExit("--data takes synthetic, topic, or FORMAT PATH")
    chosen = Source(data=data, path=path, users=args.users, days=args.days, seed=args.seed)
    return TrainArgs(source=chosen, tiny=args.tiny, promote=not args.no_promote)


def limit_threads(settings: TrainerSettings) -> None:
    """BLAS and OpenMP pools at settings.train_threads, set before torch or numpy's BLAS
    starts them: idle pool threads spin waiting for work, and on a shared 2-core machine that
    spinning was most of a tiny run's time (BENCHMARKS.md, trainer threads)."""
    threads = str(settings.train_threads)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = threads
    # Idle OpenMP threads sleep at once rather than spin (GNU and LLVM OpenMP read these).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("KMP_BLOCKTIME", "0")
    if settings.train_keep_freed_memory:
        keep_freed_memory()


def keep_freed_memory() -> None:
    """glibc serves allocations above 32 MB with mmap and unmaps them on free, so a tensor
    made and freed every training step is faulted in page by page every step: that, not the
    learning, was most of a tiny run's system time. No mmap (M_MMAP_MAX 0) and no trimming
    (M_TRIM_THRESHOLD) keep freed memory in the heap for the next step. No-op off glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return
    m_trim_threshold, m_mmap_max = -1, -4  # glibc malloc.h
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, ctypes.c_int(2**31 - 1))


def run_train(settings: TrainerSettings, args: argparse.Namespace) -> int:
    limit_threads(settings)
    # The pipeline's steps on stderr; stdout keeps the result (and --json's last line).
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from trainer.history import HistoryRefused
    from trainer.pipeline import TrainArgs, run

    train_args = _train_args(args)
    assert isinstance(train_args, TrainArgs)
    while True:
        started = time.monotonic()
        try:
            result = run(settings, train_args)
            doc = result.to_json()
            print(f"candidate v{result.version} ({result.folder}): {result.reason}")
        except HistoryRefused as refused:
            doc = {"version": None, "promoted": False, "reason": refused.reason, "tasks": {}}
            print(f"refused: {refused.reason}")
        if args.json:
            print(json.dumps(doc, sort_keys=True))
        if args.every is None:
            return 0 if doc["version"] is not None else 2
        time.sleep(max(0.0, args.every - (time.monotonic() - started)))


def run_status(settings: TrainerSettings, args: argparse.Namespace) -> int:
    from trainer import publish as promote
    from trainer.export import versions

    print(
        f"serving (latest in {promote.served_dir(settings)}): v{promote.serving_version(settings)}"
    )
    print(
        f"on disk: {versions(promote.served_dir(settings))}, "
        f"set aside: {versions(promote.store_dir(settings))}"
    )
    for row in asyncio.run(promote.table(settings)):
        gate = row.metrics.get("gate", {})
        verdicts = ", ".join(
            f"{task} {entry['verdict']}"
            for task, entry in gate.items()
            if isinstance(entry, dict) and "verdict" in entry
        )
        print(f"v{row.version} {row.status:12} promoted_at={row.promoted_at} {verdicts}")
    return 0


def run_rollback(settings: TrainerSettings, args: argparse.Namespace) -> int:
    from trainer import publish as promote

    try:
        bad, previous = asyncio.run(promote.rollback(settings))
    except RuntimeError as exc:
        print(f"rollback refused: {exc}")
        return 1
    print(f"rolled back v{bad}; serving v{previous}")
    return 0


def run_reference(settings: TrainerSettings, args: argparse.Namespace) -> int:
    from trainer import publish as promote
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
