"""What a ``waxflow run`` process of a realtime Kafka flow loads before its first record: the
libraries it uses, and the models of the task types its flow names, nothing more (each in a
fresh interpreter: what a process imported is what it paid for at start-up).

The CPU figures are ``bench/``'s business; these tests check the behaviour that saves it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

FLOW = """\
id: startup
namespace: tests
triggers:
  - id: records
    type: kafka.RealtimeTrigger
    topic: orders
    groupId: startup
    valueDeserializer: JSON
tasks:
  - id: out
    type: kafka.Produce
    topic: totals
    valueSerializer: JSON
    from:
      key: "{{ trigger.key }}"
      value: "{{ dict(trigger.value, total=trigger.value.amount * trigger.value.qty) }}"
"""

#: libraries (and modules) a realtime Kafka flow's run never uses
UNUSED = ("pyarrow", "duckdb", "numpy", "boto3", "google", "snowflake", "sqlalchemy",
          "psycopg", "httpx", "rich", "prometheus_client", "http.server", "amazon",
          "waxflow.recovery.executions_cli", "waxflow.server.command")


def _fresh(code: str) -> str:
    """stdout of ``code`` run by a fresh interpreter (which must exit 0)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_realtime_flow_loads_no_library_it_does_not_use(tmp_path: Path) -> None:
    """``waxflow run``'s command line, then the flow parsed and compiled into its dataflow
    (everything before Kafka is contacted) import none of :data:`UNUSED`."""
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW, encoding="utf-8")
    out = _fresh(f"""
        import json, sys
        from waxflow.cli import main
        assert main(["run", {str(tmp_path / "missing.yaml")!r}]) == 1  # no such file
        from waxflow.dataflows.compiler import compile_flow
        from waxflow.dataflows.spec import parse_flow
        compile_flow(parse_flow({str(flow)!r}))
        print(json.dumps(sorted(sys.modules)))
    """)
    loaded = set(json.loads(out))
    assert "bytewax.dataflow" in loaded and "confluent_kafka" in loaded  # it did compile
    unused = sorted(m for m in loaded
                    if any(m == u or m.startswith(u + ".") for u in UNUSED))
    assert unused == [], f"a realtime Kafka flow loaded {unused}"


def test_only_the_task_types_a_flow_names_are_built() -> None:
    """The task models a flow does not name stay unbuilt (each costs ~7 ms of CPU); a later
    flow naming more types gets them, and a flow's tasks validate as before."""
    out = _fresh(f"""
        import json
        from waxflow.dataflows.spec import parse_flow_text
        from waxflow.tasks import TASK_TYPES
        flow = parse_flow_text({FLOW!r}, "a.yaml")
        first = {{n: c.__pydantic_complete__ for n, c in TASK_TYPES.items()}}
        parse_flow_text('''
        id: b
        namespace: t
        tasks: [{{id: s, type: core.Set, values: {{n: 1}}}}]
        ''', "b.yaml")
        print(json.dumps([first, TASK_TYPES["core.Set"].__pydantic_complete__,
                          type(flow.tasks[0]).__name__]))
    """)
    first, set_built_later, task_class = json.loads(out)
    assert first["kafka.Produce"] is True and task_class == "Produce"
    unbuilt = [n for n, built in first.items() if not built]
    assert len(unbuilt) >= len(first) - 2, first  # the flow's type and at most one more
    assert "core.Set" in unbuilt and set_built_later is True


def test_a_nested_unknown_type_in_a_one_type_flow_is_an_unknown_type(tmp_path: Path) -> None:
    """A flow naming one task type (its union would have one member, whose discriminator
    pydantic drops where the union nests in it) still reports a misspelled type nested in
    that task's ``errors`` as an unknown type, at its line."""
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW + "    errors:\n      - id: fallback\n        type: kafka.Produc\n",
                    encoding="utf-8")
    out = _fresh(f"""
        from waxflow.dataflows.spec import parse_flow
        from waxflow.errors import FlowError
        try:
            parse_flow({str(flow)!r})
        except FlowError as exc:
            print(exc)
    """)
    assert (f"{flow}:19:15: tasks[0].errors[0].type: unknown type 'kafka.Produc'; did you "
            "mean 'kafka.Produce'?") in out.splitlines(), out
