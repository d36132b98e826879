"""Tests for waxflow.durations."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from pydantic import BaseModel, ValidationError

from waxflow.durations import DURATION_PATTERN, Duration, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PT1S", timedelta(seconds=1)),
        ("PT0.5S", timedelta(milliseconds=500)),
        ("PT0,25S", timedelta(milliseconds=250)),
        ("PT1M30S", timedelta(seconds=90)),
        ("P1D", timedelta(days=1)),
        ("P1DT2H", timedelta(days=1, hours=2)),
        ("P2W", timedelta(weeks=2)),
        ("PT0S", timedelta(0)),
        ("pt30s", timedelta(seconds=30)),
        ("PT1H2M3.000004S", timedelta(hours=1, minutes=2, seconds=3, microseconds=4)),
        ("PT0.1234560S", timedelta(microseconds=123456)),
    ],
)
def test_parse_valid(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["PT100MS", "soon", "", "P", "PT", "P1DT", "30s", "1S", "PT1", "T1S", "P1S"]
)
def test_parse_rejects_non_iso(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"such as PT30S, got {text!r}")):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("P1Y", "years and months"),
        ("P1M", "years and months"),
        ("P1Y2M3D", "years and months"),
        ("-PT1S", "negative"),
        ("PT-1S", "negative"),
        ("PT1.5H", "only seconds may have a fraction"),
        ("PT0.0000001S", "finer than one microsecond"),
        ("P999999999999D", "too large"),
    ],
)
def test_parse_rejects_with_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_duration(text)


def test_pt1m_is_minutes_not_months() -> None:
    assert parse_duration("PT1M") == timedelta(minutes=1)


@pytest.mark.parametrize(
    ("td", "text"),
    [
        (timedelta(0), "PT0S"),
        (timedelta(milliseconds=250), "PT0.25S"),
        (timedelta(seconds=90), "PT1M30S"),
        (timedelta(days=1, hours=2), "P1DT2H"),
        (timedelta(weeks=2), "P14D"),
        (timedelta(hours=1, microseconds=1), "PT1H0.000001S"),
    ],
)
def test_format(td: timedelta, text: str) -> None:
    assert format_duration(td) == text


def test_round_trip() -> None:
    samples = [timedelta(microseconds=m) for m in (0, 1, 999_999, 1_000_000, 59_999_999)]
    samples += [timedelta(days=d, seconds=s) for d in (0, 1, 400) for s in (0, 1, 3599, 86399)]
    for td in samples:
        assert parse_duration(format_duration(td)) == td


def test_format_negative_refused() -> None:
    with pytest.raises(ValueError):
        format_duration(timedelta(seconds=-1))


class _Model(BaseModel):
    interval: Duration


def test_pydantic_accepts_strings_and_timedeltas() -> None:
    assert _Model(interval="PT30S").interval == timedelta(seconds=30)  # type: ignore[arg-type]
    assert _Model(interval=timedelta(seconds=3)).interval == timedelta(seconds=3)


@pytest.mark.parametrize("bad", ["soon", 30, None, timedelta(seconds=-1)])
def test_pydantic_rejects(bad: object) -> None:
    with pytest.raises(ValidationError, match="expected an ISO-8601 duration such as PT30S"):
        _Model(interval=bad)  # type: ignore[arg-type]


def test_pydantic_serialises_iso_in_json_mode() -> None:
    m = _Model(interval=timedelta(seconds=90))
    assert m.model_dump(mode="json") == {"interval": "PT1M30S"}
    assert m.model_dump_json() == '{"interval":"PT1M30S"}'
    assert m.model_dump() == {"interval": timedelta(seconds=90)}


def test_json_schema() -> None:
    schema = _Model.model_json_schema()["properties"]["interval"]
    assert schema["type"] == "string"
    assert schema["description"] == "ISO-8601 duration"
    assert schema["pattern"] == DURATION_PATTERN


@pytest.mark.parametrize("text", ["PT1S", "PT0.5S", "PT1M30S", "P1D", "P1DT2H", "P2W", "PT0S"])
def test_schema_pattern_accepts_valid(text: str) -> None:
    assert re.fullmatch(DURATION_PATTERN, text)


@pytest.mark.parametrize("text", ["P", "PT", "P1DT", "PT100MS", "P1Y", "-PT1S", "soon"])
def test_schema_pattern_rejects_invalid(text: str) -> None:
    assert not re.fullmatch(DURATION_PATTERN, text)
