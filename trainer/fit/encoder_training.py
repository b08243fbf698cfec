"""Training: masked-event pretraining, then multi-task fine-tuning (full or LoRA).

Deterministic for a seed on the CPU: one thread pool size, seeded generators for every draw.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F

from trainer.fit.encoder import ClickscoreModel, ModelConfig
from trainer.labels.sequences import IGNORE, Examples, mask_events

log = logging.getLogger(__name__)

# Told (phase, steps done, steps in the phase) after every optimiser step: progress bars.
StepCallback = Callable[[str, int, int], None]

HEADS = ("churn_head", "purchase_head", "next_item_head", "next_category_head", "field_heads")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    pretrain_steps: int = 300  # masked-event modelling; 0 skips pretraining
    finetune_steps: int = 400
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    mask_probability: float = 0.15
    masked_loss_weight: float = 0.5  # keeps the field heads (the anomaly score) sharp
    next_loss_weight: float = 0.3
    lora: bool = False  # fine-tune LoRA adapters (peft) instead of all weights
    lora_rank: int = 8
    score_heads: bool = True  # False for session data, which has no churn/purchase labels
    threads: int = 2


TINY_MODEL = {"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64}
# One thread: on a shared 2-core machine two OpenMP threads stall each other when another
# process holds a core (a 10 s run measured 116 s), and this model is too small to gain.
# Small auxiliary weights: with little labelled data the 4,099-way next-item loss otherwise
# drowns the churn and purchase gradients.
TINY_TRAIN = TrainConfig(
    pretrain_steps=60,
    finetune_steps=300,
    batch_size=64,
    learning_rate=3e-3,
    masked_loss_weight=0.1,
    next_loss_weight=0.05,
    threads=1,
)


def _batches(n: int, size: int, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    order: list[torch.Tensor] = []
    while sum(len(b) for b in order) < steps * size:
        order.extend(torch.split(torch.randperm(n, generator=generator), size))
    return [b for b in order if len(b)][:steps]


def _masked_loss(
    model: ClickscoreModel, tokens: torch.Tensor, config: TrainConfig, generator: torch.Generator
) -> torch.Tensor:
    inputs, targets = mask_events(tokens, config.mask_probability, generator)
    chosen = targets[:, :, 0] != IGNORE
    # Logits only where events were hidden: the item head alone has thousands of classes.
    hidden = model.encode(inputs)[chosen]
    picked = targets[chosen]
    losses = [
        F.cross_entropy(logits, picked[:, i], ignore_index=IGNORE)
        for i, logits in enumerate(model.field_logits(hidden))
        if (picked[:, i] != IGNORE).any()
    ]
    return torch.stack(losses).mean()


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def _schedule(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / max(steps, 1))
    )


def _optimise(
    trained: nn.Module,
    examples: int,
    phase: str,
    steps: int,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    config: TrainConfig,
    generator: torch.Generator,
    on_step: StepCallback | None,
) -> list[float]:
    """The one training loop: AdamW with warm-up and decay, clipped gradients, a loss per step."""
    optimizer = _optimizer(trained, config)
    schedule = _schedule(optimizer, steps)
    trained.train()
    losses: list[float] = []
    for batch in _batches(examples, config.batch_size, steps, generator):
        loss = batch_loss(batch)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(phase, len(losses), steps)
    return losses


def pretrain(
    model: ClickscoreModel,
    sequences: npt.NDArray[np.int64],
    config: TrainConfig,
    on_step: StepCallback | None = None,
) -> list[float]:
    """Masked-event modelling on unlabelled sequences."""
    generator = torch.Generator().manual_seed(config.seed)
    tokens = torch.from_numpy(sequences)
    return _optimise(
        model,
        len(tokens),
        "pretrain",
        config.pretrain_steps,
        lambda batch: _masked_loss(model, tokens[batch], config, generator),
        config,
        generator,
        on_step,
    )


def _finetune_loss(
    model: nn.Module,
    base: ClickscoreModel,
    examples: dict[str, torch.Tensor],
    config: TrainConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    out = model(examples["tokens"])
    loss = torch.zeros((), dtype=out["churn"].dtype)
    if config.score_heads:
        loss = loss + F.binary_cross_entropy_with_logits(out["churn"], examples["churn"])
        loss = loss + F.binary_cross_entropy_with_logits(out["purchase"], examples["purchase"])
    for name in ("next_item", "next_category"):
        if (examples[name] != IGNORE).any():
            next_loss = F.cross_entropy(out[name], examples[name], ignore_index=IGNORE)
            loss = loss + config.next_loss_weight * next_loss
    if config.masked_loss_weight:
        masked = _masked_loss(base, examples["tokens"], config, generator)
        loss = loss + config.masked_loss_weight * masked
    return loss


def _with_lora(model: ClickscoreModel, config: TrainConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=2 * config.lora_rank,
        lora_dropout=0.0,
        target_modules=["query", "key", "value", "dense"],
    )
    wrapped = get_peft_model(model, lora)  # type: ignore[arg-type]
    # The task heads are new: they train in full, the encoder only through its adapters.
    for name, param in model.named_parameters():
        if name.split(".")[0] in HEADS:
            param.requires_grad = True
    return wrapped  # type: ignore[no-any-return]


def finetune(
    model: ClickscoreModel,
    examples: Examples,
    config: TrainConfig,
    on_step: StepCallback | None = None,
) -> tuple[ClickscoreModel, list[float]]:
    """Multi-task fine-tuning: churn, purchase, next item and category (+ masked events)."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    data = {
        "tokens": torch.from_numpy(examples.tokens),
        "churn": torch.from_numpy(examples.churn),
        "purchase": torch.from_numpy(examples.purchase),
        "next_item": torch.from_numpy(examples.next_item),
        "next_category": torch.from_numpy(examples.next_category),
    }
    trained: nn.Module = _with_lora(model, config) if config.lora else model
    losses = _optimise(
        trained,
        len(examples),
        "fine-tune",
        config.finetune_steps,
        lambda batch: _finetune_loss(
            trained, model, {k: v[batch] for k, v in data.items()}, config, generator
        ),
        config,
        generator,
        on_step,
    )
    if config.lora:
        merged = trained.merge_and_unload()  # type: ignore[operator]
        assert isinstance(merged, ClickscoreModel)
        model = merged
    model.eval()
    return model, losses


@torch.no_grad()
def surprise(
    model: ClickscoreModel, tokens: npt.NDArray[np.int64], batch: int = 512
) -> npt.NDArray[Any]:
    model.eval()
    parts = [
        model.surprise(torch.from_numpy(tokens[i : i + batch]))
        for i in range(0, len(tokens), batch)
    ]
    return torch.cat(parts).numpy() if parts else np.zeros(0, dtype=np.float32)


def fit(
    model_config: ModelConfig,
    config: TrainConfig,
    pretrain_sequences: npt.NDArray[np.int64],
    train: Examples,
    calibration_tokens: npt.NDArray[np.int64],
    on_step: StepCallback | None = None,
) -> ClickscoreModel:
    """Pretrain, fine-tune and calibrate the anomaly score on normal users' sequences."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    model = ClickscoreModel(model_config)
    started = time.perf_counter()
    if config.pretrain_steps:
        losses = pretrain(model, pretrain_sequences, config, on_step)
        log.info("pretrained %d steps, masked loss %.3f", len(losses), np.mean(losses[-20:]))
    model, losses = finetune(model, train, config, on_step)
    log.info("fine-tuned %d steps, loss %.3f", len(losses), np.mean(losses[-20:]))
    model.calibrate(torch.from_numpy(surprise(model, calibration_tokens)))
    log.info("trained in %.1f s", time.perf_counter() - started)
    return model


@torch.no_grad()
def predict(
    model: ClickscoreModel,
    tokens: npt.NDArray[np.int64],
    batch: int = 512,
    *,
    top_items: bool = True,
) -> dict[str, npt.NDArray[Any]]:
    """Churn, purchase and anomaly per row (and the top-20 next item buckets), as numpy."""
    model.eval()
    out: dict[str, list[torch.Tensor]] = defaultdict(list)
    for i in range(0, len(tokens), batch):
        chunk = torch.from_numpy(tokens[i : i + batch])
        scores = model.score(chunk)
        out["churn"].append(scores.churn)
        out["purchase"].append(scores.purchase)
        out["anomaly"].append(scores.anomaly)
        if top_items:
            out["top_items"].append(model(chunk)["next_item"].topk(20, dim=-1).indices)
    return {k: torch.cat(v).numpy() for k, v in out.items()}
