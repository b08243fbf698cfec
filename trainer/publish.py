"""The pipeline's last step: publish a gated candidate, and the model_versions table.

A candidate is exported under settings.model_store (never into the served repository) and
gated there (trainer/gate.py). A promoted one is moved into the repository in one rename
(`move_into_repository`), Triton (explicit model control, `latest` version policy) loads it
through the repository API, and the old version serves until the new one is ready; a refused
one stays in the store with a `rejected` row. A rollback moves the serving folder back out of
the repository and loads again, so the previous version becomes the latest: no config
override (STACK.md: after an override, plain loads can be ignored until a file changes).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from stream.db.models import ModelVersion
from stream.settings import TrainerSettings
from trainer.export import read_meta, versions

log = logging.getLogger(__name__)


def served_dir(settings: TrainerSettings) -> Path:
    return settings.model_repo / settings.triton_model


def store_dir(settings: TrainerSettings) -> Path:
    return settings.model_store / settings.triton_model


def serving_version(settings: TrainerSettings) -> int | None:
    """The latest version folder in the repository: what Triton's `latest` policy serves."""
    found = versions(served_dir(settings))
    return found[-1] if found else None


def version_dir(settings: TrainerSettings, version: int | None) -> tuple[int, Path] | None:
    """`version` (the serving one when None) and its folder in the repository; None when
    no version is given and none is serving."""
    version = version or serving_version(settings)
    return None if version is None else (version, served_dir(settings) / str(version))


def load_in_triton(settings: TrainerSettings, timeout_s: float = 120.0) -> None:
    """POST the repository API's load; returns once the (new) latest version is ready."""
    url = f"http://{settings.triton_http_url}/v2/repository/models/{settings.triton_model}/load"
    request = urllib.request.Request(url, data=b"{}", method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        urllib.request.urlopen(f"http://{settings.triton_http_url}/v2/health/live", timeout=2)
    except urllib.error.URLError as exc:
        if not isinstance(exc, urllib.error.HTTPError):
            log.warning("Triton is not running (%s): it serves the latest version on start", exc)
            return
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            if response.status != 200:
                raise RuntimeError(f"Triton refused the load: HTTP {response.status}")
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"Triton refused the load: {exc.read().decode()[:500]}") from exc


async def record(
    settings: TrainerSettings,
    version: int,
    status: str,
    metrics: dict[str, Any],
    vocab_version: str,
) -> None:
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.begin() as conn:
            from sqlalchemy.ext.asyncio import AsyncSession

            async with AsyncSession(bind=conn) as session:
                row = await session.get(ModelVersion, (settings.triton_model, version))
                if row is None:
                    row = ModelVersion(model_name=settings.triton_model, version=version)
                    session.add(row)
                row.vocab_version = vocab_version
                row.status = status
                row.metrics = metrics
                if status == "serving":
                    row.promoted_at = datetime.now(UTC)
                await session.flush()
    finally:
        await engine.dispose()


async def set_status(settings: TrainerSettings, version: int, status: str) -> None:
    folder = _find(settings, version)
    trained = folder is not None and (folder / "model_config.json").is_file()
    meta = (
        read_meta(folder) if folder and trained else {"metrics": {}, "vocabulary": {"version": "?"}}
    )
    await record(settings, version, status, meta["metrics"], meta["vocabulary"]["version"])


def _find(settings: TrainerSettings, version: int) -> Path | None:
    for base in (served_dir(settings), store_dir(settings)):
        if (base / str(version)).is_dir():
            return base / str(version)
    return None


async def table(settings: TrainerSettings) -> list[ModelVersion]:
    engine = create_async_engine(settings.database_url)
    try:
        from sqlalchemy.ext.asyncio import AsyncSession

        async with AsyncSession(engine) as session:
            rows = await session.scalars(
                select(ModelVersion)
                .where(ModelVersion.model_name == settings.triton_model)
                .order_by(ModelVersion.version)
            )
            return list(rows)
    finally:
        await engine.dispose()


def clean_stale(settings: TrainerSettings) -> list[Path]:
    """Remove `.N.tmp` staging folders a killed run left in the store or the repository
    (export and publish write there first, then rename): nothing reads them."""
    removed = []
    for base in (store_dir(settings), served_dir(settings)):
        if base.is_dir():
            for path in base.glob(".*.tmp"):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    if removed:
        log.warning("removed stale staging folders %s", [str(p) for p in removed])
    return removed


def move_into_repository(settings: TrainerSettings, candidate: Path) -> Path:
    """The candidate folder (in the store) becomes a version of the repository in one rename;
    across file systems it is copied to a staging name in the repository first, so Triton never
    sees a half-written version. An existing version folder is never written into."""
    target = served_dir(settings) / candidate.name
    if target.exists():
        raise FileExistsError(f"{target} exists: a version folder is never written into")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(candidate, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        staging = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(candidate, staging)
        os.rename(staging, target)
        shutil.rmtree(candidate)
    return target


async def publish(
    settings: TrainerSettings,
    candidate: Path,
    promote: bool,
    metrics: dict[str, Any],
    *,
    reload: bool = True,
) -> None:
    """A gated candidate (a folder under the store): move it into the repository, load it in
    Triton and record it as serving; or record it as rejected, leaving it in the store."""
    meta = read_meta(candidate)
    version = int(candidate.name)
    vocab_version = meta["vocabulary"]["version"]
    if not promote:
        await record(settings, version, "rejected", metrics, vocab_version)
        return
    previous = serving_version(settings)
    move_into_repository(settings, candidate)
    if reload:
        await asyncio.to_thread(load_in_triton, settings)
    await record(settings, version, "serving", metrics, vocab_version)
    if previous is not None:
        await set_status(settings, previous, "retired")


async def rollback(settings: TrainerSettings) -> tuple[int, int]:
    """Move the serving version out of the repository; the previous one serves again."""
    found = versions(served_dir(settings))
    if len(found) < 2:
        raise RuntimeError(f"no earlier version of {settings.triton_model} to roll back to")
    bad, previous = found[-1], found[-2]
    store_dir(settings).mkdir(parents=True, exist_ok=True)
    shutil.move(str(served_dir(settings) / str(bad)), str(store_dir(settings) / str(bad)))
    await asyncio.to_thread(load_in_triton, settings)
    await set_status(settings, bad, "rolled_back")
    await set_status(settings, previous, "serving")
    return bad, previous
