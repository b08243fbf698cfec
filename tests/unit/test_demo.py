"""The demo's pure decisions: whether a first model must be trained, and what it replays."""

from __future__ import annotations

from pathlib import Path

from stream.demo.run import DemoOptions, _clickstream, _has_model
from tests.conftest import make_settings


def test_a_first_model_is_trained_only_when_no_version_is_served(tmp_path: Path) -> None:
    settings = make_settings(model_repo=tmp_path, triton_model="clickscore")
    assert not _has_model(settings)  # no model folder at all
    (tmp_path / "clickscore").mkdir()
    (tmp_path / "clickscore" / "config.pbtxt").write_text('name: "clickscore"\n')
    (tmp_path / "clickscore" / "notes").mkdir()
    assert not _has_model(settings)  # a config and a non-version folder
    (tmp_path / "clickscore" / "3").mkdir()
    assert _has_model(settings)


def test_synthetic_by_default_with_ground_truth() -> None:
    events, truth, source = _clickstream(DemoOptions(users=20, days=2))
    assert truth is not None and set(truth) >= {e.user_id for e in events}
    assert source == "20 synthetic users, 2 days"


def test_a_dataset_is_replayed_in_time_order_without_ground_truth(tmp_path: Path) -> None:
    path = tmp_path / "UserBehavior.csv"
    # Taobao UserBehavior: user_id,item_id,category_id,behavior,timestamp (sorted by user).
    path.write_text(
        "1,100,7,pv,1511700000\n1,101,7,buy,1511700300\n2,200,8,cart,1511600000\n"
        "2,201,8,pv,1511800000\n"
    )
    events, truth, source = _clickstream(DemoOptions(dataset=("taobao", path), max_events=3))
    assert truth is None and source == "taobao UserBehavior.csv"
    assert [e.ts_ms for e in events] == sorted(e.ts_ms for e in events)
    assert len(events) == 3 and events[0].user_id == "2"
