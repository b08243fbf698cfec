from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.contract import events
from stream.contract.events import Event, Rejection, ValidationLimits, event_to_json, parse_event

NOW_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
LIMITS = ValidationLimits()


def payload(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "e-1",
        "user_id": "u-1",
        "ts": NOW_MS - 1_000,
        "event_type": "view",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def parse(obj: Any, limits: ValidationLimits = LIMITS) -> Event | Rejection:
    return parse_event(orjson.dumps(obj), NOW_MS, limits)


def reason(obj: Any) -> str:
    result = parse(obj)
    assert isinstance(result, Rejection), result
    return result.reason


def test_minimal_event() -> None:
    assert parse(payload()) == Event("e-1", "u-1", NOW_MS - 1_000, "view")


def test_full_event_and_normalisation() -> None:
    result = parse(
        payload(
            event_type="  Add_To_Cart ",
            item_id=42,
            category="shoes",
            price=19,
            session_id="s",
            platform="WEB",
            properties={"color": "red", "n": [1, 2]},
            unknown_field="ignored",
        )
    )
    assert isinstance(result, Event)
    assert result.event_type == "add_to_cart"
    assert result.item_id == "42"
    assert result.price == 19.0 and isinstance(result.price, float)
    assert result.platform == "web"
    assert result.properties == {"color": "red", "n": [1, 2]}


def test_unknown_event_type_kept() -> None:
    result = parse(payload(event_type="Hover"))
    assert isinstance(result, Event) and result.event_type == "hover"


def test_int_ids_become_strings() -> None:
    result = parse(payload(event_id=7, user_id=123456789012))
    assert isinstance(result, Event)
    assert (result.event_id, result.user_id) == ("7", "123456789012")


def test_empty_optional_strings_are_missing() -> None:
    result = parse(payload(item_id="", category="  ", platform=None))
    assert isinstance(result, Event)
    assert result.item_id is None and result.category is None and result.platform is None


@pytest.mark.parametrize(
    ("ts", "expected_ms"),
    [
        ("2023-11-14T22:13:20Z", NOW_MS),
        ("2023-11-14T22:13:20.123Z", NOW_MS + 123),
        ("2023-11-14T22:13:20", NOW_MS),  # naive means UTC
        ("2023-11-14 22:13:20+00:00", NOW_MS),
        ("2023-11-15T00:13:20+02:00", NOW_MS),
        ("2023-11-14T17:13:20-05:00", NOW_MS),
        (NOW_MS, NOW_MS),
        (float(NOW_MS) + 0.9, NOW_MS),
    ],
)
def test_timestamps(ts: object, expected_ms: int) -> None:
    result = parse(payload(ts=ts))
    assert isinstance(result, Event), result
    assert result.ts_ms == expected_ms


def test_iso_matches_datetime() -> None:
    expected = int(datetime(2023, 11, 14, 22, 0, tzinfo=UTC).timestamp() * 1000)
    result = parse(payload(ts="2023-11-14T22:00:00Z"))
    assert isinstance(result, Event) and result.ts_ms == expected


def test_bad_json() -> None:
    for raw in (b"{", b"", b"\xff\xfe", b'{"a": NaN}', b"[" * 2000 + b"]" * 2000, b"Infinity"):
        result = parse_event(raw, NOW_MS, LIMITS)
        assert isinstance(result, Rejection) and result.reason == events.BAD_JSON, raw[:10]


@pytest.mark.parametrize("obj", [[1, 2], "text", 3, None, True])
def test_not_an_object(obj: object) -> None:
    assert reason(obj) == events.NOT_AN_OBJECT


@pytest.mark.parametrize("user_id", [_DROP, None, "", "   "])
def test_missing_user_id(user_id: object) -> None:
    assert reason(payload(user_id=user_id)) == events.MISSING_USER_ID


@pytest.mark.parametrize("name", ["event_id", "ts", "event_type"])
@pytest.mark.parametrize("value", [_DROP, None, ""])
def test_missing_field(name: str, value: object) -> None:
    assert reason(payload(**{name: value})) == events.MISSING_FIELD


@pytest.mark.parametrize(
    "overrides",
    [
        {"user_id": ["u"]},
        {"user_id": True},
        {"event_id": 1.5},
        {"event_type": 3},
        {"ts": True},
        {"ts": [NOW_MS]},
        {"price": "9.99"},
        {"price": True},
        {"item_id": {"id": 1}},
        {"category": 5},
        {"platform": False},
        {"properties": [1, 2]},
        {"properties": "{}"},
    ],
)
def test_wrong_type(overrides: dict[str, Any]) -> None:
    assert reason(payload(**overrides)) == events.WRONG_TYPE


@pytest.mark.parametrize(
    "ts", ["yesterday", "2023-13-01T00:00:00", "1700000000000", "2023-11-14T25:00"]
)
def test_bad_timestamp(ts: str) -> None:
    assert reason(payload(ts=ts)) == events.BAD_TIMESTAMP


def test_bad_timestamp_non_finite_direct() -> None:
    # orjson never yields inf, but the check must hold for any float.
    with pytest.raises(events._Reject) as info:
        events._timestamp_ms(math.inf, 256)
    assert info.value.reason == events.BAD_TIMESTAMP


@pytest.mark.parametrize(
    "ts",
    [
        NOW_MS - LIMITS.max_age_s * 1000 - 1,
        NOW_MS + LIMITS.max_future_s * 1000 + 1,
        1_700_000_000,  # epoch seconds by mistake
        0,
        -1,
        18446744073709551615,
        1e300,
        "1970-01-01T00:00:00Z",
        "9999-12-31T23:59:59+14:00",
    ],
)
def test_timestamp_out_of_range(ts: object) -> None:
    assert reason(payload(ts=ts)) == events.TIMESTAMP_OUT_OF_RANGE


def test_timestamp_window_edges_accepted() -> None:
    for ts in (NOW_MS - LIMITS.max_age_s * 1000, NOW_MS + LIMITS.max_future_s * 1000):
        assert isinstance(parse(payload(ts=ts)), Event)


def test_oversized_payload_checked_before_parsing() -> None:
    raw = b"x" * (LIMITS.max_payload_bytes + 1)  # not JSON at all: size wins
    result = parse_event(raw, NOW_MS, LIMITS)
    assert isinstance(result, Rejection) and result.reason == events.OVERSIZED_PAYLOAD
    assert "x" not in result.detail


@pytest.mark.parametrize(
    "overrides",
    [
        {"user_id": "u" * 257},
        {"event_id": "e" * 257},
        {"item_id": "i" * 257},
        {"category": "c" * 1000},
        {"ts": "2" * 300},
        {"properties": {"blob": "x" * 5000}},
    ],
)
def test_oversized_field(overrides: dict[str, Any]) -> None:
    assert reason(payload(**overrides)) == events.OVERSIZED_FIELD


def test_properties_too_deep_to_re_emit() -> None:
    # 300 levels parse (orjson reads 1024) but could never be serialised again (254).
    raw = b'{"event_id":"e","user_id":"u","ts":%d,"event_type":"view","properties":{"a":%s%s}}' % (
        NOW_MS,
        b"[" * 300,
        b"]" * 300,
    )
    result = parse_event(raw, NOW_MS, LIMITS)
    assert isinstance(result, Rejection) and result.reason == events.OVERSIZED_FIELD


def test_field_limit_is_inclusive() -> None:
    assert isinstance(parse(payload(user_id="u" * 256)), Event)


@pytest.mark.parametrize("price", [-0.01, 1e9 + 1, 1e30, 10**19, -(10**18)])
def test_bad_number(price: float) -> None:
    assert reason(payload(price=price)) == events.BAD_NUMBER


def test_nan_price_direct() -> None:
    with pytest.raises(events._Reject) as info:
        events._price(math.nan)
    assert info.value.reason == events.BAD_NUMBER


def test_zero_and_max_price_accepted() -> None:
    for price in (0, 0.0, 1e9):
        result = parse(payload(price=price))
        assert isinstance(result, Event) and result.price == float(price)


def test_every_reason_is_covered_and_documented() -> None:
    assert len(set(events.REASONS)) == 11
    for code in events.REASONS:
        assert code.isidentifier() and code == code.lower()


def test_detail_never_echoes_payload() -> None:
    secret = "s" * 200
    result = parse(payload(ts=secret))
    assert isinstance(result, Rejection)
    assert secret not in result.detail and len(result.detail) < 120


def test_event_to_json_round_trip() -> None:
    event = Event(
        event_id="e-9",
        user_id="u-9",
        ts_ms=NOW_MS - 5,
        event_type="purchase",
        item_id="sku-1",
        category="books",
        price=12.5,
        session_id="s-1",
        platform="app",
        properties={"coupon": "X", "ü": [1, None]},
    )
    raw = event_to_json(event)
    assert orjson.loads(raw)["ts"] == NOW_MS - 5
    assert parse_event(raw, NOW_MS, LIMITS) == event
    minimal = Event("e", "u", NOW_MS, "view")
    assert set(orjson.loads(event_to_json(minimal))) == {"event_id", "user_id", "ts", "event_type"}
    assert parse_event(event_to_json(minimal), NOW_MS, LIMITS) == minimal


def test_unicode_edge_cases() -> None:
    result = parse(payload(user_id="\u0000ü😀\u200b", item_id="\ufeff"))
    assert isinstance(result, Event) and result.user_id == "\u0000ü😀\u200b"
    lone_surrogate = b'{"event_id":"e","user_id":"\\ud800","ts":1,"event_type":"view"}'
    rejected = parse_event(lone_surrogate, NOW_MS, LIMITS)
    assert isinstance(rejected, Rejection) and rejected.reason == events.BAD_JSON


# Property tests: parse_event answers, never raises, for any input.
_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_json = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_field = (
    _json
    | st.integers(min_value=NOW_MS - 10**10, max_value=NOW_MS + 10**6)
    | st.sampled_from(["2023-11-14T22:13:20Z", "2023-11-14T22:13:20", "view", "PV", "", " "])
)
_names = st.sampled_from(
    ["event_id", "user_id", "ts", "event_type", "item_id", "category", "price", "properties"]
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3_000))
def test_random_bytes_never_raise(raw: bytes) -> None:
    assert isinstance(parse_event(raw, NOW_MS, LIMITS), Event | Rejection)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_names, _field, max_size=8))
def test_random_objects_never_raise_and_round_trip(obj: dict[str, Any]) -> None:
    result = parse_event(orjson.dumps(obj), NOW_MS, LIMITS)
    assert isinstance(result, Event | Rejection)
    if isinstance(result, Event):
        assert parse_event(event_to_json(result), NOW_MS, LIMITS) == result


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {
            "event_id": st.text(min_size=1, max_size=20).filter(str.strip),
            "user_id": st.text(min_size=1, max_size=20).filter(str.strip),
            "ts": st.integers(min_value=NOW_MS - 10**9, max_value=NOW_MS),
            "event_type": st.sampled_from(["view", "pv", "purchase", "whatever"]),
        },
        optional={"price": st.floats(min_value=0, max_value=1e9), "properties": _json},
    )
)
def test_valid_events_parse(obj: dict[str, Any]) -> None:
    if "properties" in obj and not isinstance(obj["properties"], dict):
        obj["properties"] = {"v": obj["properties"]}
    assert isinstance(parse_event(orjson.dumps(obj), NOW_MS, LIMITS), Event)


# Hostile input: whatever a producer sends, the answer is an Event or a Rejection with a
# known reason, never an exception (which would stop the worker's window).
def check_answer(raw: bytes, now_ms: int = NOW_MS) -> Event | Rejection:
    result = parse_event(raw, now_ms, LIMITS)
    assert isinstance(result, Event | Rejection)
    if isinstance(result, Rejection):
        assert result.reason in events.REASONS, result
        assert len(result.detail) < 200
        result.detail.encode("utf-8")  # goes into a Kafka header: must encode
    return result


_hostile_text = st.text(
    alphabet=st.characters(codec=None, blacklist_categories=()),  # incl. lone surrogates
    max_size=40,
) | st.sampled_from(
    [
        "\ud800",
        "\udfff",
        "\u0000",
        "\u202e",
        "\ufeff",
        "𝕏" * 100,
        "a" * 257,
        "é" * 200,
        "\U0010ffff",
        "NaN",
        "Infinity",
        "-0",
    ]
)
_absurd_ts = st.sampled_from(
    [
        0,
        -1,
        -(2**63),
        2**63 - 1,
        2**64 - 1,
        1e308,
        -1e308,
        5e-324,
        "0000-00-00T00:00:00",
        "9999-12-31T23:59:59.999999+23:59",
        "0001-01-01T00:00:00-23:59",
        "2023-11-14T22:13:20Z" + " " * 300,
        "+275760-09-13T00:00:00Z",
        "2023-W46-2",
        "\ud800",
    ]
)


def _json_literal(value: object) -> bytes:
    """JSON text for values orjson refuses to write (lone surrogates): escape by hand."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        if isinstance(value, str):
            escaped = "".join(
                f"\\u{ord(c):04x}" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value
            )
            return b'"' + escaped.replace('"', '\\"').encode("utf-8", "surrogatepass") + b'"'
        return b"null"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "event_id": _hostile_text | st.integers() | st.floats() | st.booleans(),
            "user_id": _hostile_text | st.integers() | st.none() | st.lists(st.integers()),
            "ts": _absurd_ts | st.integers() | st.floats() | _hostile_text,
            "event_type": _hostile_text | st.integers(),
            "price": st.floats() | st.integers() | _hostile_text,
            "item_id": _hostile_text | st.integers(min_value=-(2**70), max_value=2**70),
            "properties": _json | _hostile_text,
            "platform": _hostile_text,
        },
    )
)
def test_hostile_fields_never_raise(obj: dict[str, Any]) -> None:
    # Written by hand so NaN, Infinity, >64-bit ints and lone surrogates reach the parser.
    body = b",".join(
        _json_literal(name) + b":" + _literal_or_special(value) for name, value in obj.items()
    )
    check_answer(b"{" + body + b"}")


def _literal_or_special(value: object) -> bytes:
    if isinstance(value, float) and not math.isfinite(value):
        return b"NaN" if math.isnan(value) else (b"Infinity" if value > 0 else b"-Infinity")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return str(value).encode()
    return _json_literal(value)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=1, max_value=3000), st.sampled_from([b"[", b'{"a":', b'{"p":[']))
def test_deep_json_never_raises(depth: int, opener: bytes) -> None:
    closer = {b"[": b"]", b'{"a":': b"}", b'{"p":[': b"]}"}[opener]
    check_answer(opener * depth + b"1" + closer * depth)
    # Deep properties inside an otherwise valid event.
    props = b'{"a":' * depth + b"1" + b"}" * depth
    check_answer(
        b'{"event_id":"e","user_id":"u","ts":%d,"event_type":"view","properties":%s}'
        % (NOW_MS, props)
    )


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=1, max_value=200_000), st.sampled_from(["user_id", "ts", "x"]))
def test_huge_payloads_never_raise(size: int, name: str) -> None:
    raw = orjson.dumps(payload(**{name: "z" * size}))
    result = check_answer(raw)
    if len(raw) > LIMITS.max_payload_bytes:
        assert isinstance(result, Rejection) and result.reason == events.OVERSIZED_PAYLOAD


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=200), st.integers(min_value=0, max_value=120))
def test_corrupted_valid_events_never_raise(noise: bytes, at: int) -> None:
    raw = orjson.dumps(payload(item_id="sku-1", price=9.5, platform="web"))
    at = min(at, len(raw))
    check_answer(raw[:at] + noise + raw[at:])
    check_answer(raw[:at] + noise)  # truncated by a crashing producer


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=-(2**200), max_value=2**200) | st.floats())
def test_absurd_numeric_timestamps_are_refused_not_raised(ts: float) -> None:
    raw = b'{"event_id":"e","user_id":"u","ts":%s,"event_type":"view"}' % _literal_or_special(ts)
    result = check_answer(raw)
    if isinstance(result, Event):
        assert NOW_MS - LIMITS.max_age_s * 1000 <= result.ts_ms <= NOW_MS + 300_000


# --- batch messages: a JSON array of one user's events ----------------------------------------


def test_one_event_per_message_is_still_one_result_without_an_index() -> None:
    [result] = events.parse_message(orjson.dumps(payload()), NOW_MS, LIMITS)
    assert result == Event("e-1", "u-1", NOW_MS - 1_000, "view")


def test_a_batch_validates_each_event_on_its_own_and_names_the_bad_ones() -> None:
    raw = orjson.dumps(
        [
            payload(event_id="e-1"),
            payload(event_id="e-2", ts="yesterday"),
            "not an event",
            payload(event_id="e-4", price=-1),
            payload(event_id="e-5"),
        ]
    )
    results = events.parse_message(b"  \n" + raw, NOW_MS, LIMITS)  # leading blanks too
    assert [r.event_id for r in results if isinstance(r, Event)] == ["e-1", "e-5"]
    rejected = [(r.index, r.reason) for r in results if isinstance(r, Rejection)]
    assert rejected == [
        (1, events.BAD_TIMESTAMP),
        (2, events.NOT_AN_OBJECT),
        (3, events.BAD_NUMBER),
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"[]", events.EMPTY_BATCH),
        (b"[{", events.BAD_JSON),
        (orjson.dumps([payload(event_id=f"e-{i}") for i in range(4)]), events.OVERSIZED_PAYLOAD),
        (b"[" + b" " * 1_000 + b"]", events.OVERSIZED_PAYLOAD),
    ],
)
def test_an_unreadable_batch_is_one_rejection_without_an_index(raw: bytes, expected: str) -> None:
    limits = ValidationLimits(max_payload_bytes=256, max_batch_events=3)
    [result] = events.parse_message(raw, NOW_MS, limits)
    assert isinstance(result, Rejection)
    assert (result.reason, result.index) == (expected, None)
