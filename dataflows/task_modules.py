"""Which module defines each task type, so a flow imports only the modules its tasks use.

Importing every task module costs what their libraries cost (pyarrow, DuckDB, the Google,
Snowflake and AWS clients): measured 362 MB of resident memory and about 2 s of CPU for a
flow of ``core.Switch`` and ``core.Set``. :func:`modules_for` reads a flow's parsed YAML and
names the modules its task types need; a type it does not know (a typo, a new module not
listed here) makes it answer ``None``, and the caller imports everything, so validation
and its "did you mean" hints work as before.

:data:`MODULE_TYPES` lists every registered type and alias under its module;
``tests/unit/test_task_modules.py`` fails when it differs from what the modules register.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from waxflow.flow import TRIGGER_ALIASES, TRIGGER_TYPES

#: module -> the task types (and aliases) it registers when imported
MODULE_TYPES: dict[str, tuple[str, ...]] = {
    "waxflow.connectors.bigquery": (
        "bigquery.Load", "bigquery.Query", "io.kestra.plugin.gcp.bigquery.Load",
        "io.kestra.plugin.gcp.bigquery.Query",
    ),
    "waxflow.connectors.dbt": (
        "dbt.Build", "dbt.Run",
    ),
    "waxflow.connectors.duckdb": (
        "duckdb.Load", "duckdb.Query",
    ),
    "waxflow.connectors.email": (
        "io.kestra.plugin.email.MailSend", "io.kestra.plugin.notifications.mail.MailSend",
        "notify.Email",
    ),
    "waxflow.connectors.http": (
        "http.Request", "io.kestra.plugin.core.http.Request",
    ),
    "waxflow.connectors.js_tasks": (
        "io.kestra.plugin.graalvm.js.FileTransform",
        "io.kestra.plugin.scripts.nashorn.FileTransform", "js.FileTransform",
    ),
    "waxflow.connectors.jsonata_tasks": (
        "io.kestra.plugin.transform.jsonata.TransformItems",
        "io.kestra.plugin.transform.jsonata.TransformValue", "jsonata.TransformItems",
        "jsonata.TransformValue",
    ),
    "waxflow.connectors.kafka_consume": (
        "io.kestra.plugin.kafka.Consume", "kafka.Consume",
    ),
    "waxflow.connectors.kafka_produce": (
        "io.kestra.plugin.kafka.Produce", "kafka.Produce",
    ),
    "waxflow.connectors.mongodb": (
        "io.kestra.plugin.mongodb.Aggregate", "io.kestra.plugin.mongodb.Bulk",
        "io.kestra.plugin.mongodb.Delete", "io.kestra.plugin.mongodb.Find",
        "io.kestra.plugin.mongodb.InsertOne", "io.kestra.plugin.mongodb.Load",
        "io.kestra.plugin.mongodb.Update", "mongodb.Aggregate", "mongodb.Bulk",
        "mongodb.Delete", "mongodb.Find", "mongodb.InsertOne", "mongodb.Load",
        "mongodb.Update",
    ),
    "waxflow.connectors.notify": (
        "io.kestra.plugin.notifications.slack.SlackIncomingWebhook",
        "io.kestra.plugin.slack.notifications.SlackIncomingWebhook", "notify.Slack",
        "notify.Webhook",
    ),
    "waxflow.connectors.postgres": (
        "io.kestra.plugin.jdbc.postgresql.CopyIn", "io.kestra.plugin.jdbc.postgresql.Query",
        "postgres.Load", "postgres.Query", "postgres.Upsert",
    ),
    "waxflow.connectors.s3": (
        "io.kestra.plugin.aws.s3.Upload", "s3.Upload",
    ),
    "waxflow.connectors.serdes_tasks": (
        "io.kestra.plugin.serdes.csv.CsvReader", "io.kestra.plugin.serdes.csv.CsvToIon",
        "io.kestra.plugin.serdes.csv.CsvWriter", "io.kestra.plugin.serdes.csv.IonToCsv",
        "io.kestra.plugin.serdes.json.IonToJson", "io.kestra.plugin.serdes.json.JsonReader",
        "io.kestra.plugin.serdes.json.JsonToIon", "io.kestra.plugin.serdes.json.JsonWriter",
        "serdes.CsvToIon", "serdes.IonToCsv", "serdes.IonToJson", "serdes.JsonToIon",
    ),
    "waxflow.connectors.snowflake": (
        "snowflake.Load", "snowflake.Query",
    ),
    "waxflow.connectors.sql": (
        "sql.Load", "sql.Query",
    ),
    "waxflow.connectors.storage_tasks": (
        "io.kestra.plugin.core.storage.PurgeCurrentExecutionFiles",
        "storage.PurgeCurrentExecutionFiles",
    ),
    "waxflow.core_tasks": (
        "core.Assert", "core.Fail", "core.ForEach", "core.If", "core.Log", "core.OutputValues",
        "core.Parallel", "core.Python", "core.Return", "core.Sequential", "core.Set",
        "core.Sleep", "core.Switch", "io.kestra.core.tasks.debugs.Return",
        "io.kestra.core.tasks.executions.Fail", "io.kestra.core.tasks.flows.If",
        "io.kestra.core.tasks.flows.Parallel", "io.kestra.core.tasks.flows.Sequential",
        "io.kestra.core.tasks.flows.Switch", "io.kestra.core.tasks.log.Log",
        "io.kestra.plugin.core.debug.Return", "io.kestra.plugin.core.execution.Assert",
        "io.kestra.plugin.core.execution.Fail", "io.kestra.plugin.core.flow.ForEach",
        "io.kestra.plugin.core.flow.If", "io.kestra.plugin.core.flow.Parallel",
        "io.kestra.plugin.core.flow.Sequential", "io.kestra.plugin.core.flow.Sleep",
        "io.kestra.plugin.core.flow.Switch", "io.kestra.plugin.core.log.Log",
        "io.kestra.plugin.core.output.OutputValues",
    ),
    "waxflow.subflow": (
        "core.ForEachItem", "core.Subflow", "io.kestra.core.tasks.flows.Flow",
        "io.kestra.core.tasks.flows.ForEachItem", "io.kestra.core.tasks.flows.Subflow",
        "io.kestra.plugin.core.flow.ForEachItem", "io.kestra.plugin.core.flow.Subflow",
    ),
}

#: task type or alias -> its module
MODULE_OF: dict[str, str] = {name: module for module, names in MODULE_TYPES.items()
                             for name in names}

#: a task module every flow needs (the flowable and core tasks nest the others)
CORE = "waxflow.core_tasks"


def type_names(node: Any) -> Iterator[str]:
    """Every dotted string under a ``type`` key, anywhere in the document (task and trigger
    types are dotted; retry policies' and inputs' types are not)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "type" and isinstance(value, str) and "." in value:
                yield value
            else:
                yield from type_names(value)
    elif isinstance(node, list):
        for item in node:
            yield from type_names(item)


def modules_for(data: Any) -> tuple[str, ...] | None:
    """The task modules a flow document needs, or None when it names a type that is neither
    a known task type nor a trigger type (then every module must be imported)."""
    modules = {CORE}
    for name in type_names(data):
        module = MODULE_OF.get(name)
        if module is not None:
            modules.add(module)
        elif name not in TRIGGER_TYPES and name not in TRIGGER_ALIASES:
            return None
    return tuple(sorted(modules))
