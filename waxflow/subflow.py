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

The child has no history document of its own: the Subflow task's outputs are Kestra's,
``executionId``, ``state`` and ``outputs``: the child's flow-level ``outputs`` (read as
``outputs.<subflow task>.outputs.<output id>``; empty when the child failed, since a failed
execution renders none). A child that declares no flow-level ``outputs`` gives its task
outputs by task id instead (``outputs.<subflow task>.outputs.<child task>.value``; waxflow's
older behaviour, kept for flows written for it: Kestra gives nothing there). When the child
failed, ``error`` says why. Its log lines are the parent's, under task ids
``<subflow task>/<child task>``. ``wait: false`` (fire and forget) is refused: the child
always runs to its end before the next task.

The child flow is found by ``namespace`` and ``flowId`` (templates allowed, rendered when the
task runs) among the flow files of ``$WAXFLOW_FLOWS_PATH`` (directories,
``os.pathsep``-separated, searched recursively), else of the current directory (not
recursively); ``waxflow validate`` already checks that it is there and valid, and that it
takes the inputs given, wherever that is known without running. Its ``inputs`` come from the
task's ``inputs`` (rendered), else their defaults; a value that does not fit fails the task
in one line. Its own triggers play no part. The run itself (finding, loading and running the
child flow) is installed by the compiler (:func:`install`), since it needs the flow loader
and the engine of the layers above.

``core.ForEachItem`` (Kestra's ``io.kestra.plugin.core.flow.ForEachItem``) runs the same
child once per batch of an internal storage file (``items``): the file is split into batch
files of ``batch.rows`` lines (or ``batch.partitions`` batches; a binary ION file by records,
each batch written as JSON lines), and each child's ``inputs`` are rendered with
``taskrun.items`` (the batch file's URI) and ``taskrun.iteration`` (1, 2, ...), one batch after
another. The children then run **concurrently**, as Kestra starts them all at once: at most
the child flow's ``concurrency.limit`` at a time (Kestra's way to bound a subflow; its
ForEachItem has no limit of its own; at most :data:`FOR_EACH_MAX_THREADS`), else
:data:`FOR_EACH_CONCURRENCY`. Each runs as a
Subflow child (same guarantees; child ids ``<parent id>.<taskrun id>.<iteration>``); every
batch runs even after a failed one, then ``transmitFailed`` fails the task if any child
FAILED (Kestra: the task ends once every iteration has, FAILED if one did). Outputs, as
Kestra's: ``numberOfBatches``, ``iterations`` (count per child state, e.g.
``{"SUCCESS": 3}``) and ``uri``, a JSON-lines file of ``{iteration, executionId, state,
outputs}`` per child, in batch order whatever order they ended in; the children's log lines
join the parent's in batch order too. The batch files are written by the storage layer
(:func:`install_files`).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from waxflow.tasks import ID_PATTERN, RunContext, TaskBase, TaskFailure, task_type

__all__ = [
    "FOR_EACH_CONCURRENCY",
    "FOR_EACH_MAX_THREADS",
    "MAX_DEPTH",
    "NAMESPACE_PATTERN",
    "ChildFlowTask",
    "ChildRun",
    "ForEachItem",
    "ItemFiles",
    "Subflow",
    "install",
    "install_files",
    "is_template",
]

#: deepest chain of subflows calling subflows (a flow calling itself stops here)
MAX_DEPTH = 10
#: children a ForEachItem runs at once when the child flow sets no ``concurrency.limit``
FOR_EACH_CONCURRENCY = 8
#: the most children a ForEachItem runs at once, whatever the child's limit (each is a thread)
FOR_EACH_MAX_THREADS = 64
#: what a flow's namespace may be (as :attr:`waxflow.flow.FlowBase.namespace`)
NAMESPACE_PATTERN = r"^[A-Za-z0-9_.-]+$"


@dataclass(frozen=True)
class ChildRun:
    """A child execution that ended: the task's ``outputs`` (``executionId``, ``state``,
    ``outputs``, ``error``) and ``flush``, which adds the child's log lines to the parent's
    execution (call it once, from the task's own thread)."""

    outputs: dict[str, Any]
    flush: Callable[[], None]


class SubflowRunner(Protocol):
    """Runs a child flow (installed by the compiler: :func:`install`)."""

    def __call__(self, ctx: RunContext, task: ChildFlowTask, inputs: dict[str, Any],
                 iteration: int | None, labels: dict[str, str]) -> ChildRun:
        """Run ``task``'s child (``namespace``/``flowId`` already rendered) to its end with
        ``inputs`` and ``labels`` (rendered); ``iteration`` ends a ForEachItem child's id."""
        ...


_RUNNER: list[SubflowRunner] = []
#: (namespace, flow id) -> the child flow's ``concurrency.limit`` (None: it sets none)
_LIMITS: list[Callable[[str, str], int | None]] = []
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


def install(runner: SubflowRunner,
            limit: Callable[[str, str], int | None] | None = None) -> None:
    """Set how Subflow tasks run their child, and how ForEachItem learns the child flow's
    ``concurrency.limit`` (the compiler installs both once per process)."""
    _RUNNER[:] = [runner]
    _LIMITS[:] = [limit] if limit is not None else []


def install_files(files: ItemFiles) -> None:
    """Set how ForEachItem splits its items file and stores its outputs file."""
    _FILES[:] = [files]


def is_template(value: str) -> bool:
    """Whether ``value`` holds an expression (rendered when the task runs)."""
    return "{{" in value or "{%" in value


class ChildFlowTask(TaskBase):
    """What the tasks that run a child flow share: which flow, its inputs and labels."""

    BLOCKING: ClassVar[bool] = True  # the child's tasks may block
    namespace: str = Field(min_length=1,
                           description="the child flow's namespace (a template is rendered "
                                       "when the task runs)")
    flowId: str = Field(min_length=1, description="the child flow's id (a template is "
                                                  "rendered when the task runs)")
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

    @field_validator("namespace", "flowId")
    @classmethod
    def _name_or_template(cls, value: str, info: ValidationInfo) -> str:
        if not is_template(value):
            _check_name(info.field_name or "", value, ValueError)
        return value

    @field_validator("wait", mode="before")
    @classmethod
    def _waits(cls, value: Any) -> Any:
        if value is False:
            raise ValueError("wait: false is not supported: the child runs inside this "
                             "execution, so that its record is done only once the child is "
                             "(remove `wait` or set it to true)")
        return value

    def resolved(self, ctx: RunContext) -> Self:
        """This task with ``namespace`` and ``flowId`` rendered (itself when neither is a
        template); TaskFailure when one renders to something that is not a name."""
        update: dict[str, str] = {}
        for name in ("namespace", "flowId"):
            raw = getattr(self, name)
            if is_template(raw):
                value = ctx.render(raw)
                _check_name(name, value, TaskFailure)
                update[name] = value
        return self.model_copy(update=update) if update else self

    def run_child(self, ctx: RunContext, inputs: dict[str, Any],
                  iteration: int | None = None, *,
                  labels: dict[str, str] | None = None) -> ChildRun:
        """Run the child flow to its end with ``inputs`` (and ``labels``: default, this
        task's, rendered), both already rendered; see :class:`ChildRun`."""
        if not _RUNNER:
            raise TaskFailure(f"{self.type} needs the flow runner (waxflow run / waxflow "
                              "test install it)")
        depth = current_depth()
        if depth >= MAX_DEPTH:
            raise TaskFailure(f"subflow {self.namespace}.{self.flowId}: more than "
                              f"{MAX_DEPTH} subflows deep (a flow calling itself?)")
        if labels is None:
            labels = {k: str(v) for k, v in ctx.render(self.labels).items()}
        _DEPTH.value = depth + 1
        try:
            return _RUNNER[0](ctx, self, inputs, iteration, labels)
        finally:
            _DEPTH.value = depth


def current_depth() -> int:
    """How many child flows deep this thread runs (0 in a top-level execution)."""
    return int(getattr(_DEPTH, "value", 0))


def _check_name(field: str, value: Any, error: type[Exception]) -> None:
    pattern = NAMESPACE_PATTERN if field == "namespace" else ID_PATTERN
    if not (isinstance(value, str) and re.match(pattern, value)):
        what = ("a namespace (letters, digits, _ . -)" if field == "namespace"
                else "a flow id (a letter or _, then letters, digits, _ -)")
        raise error(f"{field} {value!r} is not {what}")


@task_type("core.Subflow", aliases=("io.kestra.plugin.core.flow.Subflow",
                                    "io.kestra.core.tasks.flows.Subflow",
                                    "io.kestra.core.tasks.flows.Flow"))
class Subflow(ChildFlowTask):
    """Run the flow ``namespace``.``flowId`` as a child execution inside this task (see the
    module doc: what the child sees, and what the parent gets back). Outputs ``executionId``,
    ``state``, ``outputs`` (the child's flow-level outputs) and ``error`` (when it
    failed)."""

    type: Literal["core.Subflow"] = Field(description="the task type")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        task = self.resolved(ctx)
        child = task.run_child(ctx, dict(ctx.render(self.inputs)))
        child.flush()
        out = child.outputs
        if out.get("state") == "FAILED" and self.transmitFailed:
            raise TaskFailure(f"subflow {task.namespace}.{task.flowId} execution "
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
    ``items`` (see the module doc), the children concurrently (at most the child flow's
    ``concurrency.limit`` at once, else 8); ``inputs`` and ``labels`` see ``taskrun.items``
    (the batch file's URI) and ``taskrun.iteration``. Outputs ``numberOfBatches``,
    ``iterations`` and ``uri`` (each child's outputs, in batch order)."""

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
        task = self.resolved(ctx)
        # deterministic: a replayed execution overwrites its batch files
        prefix = (f"{flow.get('namespace', '_')}/{flow.get('id', '_')}/"
                  f"{execution.get('id', '_')}/{taskrun.get('id') or self.id}")
        files = _FILES[0]
        rows = self.batch.rows if self.batch.rows or self.batch.partitions else 1
        batches = files.split(uri, prefix, rows=rows, partitions=self.batch.partitions,
                              separator=self.batch.separator)
        # inputs and labels first, in this thread: the special variables of Kestra's
        # ForEachItem live in the task run, which the children must not share
        calls: list[tuple[dict[str, Any], dict[str, str]]] = []
        try:
            for iteration, batch_uri in enumerate(batches, start=1):
                taskrun["items"], taskrun["iteration"] = batch_uri, iteration
                calls.append((dict(ctx.render(self.inputs)),
                              {k: str(v) for k, v in ctx.render(self.labels).items()}))
        finally:
            taskrun.pop("items", None)
            taskrun.pop("iteration", None)
        runs = task._run_children(ctx, calls)
        states: Counter[str] = Counter()
        merged: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for iteration, run in enumerate(runs, start=1):
            out = run.outputs
            states[str(out.get("state"))] += 1
            merged.append({"iteration": iteration, "executionId": out.get("executionId"),
                           "state": out.get("state"), "outputs": out.get("outputs")})
            if out.get("state") == "FAILED":
                failed.append(out)
        if failed and self.transmitFailed:
            first = failed[0]
            raise TaskFailure(f"{len(failed)} of {len(batches)} subflow executions of "
                              f"{task.namespace}.{task.flowId} FAILED; first "
                              f"{first.get('executionId')}: "
                              f"{(first.get('error') or {}).get('message', '')}")
        return {"numberOfBatches": len(batches), "iterations": dict(states),
                "uri": files.write_lines(f"{prefix}/outputs.jsonl", merged)}

    def concurrency(self) -> int:
        """How many children run at once: the child flow's ``concurrency.limit`` (at most
        :data:`FOR_EACH_MAX_THREADS`), else :data:`FOR_EACH_CONCURRENCY`."""
        limit = _LIMITS[0](self.namespace, self.flowId) if _LIMITS else None
        return min(limit, FOR_EACH_MAX_THREADS) if limit is not None else FOR_EACH_CONCURRENCY

    def _run_children(self, ctx: RunContext,
                      calls: list[tuple[dict[str, Any], dict[str, str]]]) -> list[ChildRun]:
        """Run one child per ``(inputs, labels)``, :meth:`concurrency` at a time, every one
        to its end; their runs in call order, each child's log lines added to the parent's
        in that order. A child that could not run at all (TaskFailure: no such flow, too
        deep...) fails the task once every other child has ended."""
        if not calls:
            return []
        depth = current_depth()  # a worker thread starts at depth 0: carry it over

        def one(iteration: int, inputs: dict[str, Any], labels: dict[str, str]) -> ChildRun:
            _DEPTH.value = depth
            try:
                return self.run_child(ctx, inputs, iteration, labels=labels)
            finally:
                _DEPTH.value = 0

        workers = min(self.concurrency(), len(calls))
        runs: list[ChildRun] = []
        error: BaseException | None = None
        with ThreadPoolExecutor(max_workers=workers,
                                thread_name_prefix=f"foreach-{self.id}") as pool:
            futures = [pool.submit(one, i, inputs, labels)
                       for i, (inputs, labels) in enumerate(calls, start=1)]
            for fut in futures:  # in batch order, whatever order they end in
                try:
                    run = fut.result()
                except BaseException as exc:  # raised once all ended
                    error = error or exc
                    continue
                run.flush()
                runs.append(run)
        if error is not None:
            raise error
        return runs
