"""Tests for waxflow.expressions (and waxflow.logs, which masks with its redactor)."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from waxflow.expressions import (
    ExpressionError,
    Expressions,
    Redactor,
    SecretError,
    Secrets,
    mask,
    redact,
    redact_obj,
    register_secret,
)
from waxflow.logs import setup_logging

CTX: dict[str, Any] = {
    "trigger": {
        "value": {"amount": 20000, "type": "refund", "items": [1, 2], "name": "Zoë"},
        "offset": 7,
        "topic": "orders",
    },
    "flow": {"id": "f", "namespace": "shop"},
}


@pytest.fixture
def exprs() -> Expressions:
    return Expressions(Secrets(environ={"WAXFLOW_SECRET_SLACK_WEBHOOK": "https://hooks/abc123"}))


def render(exprs: Expressions, source: str, ctx: dict[str, Any] = CTX) -> Any:
    return exprs.compile(source).render(ctx)


# ---------------------------------------------------------------- native values
def test_single_expression_is_native(exprs: Expressions) -> None:
    assert render(exprs, "{{ trigger.value.amount > 10000 }}") is True
    assert render(exprs, "{{ trigger.value.amount > 99999 }}") is False
    assert render(exprs, "{{ trigger.value }}") is CTX["trigger"]["value"]
    assert render(exprs, "{{ trigger.offset }}") == 7
    assert render(exprs, "{{ 7 * 7 }}") == 49  # constant-folded expressions stay native too
    assert render(exprs, "{{ none }}") is None


def test_mixed_text_is_string(exprs: Expressions) -> None:
    assert render(exprs, "offset {{ trigger.offset }}") == "offset 7"
    assert render(exprs, "{{ trigger.offset }}{{ trigger.offset }}") == "77"
    assert render(exprs, "[1, 2] {{ 3 }}") == "[1, 2] 3"  # Jinja's native mode loses the space
    assert render(exprs, "{% if true %}10{% endif %}") == "10"
    assert render(exprs, "{% if false %}x{% endif %}") == ""


def test_record_data_is_never_evaluated(exprs: Expressions) -> None:
    ctx = {"trigger": {"value": {"a": "{{ 7*7 }}", "b": "[1, 2]", "c": "123", "d": "True"}}}
    assert render(exprs, "{{ trigger.value.a }}", ctx) == "{{ 7*7 }}"
    assert render(exprs, "{{ trigger.value.b }}", ctx) == "[1, 2]"  # not literal_eval'd
    assert render(exprs, "{{ trigger.value.c }}", ctx) == "123"
    assert render(exprs, "{{ trigger.value.d }}", ctx) == "True"
    assert render(exprs, "x {{ trigger.value.a }}", ctx) == "x {{ 7*7 }}"
    assert exprs.render_value({"m": "{{ trigger.value.a }}"}, ctx) == {"m": "{{ 7*7 }}"}


def test_dict_keys_win_over_dict_methods(exprs: Expressions) -> None:
    assert render(exprs, "{{ trigger.value.items }}") == [1, 2]
    assert render(exprs, "{{ trigger.value['items'] }}") == [1, 2]
    assert render(exprs, "{{ flow.keys() | list }}") == ["id", "namespace"]


# ---------------------------------------------------------------- errors and sandbox
@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{{ trigger.value.missing }}", "has no attribute 'missing'"),
        ("{{ trigger.nope.deeper }}", "has no attribute 'nope'"),
        ("x {{ trigger.value.missing }}", "has no attribute 'missing'"),
        ("{{ triggers }}", "'triggers' is undefined"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ trigger.__class__ }}", "SecurityError"),
        ("{{ trigger.value.items.append(3) }}", "SecurityError"),
        ("{{ range(10**7) | list }}", "OverflowError"),
    ],
)
def test_render_failures_raise_expression_error(
    exprs: Expressions, source: str, reason: str
) -> None:
    with pytest.raises(ExpressionError, match=reason) as info:
        render(exprs, source)
    assert info.value.source == source
    assert repr(source) in str(info.value)


def test_compile_syntax_error(exprs: Expressions) -> None:
    with pytest.raises(ExpressionError, match="syntax error"):
        exprs.compile("{{ x }")


# ---------------------------------------------------------------- compile cache
def test_compile_caches_by_source(exprs: Expressions) -> None:
    a = exprs.compile("{{ trigger.offset }}")
    assert exprs.compile("{{ trigger.offset }}") is a
    assert exprs.compile("{{ trigger.topic }}") is not a


def test_constant_fast_path(exprs: Expressions) -> None:
    t = exprs.compile("plain text with { braces } and }}")
    assert t.render({}) == "plain text with { braces } and }}"
    assert exprs.compile("plain text with { braces } and }}") is t
    assert render(exprs, "{# comment #}x") == "x"  # comments are not constants


def test_compile_is_thread_safe(exprs: Expressions) -> None:
    results: list[object] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(exprs.compile("{{ trigger.value.type }} {{ flow.id }}"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in results}) == 1


def test_template_reusable_across_contexts(exprs: Expressions) -> None:
    t = exprs.compile("{% set n = trigger.offset * 2 %}{{ n }}")
    assert t.render({"trigger": {"offset": 1}}) == 2
    assert t.render({"trigger": {"offset": 5}}) == 10


# ---------------------------------------------------------------- filters and globals
def test_tojson(exprs: Expressions) -> None:
    assert render(exprs, "{{ trigger.value | tojson }}") == json.dumps(
        CTX["trigger"]["value"], ensure_ascii=False, separators=(",", ":")
    )
    assert "Zoë" in render(exprs, "{{ trigger.value | tojson }}")
    ctx = {"v": {"s": "<a&b>", "n": None, "d": Decimal("1.10"), "t": datetime(2024, 1, 2, 3, 4)}}
    assert render(exprs, "{{ v | tojson }}", ctx) == (
        '{"s":"<a&b>","n":null,"d":"1.10","t":"2024-01-02T03:04:00"}'
    )
    assert render(exprs, "{{ 'x' | tojson }}") == '"x"'
    assert render(exprs, "{{ 1.5 | tojson }}") == "1.5"
    assert render(exprs, "{{ none | tojson }}") == "null"
    with pytest.raises(ExpressionError, match="not JSON serializable"):
        render(exprs, "{{ v | tojson }}", {"v": object()})


def test_fromjson(exprs: Expressions) -> None:
    ctx = {"raw": '{"a": [1, 2], "b": "é"}'}
    assert render(exprs, "{{ (raw | fromjson).a[1] }}", ctx) == 2
    assert render(exprs, "{{ raw | fromjson }}", ctx) == {"a": [1, 2], "b": "é"}


def test_now_is_utc_iso(exprs: Expressions) -> None:
    out = render(exprs, "{{ now() }}")
    assert out.endswith("Z")
    parsed = datetime.fromisoformat(out)
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 5


def test_secret_global(exprs: Expressions) -> None:
    assert render(exprs, "{{ secret('SLACK_WEBHOOK') }}") == "https://hooks/abc123"
    assert render(exprs, "{{ secret('slack-webhook') }}") == "https://hooks/abc123"
    assert redact("posting to https://hooks/abc123 now") == "posting to ****** now"


# ---------------------------------------------------------------- render_value
def test_render_value_recurses(exprs: Expressions) -> None:
    value = {
        "url": "https://x/{{ flow.id }}",
        "{{ trigger.topic }}": [
            "{{ trigger.offset }}",
            3,
            None,
            {"deep": "{{ trigger.value.type }}"},
        ],
        5: True,
        "plain": "text",
    }
    expected = {
        "url": "https://x/f",
        "orders": [7, 3, None, {"deep": "refund"}],
        5: True,
        "plain": "text",
    }
    assert exprs.render_value(value, CTX) == expected
    assert exprs.compile_value(value).render(CTX) == expected
    assert exprs.render_value(("{{ flow.id }}",), CTX) == ["f"]
    assert exprs.render_value(1.5, CTX) == 1.5


def test_compile_value_returns_fresh_containers(exprs: Expressions) -> None:
    t = exprs.compile_value({"a": ["x"]})
    first = t.render(CTX)
    first["a"].append("y")
    assert t.render(CTX) == {"a": ["x"]}


# ---------------------------------------------------------------- check
def test_check_ok(exprs: Expressions) -> None:
    assert exprs.check("no template here") == []
    assert exprs.check("{{ trigger.value | tojson }} {{ secret('X') }} {{ now() }}") == []
    assert exprs.check("{% for i in range(3) %}{% set y = i %}{{ y }}{% endfor %}") == []
    assert exprs.check("{{ outputs.a.b }} {{ execution.id }} {{ env.HOME }} {{ loop }}") == []


def test_check_unknown_variable(exprs: Expressions) -> None:
    [message] = exprs.check("{{ trigers.value }}")
    assert message.startswith("unknown variable 'trigers' (did you mean 'trigger'? known: ")
    for name in ("execution", "flow", "outputs", "trigger", "env", "secret"):
        assert name in message
    assert len(exprs.check("{{ a }} {{ b }}")) == 2


def test_check_syntax_errors(exprs: Expressions) -> None:
    assert exprs.check("{{ x }") == ["syntax error: unexpected '}'"]
    [message] = exprs.check("line one\n{{ trigger +  }}")
    assert message.startswith("syntax error on line 2 of the expression: ")


def test_check_unknown_filter_and_include(exprs: Expressions) -> None:
    assert exprs.check("{{ trigger | nofilter }}") == ["error: No filter named 'nofilter'."]
    assert exprs.check("{% include 'x.html' %}") == ["'include' is not available in expressions"]


# ---------------------------------------------------------------- secrets
def test_secret_env_name() -> None:
    assert Secrets.env_name("slack-webhook.url") == "WAXFLOW_SECRET_SLACK_WEBHOOK_URL"


def test_secret_lookup_order(tmp_path: Path) -> None:
    file = tmp_path / "secrets.yaml"
    file.write_text("DB_PASSWORD: from-file-pw\nONLY_FILE: file-only-1\nlower-name: lower-1\n")
    env = {"WAXFLOW_SECRET_DB_PASSWORD": "from-env-pw", "WAXFLOW_SECRETS_FILE": str(file)}
    secrets = Secrets(environ=env)
    assert secrets.get("DB_PASSWORD") == "from-env-pw"
    assert secrets.get("ONLY_FILE") == "file-only-1"
    assert secrets.get("only-file") == "file-only-1"  # env-name form of the key
    assert secrets("lower-name") == "lower-1"


def test_secrets_json_file(tmp_path: Path) -> None:
    file = tmp_path / "s.json"
    file.write_text(json.dumps({"TOKEN": "json-token-1", "PORT": 5432}))
    secrets = Secrets(environ={}, file=file)
    assert secrets.get("TOKEN") == "json-token-1"
    assert secrets.get("PORT") == "5432"


def test_missing_secret_names_it_without_values(tmp_path: Path) -> None:
    file = tmp_path / "s.yaml"
    file.write_text("OTHER: other-value-1\n")
    secrets = Secrets(environ={"WAXFLOW_SECRET_X": "x-value-1"}, file=file)
    with pytest.raises(SecretError) as info:
        secrets.get("NOPE")
    text = str(info.value)
    assert "'NOPE'" in text and "WAXFLOW_SECRET_NOPE" in text
    assert "other-value-1" not in text and "x-value-1" not in text


def test_bad_secrets_file_does_not_leak(tmp_path: Path) -> None:
    file = tmp_path / "s.yaml"
    file.write_text("TOKEN: leaked-value-9\n  bad: [indent\n")
    with pytest.raises(SecretError) as info:
        Secrets(environ={}, file=file).get("TOKEN")
    assert "leaked-value-9" not in str(info.value)
    with pytest.raises(SecretError, match="cannot read"):
        Secrets(environ={}, file=tmp_path / "absent.yaml").get("TOKEN")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(SecretError, match="mapping"):
        Secrets(environ={}, file=tmp_path / "list.yaml").get("TOKEN")


def test_secret_error_in_template_is_expression_error() -> None:
    exprs = Expressions(Secrets(environ={}))
    with pytest.raises(ExpressionError, match="secret 'MISSING_ONE' is not defined"):
        exprs.compile("{{ secret('MISSING_ONE') }}").render({})


def test_expression_error_text_is_redacted() -> None:
    exprs = Expressions(Secrets(environ={"WAXFLOW_SECRET_TOK": "tok-value-77"}))
    with pytest.raises(ExpressionError) as info:
        exprs.compile("{{ table[secret('TOK')] }}").render({"table": {}})
    assert "tok-value-77" not in str(info.value)
    assert "******" in str(info.value)


def test_register_all(tmp_path: Path) -> None:
    file = tmp_path / "s.yaml"
    file.write_text("A: never-used-file-secret\n")
    Secrets(environ={"WAXFLOW_SECRET_B": "never-used-env-secret"}, file=file).register_all()
    assert redact("never-used-file-secret never-used-env-secret") == "****** ******"


# ---------------------------------------------------------------- redaction
def test_redactor_basics() -> None:
    r = Redactor()
    assert r.redact("nothing registered") == "nothing registered"
    r.add("ab")  # too short to mask
    r.add("hunter2")
    r.add("hunter2-long")
    assert r.redact("ab hunter2 hunter2-long") == "ab ****** ******"
    assert r.redact_obj({"hunter2": ["x hunter2", 3, ("hunter2",)]}) == {
        "******": ["x ******", 3, ("******",)]
    }


def test_redactor_json_escaped_form() -> None:
    r = Redactor()
    r.add('pa"ss\\word')
    assert r.redact(json.dumps({"p": 'pa"ss\\word'})) == '{"p": "******"}'


def test_module_redactor() -> None:
    register_secret("module-level-secret")
    assert redact_obj({"k": ["module-level-secret"]}) == {"k": ["******"]}


def test_redactor_thread_safe() -> None:
    r = Redactor()
    values = [f"secret-{i:04d}" for i in range(200)]
    errors: list[str] = []

    def adder(chunk: list[str]) -> None:
        for v in chunk:
            r.add(v)
            if r.redact(f"<{v}>") != "<******>":
                errors.append(v)

    threads = [threading.Thread(target=adder, args=(values[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert r.redact(" ".join(values)) == " ".join(["******"] * 200)


def test_redactor_masks_extra_values_in_every_form() -> None:
    r = Redactor()
    r.add("registered-value")
    text = "registered-value pé-one p\\u00e9-one b'p\\xc3\\xa9-one' x ab"
    assert r.redact(text, ["pé-one", None, "ab"]) == "****** ****** ****** b'******' x ab"
    assert r.redact("a registered-value-with-extra", ["registered-value-with"]) == "a ******-extra"


def test_mask_one_line_capped_registered_and_extra_secrets() -> None:
    register_secret("mask-registered-secret")
    text = "failed:\n  mask-registered-secret\tpassword=pw-123 'pw-123'"
    assert mask(text, ["pw-123"]) == "failed: ****** password=****** '******'"
    assert mask("short") == "short"
    long = "x" * 590 + " pw-123 " + "y" * 50
    masked = mask(long, ("pw-123",))
    assert len(masked) == 600 and masked.endswith("...") and "pw-1" not in masked
    cut = mask("a" * 20 + "pw-123", ["pw-123"], limit=24)
    assert cut == "a" * 20 + "*..." and "pw" not in cut


# ---------------------------------------------------------------- performance
def test_render_rate_well_above_10k_per_second(exprs: Expressions) -> None:
    # Full micro benchmark: bench/expressions.py (about 370k renders/s for this template).
    t = exprs.compile("{{ trigger.value.type }}-{{ trigger.value.amount }}")
    ctxs = [{"trigger": {"value": {"type": "a", "amount": i}}} for i in range(20_000)]
    start = time.perf_counter()
    for ctx in ctxs:
        t.render(ctx)
    assert time.perf_counter() - start < 2.0  # >= 10k renders/s even on a slow machine


# ---------------------------------------------------------------- secret-derived values
def _fresh_exprs() -> tuple[Expressions, str]:
    """Expressions whose secret TOKEN has a value no other test registered."""
    value = f"tk-{uuid.uuid4().hex[:12]}"
    return Expressions(Secrets(environ={"WAXFLOW_SECRET_TOKEN": value})), value


@pytest.mark.parametrize(("source", "derive"), [
    ("{{ secret('TOKEN') | upper }}", str.upper),
    ("{{ secret('TOKEN') | reverse }}", lambda v: v[::-1]),
    ("{{ secret('TOKEN') | capitalize }}", str.capitalize),
    ("{{ secret('TOKEN')[1:] }}", lambda v: v[1:]),
    ("{{ secret('TOKEN') | replace('-', '_') }}", lambda v: v.replace("-", "_")),
    ("{% set t = secret('TOKEN') | upper %}<{{ t }}>", lambda v: v.upper()),
    ("{% for c in secret('TOKEN') %}{{ c | upper }}{% endfor %}", str.upper),
    ("{% filter upper %}{{ secret('TOKEN') }}{% endfilter %}", str.upper),
])
def test_values_derived_from_a_secret_are_masked(source: str, derive: Any) -> None:
    exprs, value = _fresh_exprs()
    derived = derive(value)
    assert derived != value and redact(f"x {derived} y") == f"x {derived} y"  # not yet
    out = exprs.compile(source).render(CTX)
    assert derived in str(out)  # the template really computed it
    assert redact(f"x {derived} y") == "x ****** y"
    assert derived not in mask(f"failed: {out}")
    assert derived not in json.dumps(redact_obj({"outputs": {"v": out}}))


def test_secret_with_text_around_it_keeps_the_text_readable() -> None:
    exprs, value = _fresh_exprs()
    assert render(exprs, "{{ 'Bearer ' ~ secret('TOKEN') }}") == f"Bearer {value}"
    assert redact(f"Bearer {value}") == "Bearer ******"
    out = render(exprs, "rejected token {{ secret('TOKEN') | reverse }}!")
    assert redact(out) == "rejected token ******!"


def test_secret_derived_strings_inside_structures_are_masked() -> None:
    exprs, value = _fresh_exprs()
    parts = value.split("-")
    assert render(exprs, "{{ secret('TOKEN').split('-') }}") == parts
    assert redact(parts[1]) == "******"
    key = f"key-{uuid.uuid4().hex[:6]}"  # written in the template: not secret-derived
    out = render(exprs, f"{{{{ {{'{key}': secret('TOKEN') | upper, 'n': ['{key}x'] }} }}}}")
    assert out == {key: value.upper(), "n": [f"{key}x"]}
    assert redact_obj(out) == {key: "******", "n": [f"{key}x"]}


def test_record_data_next_to_a_secret_is_not_masked() -> None:
    exprs, _ = _fresh_exprs()
    ctx = {"trigger": {"value": {"id": f"id-{uuid.uuid4().hex[:8]}", "name": "Zoë-Record"}}}
    rid = ctx["trigger"]["value"]["id"]
    assert render(exprs, "{{ trigger.value.name if secret('TOKEN') else '' }}", ctx) \
        == "Zoë-Record"
    out = render(exprs, "{{ trigger.value.id ~ '/' ~ secret('TOKEN') }}", ctx)
    assert redact(out) == f"{rid}/******"
    out = render(exprs, "?t={{ secret('TOKEN') | urlencode }}&id={{ trigger.value.id }}", ctx)
    assert redact(out) == f"?t=******&id={rid}"
    out = render(exprs, "{{ trigger.value.id ~ (secret('TOKEN') | reverse) }}", ctx)
    assert redact(out) == f"{rid}******"
    assert redact(f"{rid} Zoë-Record") == f"{rid} Zoë-Record"


def test_secret_derived_values_keep_their_native_type() -> None:
    exprs, value = _fresh_exprs()
    assert render(exprs, "{{ secret('TOKEN') | length }}") == len(value)
    assert render(exprs, "{{ secret('TOKEN') == 'x' }}") is False
    assert render(exprs, "{{ secret('TOKEN')[:2] }}") == value[:2]
    assert redact("say tk") == "say tk"  # shorter than 3 characters: never registered


def test_templates_without_secrets_register_nothing() -> None:
    exprs, _ = _fresh_exprs()
    word = f"plain-{uuid.uuid4().hex[:8]}"
    assert render(exprs, "{{ w | upper }} {{ w | reverse }}", {"w": word}) == (
        f"{word.upper()} {word[::-1]}")
    assert redact(f"{word.upper()} {word[::-1]}") == f"{word.upper()} {word[::-1]}"


# ---------------------------------------------------------------- tojson and non-finite numbers
def _strict_loads(text: str) -> Any:
    def refuse(token: str) -> Any:
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def test_tojson_writes_nan_and_infinity_as_null(exprs: Expressions) -> None:
    nan, inf = float("nan"), float("inf")
    ctx = {"v": {"a": nan, "b": [inf, -inf, 1.5], "c": {"d": (nan, 2)}, "e": {nan}, "ok": 1e308}}
    out = render(exprs, "{{ v | tojson }}", ctx)
    assert "NaN" not in out and "Infinity" not in out
    assert _strict_loads(out) == {"a": None, "b": [None, None, 1.5], "c": {"d": [None, 2]},
                                  "e": [None], "ok": 1e308}
    assert render(exprs, "{{ x | tojson }}", {"x": nan}) == "null"
    assert _strict_loads(render(exprs, "{{ v | tojson }}", {"v": {nan: 1}})) == {"null": 1}
    assert render(exprs, "{{ v | tojson }}", {"v": Decimal("NaN")}) == '"NaN"'
    assert ctx["v"]["a"] is nan  # the record itself is not changed


def test_tojson_other_errors_still_raise(exprs: Expressions) -> None:
    with pytest.raises(ExpressionError, match="not JSON serializable"):
        render(exprs, "{{ v | tojson }}", {"v": [float("nan"), object()]})


# ---------------------------------------------------------------- references, defined
def test_references(exprs: Expressions) -> None:
    refs = exprs.references(
        "{{ secret('A') }} {{ secret(name='b-c') }} {{ secret(trigger.value.k) }}"
        "{{ outputs.t1.x }} {{ outputs['t2'] }} {{ outputs[trigger.value.t] }}"
        "{{ env.E1 }} {{ env['E2'] }} {{ env.get('E3') }} {{ env.items() | list }}"
        "{{ env.G1 | default('x') }} {{ env.G2 is defined }} {{ 'G3' in env }}"
        "{{ outputs.g4 | d({}) }} {% if outputs.g5 is undefined %}{% endif %}")
    assert refs.secrets == {"A", "b-c"}
    assert refs.outputs == {"t1", "t2"}
    assert refs.env == {"E1", "E2"}
    assert exprs.references("plain text") == exprs.references("{{ syntax error }") \
        == exprs.references("{% set env = {} %}{{ env.X }}")


def test_secrets_defined_does_not_register(tmp_path: Path) -> None:
    file = tmp_path / "s.yaml"
    file.write_text("IN_FILE: defined-in-file-77\n")
    secrets = Secrets(environ={"WAXFLOW_SECRET_IN_ENV": "defined-in-env-77",
                               "WAXFLOW_SECRETS_FILE": str(file)})
    assert secrets.defined("IN_ENV") and secrets.defined("in-file") and secrets.defined("IN_FILE")
    assert not secrets.defined("NOPE")
    assert redact("defined-in-env-77 defined-in-file-77") == "defined-in-env-77 defined-in-file-77"
    with pytest.raises(SecretError, match="cannot read"):
        Secrets(environ={}, file=tmp_path / "absent.yaml").defined("X")


# ---------------------------------------------------------------- logging (waxflow.logs)
@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    filters = {id(h): list(h.filters) for h in handlers}
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        handler.filters = filters[id(handler)]
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def test_log_lines_of_any_logger_are_masked(root_logging: None) -> None:
    secret = f"log-secret-{uuid.uuid4().hex[:8]}"
    register_secret(secret)
    stream = io.StringIO()
    setup_logging("info", stream=stream)
    logging.getLogger("httpx").info('HTTP Request: GET http://h/x?token=%s "HTTP/1.1 500"',
                                    secret)
    logging.getLogger("some.library").warning(f"plain {secret} in the message")
    logging.getLogger("waxflow.task").debug("below the level %s", secret)
    try:
        raise RuntimeError(f"failed with {secret}")
    except RuntimeError:
        logging.getLogger("urllib3").exception("boom %s", secret[::-1])
    logging.getLogger("x").info("stack", stack_info=True, extra={"k": secret})
    text = stream.getvalue()
    assert secret not in text
    assert 'INFO httpx HTTP Request: GET http://h/x?token=****** "HTTP/1.1 500"' in text
    assert "WARNING some.library plain ****** in the message" in text
    assert "below the level" not in text
    assert "RuntimeError: failed with ******" in text and "Traceback" in text


def test_json_log_lines(root_logging: None) -> None:
    secret = f"json-secret-{uuid.uuid4().hex[:8]}"
    register_secret(secret)
    stream = io.StringIO()
    setup_logging("DEBUG", "json", stream=stream)
    logging.getLogger("some.client").debug("connect\ntoken=%s", secret)
    try:
        raise ValueError(secret)
    except ValueError:
        logging.getLogger("dbt").error("bad", exc_info=True)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert set(first) == {"time", "level", "logger", "message"}
    assert first["level"] == "DEBUG" and first["logger"] == "some.client"
    assert first["message"] == "connect\ntoken=******"
    assert datetime.fromisoformat(first["time"]).tzinfo is not None
    assert second["level"] == "ERROR" and second["exception"].endswith("ValueError: ******")
    assert secret not in stream.getvalue()


def test_setup_logging_replaces_its_handler_and_guards_the_others(root_logging: None) -> None:
    secret = f"other-secret-{uuid.uuid4().hex[:8]}"
    register_secret(secret)
    foreign_stream = io.StringIO()
    foreign = logging.StreamHandler(foreign_stream)
    logging.getLogger().addHandler(foreign)
    first, second = io.StringIO(), io.StringIO()
    setup_logging("WARN", stream=first)
    setup_logging("warning", stream=second)
    ours = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)
            and h.stream in (first, second)]
    assert len(ours) == 1
    logging.getLogger("a").warning("token %s", secret)
    logging.getLogger("a").info("not shown")
    assert first.getvalue() == ""
    assert second.getvalue().endswith("WARNING a token ******\n")
    assert foreign_stream.getvalue() == "token ******\n"
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        setup_logging("LOUD")
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        setup_logging("INFO", "xml")
