"""What the relational-database tasks (``postgres.*``, ``sql.*``) share, without a driver.

* **Bound expressions** (:func:`bind_expressions`): in a ``sql`` property every
  ``{{ expression }}`` is rendered to its native value and sent to the server as a bound
  parameter, never spliced into the SQL text, so a record value such as
  ``'); DROP TABLE x; --`` is data. Jinja statements (``{% ... %}``) and comments are refused
  in ``sql`` (:func:`check_sql_template`): the SQL text itself never depends on a record.
* **The load ledger** (:data:`LEDGER_TABLE`): an ``APPEND`` load records its execution id in
  a ledger table in the same transaction as its rows; a replayed batch (same deterministic
  execution id) finds its entry and loads nothing, so replays never duplicate rows.
* ``fetch: STORE`` (:func:`store_rows`): query rows written to internal storage as ION.
* :func:`flow_key`: the (namespace, flow id) a connection pool belongs to: pools live per
  flow per process, never per execution.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from pydantic import Field, field_validator

from waxflow.connectors.storage import Storage, StorageError
from waxflow.connectors.warehouse import WarehouseQuery, plain
from waxflow.tasks import RunContext, TaskFailure

__all__ = ["LEDGER_TABLE", "SqlQuery", "bind_expressions", "check_sql_template",
           "execution_id", "flow_key", "store_rows"]

#: the default ledger table of APPEND loads: one row per (execution id, target table, task)
LEDGER_TABLE = "waxflow_loads"

_EXPR = re.compile(r"\{\{.*?\}\}", re.DOTALL)


def check_sql_template(sql: str) -> str:
    """``sql`` if it holds only ``{{ expression }}`` templates (a pydantic validator:
    raises ValueError for ``{% ... %}`` statements or ``{# ... #}`` comments)."""
    if "{%" in sql or "{#" in sql:
        raise ValueError("`sql` may hold `{{ expression }}` parameters only, not `{% ... %}` "
                         "statements or `{# ... #}` comments: the SQL text never depends on "
                         "a record (build it with several tasks or a core.Switch instead)")
    return sql


def bind_expressions(ctx: RunContext, sql: str, placeholder: Callable[[int], str], *,
                     escape_percent: bool) -> tuple[str, list[Any]]:
    """(SQL text, parameters): each ``{{ expression }}`` of ``sql`` replaced by
    ``placeholder(i)`` and its rendered (native) value appended to the parameters. With
    ``escape_percent`` (drivers whose paramstyle is ``format``/``pyformat``) a literal ``%``
    of the SQL text is doubled, so ``LIKE 'a%'`` needs no escaping by the user."""
    params: list[Any] = []
    parts: list[str] = []
    pos = 0
    for match in _EXPR.finditer(sql):
        literal = sql[pos:match.start()]
        parts.append(literal.replace("%", "%%") if escape_percent else literal)
        parts.append(placeholder(len(params)))
        value = ctx.render(match.group(0))
        params.append(value)
        pos = match.end()
    if not params:
        return sql, []
    tail = sql[pos:]
    parts.append(tail.replace("%", "%%") if escape_percent else tail)
    return "".join(parts), params


def flow_key(ctx: RunContext) -> tuple[str, str]:
    """(namespace, flow id) of the running flow: the owner of a connection pool."""
    flow = ctx.vars.get("flow") or {}
    return str(flow.get("namespace", "")), str(flow.get("id", ""))


def execution_id(ctx: RunContext, who: str) -> str:
    """The running execution's id (deterministic: a replay has the same id)."""
    execution = ctx.vars.get("execution") or {}
    value = execution.get("id") if isinstance(execution, Mapping) else None
    if not value:
        raise TaskFailure(f"{who}: no execution id in the context")
    return str(value)


def store_rows(ctx: RunContext, who: str, task_id: str, rows: Iterable[Mapping[str, Any]]
               ) -> tuple[str, int]:
    """Store query result rows (values made JSON-friendly) as one ION file in internal
    storage, named after the execution and the task (a retry or replay overwrites it);
    return (URI, row count)."""
    name = f"{execution_id(ctx, who)}.{task_id}.rows.ion"
    try:
        return Storage().put_records(name, ({str(k): plain(v) for k, v in r.items()}
                                            for r in rows))
    except StorageError as exc:
        raise TaskFailure(f"{who}: {exc}") from None


class SqlQuery(WarehouseQuery):
    """What the relational ``Query`` tasks share: ``sql`` (expressions only, bound as
    parameters) and ``fetch`` (the warehouse values plus ``STORE``)."""

    sql: str = Field(min_length=1,
                     description="the SQL; each `{{ expression }}` in it is a bound parameter")

    @field_validator("sql")
    @classmethod
    def _only_expressions(cls, value: str) -> str:
        return check_sql_template(value)

    fetch: Literal["NONE", "ONE", "ALL", "STORE"] = Field(  # type: ignore[assignment]
        default="NONE",
        description="rows to output (from the statement): `NONE`, `ONE` (`row`, `size`), "
                    "`ALL` (`rows`, `size`) or `STORE` (the rows as an ION file in internal "
                    "storage: `uri`, `size`; for results too big for the execution log)")

    def _outputs(self, ctx: RunContext, who: str, names: list[str],
                 rows: Iterable[Any]) -> dict[str, Any]:
        """The fetch outputs from result rows (sequences in ``names`` order)."""
        maps = (dict(zip(names, r, strict=True)) for r in rows)
        if self.fetch == "STORE":
            uri, size = store_rows(ctx, who, self.id, maps)
            return {"uri": uri, "size": size}
        return self._fetched(maps)
