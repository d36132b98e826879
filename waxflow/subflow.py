"""``core.Subflow`` (Kestra's ``io.kestra.plugin.core.flow.Subflow``): run another flow's
tasks as a child execution, inside the calling task.

Decision (issue 13): the child runs **in process, inside the parent's execution**, not as an
execution started through Kafka. So the guarantees are the parent's:

* G1: the parent's record is done (and its offset committable) only after the child ended,
  since the Subflow task returns only then.
* G2: the child's execution id is derived from the parent's execution id and the Subflow
  task run (``<parent id>.<taskrun id>``): a replayed parent runs a child of the same id.
* G3: a ``kafka.Produce`` of the child joins the parent's batch transaction, like the
  parent's own tasks.
* G6: a failed child fails the Subflow task (``transmitFailed: true``, the default), so the
  parent's retry, ``allowFailure`` and ``errors`` apply; with ``transmitFailed: false`` the
  task succeeds and ``outputs.<id>.state`` says FAILED.

The child has no history document of its own: the Subflow task's outputs carry its
``executionId``, ``state``, ``outputs`` (the child's task outputs, by task id; Kestra's
flow-level ``outputs`` are not supported) and, when it failed, ``error``; its log lines are
the parent's, under task ids ``<subflow task>/<child task>``. ``wait: false``
(fire and forget) is refused: the child always runs to its end before the next task.

The child flow is found by ``namespace`` and ``flowId`` among the flow files of
``$WAXFLOW_FLOWS_PATH`` (directories, ``os.pathsep``-separated, searched recursively), else
of the current directory (not recursively). Its ``inputs`` come from the task's ``inputs``
(rendered), else their defaults; a value that does not fit fails the task in one line. Its
own triggers play no part. The run itself (finding, loading and running the child flow) is
installed by the compiler (:func:`install`), since it needs the flow loader and the engine
of the layers above.

``core.ForEachItem`` (Kestra's ``io.kestra.plugin.core.flow.ForEachItem``) runs the same
child once per batch of an internal storage file (``items``): the file is split into batch
files of ``batch.rows`` lines (or ``batch.partitions`` batches; a binary ION file by records,
each batch written as JSON lines), and each child's ``inputs`` are rendered with
``taskrun.items`` (the batch file's URI) and ``taskrun.iteration`` (1, 2, ...). The children
run one after another, each as a Subflow child (same guarantees; child ids
``<parent id>.<taskrun id>.<iteration>``); every batch runs even after a failed one, then
``transmitFailed`` fails the task if any child FAILED. Outputs, as Kestra's:
``numberOfBatches``, ``iterations`` (count per child state, e.g. ``{"SUCCESS": 3}``) and
``uri``, a JSON-lines file of ``{iteration, executionId, state, outputs}`` per child. The
batch files are written by the storage layer (:func:`install_files`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from waxflow.tasks import ID_PATTERN, RunContext, TaskBase, TaskFailure, task_type

__all__ = ["MAX_DEPTH", "ChildFlowTask", "ForEachItem", "ItemFiles", "Subflow", "install",
           "install_files"]

#: deepest chain of subflows calling subflows (a flow calling itself stops here)
MAX_DEPTH = 10

#: (context, task, rendered inputs, iteration or None) -> the child's outputs
SubflowRunner = Callable[[RunContext, "ChildFlowTask", dict[str, Any], "int | None"],
                         dict[str, Any]]
_RUNNER: list[SubflowRunner] = []
_DEPTH = threading.local()


class ItemFiles(Protocol):
    """ForEachItem's access to internal storage (installed by the storage layer)."""

    def split(self, uri: str, prefix: str, *, rows: int | None, partitions: int | None,
              separator: str) -> list[str]:
        """Split the file ``uri`` into batch files named ``<prefix>/<n>...``; their URIs."""
        ...

    def write_lines(self, name: str, lines: list[dict[str, Any]]) -> str:
        """Store ``lines`` as a JSON-lines file named ``name``; its URI."""
        ...


_FILES: list[ItemFiles] = []


def install(runner: SubflowRunner) -> None:
    """Set how Subflow tasks run their child (the compiler installs it once per process)."""
    _RUNNER[:] = [runner]


def install_files(files: ItemFiles) -> None:
    """Set how ForEachItem splits its items file and stores its outputs file."""
    _FILES[:] = [files]


class ChildFlowTask(TaskBase):
    """What the tasks that run a child flow share: which flow, its inputs and labels."""

    BLOCKING: ClassVar[bool] = True  # the child's tasks may block
    namespace: str = Field(pattern=r"^[A-Za-z0-9_.-]+$",
                           description="the child flow's namespace")
    flowId: str = Field(pattern=ID_PATTERN, description="the child flow's id")
    inputs: dict[str, Any] = Field(default_factory=dict,
                                   description="the child's inputs (rendered)")
    labels: dict[str, str] = Field(default_factory=dict,
                                   description="labels of the child execution (rendered)")
    wait: Literal[True] = Field(
        default=True, description="the child always runs to its end before the next task "
                                  "(true is the only value)")
    transmitFailed: bool = Field(
        default=True, description="a failed child fails this task (false: the task "
                                  "succeeds and its outputs say FAILED)")
    inheritLabels: bool = Field(default=False,
                                description="the child execution gets the parent's labels")
    revision: int | None = Field(
        default=None, description="accepted for Kestra compatibility: the flow file as it is "
                                  "runs")

    @field_validator("wait", mode="before")
    @classmethod
    def _waits(cls, value: Any) -> Any:
        if value is False:
            raise ValueError("wait: false is not supported: the child runs inside this "
                             "execution, so that its record is done only once the child is "
                             "(remove `wait` or set it to true)")
        return value

    def run_child(self, ctx: RunContext, inputs: dict[str, Any],
                  iteration: int | None = None) -> dict[str, Any]:
        """Run the child flow to its end with ``inputs`` (already rendered); its outputs
        (``executionId``, ``state``, ``outputs``, ``error``)."""
        if not _RUNNER:
            raise TaskFailure(f"{self.type} needs the flow runner (waxflow run / waxflow "
                              "test install it)")
        depth = getattr(_DEPTH, "value", 0)
        if depth >= MAX_DEPTH:
            raise TaskFailure(f"subflow {self.namespace}.{self.flowId}: more than "
                              f"{MAX_DEPTH} subflows deep (a flow calling itself?)")
        _DEPTH.value = depth + 1
        try:
            return _RUNNER[0](ctx, self, inputs, iteration)
        finally:
            _DEPTH.value = depth


@task_type("core.Subflow", aliases=("io.kestra.plugin.core.flow.Subflow",
                                    "io.kestra.core.tasks.flows.Subflow",
                                    "io.kestra.core.tasks.flows.Flow"))
class Subflow(ChildFlowTask):
    """Run the flow ``namespace``.``flowId`` as a child execution inside this task (see the
    module doc: what the child sees, and what the parent gets back). Outputs ``executionId``,
    ``state``, ``outputs`` and ``error`` (when it failed)."""

    type: Literal["core.Subflow"] = Field(description="the task type")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        out = self.run_child(ctx, dict(ctx.render(self.inputs)))
        if out.get("state") == "FAILED" and self.transmitFailed:
            raise TaskFailure(f"subflow {self.namespace}.{self.flowId} execution "
                              f"{out.get('executionId')} FAILED: "
                              f"{(out.get('error') or {}).get('message', '')}")
        return out


class ItemBatch(BaseModel):
    """How ForEachItem cuts its items file (Kestra's ``batch``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rows: int | None = Field(default=None, ge=1,
                             description="lines (records) per batch (default 1)")
    partitions: int | None = Field(default=None, ge=1,
                                   description="cut the file into this many batches instead")
    separator: str = Field(default="\n", min_length=1,
                           description="what ends a line of the items file")
    bytes: str | None = Field(default=None, description="not supported: use rows or "
                                                        "partitions")

    @model_validator(mode="after")
    def _one_way(self) -> ItemBatch:
        if self.bytes is not None:
            raise ValueError("batch.bytes is not supported: cut by `rows` or `partitions`")
        if self.rows is not None and self.partitions is not None:
            raise ValueError("set `rows` or `partitions`, not both")
        return self


@task_type("core.ForEachItem", aliases=("io.kestra.plugin.core.flow.ForEachItem",
                                        "io.kestra.core.tasks.flows.ForEachItem"))
class ForEachItem(ChildFlowTask):
    """Run the flow ``namespace``.``flowId`` once per batch of the internal storage file
    ``items`` (see the module doc); ``inputs`` see ``taskrun.items`` (the batch file's URI)
    and ``taskrun.iteration``. Outputs ``numberOfBatches``, ``iterations`` and ``uri``."""

    type: Literal["core.ForEachItem"] = Field(description="the task type")
    items: str = Field(min_length=1, description="the internal storage URI of the file to "
                                                 "split (rendered), e.g. "
                                                 "`{{ outputs.<id>.uri }}`")
    batch: ItemBatch = Field(default_factory=ItemBatch,
                             description="how the file is cut: `rows` per batch (default "
                                         "1) or `partitions`, and the line `separator`")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        if not _FILES:
            raise TaskFailure("core.ForEachItem needs internal storage (waxflow run / "
                              "waxflow test install it)")
        uri = ctx.render(self.items)
        if not isinstance(uri, str) or not uri:
            raise TaskFailure(f"items must render to an internal storage URI (got {uri!r})")
        execution = ctx.vars.get("execution") or {}
        flow = ctx.vars.get("flow") or {}
        taskrun = ctx.vars.get("taskrun")
        if not isinstance(taskrun, dict):
            raise TaskFailure("core.ForEachItem runs only as a task of an execution")
        # deterministic: a replayed execution overwrites its batch files
        prefix = (f"{flow.get('namespace', '_')}/{flow.get('id', '_')}/"
                  f"{execution.get('id', '_')}/{taskrun.get('id') or self.id}")
        files = _FILES[0]
        rows = self.batch.rows if self.batch.rows or self.batch.partitions else 1
        batches = files.split(uri, prefix, rows=rows, partitions=self.batch.partitions,
                              separator=self.batch.separator)
        states: Counter[str] = Counter()
        merged: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        try:
            for iteration, batch_uri in enumerate(batches, start=1):
                # the special variables of Kestra's ForEachItem, seen by ``inputs`` only
                taskrun["items"], taskrun["iteration"] = batch_uri, iteration
                inputs = dict(ctx.render(self.inputs))
                out = self.run_child(ctx, inputs, iteration)
                states[str(out.get("state"))] += 1
                merged.append({"iteration": iteration, "executionId": out.get("executionId"),
                               "state": out.get("state"), "outputs": out.get("outputs")})
                if out.get("state") == "FAILED":
                    failed.append(out)
        finally:
            taskrun.pop("items", None)
            taskrun.pop("iteration", None)
        if failed and self.transmitFailed:
            first = failed[0]
            raise TaskFailure(f"{len(failed)} of {len(batches)} subflow executions of "
                              f"{self.namespace}.{self.flowId} FAILED; first "
                              f"{first.get('executionId')}: "
                              f"{(first.get('error') or {}).get('message', '')}")
        return {"numberOfBatches": len(batches), "iterations": dict(states),
                "uri": files.write_lines(f"{prefix}/outputs.jsonl", merged)}
