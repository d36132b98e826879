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
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from waxflow.tasks import ID_PATTERN, RunContext, TaskBase, TaskFailure, task_type

__all__ = ["MAX_DEPTH", "Subflow", "install"]

#: deepest chain of subflows calling subflows (a flow calling itself stops here)
MAX_DEPTH = 10

SubflowRunner = Callable[[RunContext, "Subflow", dict[str, Any]], dict[str, Any]]
_RUNNER: list[SubflowRunner] = []
_DEPTH = threading.local()


def install(runner: SubflowRunner) -> None:
    """Set how Subflow tasks run their child (the compiler installs it once per process)."""
    _RUNNER[:] = [runner]


@task_type("core.Subflow", aliases=("io.kestra.plugin.core.flow.Subflow",
                                    "io.kestra.core.tasks.flows.Subflow",
                                    "io.kestra.core.tasks.flows.Flow"))
class Subflow(TaskBase):
    """Run the flow ``namespace``.``flowId`` as a child execution inside this task (see the
    module doc: what the child sees, and what the parent gets back). Outputs ``executionId``,
    ``state``, ``outputs`` and ``error`` (when it failed)."""

    BLOCKING: ClassVar[bool] = True  # the child's tasks may block
    type: Literal["core.Subflow"] = Field(description="the task type")
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
                                  "succeeds and `outputs.<id>.state` is FAILED)")
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

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        if not _RUNNER:
            raise TaskFailure("core.Subflow needs the flow runner (waxflow run / waxflow "
                              "test install it)")
        depth = getattr(_DEPTH, "value", 0)
        if depth >= MAX_DEPTH:
            raise TaskFailure(f"subflow {self.namespace}.{self.flowId}: more than "
                              f"{MAX_DEPTH} subflows deep (a flow calling itself?)")
        inputs = ctx.render(self.inputs)
        _DEPTH.value = depth + 1
        try:
            out = _RUNNER[0](ctx, self, dict(inputs))
        finally:
            _DEPTH.value = depth
        if out.get("state") == "FAILED" and self.transmitFailed:
            raise TaskFailure(f"subflow {self.namespace}.{self.flowId} execution "
                              f"{out.get('executionId')} FAILED: "
                              f"{(out.get('error') or {}).get('message', '')}")
        return out
