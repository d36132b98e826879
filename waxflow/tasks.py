"""Task types: the base model every task shares, the registry, and what a task sees at run time.

A task type is a pydantic model subclassing :class:`TaskBase`, registered with
:func:`task_type`. Its fields are the YAML properties; string fields may hold Jinja templates,
rendered at run time with :meth:`RunContext.render` (compiled once per flow, never per
record). ``run`` returns the task's outputs (``outputs.<taskId>.*`` for later tasks) or raises
:class:`TaskFailure` (or any exception) to fail the attempt; the engine handles retries,
timeouts, ``allowFailure`` and ``errors``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from waxflow.durations import Duration
from waxflow.errors import WaxflowError

TASK_TYPES: dict[str, type[TaskBase]] = {}
#: other accepted spellings of a task type (Kestra's full names) -> the registered name
TASK_ALIASES: dict[str, str] = {}
# ``AnyTask`` (the discriminated union of the registered types the process's flows use) is
# resolved by ``waxflow.dataflows.spec.task_union()``; fields that hold child task lists are
# annotated ``list[AnyTask]``.

T = TypeVar("T", bound="type[TaskBase]")

ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"
#: the recursion limit while a task model is (re)built: building the task union
#: (``waxflow.dataflows.spec.task_union``) recurses through every task type once (each type's
#: ``errors`` holds the union of all of them), about 25 frames a type, past Python's default
#: of 1,000 at 45 types (measured: 44 types needed 1,000-1,200)
BUILD_RECURSION_LIMIT = 10_000


class TaskFailure(WaxflowError):
    """A task failed for a reason the user should read (no traceback is shown)."""


class RetrySpec(BaseModel):
    """Kestra-compatible retry policy. ``maxAttempts`` counts the first run."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(pattern="^(constant|exponential|random)$",
                      description="constant: wait `interval`; exponential: `interval` times "
                                  "`delayFactor` per attempt, up to `maxInterval`; random: "
                                  "between `minInterval` and `maxInterval`")
    interval: Duration | None = Field(
        default=None, description="the delay before a retry (constant, exponential)")
    maxInterval: Duration | None = Field(
        default=None, description="the longest delay (exponential, random)")
    minInterval: Duration | None = Field(default=None,
                                         description="the shortest delay (random)")
    delayFactor: float | None = Field(
        default=None, gt=1.0, description="growth of the delay per attempt (exponential; "
                                          "default 2)")
    maxAttempts: int | None = Field(
        default=None, ge=1, description="attempts in all, the first run included "
                                        "(1 = no retry)")
    maxDuration: Duration | None = Field(
        default=None, description="no retry starts later than this after the first attempt")
    warningOnRetry: bool = Field(
        default=False, description="a task that succeeded only after a retry ends WARNING")


class RunContext(Protocol):
    """What a running task may use: rendering, child task lists, logging."""

    @property
    def vars(self) -> Mapping[str, Any]:
        """The expression context: trigger, outputs, execution, flow, env."""
        ...

    def render(self, value: Any) -> Any:
        """Render a template-bearing value (str, or dict/list of them) to its native value."""
        ...

    def run_tasks(self, tasks: Sequence[TaskBase], parent: TaskBase) -> None:
        """Run a child task list in order; raises if one of them fails the execution."""
        ...

    def run_iteration(self, tasks: Sequence[TaskBase], parent: TaskBase, value: Any) -> None:
        """Run a child task list once for ``value``: the children (and theirs) read it as
        ``taskrun.value``, and ``parent.taskrun.value`` one level further down."""
        ...

    def run_parallel(self, tasks: Sequence[TaskBase], parent: TaskBase, concurrency: int) -> None:
        """Run child tasks concurrently; raises once all ended if one failed the execution."""
        ...

    def log(self, level: str, message: str) -> None:
        """Log a (redacted) message attributed to the running task."""
        ...

    @property
    def batch(self) -> Any:
        """Per-batch resources of the execute step (Kafka transaction scope), or None."""
        ...


class TaskBase(BaseModel):
    """Properties every task has."""

    # built on demand (``defer_build``): a process builds the task types its flows use, when
    # ``waxflow.dataflows.spec`` puts them in the task union, not every type its modules
    # register (about 7 ms of CPU each)
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)
    TYPE: ClassVar[str] = ""
    # whether ``run`` may wait on I/O (HTTP, Kafka, a warehouse, user code): a flow whose
    # tasks never block runs its executions on the worker thread, without a thread pool
    BLOCKING: ClassVar[bool] = True

    id: str = Field(pattern=ID_PATTERN,
                    description="the task's id, unique in the flow; its outputs are "
                                "`outputs.<id>.*`")
    type: str = Field(description="the task type")
    description: str | None = Field(default=None, description="free text for people")
    retry: RetrySpec | None = Field(
        default=None, description="how a failing attempt is retried (default: the flow's "
                                  "`retry`, else no retry)")
    timeout: Duration | None = Field(
        default=None, description="an attempt running longer than this fails")
    allowFailure: bool = Field(
        default=False, description="a failure of this task ends the execution WARNING "
                                   "instead of FAILED, and the next tasks run")
    disabled: bool = Field(default=False, description="skip this task")
    runIf: str | None = Field(
        default=None,
        description="a condition (rendered) checked before the task runs: when false (false, "
                    "`0`, `-0`, an empty string or null) the task is not run and its task run "
                    "is recorded SKIPPED")
    errors: list[AnyTask] = Field(default_factory=list,
                                  description="tasks run when this one fails")

    @classmethod
    def model_rebuild(cls, *, force: bool = False, raise_errors: bool = True,
                      _parent_namespace_depth: int = 2,
                      _types_namespace: Any = None) -> bool | None:
        """pydantic's ``model_rebuild`` under :data:`BUILD_RECURSION_LIMIT` (restored after:
        elsewhere the default limit keeps guarding deep record values)."""
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, BUILD_RECURSION_LIMIT))
        try:
            return super().model_rebuild(force=force, raise_errors=raise_errors,
                                         _parent_namespace_depth=_parent_namespace_depth + 1,
                                         _types_namespace=_types_namespace)
        finally:
            sys.setrecursionlimit(limit)

    @field_validator("type", mode="after")
    @classmethod
    def _canonical_type(cls, value: str) -> str:
        # an alias (``io.kestra.plugin.core.log.Log``) is stored as our name (``core.Log``):
        # the history, ``task.type`` and every check see one spelling
        return TASK_ALIASES.get(value, value)

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        """Do the work; return outputs or raise to fail this attempt."""
        raise NotImplementedError

    def child_lists(self) -> list[tuple[str, Sequence[TaskBase]]]:
        """Child task lists with the field path they come from (for validation and walks)."""
        out: list[tuple[str, Sequence[TaskBase]]] = []
        if self.errors:
            out.append(("errors", self.errors))
        return out


def task_type(name: str, aliases: Sequence[str] = ()) -> Callable[[T], T]:
    """Class decorator registering a task model under its YAML ``type`` name.

    ``aliases`` are other spellings accepted in flow files, typically Kestra's full type
    names::

        @task_type("kafka.Produce", aliases=("io.kestra.plugin.kafka.Produce",))
        class Produce(TaskBase):
            type: Literal["kafka.Produce"] = Field(description="the task type")

    The model's ``type`` field keeps ``Literal[name]``; the decorator widens it to accept the
    aliases too (the JSON Schema lists every spelling) and a validated task holds ``name``
    whatever spelling the file used.
    """

    def register(cls: T) -> T:
        if name in TASK_TYPES or name in TASK_ALIASES:
            raise ValueError(f"task type {name} registered twice")
        cls.TYPE = name
        TASK_TYPES[name] = cls
        add_task_aliases(name, *aliases)
        return cls

    return register


def add_task_aliases(name: str, *aliases: str) -> None:
    """Accept ``aliases`` as spellings of the registered task type ``name`` (for types whose
    module does not name them itself; the ``aliases`` of :func:`task_type` do the same)."""
    cls = TASK_TYPES[name]
    for alias in aliases:
        if alias in TASK_TYPES or TASK_ALIASES.get(alias, name) != name:
            raise ValueError(f"task type {alias} registered twice")
        TASK_ALIASES[alias] = name
    spellings = (name, *sorted(a for a, n in TASK_ALIASES.items() if n == name))
    if len(spellings) > 1:
        cls.model_fields["type"].annotation = Literal[spellings]  # type: ignore[assignment]
        if cls.__pydantic_complete__:  # a model not built yet takes the spellings when it is
            cls.model_rebuild(force=True, raise_errors=False)


def canonical_task_type(name: str) -> str:
    """The registered name for ``name`` (itself, or the type it is an alias of)."""
    return TASK_ALIASES.get(name, name)


def known_task_type(name: Any) -> bool:
    """Whether ``name`` is a registered task type or an alias of one."""
    return isinstance(name, str) and (name in TASK_TYPES or name in TASK_ALIASES)


if TYPE_CHECKING:
    AnyTask = TaskBase  # at run time: the discriminated union of the task types in use
