"""The flow reference (``docs/reference.md``), generated from the models themselves.

Every property is described once, in code (the ``description`` of its pydantic field, which
the JSON Schema of ``waxflow schema`` carries to editors too); each type's docstring says what
it does. :func:`render_reference` turns them into Markdown: every trigger type, the properties
every task shares, the retry policy, every task type and the objects they nest, each with a
table of its fields and a small YAML example (:data:`EXAMPLES`, checked to be valid flow
fragments by the tests).

``python -m waxflow.dataflows.reference > docs/reference.md`` regenerates the file;
``python -m waxflow.dataflows.reference --check`` exits 1 when it is out of date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import re
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from waxflow.dataflows.spec import flow_model, task_union
from waxflow.durations import format_duration
from waxflow.flow import TRIGGER_ALIASES, TRIGGER_TYPES
from waxflow.tasks import TASK_ALIASES, TASK_TYPES, RetrySpec, TaskBase

__all__ = ["DEFAULT_PATH", "EXAMPLES", "FLOW_EXAMPLE", "main", "nested_models",
           "render_reference"]

#: where the generated reference is committed (relative to the repository root)
DEFAULT_PATH = Path("docs/reference.md")

#: One small example per type: a fragment of a flow file under ``triggers:`` or ``tasks:``.
EXAMPLES: dict[str, str] = {
    "kafka.RealtimeTrigger": """\
triggers:
  - id: orders
    type: kafka.RealtimeTrigger
    topic: orders
    groupId: orders-realtime
    valueDeserializer: JSON
    onSerdeError: {type: DLQ, topic: orders.dlq}
    maxConcurrency: 32
    keyOrdering: true
""",
    "kafka.Trigger": """\
triggers:
  - id: orders
    type: kafka.Trigger
    topics: [orders, refunds]
    groupId: orders-to-warehouse
    valueDeserializer: JSON
    interval: PT1M
    maxRecords: 50000
""",
    "schedule.Interval": """\
triggers:
  - id: nightly
    type: schedule.Interval
    cron: "0 2 * * *"
""",
    "TaskBase": """\
tasks:
  - id: load
    type: duckdb.Load
    description: land the batch in the embedded warehouse
    from: "{{ trigger.uri }}"
    table: raw.orders
    timeout: PT10M
    allowFailure: false
    retry: {type: constant, interval: PT30S, maxAttempts: 3}
    errors:
      - id: tell
        type: core.Log
        level: ERROR
        message: "load of {{ trigger.uri }} failed"
""",
    "RetrySpec": """\
tasks:
  - id: call
    type: http.Request
    uri: https://api.example.com/orders
    retry:
      type: exponential
      interval: PT1S
      delayFactor: 2
      maxInterval: PT1M
      maxAttempts: 5
      maxDuration: PT10M
""",
    "core.Log": """\
tasks:
  - id: hello
    type: core.Log
    level: INFO
    message: "order {{ trigger.value.id }} from {{ trigger.topic }}"
""",
    "core.Switch": """\
tasks:
  - id: by-status
    type: core.Switch
    value: "{{ trigger.value.status }}"
    cases:
      cancelled:
        - id: cancel
          type: http.Request
          method: DELETE
          uri: "https://api.example.com/reservations/{{ trigger.value.id }}"
    defaults:
      - id: other
        type: core.Log
        message: "status {{ trigger.value.status }}"
""",
    "core.If": """\
tasks:
  - id: big
    type: core.If
    condition: "{{ trigger.value.amount > 10000 }}"
    then:
      - id: alert
        type: core.Log
        level: WARN
        message: "large order {{ trigger.value.id }}"
    else:
      - id: fine
        type: core.Log
        message: "order {{ trigger.value.id }}"
""",
    "core.Sequential": """\
tasks:
  - id: steps
    type: core.Sequential
    tasks:
      - id: first
        type: core.Log
        message: first
      - id: second
        type: core.Log
        message: second
""",
    "core.Parallel": """\
tasks:
  - id: fan-out
    type: core.Parallel
    concurrency: 2
    tasks:
      - id: a
        type: http.Request
        uri: https://a.example.com/ping
      - id: b
        type: http.Request
        uri: https://b.example.com/ping
""",
    "core.Fail": """\
tasks:
  - id: check
    type: core.Fail
    condition: "{{ trigger.value.amount < 0 }}"
    errorMessage: "negative amount in order {{ trigger.value.id }}"
""",
    "core.Set": """\
tasks:
  - id: vars
    type: core.Set
    values:
      customer: "{{ trigger.value.customer }}"
      total: "{{ trigger.value.amount * 1.2 }}"
""",
    "core.OutputValues": """\
tasks:
  - id: summary
    type: io.kestra.plugin.core.output.OutputValues   # or core.OutputValues
    values:
      customer: "{{ trigger.value.customer }}"
  - id: show
    type: core.Log
    message: "{{ outputs.summary.values.customer }}"
""",
    "core.Return": """\
tasks:
  - id: label
    type: core.Return
    format: "{{ task.id }} saw {{ trigger.key }}"
""",
    "core.Subflow": """\
tasks:
  - id: handle
    type: core.Subflow
    namespace: shop
    flowId: log_record
    inputs:
      record: "{{ trigger.value }}"
""",
    "core.ForEachItem": """\
tasks:
  - id: each
    type: core.ForEachItem
    items: "{{ trigger.uri }}"
    batch:
      rows: 100
    namespace: shop
    flowId: load_rows
    inputs:
      rows: "{{ read(taskrun.items) }}"
      part: "{{ taskrun.iteration }}"
""",
    "serdes.IonToJson": """\
tasks:
  - id: to_jsonl
    type: serdes.IonToJson
    from: "{{ outputs.read.uri }}"
""",
    "serdes.JsonToIon": """\
tasks:
  - id: to_ion
    type: serdes.JsonToIon
    from: "{{ outputs.to_jsonl.uri }}"
""",
    "serdes.CsvToIon": """\
tasks:
  - id: rows
    type: serdes.CsvToIon
    from: "{{ inputs.file }}"
    fieldSeparator: ";"
""",
    "serdes.IonToCsv": """\
tasks:
  - id: to_csv
    type: serdes.IonToCsv
    from: "{{ outputs.rows.uri }}"
""",
    "jsonata.TransformValue": """\
tasks:
  - id: total
    type: jsonata.TransformValue
    from: "{{ trigger.value }}"
    expression: '{"order": order_id, "total": $sum(items.(quantity * price))}'
""",
    "jsonata.TransformItems": """\
tasks:
  - id: lines
    type: jsonata.TransformItems
    from: "{{ trigger.uri }}"
    expression: 'value.items.{"sku": sku, "qty": quantity}'
""",
    "js.FileTransform": """\
tasks:
  - id: reshape
    type: js.FileTransform
    from: "{{ outputs.rows.uri }}"
    script: |
      if (row.amount < 0) { row = null; }
      else { row = {key: row.id, value: {amount: row.amount, currency: "EUR"}}; }
""",
    "mongodb.InsertOne": """\
tasks:
  - id: store
    type: mongodb.InsertOne
    connection: {uri: "mongodb://shop:{{ secret('MONGO_PASSWORD') }}@mongo:27017/"}
    database: shop
    collection: orders
    document: {order: "{{ trigger.value.id }}", total: "{{ trigger.value.total }}"}
""",
    "mongodb.Find": """\
tasks:
  - id: recent
    type: mongodb.Find
    connection: {uri: "mongodb://shop:{{ secret('MONGO_PASSWORD') }}@mongo:27017/"}
    database: shop
    collection: orders
    filter: {order: "{{ trigger.value.id }}"}
    limit: 10
""",
    "mongodb.Update": """\
tasks:
  - id: mark_paid
    type: mongodb.Update
    connection: {uri: "mongodb://shop:{{ secret('MONGO_PASSWORD') }}@mongo:27017/"}
    database: shop
    collection: orders
    filter: {order: "{{ trigger.value.id }}"}
    document: {$set: {status: paid, paidAt: "{{ trigger.value.at }}"}}
""",
    "mongodb.Delete": """\
tasks:
  - id: forget
    type: mongodb.Delete
    connection: {uri: "mongodb://shop:{{ secret('MONGO_PASSWORD') }}@mongo:27017/"}
    database: shop
    collection: carts
    operation: DELETE_MANY
    filter: {customer: "{{ trigger.value.customer }}"}
""",
    "mongodb.Bulk": """\
tasks:
  - id: apply
    type: mongodb.Bulk
    connection: {uri: "mongodb://shop:{{ secret('MONGO_PASSWORD') }}@mongo:27017/"}
    database: shop
    collection: orders
    # one operation a record, e.g. made by js.FileTransform:
    # {"insertOne": {"document": {"order": "o1", "total": 5}}}
    # {"deleteOne": {"filter": {"order": "o0"}}}
    from: "{{ outputs.actions.uri }}"
    chunk: 500
""",
    "mongodb.Load": """\
tasks:
  - id: load
    type: mongodb.Load
    connection: {uri: "mongodb://shop:{{ secret('MONGO_PASSWORD') }}@mongo:27017/"}
    database: shop
    collection: orders
    from: "{{ trigger.uri }}"   # a kafka.Trigger batch: one document per record
    idKey: orderId              # becomes _id, so a replay inserts nothing twice
""",
    "mongodb.Aggregate": """\
tasks:
  - id: totals
    type: mongodb.Aggregate
    connection: {uri: "mongodb://shop:{{ secret('MONGO_PASSWORD') }}@mongo:27017/"}
    database: shop
    collection: orders
    pipeline:
      - $match: {customer: "{{ trigger.value.customer }}"}
      - $group: {_id: "$status", total: {$sum: "$total"}}
""",
    "storage.PurgeCurrentExecutionFiles": """\
tasks:
  - id: purge
    type: storage.PurgeCurrentExecutionFiles
""",
    "core.Sleep": """\
tasks:
  - id: pause
    type: core.Sleep
    duration: PT2S
""",
    "core.Assert": """\
tasks:
  - id: sane
    type: core.Assert
    conditions:
      - "{{ trigger.value.amount >= 0 }}"
      - "{{ trigger.value.currency in ['EUR', 'USD'] }}"
    errorMessage: "order {{ trigger.value.id }} is not valid"
""",
    "core.ForEach": """\
tasks:
  - id: each_line
    type: core.ForEach
    values: "{{ trigger.value.lines }}"
    tasks:
      - id: line
        type: core.Log
        message: "line {{ taskrun.value.sku }} of order {{ trigger.value.id }}"
""",
    "core.Python": """\
tasks:
  - id: enrich
    type: core.Python
    function: shop.orders:enrich
    args:
      order: "{{ trigger.value }}"
""",
    "bigquery.Load": """\
tasks:
  - id: load
    type: bigquery.Load
    from: "{{ trigger.uri }}"
    projectId: my-project
    destinationTable: raw.orders
    mode: MERGE
    timePartitioningField: created_at
    schema:
      - {name: id, type: STRING, mode: REQUIRED}
      - {name: amount, type: NUMERIC}
      - {name: created_at, type: TIMESTAMP}
    ignoreUnknownValues: true
""",
    "bigquery.Query": """\
tasks:
  - id: count
    type: bigquery.Query
    projectId: my-project
    sql: SELECT COUNT(*) AS n FROM raw.orders
    fetch: ONE
""",
    "dbt.Build": """\
tasks:
  - id: transform
    type: dbt.Build
    projectDir: dbt/orders
    select: ["source:raw.orders+"]
    profilesDir: dbt/profiles
    target: prod
""",
    "dbt.Run": """\
tasks:
  - id: models
    type: dbt.Run
    projectDir: dbt/orders
    select: [orders_daily]
    fullRefresh: true
    vars: {day: "{{ trigger.date }}"}
""",
    "notify.Email": """\
tasks:
  - id: page
    type: notify.Email
    host: smtp.example.org
    username: alerts@example.org
    password: "{{ secret('SMTP_PASSWORD') }}"
    from: "Waxflow <alerts@example.org>"
    to: [oncall@example.org]
    subject: "batch {{ execution.id }} failed"
    plainTextContent: "{{ trigger.messagesCount }} records were not loaded"
    attachments: ["{{ trigger.uri }}"]
    retry: {type: constant, interval: PT10S, maxAttempts: 3}
""",
    "postgres.Load": """\
tasks:
  - id: load
    type: postgres.Load
    from: "{{ trigger.uri }}"
    url: postgresql://loader@db.internal:5432/shop?sslmode=verify-full
    password: "{{ secret('PG_PASSWORD') }}"
    table: raw.orders
    mode: MERGE
""",
    "postgres.Query": """\
tasks:
  - id: customer
    type: postgres.Query
    url: postgresql://reader@db.internal:5432/shop
    password: "{{ secret('PG_PASSWORD') }}"
    sql: SELECT name, tier FROM customers WHERE id = {{ trigger.value.customer }}
    fetch: ONE
""",
    "postgres.Upsert": """\
tasks:
  - id: save
    type: postgres.Upsert
    url: postgresql://writer@db.internal:5432/shop
    password: "{{ secret('PG_PASSWORD') }}"
    table: orders
    values:
      order_id: "{{ trigger.value.id }}"
      amount: "{{ trigger.value.amount }}"
""",
    "sql.Load": """\
tasks:
  - id: load
    type: sql.Load
    from: "{{ trigger.uri }}"
    url: mysql+pymysql://loader@db.internal:3306/shop
    password: "{{ secret('MYSQL_PASSWORD') }}"
    table: raw_orders
    mode: MERGE
""",
    "sql.Query": """\
tasks:
  - id: totals
    type: sql.Query
    url: mysql+pymysql://reader@db.internal:3306/shop
    password: "{{ secret('MYSQL_PASSWORD') }}"
    sql: SELECT count(*) AS n FROM raw_orders WHERE amount > {{ trigger.value.limit }}
    fetch: ONE
""",
    "duckdb.Load": """\
tasks:
  - id: load
    type: duckdb.Load
    from: "{{ trigger.uri }}"
    database: warehouse.duckdb
    table: raw.orders
    mode: MERGE
    mergeKeys: [id]
""",
    "duckdb.Query": """\
tasks:
  - id: totals
    type: duckdb.Query
    database: warehouse.duckdb
    sql: SELECT customer, SUM(amount) AS total FROM raw.orders GROUP BY customer
    fetch: ALL
""",
    "http.Request": """\
tasks:
  - id: post
    type: http.Request
    method: POST
    uri: https://api.example.com/orders
    headers:
      Authorization: "Bearer {{ secret('API_TOKEN') }}"
    body: {id: "{{ trigger.value.id }}", amount: "{{ trigger.value.amount }}"}
    options: {timeout: PT10S}
""",
    "kafka.Consume": """\
tasks:
  - id: drain
    type: kafka.Consume
    topic: orders
    groupId: orders-drain
    valueDeserializer: JSON
    maxRecords: 10000
    maxDuration: PT1M
""",
    "kafka.Produce": """\
tasks:
  - id: emit
    type: kafka.Produce
    topic: orders.enriched
    valueSerializer: JSON
    from:
      key: "{{ trigger.key }}"
      value: "{{ trigger.value }}"
""",
    "notify.Webhook": """\
tasks:
  - id: hook
    type: notify.Webhook
    url: "{{ secret('HOOK_URL') }}"
    headers: {X-Source: waxflow}
    payload: {flow: "{{ flow.id }}", execution: "{{ execution.id }}"}
""",
    "notify.Slack": """\
tasks:
  - id: slack
    type: notify.Slack
    url: "{{ secret('SLACK_WEBHOOK') }}"
    text: "batch {{ execution.id }}: {{ outputs.load.rows }} rows loaded"
""",
    "s3.Upload": """\
tasks:
  - id: archive
    type: s3.Upload
    from: "{{ trigger.uri }}"
    bucket: lake
    key: "orders/{{ execution.id }}.parquet"
    format: PARQUET
    region: eu-west-1
""",
    "snowflake.Load": """\
tasks:
  - id: load
    type: snowflake.Load
    from: "{{ trigger.uri }}"
    account: "{{ secret('SNOWFLAKE_ACCOUNT') }}"
    user: LOADER
    password: "{{ secret('SNOWFLAKE_PASSWORD') }}"
    database: SHOP
    schema: RAW
    warehouse: LOADING
    table: ORDERS
    mode: MERGE
""",
    "snowflake.Query": """\
tasks:
  - id: count
    type: snowflake.Query
    account: "{{ secret('SNOWFLAKE_ACCOUNT') }}"
    user: ANALYST
    password: "{{ secret('SNOWFLAKE_PASSWORD') }}"
    sql: SELECT COUNT(*) AS n FROM SHOP.RAW.ORDERS
    fetch: ONE
""",
}

#: the example of the flow-level properties (checked to be a valid flow by the tests)
FLOW_EXAMPLE = """\
id: orders_to_warehouse
namespace: shop
inputs:
  - {id: table, type: STRING, defaults: raw.orders}
tasks:
  - id: load
    type: duckdb.Load
    from: "{{ trigger.uri }}"
    table: "{{ inputs.table }}"
finally:
  - id: tidy
    type: core.Log
    message: "batch {{ execution.id }} done"
afterExecution:
  - id: alert
    type: notify.Slack
    runIf: "{{ execution.state == 'FAILED' }}"
    url: "{{ secret('SLACK_WEBHOOK') }}"
    text: "orders load {{ execution.id }} failed"
outputs:
  - {id: rows, type: INT, value: "{{ outputs.load.rows }}"}
triggers:
  - id: orders
    type: kafka.Trigger
    topic: orders
    groupId: orders-to-warehouse
    valueDeserializer: JSON
"""

#: what the flow-level section says before its table
_FLOW_DOC = """\
An execution runs `tasks` in order; when one fails (after its retries), the flow's `errors`
tasks run. Then the `finally` tasks run, whatever happened (a failing one fails the
execution). Then the flow's `outputs` are rendered, unless the execution failed, and the
execution takes its final state (SUCCESS, WARNING or FAILED). Last, the `afterExecution`
tasks run, reading that state as `{{ execution.state }}` (it is RUNNING before): their
failures are recorded in their task runs and never change the state. A flow without
`finally`, `outputs` and `afterExecution` pays nothing for them. Any task may have a
`runIf` condition ([shared task properties](#shared-task-properties))."""

_INTRO = """\
<!-- Generated by `python -m waxflow.dataflows.reference > docs/reference.md` from the
     models' docstrings and field descriptions: edit those, not this file. -->

# Flow reference

A flow file holds `id`, `namespace`, one trigger (`triggers`) and a list of tasks (`tasks`,
plus `errors`, run when an execution fails). This page lists every trigger type, the
properties every task shares, the retry policy, every task type and the objects they nest.
Property names are Kestra's. A property described as *rendered* may hold Jinja expressions
such as `{{ trigger.value.id }}`, rendered for each execution. Durations are ISO-8601
(`PT30S`, `PT5M`, `P1D`). `waxflow schema` prints the same descriptions as a JSON Schema,
for editors.

Types also accept Kestra's full names where waxflow does the same job (listed under each
type: `io.kestra.plugin.kafka.RealtimeTrigger`, `io.kestra.plugin.core.log.Log`, ...).
Every task can read `task.id`, `task.type`, `taskrun.id`, `taskrun.startDate`,
`taskrun.attemptsCount` (attempts before this one), `taskrun.value` (inside `core.ForEach`)
and `parent` / `parents` (the enclosing flowable tasks, nearest first, each with its `task`
and `taskrun`). Kestra's `a ?? b` (null-coalescing) and the `jq('.path')` filter (returns
a list) work in expressions, and so do Pebble's functions, filters and tests that Kestra
flows use: `now()`, the `date` filter with a Java pattern (`date("yyyy-MM-dd")`, named
formats `iso`, `iso_sec`, `sql`, `iso_date_time`, ...; arguments `format`, `timeZone`,
`existingFormat`), `dateAdd(amount, unit)` (`DAYS`, `HOURS`, `MONTHS`, ...), `timestamp`,
`timestampMilli`, `timestampMicro`, `timestampNano`, `slugify`, `render(text)` (without
`secret()` inside the rendered text), `default` (for an undefined value at any depth, null,
a blank string or an empty list or map), the `null` literal and the `null` and `empty`
tests. Dates are shown in UTC unless a `timeZone` is given.
"""


def _anchor(title: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def _doc(cls: type) -> str:
    """``cls``'s own docstring as Markdown (reST roles and double backticks made plain)."""
    text = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
    text = re.sub(r":(?:func|class|meth|data|mod|attr):`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _unwrap(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _is_task_union(tp: Any) -> bool:
    args = [_unwrap(a) for a in get_args(tp)]
    return _is_union(tp) and all(isinstance(a, type) and issubclass(a, TaskBase) for a in args)


_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean",
                            dt.timedelta: "duration", dt.datetime: "timestamp", Any: "any",
                            dict: "map", list: "list"}


def _type(tp: Any, links: dict[type, str]) -> str:
    """A field type in words: ``string``, ``list of task``, ``"A" | "B"``, linked objects."""
    tp = _unwrap(tp)
    if _is_task_union(tp) or (isinstance(tp, type) and issubclass(tp, TaskBase)):
        return "task"
    if _is_union(tp):
        return " or ".join(_type(a, links) for a in get_args(tp) if a is not type(None))
    if get_origin(tp) is Literal:
        return " \\| ".join(f"`{v}`" for v in get_args(tp))
    if get_origin(tp) is list:
        return f"list of {_type(get_args(tp)[0], links)}"
    if get_origin(tp) is dict:
        return f"map of {_type(get_args(tp)[1], links)}"
    if isinstance(tp, type) and tp in links:
        return f"[{tp.__name__}](#{links[tp]})"
    return _SCALARS.get(tp, getattr(tp, "__name__", str(tp)))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return ""
    value = field.get_default(call_default_factory=True)
    if value is None:
        return ""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, dt.timedelta):
        return f"`{format_duration(value)}`"
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _fields(model: type[BaseModel], *, skip: Sequence[str] = ()
            ) -> Iterator[tuple[str, FieldInfo]]:
    """The fields of ``model`` by YAML name; for triggers and tasks ``id`` and ``type``
    first."""
    names = list(model.model_fields)
    if "id" in names:
        names.sort(key=lambda n: (n not in ("id", "type"), n != "id"))
    for name in names:
        if name not in skip:
            field = model.model_fields[name]
            yield field.alias or name, field


def _table(model: type[BaseModel], links: dict[type, str], *, skip: Sequence[str] = ()) -> str:
    rows = ["| Property | Type | Default | Required | Description |",
            "| --- | --- | --- | --- | --- |"]
    for name, field in _fields(model, skip=skip):
        rows.append(f"| `{name}` | {_type(field.annotation, links)} | {_default(field)} | "
                    f"{'yes' if field.is_required() else 'no'} | "
                    f"{_cell(field.description or '')} |")
    return "\n".join(rows)


def nested_models() -> list[type[BaseModel]]:
    """The objects trigger and task fields hold (not tasks, not the retry policy), by name."""
    found: dict[str, type[BaseModel]] = {}

    def walk(tp: Any) -> None:
        tp = _unwrap(tp)
        for arg in get_args(tp):
            walk(arg)
        if (isinstance(tp, type) and issubclass(tp, BaseModel)
                and not issubclass(tp, TaskBase) and tp is not RetrySpec
                and tp.__name__ not in found):
            found[tp.__name__] = tp
            for field in tp.model_fields.values():
                walk(field.annotation)

    flow = flow_model()
    for model in (flow, *TRIGGER_TYPES.values(), *TASK_TYPES.values()):
        for name, field in model.model_fields.items():
            if model is not flow or name != "triggers":
                walk(field.annotation)
    return [found[name] for name in sorted(found)]


def _example(name: str) -> str:
    return f"```yaml\n{EXAMPLES[name]}```" if name in EXAMPLES else ""


def _kestra_names(name: str, aliases: dict[str, str]) -> str:
    """The other spellings of type ``name`` (Kestra's full names), as a sentence."""
    names = sorted(a for a, n in aliases.items() if n == name)
    if not names:
        return ""
    return "Also accepted as: " + ", ".join(f"`{a}`" for a in names) + "."


def _section(title: str, *, doc: str, table: str, example: str, level: str = "###") -> str:
    parts = [f"{level} {title}", doc, table, example]
    return "\n\n".join(p for p in parts if p)


def render_reference() -> str:
    """The Markdown reference of every trigger type, task type and shared property."""
    task_union()  # imports every task module and resolves the task lists
    objects = nested_models()
    links: dict[type, str] = {RetrySpec: "retry-policy"}
    links.update({cls: _anchor(cls.__name__) for cls in objects})
    shared = list(TaskBase.model_fields)
    tasks = sorted(TASK_TYPES)
    triggers = sorted(TRIGGER_TYPES)

    def toc(names: Sequence[str]) -> str:
        return ", ".join(f"[`{n}`](#{_anchor(f'`{n}`')})" for n in names)

    links.update({cls: _anchor(f"`{name}`") for name, cls in TRIGGER_TYPES.items()})
    out = [_INTRO.strip(), "## Contents", "\n".join([
        "- [Flow properties](#flow-properties)",
        f"- [Triggers](#triggers): {toc(triggers)}",
        "- [Shared task properties](#shared-task-properties)",
        "- [Retry policy](#retry-policy)",
        f"- [Tasks](#tasks): {toc(tasks)}",
        "- [Objects](#objects): " + ", ".join(f"[{c.__name__}](#{links[c]})" for c in objects),
    ])]
    out.append(_section("Flow properties", doc=_FLOW_DOC, table=_table(flow_model(), links),
                        example=f"```yaml\n{FLOW_EXAMPLE}```", level="##"))
    out.append("## Triggers")
    out.append("A flow has one enabled trigger; a flow without one is a manual flow "
               "(`waxflow run` runs it once, for real; `waxflow test` runs it once, dry).")
    for name in triggers:
        model = TRIGGER_TYPES[name]
        doc = "\n\n".join(p for p in (_doc(model), _kestra_names(name, TRIGGER_ALIASES)) if p)
        out.append(_section(f"`{name}`", doc=doc, table=_table(model, links),
                            example=_example(name)))
    out.append(_section("Shared task properties", doc=_doc(TaskBase),
                        table=_table(TaskBase, links), example=_example("TaskBase"), level="##"))
    out.append(_section("Retry policy", doc=_doc(RetrySpec), table=_table(RetrySpec, links),
                        example=_example("RetrySpec"), level="##"))
    out.append("## Tasks")
    out.append("Each task type also has the [shared task properties](#shared-task-properties).")
    for name in tasks:
        model = TASK_TYPES[name]
        doc = "\n\n".join(p for p in (_doc(model), _kestra_names(name, TASK_ALIASES)) if p)
        out.append(_section(f"`{name}`", doc=doc,
                            table=_table(model, links, skip=shared), example=_example(name)))
    out.append("## Objects")
    out.append("Values of some properties above.")
    for cls in objects:
        out.append(_section(cls.__name__, doc=_doc(cls), table=_table(cls, links),
                            example=_example(cls.__name__)))
    return "\n\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the reference, or with ``--check`` compare it with the committed file."""
    parser = argparse.ArgumentParser(prog="python -m waxflow.dataflows.reference",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when the committed file differs from the generated text")
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH,
                        help=f"the committed file for --check (default {DEFAULT_PATH})")
    args = parser.parse_args(argv)
    text = render_reference()
    if not args.check:
        sys.stdout.buffer.write(text.encode("utf-8"))
        return 0
    try:
        committed = args.path.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"{args.path}: {exc}", file=sys.stderr)
        return 1
    if committed != text:
        print(f"{args.path} is out of date: run `python -m waxflow.dataflows.reference > "
              f"{args.path}`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
