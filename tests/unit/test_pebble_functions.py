"""Issue 13: the Pebble functions, filters and tests Kestra flows use, in waxflow's
expressions, against values worked out from Kestra's documented semantics (Java's
DateTimeFormatter patterns, ChronoUnit arithmetic, Kestra's Slugify, Pebble's ``default``).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from waxflow.expressions import ExpressionError, Expressions, format_date

EXPRS = Expressions()


def render(source: str, **ctx: Any) -> Any:
    return EXPRS.compile(source).render(ctx)


# --------------------------------------------------------------------------- date
@pytest.mark.parametrize(("source", "expected"), [
    # Kestra's own test (DateAddFilterTest): +02 then one day, shown in Perth (+08)
    ('{{ "2013-09-08T16:19:00+02" | dateAdd(1, "DAYS") '
     '| date("yyyy-MM-dd HH:mm:ss z", timeZone="Australia/Perth") }}',
     "2013-09-09 22:19:00 AWST"),
    ('{{ "2013-09-08T16:19:00+02" | date("yyyy-MM-dd") }}', "2013-09-08"),
    ('{{ "2013-09-08T16:19:00+02" | date }}', "2013-09-08T14:19:00.000000Z"),  # iso, UTC
    ('{{ "2013-09-08T16:19:00+02" | date("iso_sec") }}', "2013-09-08T14:19:00Z"),
    ('{{ "2013-09-08T16:19:00+02" | date("sql") }}', "2013-09-08 14:19:00.000000"),
    ('{{ "2013-09-08T16:19:00+02" | date("sql_seq") }}', "2013-09-08 14:19:00"),
    ('{{ "2013-09-08T16:19:00.5+02" | date("iso_instant") }}', "2013-09-08T14:19:00.500Z"),
    ('{{ "2024-07-01T10:00:00Z" | date("iso_date_time", timeZone="Europe/Paris") }}',
     "2024-07-01T12:00:00+02:00[Europe/Paris]"),
    ('{{ "2024-01-05T10:00:00Z" | date("iso_local_date") }}', "2024-01-05"),
    ('{{ "2024-01-05T10:00:00Z" | date("rfc_1123_date_time") }}',
     "Fri, 5 Jan 2024 10:00:00 GMT"),
    ('{{ "2024-01-05T10:00:00Z" | date("EEEE d MMMM yyyy, EEE MMM") }}',
     "Friday 5 January 2024, Fri Jan"),
    ('{{ "2024-01-05T15:04:05.123456Z" | date("hh:mm:ss a SSS S n") }}',
     "03:04:05 PM 123 1 123456000"),
    ('{{ "2024-01-05T15:04:05Z" | date("yy-M-d H:m:s D", timeZone="UTC") }}',
     "24-1-5 15:4:5 5"),
    ('{{ "2024-01-05T15:04:05Z" | date("XXX xx X Z", timeZone="Asia/Kolkata") }}',
     "+05:30 +0530 +0530 +0530"),
    ('{{ "2024-01-05T15:04:05Z" | date("XXX X x Z", timeZone="UTC") }}', "Z Z +00 +0000"),
    ('{{ "2024-01-05T15:04:05Z" | date("\'Day\' D \'\'\'quoted\'\'\' VV", '
     'timeZone="America/New_York") }}', "Day 5 'quoted' America/New_York"),
    # a local date and time is in timeZone; a date alone starts its day
    ('{{ "2024-03-10T08:00:00" | date("iso_sec", timeZone="Europe/Paris") }}',
     "2024-03-10T08:00:00+01:00"),
    ('{{ "2024-03-10" | date("yyyy-MM-dd HH:mm") }}', "2024-03-10 00:00"),
    ('{{ "10/03/2024 17:45" | date("iso_sec", existingFormat="dd/MM/yyyy HH:mm") }}',
     "2024-03-10T17:45:00Z"),
    ('{{ "March 10, 2024" | date("yyyy-MM-dd", existingFormat="MMMM d, yyyy") }}',
     "2024-03-10"),
    ("{{ 1378649940 | date('iso_sec') }}", "2013-09-08T14:19:00Z"),  # epoch seconds
    ("{{ none | date('yyyy') }}", None),
])
def test_date_filter(source: str, expected: Any) -> None:
    assert render(source) == expected


def test_date_of_python_values() -> None:
    assert render("{{ d | date('yyyy-MM-dd HH:mm') }}", d=date(2024, 2, 29)) == \
        "2024-02-29 12:00"  # a date is noon (Kestra's LocalDate)
    aware = datetime(2024, 2, 29, 23, 30, tzinfo=UTC)
    assert render("{{ d | date('yyyy-MM-dd', timeZone='Asia/Tokyo') }}", d=aware) == \
        "2024-03-01"


@pytest.mark.parametrize(("source", "expected"), [
    ('{{ "2024-01-31T10:00:00Z" | dateAdd(1, "MONTHS", format="yyyy-MM-dd") }}',
     "2024-02-29"),  # the end of a shorter month
    ('{{ "2023-01-31T10:00:00Z" | dateAdd(1, "MONTHS", format="yyyy-MM-dd") }}', "2023-02-28"),
    ('{{ "2024-02-29T10:00:00Z" | dateAdd(1, "YEARS", format="yyyy-MM-dd") }}', "2025-02-28"),
    ('{{ "2024-01-31T10:00:00Z" | dateAdd(-2, "HOURS") }}', "2024-01-31T08:00:00.000000Z"),
    ('{{ "2024-01-31T10:00:00Z" | dateAdd(90, "MINUTES", format="HH:mm") }}', "11:30"),
    ('{{ "2024-01-31T10:00:00Z" | dateAdd(-1, "WEEKS", format="yyyy-MM-dd") }}', "2024-01-24"),
    ('{{ "2024-01-31T10:00:00Z" | dateAdd(1500, "MILLIS", format="ss.SSS") }}', "01.500"),
    # DAYS keep the local time over a DST change (Paris, 31 March 2024); HOURS do not
    ('{{ "2024-03-30T12:00:00+01:00[Europe/Paris]" | dateAdd(1, "DAYS", '
     'format="iso_sec", timeZone="Europe/Paris") }}', "2024-03-31T12:00:00+02:00"),
    ('{{ "2024-03-30T12:00:00+01:00" | dateAdd(24, "HOURS", format="iso_sec", '
     'timeZone="Europe/Paris") }}', "2024-03-31T13:00:00+02:00"),
])
def test_date_add(source: str, expected: str) -> None:
    assert render(source) == expected


def test_date_add_and_date_refuse_what_they_cannot_do() -> None:
    with pytest.raises(ExpressionError, match="unknown unit 'FORTNIGHTS'"):
        render('{{ "2024-01-31T10:00:00Z" | dateAdd(1, "FORTNIGHTS") }}')
    with pytest.raises(ExpressionError, match="cannot read a date from 'soon'"):
        render('{{ "soon" | date("yyyy") }}')
    with pytest.raises(ExpressionError, match="unknown time zone 'Mars/Olympus'"):
        render('{{ "2024-01-31T10:00:00Z" | date("yyyy", timeZone="Mars/Olympus") }}')
    with pytest.raises(ExpressionError, match="letter 'Q' is not supported"):
        render('{{ "2024-01-31T10:00:00Z" | date("yyyy QQ") }}')
    with pytest.raises(ExpressionError, match="style 'medium' is not supported"):
        render('{{ "2024-01-31T10:00:00Z" | date("medium") }}')


def test_timestamps() -> None:
    src = '"2013-09-08T16:19:00.123456+02"'
    assert render(f"{{{{ {src} | timestamp }}}}") == 1378649940
    assert render(f"{{{{ {src} | timestampMilli }}}}") == 1378649940123
    assert render(f"{{{{ {src} | timestampMicro }}}}") == 1378649940123456
    assert render(f"{{{{ {src} | timestampNano }}}}") == 1378649940123456000


def test_now_is_kestra_iso_in_utc_and_takes_the_date_arguments() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    text = render("{{ now() }}")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", text), text
    moment = datetime.fromisoformat(text)
    assert before <= moment <= datetime.now(UTC)
    assert render("{{ now(format='XXX', timeZone='Asia/Tokyo') }}") == "+09:00"
    day_before = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
    yesterday = render("{{ now() | dateAdd(-1, 'DAYS') | date('yyyy-MM-dd') }}")
    day_after = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
    assert yesterday in (day_before, day_after)  # (one of them, across midnight)


def test_format_date_quoting() -> None:
    moment = datetime(2024, 1, 5, 9, 7, 3, tzinfo=UTC)
    assert format_date(moment, "yyyy'T'HH'h'mm 'o''clock'") == "2024T09h07 o'clock"
    assert format_date(moment, "''") == "'"


# --------------------------------------------------------------------------- strings
@pytest.mark.parametrize(("value", "expected"), [
    ("Hello World", "hello-world"),
    ("  Crème Brûlée_recipe!! ", "creme-brulee-recipe"),
    ("a--b__c  d", "a-b-c-d"),
    ("Zürich 2024/Q1", "zurich-2024q1"),
    ("---", ""),
    ("日本語 text", "text"),
])
def test_slugify_as_kestra(value: str, expected: str) -> None:
    assert render("{{ v | slugify }}", v=value) == expected


def test_slugify_of_null_is_null() -> None:
    assert render("{{ v | slugify }}", v=None) is None


# --------------------------------------------------------------------------- null and default
def test_null_literal_and_tests() -> None:
    assert render("{{ a is null }} {{ b is null }} {{ b is not null }}", a=None, b=0) == \
        "True False True"
    assert render("{{ a == null }}", a=None) is True
    assert render("{{ a != null }}", a="x") is True
    assert render("{{ [a is empty, b is empty, c is empty, d is empty, e is empty] }}",
                  a="  ", b=[], c={}, d=None, e=0) == [True, True, True, True, False]


@pytest.mark.parametrize(("source", "ctx", "expected"), [
    ("{{ missing | default('d') }}", {}, "d"),
    ("{{ trigger.value.a.b.c | default('d') }}", {"trigger": {"value": {}}}, "d"),
    ("{{ trigger.value.a.b | default('d') }}", {"trigger": {"value": {"a": None}}}, "d"),
    ("{{ x | default('d') }}", {"x": None}, "d"),
    ("{{ x | default('d') }}", {"x": ""}, "d"),  # Pebble: an empty value
    ("{{ x | default('d') }}", {"x": []}, "d"),
    ("{{ x | default('d') }}", {"x": 0}, 0),
    ("{{ x | default('d') }}", {"x": False}, False),
    ("{{ x | d('d') }}", {"x": "v"}, "v"),
    ("{{ x.y | default(x.z | default('deep')) }}", {"x": {}}, "deep"),
])
def test_default_is_pebbles(source: str, ctx: dict[str, Any], expected: Any) -> None:
    assert render(source, **ctx) == expected


def test_default_does_not_hide_other_errors() -> None:
    with pytest.raises(ExpressionError, match="division by zero"):
        render("{{ (1 / x) | default('d') }}", x=0)


# --------------------------------------------------------------------------- render
def test_render_renders_a_variable_holding_an_expression() -> None:
    variables = {"greeting": "Hello {{ inputs.name }}", "twice": "{{ vars.greeting }}!"}
    ctx = {"vars": variables, "inputs": {"name": "Ada"}}
    assert render("{{ render(vars.greeting) }}", **ctx) == "Hello Ada"
    assert render("{{ render(vars.twice) }}", **ctx) == "Hello Ada!"  # recursive
    assert render("{{ render(vars.twice, recursive=false) }}", **ctx) == \
        "Hello {{ inputs.name }}!"
    assert render("{{ render(vars.plain) }}", vars={"plain": "no template"}) == "no template"
    assert render("{{ render(x) }}", x="{{ 6 * 7 }}") == 42


def test_render_never_reads_secrets_from_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAXFLOW_SECRET_DB_PASSWORD", "hunter2-pw-value")
    record = {"value": {"note": "{{ secret('DB_PASSWORD') }}"}}
    with pytest.raises(ExpressionError) as err:
        render("{{ render(trigger.value.note) }}", trigger=record)
    assert "secret() is not available in text given to render()" in str(err.value)
    assert "hunter2" not in str(err.value)


def test_render_reports_a_bad_template() -> None:
    with pytest.raises(ExpressionError, match="render\\(\\): syntax error"):
        render("{{ render(x) }}", x="{{ oops")
    with pytest.raises(ExpressionError, match="render\\(\\) expects text"):
        render("{{ render(x) }}", x=5)


def test_the_new_names_validate() -> None:
    source = ("{{ now() | dateAdd(-1, 'DAYS') | date('yyyy-MM-dd', timeZone='UTC') }} "
              "{{ trigger.key | slugify }} {{ trigger.value is null }} {{ null }} "
              "{{ render(vars.x) }} {{ trigger.value | timestampMilli }} "
              "{{ trigger.value is empty }}")
    assert EXPRS.check(source) == []
