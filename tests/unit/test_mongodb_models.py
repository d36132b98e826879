"""The MongoDB tasks' models without a server: what a flow file is refused for, at its line."""

from __future__ import annotations

import pytest

import waxflow.connectors.mongodb  # noqa: F401  (registers mongodb.*)
from waxflow.dataflows.spec import parse_flow_text
from waxflow.errors import FlowError

HEAD = """\
id: f
namespace: n
tasks:
"""


def _problems(tasks: str) -> list[str]:
    with pytest.raises(FlowError) as err:
        parse_flow_text(HEAD + tasks, "f.yaml")
    return [str(p) for p in err.value.problems]


def test_an_update_without_operators_is_refused_at_its_line() -> None:
    found = _problems("""\
  - id: up
    type: io.kestra.plugin.mongodb.Update
    connection: {uri: "mongodb://h:27017"}
    database: d
    collection: c
    filter: {k: 1}
    document: {k: 2, name: x}
""")
    assert len(found) == 1 and found[0].startswith("f.yaml:4:"), found
    assert "an update holds update operators such as `$set: {...}`, not fields (k, name)" \
        in found[0]


def test_a_replacement_with_operators_and_a_bad_operation_are_refused() -> None:
    found = _problems("""\
  - id: rep
    type: mongodb.Update
    connection: {uri: "mongodb://h:27017"}
    database: d
    collection: c
    operation: REPLACE_ONE
    filter: {k: 1}
    document: {$set: {k: 2}}
  - id: del
    type: mongodb.Delete
    connection: {uri: "mongodb://h:27017"}
    database: d
    collection: c
    operation: DELETE_ALL
""")
    assert any("a replacement is the new document" in p for p in found), found
    assert any("DELETE_ALL" in p or "DELETE_ONE" in p for p in found), found


def test_bulk_takes_kestras_properties() -> None:
    flow = parse_flow_text(HEAD + """\
  - id: bulk
    type: io.kestra.plugin.mongodb.Bulk
    connection: {uri: "mongodb://h:27017"}
    database: d
    collection: c
    from: "{{ outputs.w.uri }}"
    chunk: 10
""", "f.yaml")
    task = flow.tasks[0]
    assert (task.type, task.from_, task.chunk, task.idempotent) == (
        "mongodb.Bulk", "{{ outputs.w.uri }}", 10, True)
    assert any("greater than or equal to 1" in p for p in _problems("""\
  - id: bulk
    type: mongodb.Bulk
    connection: {uri: "mongodb://h:27017"}
    database: d
    collection: c
    from: x
    chunk: 0
"""))


def test_a_kestra_mongodb_task_waxflow_lacks_names_the_ones_it_has() -> None:
    found = _problems("""\
  - id: agg
    type: io.kestra.plugin.mongodb.Trigger
""")
    assert len(found) == 1 and "unknown type 'io.kestra.plugin.mongodb.Trigger'" in found[0]
    assert "mongodb.InsertOne, Find, Update, Delete, Bulk, Load and Aggregate" in found[0]
