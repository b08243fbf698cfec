"""`clickscore model migrate`, registered by trainer/cli.py (torch loads only when it runs)."""

from __future__ import annotations

import argparse

from stream.settings import TrainerSettings


def add_migrate_parser(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    migrate = actions.add_parser(
        "migrate", help="turn a format-1 version (code and weights) into a new ONNX version"
    )
    migrate.add_argument("--version", type=int, required=True, help="the format-1 version")
    migrate.add_argument("--quantize", action="store_true", help="int8 dynamic quantisation")
    migrate.set_defaults(handler=run_migrate)


def run_migrate(settings: TrainerSettings, args: argparse.Namespace) -> int:
    from trainer.export.migrate import migrate

    root = settings.model_repo / settings.triton_model
    folder = migrate(root / str(args.version), root, quantize=args.quantize)
    print(f"version {args.version} migrated to version {folder.name} at {folder}")
    return 0
