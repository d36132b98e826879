"""dbt.Build / dbt.Run in process on dbt-duckdb, after a real duckdb.Load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

import waxflow.connectors.dbt
import waxflow.connectors.duckdb  # noqa: F401  (registers dbt.* and duckdb.*)
from tests.task_helpers import FakeContext, parse_task
from waxflow.connectors.storage import Storage
from waxflow.tasks import TaskFailure

PROJECT = """\
name: tiny
version: "1.0"
config-version: 2
profile: tiny
models:
  tiny:
    +materialized: table
"""


def profiles(db: Path) -> dict[str, Any]:
    return {"tiny": {"target": "dev", "outputs": {"dev": {
        "type": "duckdb", "path": str(db), "threads": 1}}}}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "models").mkdir(parents=True)
    (root / "dbt_project.yml").write_text(PROJECT)
    (root / "models" / "big_orders.sql").write_text(
        "select id, name, _offset from raw.events "
        "where id >= {{ var('min_id', 0) }}\n")
    return root


@pytest.fixture
def loaded(tmp_path: Path) -> Path:
    """A warehouse with 20 rows in raw.events, loaded by duckdb.Load from a stored batch."""
    db = tmp_path / "warehouse.duckdb"
    records = [{"key": None, "value": {"id": i, "name": f"n{i}"}, "topic": "events",
                "partition": 0, "offset": i, "timestamp": 0, "headers": {}} for i in range(20)]
    uri, _ = Storage(str(tmp_path / "storage")).put_records("batch.ion", records)
    load = parse_task({"id": "load", "type": "duckdb.Load", "from": uri, "database": str(db),
                       "table": "raw.events"})
    assert load.run(FakeContext())["rows"] == 20
    return db


def rows_in(db: Path, table: str) -> int:
    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute(f"select count(*) from {table}").fetchone()
    finally:
        con.close()
    assert row is not None
    return int(row[0])


def test_build_runs_model_then_a_broken_model_fails_with_dbt_message(
        project: Path, loaded: Path) -> None:
    build = parse_task({"id": "transform", "type": "dbt.Build", "projectDir": str(project),
                        "profiles": profiles(loaded), "vars": {"min_id": "{{ floor }}"}})
    ctx = FakeContext({"floor": 5})
    out = build.run(ctx)
    assert out["success"] is True
    assert out["counts"] == {"success": 1}
    [node] = out["results"]
    assert (node["node"], node["status"]) == ("model.tiny.big_orders", "success")
    assert rows_in(loaded, "main.big_orders") == 15
    assert any("Completed successfully" in msg for _, msg in ctx.logs)

    (project / "models" / "broken.sql").write_text("select * from raw.no_such_table\n")
    run = parse_task({"id": "transform", "type": "dbt.Run", "projectDir": str(project),
                      "profiles": profiles(loaded), "select": ["broken"]})
    with pytest.raises(TaskFailure) as info:
        run.run(FakeContext())
    message = str(info.value)
    assert message.startswith("dbt.Run transform: model.tiny.broken error: Runtime Error in "
                              "model broken")
    assert "Table with name no_such_table does not exist" in message

    # profiles.yml in the project is found without profilesDir; an empty selection succeeds
    (project / "profiles.yml").write_text(yaml.safe_dump(profiles(loaded)))
    (project / "models" / "broken.sql").unlink()
    run = parse_task({"id": "again", "type": "dbt.Run", "projectDir": str(project),
                      "select": "tag:none"})
    assert run.run(FakeContext()) == {"success": True, "results": [], "counts": {}}


def test_project_dir_without_project_fails(tmp_path: Path) -> None:
    task = parse_task({"id": "b", "type": "dbt.Build", "projectDir": str(tmp_path)})
    with pytest.raises(TaskFailure, match=r"holds no dbt_project\.yml"):
        task.run(FakeContext())


def test_profiles_and_profiles_dir_are_exclusive() -> None:
    with pytest.raises(ValueError, match="not both"):
        parse_task({"id": "b", "type": "dbt.Run", "projectDir": "p", "profilesDir": "x",
                    "profiles": "a: 1"})
