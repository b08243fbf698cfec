"""Each public format: a few rows written here (one malformed) -> the expected Events."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from stream.contract.events import Event
from stream.datasets.loaders import FORMATS, LoadStats, load, sort_by_time
from stream.datasets.synthetic import write_jsonl

# Each case: file name, text, expected (user_id, ts_ms, event_type, item_id) in file order.
CASES: dict[str, tuple[str, str, list[tuple[str, int, str, str | None]]]] = {
    "taobao": (
        "UserBehavior.csv",
        "1,101,9,pv,1511658000\n"
        "1,101,9,cart,1511658060\n"
        "1,101,9,unknown,1511658061\n"  # malformed: unknown behavior
        "2,202,8,fav,1511658100\n"
        "2,202,8,buy,1511658200\n",
        [
            ("1", 1511658000000, "view", "101"),
            ("1", 1511658060000, "add_to_cart", "101"),
            ("2", 1511658100000, "add_to_wishlist", "202"),
            ("2", 1511658200000, "purchase", "202"),
        ],
    ),
    "yoochoose": (
        "clicks.txt",
        "SessionId\tItemId\tTime\n"
        "3\t214716935\t1396437466.94\n"
        "3\t214832672\t1396438212.318\n"
        "4\t214716935\n"  # malformed: a field missing
        "5\t214716935\t1396440000\n",
        [
            ("s3", 1396437466940, "view", "214716935"),
            ("s3", 1396438212318, "view", "214832672"),
            ("s5", 1396440000000, "view", "214716935"),
        ],
    ),
    "diginetica": (
        "train-item-views.csv",
        "session_id;user_id;item_id;timeframe;eventdate\n"
        "1;NA;81766;526309;2016-05-09\n"
        "2;77;31331;1031018;2016-05-09\n"
        "3;NA;31331;soon;2016-05-09\n",  # malformed: timeframe not a number
        [
            ("s1", 1462752000000 + 526309, "view", "81766"),
            ("77", 1462752000000 + 1031018, "view", "31331"),
        ],
    ),
    "rees46": (
        "2019-Oct.csv",
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,"
        "user_session\n"
        "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,"
        "72d76fde\n"
        "2019-10-01 00:00:05 UTC,cart,3900821,2053013552326770905,appliances.water_heater,aqua,"
        "33.20,554748717,9333dfbd\n"
        "2019-10-01 00:00:07 UTC,remove_from_cart,3900821,2053013552326770905,,,33.20,554748717,"
        "9333dfbd\n"
        "yesterday,purchase,1,2,,,1.0,3,x\n"  # malformed: event_time
        "2019-10-01 00:01:00 UTC,purchase,3900821,2053013552326770905,,,33.20,554748717,"
        "9333dfbd\n",
        [
            ("541312140", 1569888000000, "view", "44600062"),
            ("554748717", 1569888005000, "add_to_cart", "3900821"),
            ("554748717", 1569888007000, "remove_from_cart", "3900821"),
            ("554748717", 1569888060000, "purchase", "3900821"),
        ],
    ),
    "retailrocket": (
        "events.csv",
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1433221332117,257597,view,355908,\n"
        "1433224214164,992329,addtocart,248676,\n"
        "1433224214999,992329,refund,248676,\n"  # malformed: unknown event
        "1433224300000,992329,transaction,248676,4000\n",
        [
            ("257597", 1433221332117, "view", "355908"),
            ("992329", 1433224214164, "add_to_cart", "248676"),
            ("992329", 1433224300000, "purchase", "248676"),
        ],
    ),
}


def _write(tmp_path: Path, format: str) -> Path:
    name, text, _ = CASES[format]
    path = tmp_path / name
    path.write_text(text)
    return path


def _summary(events: list[Event]) -> list[tuple[str, int, str, str | None]]:
    return [(e.user_id, e.ts_ms, e.event_type, e.item_id) for e in events]


@pytest.mark.parametrize("format", sorted(CASES))
def test_rows_become_events_and_the_bad_row_is_counted(tmp_path: Path, format: str) -> None:
    path = _write(tmp_path, format)
    stats = LoadStats()
    events = list(load(format, path, stats=stats))
    assert _summary(events) == CASES[format][2]
    assert stats.events == len(events)
    assert stats.malformed == 1 and stats.rows == len(events) + 1
    assert stats.examples and stats.examples[0].startswith("line ")


@pytest.mark.parametrize("format", sorted(CASES))
def test_ids_are_stable_unique_and_differ_between_files(tmp_path: Path, format: str) -> None:
    path = _write(tmp_path, format)
    first = [e.event_id for e in load(format, path)]
    assert first == [e.event_id for e in load(format, path)]
    assert len(set(first)) == len(first)
    # Another split of the same dataset: same line numbers, other rows, other ids.
    other = tmp_path / "other"
    other.mkdir()
    name, text, _ = CASES[format]
    lines = text.splitlines(keepends=True)
    has_header = format != "taobao"
    head, body = lines[:has_header], lines[has_header:]
    (other / name).write_text("".join(head + body[1:] + body[:1]))  # every row moves
    assert not set(first) & {e.event_id for e in load(format, other / name)}


def test_a_file_without_its_header_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "cut.txt"
    path.write_text("3\t214716935\t1396437466.94\n")
    assert _summary(list(load("yoochoose", path))) == [("s3", 1396437466940, "view", "214716935")]


def test_fields_beyond_the_basics(tmp_path: Path) -> None:
    rees46 = list(load("rees46", _write(tmp_path, "rees46")))
    assert rees46[1].price == 33.2 and rees46[1].session_id == "9333dfbd"
    assert rees46[1].category == "2053013552326770905"
    assert rees46[1].properties == {"brand": "aqua", "category_code": "appliances.water_heater"}
    taobao = list(load("taobao", _write(tmp_path, "taobao")))
    assert taobao[0].category == "9" and taobao[0].session_id is None
    retailrocket = list(load("retailrocket", _write(tmp_path, "retailrocket")))
    assert retailrocket[2].properties == {"transaction_id": "4000"}


def test_jsonl_round_trips_and_counts_bad_lines(tmp_path: Path) -> None:
    events = [
        Event("e1", "u1", 1_700_000_000_000, "view", item_id="i1", price=9.5, platform="app"),
        Event("e2", "u2", 1_700_000_000_500, "purchase", item_id="i2", properties={"n": 1}),
    ]
    path = tmp_path / "events.jsonl"
    write_jsonl(events, path)
    with path.open("ab") as out:
        out.write(b'{"event_id": "e3", "ts": 1}\n')  # malformed: no user_id
    stats = LoadStats()
    assert list(load("jsonl", path, stats=stats)) == events
    assert dict(stats.skipped) == {"missing_user_id": 1}


def test_gzip_limit_and_sort(tmp_path: Path) -> None:
    _, text, expected = CASES["retailrocket"]
    path = tmp_path / "events.csv.gz"
    with gzip.open(path, "wt") as out:
        out.write(text)
    assert _summary(list(load("retailrocket", path, limit=2))) == expected[:2]
    shuffled = list(load("retailrocket", path))[::-1]
    assert _summary(sort_by_time(shuffled)) == expected


def test_unknown_format_and_missing_file_fail_at_once(tmp_path: Path) -> None:
    assert set(FORMATS) == {*CASES, "jsonl"}
    with pytest.raises(ValueError, match="unknown format"):
        load("parquet", tmp_path)
    with pytest.raises(FileNotFoundError):
        load("taobao", tmp_path / "missing.csv")


def test_garbage_never_crashes(tmp_path: Path) -> None:
    path = tmp_path / "garbage.csv"
    path.write_bytes(b'\xff\xfe,"unterminated\n\x00\x00\n' + b"x" * 200_000 + b"\n,,,,\n")
    for format in FORMATS:
        stats = LoadStats()
        assert list(load(format, path, stats=stats)) == []
        assert stats.malformed >= 1
