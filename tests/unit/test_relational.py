"""What the database tasks share, without a server: expressions become bound parameters,
the SQL text never depends on a record; task validation of the new types."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import waxflow.connectors.email
import waxflow.connectors.postgres
import waxflow.connectors.sql  # noqa: F401  (register the task types)
from tests.task_helpers import FakeContext, parse_task
from waxflow.connectors.relational import bind_expressions, check_sql_template

EVIL = "'); DROP TABLE x; --"


def test_expressions_become_placeholders_and_native_parameters() -> None:
    ctx = FakeContext({"trigger": {"value": {"id": 7, "name": EVIL}}})
    text, params = bind_expressions(
        ctx, "SELECT * FROM t WHERE id = {{ trigger.value.id }} AND name = "
             "{{ trigger.value.name }} AND s LIKE 'a%'", lambda i: "%s", escape_percent=True)
    assert text == "SELECT * FROM t WHERE id = %s AND name = %s AND s LIKE 'a%%'"
    assert params == [7, EVIL]
    named, params = bind_expressions(ctx, "x = {{ trigger.value.id }}", lambda i: f":p{i}",
                                     escape_percent=False)
    assert (named, params) == ("x = :p0", [7])
    # no expression: the SQL is sent as written (several statements allowed, % untouched)
    assert bind_expressions(ctx, "SELECT 'a%'; SELECT 2", lambda i: "%s",
                            escape_percent=True) == ("SELECT 'a%'; SELECT 2", [])


def test_statements_and_comments_are_refused_in_sql() -> None:
    for sql in ("SELECT {% if x %}1{% endif %}", "SELECT 1 {# c #}"):
        with pytest.raises(ValueError, match="parameters only"):
            check_sql_template(sql)
    with pytest.raises(ValidationError):
        parse_task({"id": "q", "type": "sql.Query", "url": "sqlite://", "sql": "{% set a %}"})


def test_kestra_spellings_and_required_email_parts() -> None:
    assert parse_task({"id": "m", "type": "io.kestra.plugin.notifications.mail.MailSend",
                       "host": "h", "from": "a@x.org", "to": "b@x.org",
                       "plainTextContent": "t"}).type == "notify.Email"
    with pytest.raises(ValidationError, match="recipient"):
        parse_task({"id": "m", "type": "notify.Email", "host": "h", "from": "a@x.org",
                    "plainTextContent": "t"})
    with pytest.raises(ValidationError, match="plainTextContent"):
        parse_task({"id": "m", "type": "notify.Email", "host": "h", "from": "a@x.org",
                    "to": "b@x.org"})
    assert parse_task({"id": "q", "type": "io.kestra.plugin.jdbc.postgresql.Query",
                       "url": "jdbc:postgresql://h/db", "sql": "SELECT 1"}).type == \
        "postgres.Query"
