"""The task-type -> module table matches what the task modules register, and a flow names
exactly the modules its tasks need (so ``waxflow run`` of a core-only flow does not load
pyarrow, DuckDB or the cloud clients)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from waxflow.dataflows.spec import TASK_MODULES, task_union
from waxflow.dataflows.task_modules import CORE, MODULE_TYPES, modules_for
from waxflow.tasks import TASK_ALIASES, TASK_TYPES


def test_the_table_is_what_the_modules_register() -> None:
    task_union()  # imports every task module
    registered: dict[str, set[str]] = {}
    for name, cls in TASK_TYPES.items():
        registered.setdefault(cls.__module__, set()).add(name)
    for alias, name in TASK_ALIASES.items():
        registered.setdefault(TASK_TYPES[name].__module__, set()).add(alias)
    assert {m: set(names) for m, names in MODULE_TYPES.items()} == registered
    assert set(MODULE_TYPES) <= set(TASK_MODULES)


def test_a_flow_names_the_modules_of_its_nested_tasks() -> None:
    flow = {"triggers": [{"id": "t", "type": "io.kestra.plugin.kafka.RealtimeTrigger"}],
            "inputs": [{"id": "n", "type": "INT"}],
            "tasks": [{"id": "s", "type": "core.Switch", "value": "x", "retry": {
                "type": "constant"}, "cases": {"a": [{"id": "p", "type": "kafka.Produce"}]}}],
            "errors": [{"id": "m", "type": "io.kestra.plugin.notifications.mail.MailSend"}]}
    assert modules_for(flow) == tuple(sorted({CORE, "waxflow.connectors.kafka_produce",
                                              "waxflow.connectors.email"}))


def test_an_unknown_type_asks_for_every_module() -> None:
    assert modules_for({"tasks": [{"id": "a", "type": "core.Sett"}]}) is None


def test_running_a_core_flow_loads_no_heavy_library(tmp_path: object) -> None:
    """Validation of a core-only flow in a fresh interpreter imports none of the storage,
    warehouse or cloud libraries."""
    code = textwrap.dedent("""
        import sys
        from waxflow.dataflows.spec import parse_flow_text
        parse_flow_text('''
        id: f
        namespace: t
        triggers: [{id: t, type: kafka.RealtimeTrigger, topic: x, groupId: g}]
        tasks:
          - id: s
            type: core.Switch
            value: "{{ trigger.value }}"
            cases: {a: [{id: x, type: core.Set, values: {n: 1}}]}
        ''', 'f.yaml')
        heavy = sorted({m.split('.')[0] for m in sys.modules} & {
            'pyarrow', 'duckdb', 'numpy', 'google', 'snowflake', 'boto3', 'sqlalchemy',
            'psycopg', 'httpx'})
        print(','.join(heavy))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"a core-only flow loaded {out}"


def test_a_later_flow_needing_more_modules_validates_at_every_depth() -> None:
    """In a fresh interpreter: a core-only flow first (a union of the core types), then one
    with ``http.Request`` inside ``core.Parallel`` and inside an ``If`` in it: the larger
    union reaches every depth (pydantic keeps evaluated annotations and nested schemas)."""
    code = textwrap.dedent("""
        from waxflow.dataflows.spec import parse_flow_text
        parse_flow_text('''
        id: a
        namespace: t
        tasks: [{id: s, type: core.Set, values: {n: 1}}]
        ''', 'a.yaml')
        flow = parse_flow_text('''
        id: b
        namespace: t
        tasks:
          - id: p
            type: core.Parallel
            tasks:
              - {id: h, type: http.Request, uri: "http://x"}
              - id: i
                type: core.If
                condition: "1"
                then: [{id: h2, type: http.Request, uri: "http://x"}]
        ''', 'b.yaml')
        print(type(flow.tasks[0].tasks[1].then[0]).TYPE)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "http.Request"
