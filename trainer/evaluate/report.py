"""`python -m trainer.evaluate.report ...`: the evaluation tables of docs/evaluation.md, as
markdown.

labelled   synthetic or taobao: churn / purchase on held-out users for the model (full
           fine-tune, no pretraining, LoRA) and the RFM baselines; anomaly on synthetic
sessions   yoochoose TRAIN VALID | diginetica PATH: next click, HR@20 / MRR@20 on buckets
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from stream.contract.events import Event
from stream.contract.tokenizer import Vocabulary
from stream.datasets.loaders import load, sort_by_time
from stream.settings import Settings
from trainer.evaluate import metrics as evaluate
from trainer.fit.encoder_data import TrainArgs, configs, load_events, split
from trainer.fit.encoder_training import fit, predict
from trainer.labels import sequences as data

COLUMNS = ("roc_auc", "pr_auc", "log_loss", "ece")


def _row(name: str, task: str, m: dict[str, float]) -> str:
    cells = " | ".join(f"{m[c]:.3f}" for c in COLUMNS)
    return f"| {name} | {task} | {cells} | {m['positives']:.3f} |"


def labelled(settings: Settings, args: TrainArgs) -> list[str]:
    events, anomalies, desc = load_events(settings, args)
    parts = split(settings, events, anomalies, args.seed)
    model_config, train_config = configs(settings, args)
    lines = [
        f"data: {desc}, train {len(parts.train)} / test {len(parts.test)} examples",
        "",
        "| model | task | ROC-AUC | PR-AUC | log-loss | ECE | positives |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    variants = {
        "transformer (pretrain + full fine-tune)": train_config,
        "transformer, no pretraining": replace(train_config, pretrain_steps=0),
        "transformer, pretrain + LoRA fine-tune": replace(train_config, lora=True),
    }
    main_model = None
    for name, config in variants.items():
        net = fit(model_config, config, parts.pretrain, parts.train, parts.validation_tokens)
        main_model = main_model or net
        scores = predict(net, parts.test.tokens, top_items=False)
        for task in ("churn", "purchase"):
            m = evaluate.classification_metrics(getattr(parts.test, task), scores[task])
            lines.append(_row(name, task, m))
    for name, tasks in evaluate.baselines(parts.train, parts.test, args.seed).items():
        for task, m in tasks.items():
            lines.append(_row(name, task, m))
    if anomalies and main_model is not None:
        lines += ["", *anomaly_table(settings, events, anomalies, main_model)]
    return lines


def anomaly_table(
    settings: Settings,
    events: list[Event],
    anomalies: dict[str, tuple[str, int] | None],
    net: Any,
) -> list[str]:
    by_user = data.group_by_user(events)
    test = {u: e for u, e in by_user.items() if data.held_out(u, 0.2, 0)}
    cases = evaluate.anomaly_cases(test, anomalies, Vocabulary(), settings.sequence_length)
    scores = predict(net, cases.tokens, top_items=False)["anomaly"]
    result = evaluate.anomaly_metrics(
        cases, scores, settings.anomaly_alert_threshold, settings.burst_events_per_s
    )
    lines = [
        f"anomaly: last 4 states of each held-out user; model alerts at "
        f"{settings.anomaly_alert_threshold}, burst rule at {settings.burst_events_per_s}/s; "
        f"normal states: {cases.kind.count('normal')}",
        "",
        "| kind / detector | precision | recall | ROC-AUC | anomalous states |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, m in result.items():
        lines.append(
            f"| {key} | {m['precision']:.3f} | {m['recall']:.3f} | {m['roc_auc']:.3f} "
            f"| {int(m['cases'])} |"
        )
    return lines


def sessions(
    settings: Settings, train_events: list[Event], test_events: list[Event], tiny: bool
) -> list[str]:
    vocab = Vocabulary()
    length = settings.sequence_length

    def by_session(events: list[Event]) -> dict[str, list[Event]]:
        keyed = [replace(e, user_id=e.session_id or e.user_id) for e in events]
        return data.group_by_user(keyed)

    train_s, test_s = by_session(train_events), by_session(test_events)
    train_clicks = data.next_clicks(train_s, vocab, length)
    test_clicks = data.next_clicks(test_s, vocab, length)
    n = len(train_clicks.target)
    examples = data.Examples(
        tokens=train_clicks.tokens,
        churn=np.zeros(n, dtype=np.float32),
        purchase=np.zeros(n, dtype=np.float32),
        next_item=train_clicks.target,
        next_category=np.full(n, data.IGNORE, dtype=np.int64),
        features=np.zeros((n, len(data.FEATURES)), dtype=np.float32),
        cutoff_ms=np.zeros(n, dtype=np.int64),
        user_ids=[""] * n,
    )
    model_config, train_config = configs(settings, TrainArgs(tiny=tiny))
    train_config = replace(train_config, score_heads=False, next_loss_weight=1.0)
    net = fit(model_config, train_config, train_clicks.tokens, examples, train_clicks.tokens[:500])
    top = predict(net, test_clicks.tokens, top_items=True)["top_items"]
    sequences = [[int(r[1]) for r in _rows(s, vocab)] for s in train_s.values()]
    rows = {
        "transformer (next-item head)": evaluate.ranking_metrics(top, test_clicks.target),
        "popularity": evaluate.ranking_metrics(
            evaluate.popularity_top(sequences, len(test_clicks.target)), test_clicks.target
        ),
        "item-kNN (session co-occurrence)": evaluate.ranking_metrics(
            evaluate.item_knn_top(sequences, test_clicks), test_clicks.target
        ),
    }
    lines = [
        f"sessions: train {len(train_s)} ({n} next clicks), test {len(test_s)} "
        f"({len(test_clicks.target)} next clicks); items as {vocab.item_buckets} hashed buckets",
        "",
        "| model | HR@20 | MRR@20 |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {k} | {m['hr@20']:.3f} | {m['mrr@20']:.3f} |" for k, m in rows.items()]
    return lines


def _rows(events: list[Event], vocab: Vocabulary) -> np.ndarray[Any, Any]:
    return data.replay(events, vocab, 64, set())[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.evaluate.report")
    parser.add_argument(
        "source",
        nargs="+",
        help="synthetic | taobao PATH | yoochoose TRAIN VALID | diginetica PATH",
    )
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--users", type=int, default=2000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    kind = args.source[0]
    if kind in ("synthetic", "taobao"):
        path = Path(args.source[1]) if kind == "taobao" else None
        train_args = TrainArgs(data=kind, path=path, users=args.users, tiny=args.tiny)
        lines = labelled(settings, train_args)
    elif kind == "yoochoose":
        train = sort_by_time(load("yoochoose", Path(args.source[1])))
        test = sort_by_time(load("yoochoose", Path(args.source[2])))
        lines = sessions(settings, train, test, args.tiny)
    elif kind == "diginetica":
        events = sort_by_time(load("diginetica", Path(args.source[1])))
        # Sessions that start in the last fifth of the period are the later, held-out split.
        starts: dict[str, int] = {}
        for e in events:
            starts.setdefault(e.session_id or e.user_id, e.ts_ms)
        cut = np.quantile(list(starts.values()), 0.8)
        late = {s for s, t in starts.items() if t >= cut}
        train = [e for e in events if (e.session_id or e.user_id) not in late]
        test = [e for e in events if (e.session_id or e.user_id) in late]
        lines = sessions(settings, train, test, args.tiny)
    else:
        parser.error(f"unknown source {kind}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
