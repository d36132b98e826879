"""dbt: ``dbt.Build`` and ``dbt.Run``, dbt-core invoked in process (``dbtRunner``).

dbt is not thread-safe (global flags, adapter registry, event manager), so a process runs one
dbt invocation at a time: task runs wait on a module lock. After each invocation the DuckDB
database that dbt-duckdb keeps open is closed, so the warehouse file is free again. dbt writes
its artifacts where it always does (``target/`` and ``logs/`` under the project); its stdout
logging is switched off and its events at INFO and above go to the task's log instead.
Anonymous usage statistics are not sent.

Profiles come from ``profilesDir``, or from ``profiles`` (the ``profiles.yml`` content as
YAML text or a map, rendered, so it may use ``secret()``) written to a private temporary
directory removed after the run, or else from ``projectDir`` when it holds ``profiles.yml``,
or else dbt's default (``~/.dbt``).
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
from collections import Counter
from contextlib import suppress
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, model_validator

from waxflow.tasks import RunContext, TaskBase, TaskFailure, task_type

__all__ = ["Build", "Run", "invoke"]

_LOCK = threading.Lock()
_FAILED = frozenset({"error", "fail", "runtime error"})
_LEVELS = {"info": "INFO", "warn": "WARN", "error": "ERROR"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _node_summary(result: Any) -> dict[str, Any]:
    node = getattr(result, "node", None)
    adapter = getattr(result, "adapter_response", None) or {}
    return {
        "node": getattr(node, "unique_id", None),
        "status": str(getattr(result, "status", "")),
        "message": getattr(result, "message", None),
        "executionTime": round(float(getattr(result, "execution_time", 0.0) or 0.0), 3),
        "rowsAffected": adapter.get("rows_affected"),
        "failures": getattr(result, "failures", None),
    }


def _failure_message(who: str, res: Any, nodes: list[dict[str, Any]]) -> str:
    """dbt's own words for why the invocation failed: the first failing node and its
    message, else the exception dbt raised."""
    for node in nodes:
        if node["status"] in _FAILED:
            more = sum(n["status"] in _FAILED for n in nodes) - 1
            extra = f" (and {more} more failing node{'s' * (more > 1)})" if more else ""
            return f"{who}: {node['node']} {node['status']}{extra}: {node['message']}"
    if res.exception is not None:
        return f"{who}: {type(res.exception).__name__}: {res.exception}"
    return f"{who}: dbt reported failure without a failing node (see the task log)"


def _release_duckdb() -> None:
    """Close the database dbt-duckdb keeps open after an invocation, so the file is free
    for other processes (DuckDB allows one writer process) and for other configurations."""
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:  # dbt-duckdb not installed: other adapters hold no file
        return
    manager: Any = DuckDBConnectionManager
    env = getattr(manager, "_ENV", None)
    manager.close_all_connections()
    if env is not None:
        with suppress(Exception):
            env.close()


def invoke(args: list[str], ctx: RunContext, who: str) -> dict[str, Any]:
    """Run ``dbt <args>`` in process (one at a time); return ``{"success", "results",
    "counts"}`` or raise :class:`TaskFailure` with dbt's message."""
    from dbt.cli.main import dbtRunner

    def forward(event: Any) -> None:
        level = _LEVELS.get(str(event.info.level))
        if level and event.info.msg:
            ctx.log(level, _ANSI.sub("", str(event.info.msg)))

    with _LOCK:
        try:
            res = dbtRunner(callbacks=[forward]).invoke(args)
        except Exception as exc:  # dbt raises only on bugs; report them as its failure
            raise TaskFailure(f"{who}: {type(exc).__name__}: {exc}") from None
        finally:
            _release_duckdb()
    results = getattr(res.result, "results", None) or []
    nodes = [_node_summary(r) for r in results]
    if not res.success:
        raise TaskFailure(_failure_message(who, res, nodes))
    counts = Counter(n["status"] for n in nodes)
    return {"success": True, "results": nodes, "counts": dict(counts)}


class _DbtTask(TaskBase):
    """Options shared by the dbt commands (see the module doc for profiles)."""

    COMMAND: ClassVar[str] = ""

    projectDir: str = Field(min_length=1,
                            description="directory of the dbt project, holding "
                                        "`dbt_project.yml` (rendered)")
    profilesDir: str | None = Field(
        default=None,
        description="directory holding `profiles.yml` (rendered); default `projectDir` when "
                    "it holds one, else dbt's (`~/.dbt`); not with `profiles`")
    profiles: str | dict[str, Any] | None = Field(
        default=None,
        description="the `profiles.yml` content, as YAML text or a map (rendered, so it may "
                    "use `secret()`), written to a private temporary directory for the run")
    target: str | None = Field(default=None, description="profile target to use (rendered); "
                                                         "default the profile's own")
    select: list[str] | str | None = Field(
        default=None, description="node selection (`--select`, rendered); default all nodes")
    exclude: list[str] | str | None = Field(
        default=None, description="nodes to leave out (`--exclude`, rendered)")
    vars: dict[str, Any] = Field(default_factory=dict,
                                 description="project variables (`--vars`, rendered)")
    fullRefresh: bool = Field(default=False, description="rebuild incremental models from "
                                                         "scratch (`--full-refresh`)")
    threads: int | None = Field(default=None, ge=1,
                                description="threads dbt runs nodes on; default the "
                                            "profile's")

    @model_validator(mode="after")
    def _one_profiles_source(self) -> _DbtTask:
        if self.profilesDir is not None and self.profiles is not None:
            raise ValueError("set `profilesDir` or `profiles`, not both")
        return self

    def _args(self, ctx: RunContext, project: str, profiles_dir: str | None) -> list[str]:
        args = [self.COMMAND, "--project-dir", project,
                "--no-send-anonymous-usage-stats", "--no-use-colors", "--log-level", "none"]
        if profiles_dir:
            args += ["--profiles-dir", profiles_dir]
        if self.target:
            args += ["--target", str(ctx.render(self.target))]
        for flag, value in (("--select", self.select), ("--exclude", self.exclude)):
            rendered = ctx.render(value) if value else None
            if rendered:
                args += [flag, *([rendered] if isinstance(rendered, str) else map(str, rendered))]
        if self.vars:
            args += ["--vars", json.dumps(ctx.render(self.vars), default=str)]
        if self.fullRefresh:
            args.append("--full-refresh")
        if self.threads:
            args += ["--threads", str(self.threads)]
        return args

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        who = f"{self.TYPE} {self.id}"
        project = str(ctx.render(self.projectDir))
        if not (Path(project) / "dbt_project.yml").is_file():
            raise TaskFailure(f"{who}: {project} holds no dbt_project.yml")
        if self.profiles is None:
            profiles_dir = str(ctx.render(self.profilesDir)) if self.profilesDir else None
            if profiles_dir is None and (Path(project) / "profiles.yml").is_file():
                profiles_dir = project
            return invoke(self._args(ctx, project, profiles_dir), ctx, who)
        content = ctx.render(self.profiles)
        text = content if isinstance(content, str) else yaml.safe_dump(content)
        with tempfile.TemporaryDirectory(prefix="waxflow-dbt-") as tmp:
            path = Path(tmp) / "profiles.yml"
            path.write_text(text, encoding="utf-8")
            path.chmod(0o600)
            return invoke(self._args(ctx, project, tmp), ctx, who)


@task_type("dbt.Build")
class Build(_DbtTask):
    """``dbt build``: run, test, seed and snapshot the selected nodes in DAG order.

    Succeeds when dbt does. A failing model or test fails the task with the first failing
    node's id, status and dbt's own message (and how many more failed); an invocation error
    (bad project, profile or selector) fails it with dbt's exception text. Outputs
    ``success``, ``results`` (per node: ``node``, ``status``, ``message``,
    ``executionTime``, ``rowsAffected``, ``failures``) and ``counts`` (nodes per status).
    """

    COMMAND: ClassVar[str] = "build"
    type: Literal["dbt.Build"] = Field(description="the task type")


@task_type("dbt.Run")
class Run(_DbtTask):
    """``dbt run``: build the selected models (no tests). Failure and outputs as
    ``dbt.Build``."""

    COMMAND: ClassVar[str] = "run"
    type: Literal["dbt.Run"] = Field(description="the task type")
