"""``js.FileTransform`` (Kestra's ``io.kestra.plugin.graalvm.js.FileTransform``) on the real
V8 engine (mini-racer): ``row`` edits, ``row = null`` drops, ``rows`` emits several,
``logger`` lines, and one-line errors naming the row and the script's line."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import waxflow.connectors.js_tasks  # noqa: F401  (registers js.FileTransform)
from tests.task_helpers import FakeContext, parse_task
from waxflow.connectors.storage import Storage, read_records
from waxflow.dataflows.spec import parse_flow_text
from waxflow.errors import FlowError
from waxflow.tasks import TaskFailure


@pytest.fixture(autouse=True)
def _storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAXFLOW_STORAGE", str(tmp_path / "storage"))


def _ctx() -> FakeContext:
    return FakeContext({"flow": {"namespace": "n", "id": "f"}, "execution": {"id": "e1"},
                        "vars": {"suffix": "!"}})


def _run(script: str, source: Any, **extra: Any) -> tuple[list[Any], FakeContext]:
    task = parse_task({"id": "js", "type": "io.kestra.plugin.graalvm.js.FileTransform",
                       "from": source, "script": script, **extra})
    assert task.type == "js.FileTransform"
    ctx = _ctx()
    out = task.run(ctx)
    assert out is not None and set(out) == {"uri"}
    return list(read_records(out["uri"])), ctx


def test_rows_are_edited_dropped_and_multiplied_from_an_ion_file() -> None:
    uri, _ = Storage().put_records("in/rows.ion", [
        {"id": 1, "name": "ann"}, {"id": 666, "name": "drop me"}, {"id": 2, "name": "bo"}])
    script = """
if (row.id === 666) {
  row = null;
} else if (row.id === 2) {
  rows = [{"action": "insert"}, row];
} else {
  row.email = row.name + "@example.com";
  logger.info("row {} of {}", row.id, row);
}
"""
    rows, ctx = _run(script, uri)
    assert rows == [{"id": 1, "name": "ann", "email": "ann@example.com"},
                    {"action": "insert"}, {"id": 2, "name": "bo"}]
    assert ctx.logs == [("INFO", 'row 1 of {"id":1,"name":"ann","email":"ann@example.com"}')]


def test_from_a_list_a_map_or_json_text_and_ion_types_as_json() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    rows, _ = _run("row = {t: row.t, d: row.d * 2, n: row.n ?? 'none'}",
                   [{"t": when, "d": Decimal("1.5"), "n": None}])
    assert rows == [{"t": "2026-01-02T03:04:05+00:00", "d": 3, "n": "none"}]
    assert _run("row.x = 1", {"a": 1})[0] == [{"a": 1, "x": 1}]
    assert _run("row.x = 1", '[{"a": 1}, {"a": 2}]')[0] == [{"a": 1, "x": 1},
                                                            {"a": 2, "x": 1}]
    assert _run("rows = []", [{"a": 1}])[0] == []


def test_a_templated_script_is_rendered_once_with_the_flow_variables() -> None:
    rows, _ = _run("row.name = row.name + '{{ vars.suffix }}'", [{"name": "a"}, {"name": "b"}])
    assert rows == [{"name": "a!"}, {"name": "b!"}]


def test_a_script_error_names_the_row_and_the_line() -> None:
    with pytest.raises(TaskFailure) as err:
        _run("row.n = 1;\nrow.x = row.missing.deeper;", [{"missing": {}}, {"other": 1}])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("`script` failed on row 1: line 2: TypeError: Cannot read "
                              "properties of undefined"), message


def test_rows_must_be_an_array() -> None:
    with pytest.raises(TaskFailure, match=r"row 0: `rows` must be an array, got object"):
        _run("rows = {a: 1}", [{"a": 1}])


def test_a_runaway_script_is_stopped_by_the_task_timeout() -> None:
    with pytest.raises(TaskFailure, match=r"timed out after 0.5s"):
        _run("while (true) {}", [{"a": 1}], timeout="PT0.5S")


def test_missing_file_fails_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(TaskFailure, match=r"^`from`: .*nope.ion does not exist"):
        _run("row.x = 1", (tmp_path / "nope.ion").as_uri())


def test_a_syntax_error_fails_validation_naming_the_script_line() -> None:
    with pytest.raises(FlowError) as err:
        parse_flow_text("""
id: f
namespace: n
tasks:
  - id: js
    type: io.kestra.plugin.graalvm.js.FileTransform
    from: "[]"
    script: |
      row.a = 1;
      if (row.a > 0 {
        row = null;
      }
""", "f.yaml")
    assert "f.yaml:8:13: tasks[0].script: not valid JavaScript: line 2: SyntaxError: " \
           "Unexpected token '{'" in str(err.value)


def test_declaring_row_is_refused_at_validation() -> None:
    with pytest.raises(FlowError, match="Identifier 'row' has already been declared"):
        parse_flow_text("""
id: f
namespace: n
tasks:
  - {id: js, type: js.FileTransform, from: "[]", script: "let row = 1"}
""", "f.yaml")


#: keeps 8 MB more per step (doubles), 96 MB in all: past a 32 MiB limit, and bounded if
#: no limit held (the test then fails instead of exhausting the machine)
_ALLOCATE = """
var kept = [];
for (var i = 0; i < 12; i++) {
  try { kept.push(new Array(1000000).fill(i + 0.5)); } catch (e) { row.caught = true; }
}
row.n = kept.length;
"""


def test_a_script_that_allocates_without_bound_fails_at_the_memory_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAXFLOW_JS_MAX_MEMORY_MB", "32")
    with pytest.raises(TaskFailure) as err:
        _run(_ALLOCATE, [{"a": 1}], timeout="PT60S")
    assert str(err.value) == (
        "js.FileTransform js: the script used more than the 32 MiB V8 memory limit and was "
        "stopped (raise $WAXFLOW_JS_MAX_MEMORY_MB, or transform fewer rows per run)")
    # the process and V8 go on: the next run works, and the same script fits a larger limit
    assert _run("row.x = 1", [{"a": 1}])[0] == [{"a": 1, "x": 1}]
    monkeypatch.delenv("WAXFLOW_JS_MAX_MEMORY_MB")  # the default, 512 MiB
    assert _run(_ALLOCATE, [{"a": 1}], timeout="PT60S")[0] == [{"a": 1, "n": 12}]


@pytest.mark.parametrize("value", ["lots", "8", "-1"])
def test_a_memory_limit_that_is_not_a_number_of_mib_fails_the_task(
        monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("WAXFLOW_JS_MAX_MEMORY_MB", value)
    with pytest.raises(TaskFailure, match=rf"^\$WAXFLOW_JS_MAX_MEMORY_MB='{value}': expected "
                                          r"a whole number of MiB, at least 16$"):
        _run("row.x = 1", [{"a": 1}])
