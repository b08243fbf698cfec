"""The promotion gate, hot swap, rollback and the model_versions table.

A candidate is exported under settings.model_store (never into the served repository), scored
on the same held-out examples as the serving version (each from its own version folder), and
moved into the repository only when it is not worse than the serving one by more than
promotion_margin on promotion_metric. Triton (explicit model control, `latest` version policy)
then loads it through the repository API; the old version serves until the new one is ready.
A rollback moves the serving folder back out of the repository and loads again, so the
previous version becomes the latest: no config override (STACK.md: after an override, plain
loads can be ignored until a file changes).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from stream.db.models import ModelVersion
from stream.settings import TrainerSettings
from trainer.evaluate.metrics import classification_metrics
from trainer.export import load, read_meta, versions
from trainer.fit.encoder import ClickscoreModel
from trainer.fit.encoder_training import predict
from trainer.labels.sequences import Examples

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateResult:
    promote: bool
    metric: str
    candidate: float
    serving: float | None
    reason: str


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


def metrics_of(model: ClickscoreModel, heldout: Examples) -> dict[str, float]:
    scores = predict(model, heldout.tokens, top_items=False)
    out: dict[str, float] = {}
    for task in ("churn", "purchase"):
        for name, value in classification_metrics(getattr(heldout, task), scores[task]).items():
            out[f"{task}_{name}"] = value
    out["mean_roc_auc"] = (out["churn_roc_auc"] + out["purchase_roc_auc"]) / 2
    return out


def heldout_metrics(folder: Path, heldout: Examples) -> dict[str, float]:
    """A version folder's model, scored in-process with its own code on held-out examples."""
    return metrics_of(load(folder), heldout)


def gate(
    settings: TrainerSettings, candidate: Path, heldout: Examples
) -> tuple[GateResult, dict[str, float]]:
    metric = settings.promotion_metric
    cand = heldout_metrics(candidate, heldout)
    current = serving_version(settings)
    if current is None:
        return GateResult(True, metric, cand[metric], None, "nothing is serving"), cand
    if not (served_dir(settings) / str(current) / "weights.pt").is_file():
        return GateResult(True, metric, cand[metric], None, f"v{current} is no trained model"), cand
    serving = heldout_metrics(served_dir(settings) / str(current), heldout)[metric]
    ok = cand[metric] >= serving - settings.promotion_margin
    verdict = "not worse" if ok else "worse"
    reason = (
        f"{metric} {cand[metric]:.4f} vs serving v{current} {serving:.4f}: {verdict} "
        f"(margin {settings.promotion_margin})"
    )
    return GateResult(ok, metric, cand[metric], serving, reason), cand


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


async def promote(
    settings: TrainerSettings, candidate: Path, heldout: Examples, *, reload: bool = True
) -> GateResult:
    """Gate the candidate (a folder under the store); promote, load and record it, or not."""
    result, metrics = gate(settings, candidate, heldout)
    meta = read_meta(candidate)
    metrics_doc = {**meta["metrics"], "gate": {**metrics, "reason": result.reason}}
    version = int(candidate.name)
    vocab_version = meta["vocabulary"]["version"]
    if not result.promote:
        await record(settings, version, "rejected", metrics_doc, vocab_version)
        return result
    previous = serving_version(settings)
    target = served_dir(settings) / candidate.name
    shutil.move(str(candidate), str(target))
    if reload:
        await asyncio.to_thread(load_in_triton, settings)
    await record(settings, version, "serving", metrics_doc, vocab_version)
    if previous is not None:
        await set_status(settings, previous, "retired")
    return result


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
