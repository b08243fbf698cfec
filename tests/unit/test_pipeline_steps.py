"""The pipeline's refusals and its file moves, on plain lists and a temporary folder."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from stream.contract.events import Event
from tests.conftest import make_settings
from trainer import publish
from trainer.alert_thresholds import per_user
from trainer.history import HistoryRefused, check
from trainer.labels.points import Points, refuse_one_class

DAY_MS = 86_400_000


def events(users: int, days: float) -> list[Event]:
    return [
        Event(f"e{u}-{d}", f"u{u}", int(d * DAY_MS), "view", item_id="i")
        for u in range(users)
        for d in (0, days)
    ]


def test_an_empty_history_is_refused() -> None:
    with pytest.raises(HistoryRefused, match="the history is empty"):
        check(make_settings(), [], "topic events")


def test_a_history_needs_two_churn_horizons_of_event_time() -> None:
    settings = make_settings(churn_horizon_s=3 * 86_400)
    with pytest.raises(HistoryRefused, match=r"spans 5\.9 days .* \(6\.0 days\)"):
        check(settings, events(100, 5.9), "synthetic")
    check(settings, events(100, 6.0), "synthetic")


def test_a_history_needs_enough_users() -> None:
    with pytest.raises(HistoryRefused, match="49 users, fewer than"):
        check(make_settings(train_min_users=50), events(49, 7), "synthetic")


def points(churn: list[float], purchase: list[float]) -> Points:
    return Points(churn=churn, purchase=purchase, users=[f"u{i}" for i in range(len(churn))])


def test_labels_of_one_class_are_refused_naming_the_task_and_group() -> None:
    ok = points([0, 1, 0], [1, 0, 0])
    no_buyer = points([0, 1, 0], [0, 0, 0])
    refuse_one_class({"train": ok, "validation": ok})
    with pytest.raises(HistoryRefused, match="purchase labels of the validation users"):
        refuse_one_class({"train": ok, "validation": no_buyer})


def test_a_user_is_flagged_by_their_highest_eligible_score() -> None:
    rows = Points(users=["a", "a", "b", "b"], at_ms=[1, 2, 1, 2], may_alert=[True, False] * 2)
    users, truth, best = per_user(rows, np.array([0.2, 0.9, 0.5, 0.1]), {"b"}, 10, 5)
    assert users == ["a", "b"]
    assert truth.tolist() == [0.0, 1.0]
    assert best.tolist() == [0.2, 0.5]  # 0.9 came before the user could raise an alert


def test_a_candidate_moves_into_the_repository_whole_and_never_over_a_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(model_repo=tmp_path / "repo", model_store=tmp_path / "store")
    candidate = publish.store_dir(settings) / "3"
    candidate.mkdir(parents=True)
    (candidate / "model_config.json").write_text("{}")
    target = publish.move_into_repository(settings, candidate)
    assert (target / "model_config.json").read_text() == "{}" and not candidate.exists()
    candidate.mkdir()
    with pytest.raises(FileExistsError):
        publish.move_into_repository(settings, candidate)
    # Across file systems: copied under a staging name, then renamed.
    real_rename = os.rename
    calls: list[tuple[str, str]] = []

    def rename(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
        calls.append((Path(src).name, Path(dst).name))
        if Path(src).parent == candidate.parent:  # out of the store: another file system
            raise OSError(errno.EXDEV, "cross-device link")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    (candidate.parent / "4").mkdir()
    (candidate.parent / "4" / "model_config.json").write_text("{}")
    moved = publish.move_into_repository(settings, candidate.parent / "4")
    assert calls[-1] == (".4.tmp", "4")
    assert (moved / "model_config.json").is_file() and not (candidate.parent / "4").exists()


def test_stale_staging_folders_are_removed_and_versions_kept(tmp_path: Path) -> None:
    settings = make_settings(model_repo=tmp_path / "repo", model_store=tmp_path / "store")
    for base in (publish.store_dir(settings), publish.served_dir(settings)):
        (base / ".5.tmp").mkdir(parents=True)
        (base / ".5.eval.tmp" / "5").mkdir(parents=True)
        (base / "4").mkdir()
    removed = publish.clean_stale(settings)
    assert len(removed) == 4
    for base in (publish.store_dir(settings), publish.served_dir(settings)):
        assert sorted(p.name for p in base.iterdir()) == ["4"]


def test_train_json_prints_a_refusal_as_its_last_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from trainer.cli import main

    monkeypatch.setenv("CLICKSCORE_MODEL_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("CLICKSCORE_MODEL_REPO", str(tmp_path / "repo"))
    argv = ["train", "--data", "synthetic", "--users", "60", "--days", "4", "--json"]
    assert main([*argv, "--no-promote"]) == 2
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["version"] is None and last["promoted"] is False and last["tasks"] == {}
    assert "less than two churn horizons" in last["reason"]
    assert not (tmp_path / "store").exists() and not (tmp_path / "repo").exists()


def test_model_head_and_thresholds_are_gone() -> None:
    from trainer.cli import main

    for gone in ("head", "thresholds"):
        with pytest.raises(SystemExit):
            main(["model", gone])
