"""Core flow tasks: logging, branching, grouping, failing, setting values and calling Python.

Every task here renders its template-bearing properties with :meth:`RunContext.render` at run
time and returns JSON-serialisable outputs (``core.Python`` returns what the user function
gives). Branching tasks run their chosen child list through the context, so retries,
timeouts, ``allowFailure`` and ``errors`` of the children are the engine's business.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator

from waxflow.durations import Duration
from waxflow.errors import format_path
from waxflow.tasks import RunContext, TaskBase, TaskFailure, task_type

if TYPE_CHECKING:  # at run time AnyTask is resolved by model_rebuild (waxflow.dataflows.spec)
    from waxflow.tasks import AnyTask

__all__ = ["FUNCTION_PATTERN", "is_truthy", "switch_key"]

_FALSE_STRINGS = frozenset({"false", "0", "-0", ""})
#: ``package.module:function`` (the part after the colon may be a dotted attribute path).
FUNCTION_PATTERN = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$"


def is_truthy(value: Any) -> bool:
    """Kestra's truthiness of a rendered condition.

    ``True`` and non-zero numbers are true; strings are true unless they are (ignoring case
    and surrounding blanks) ``false``, ``0``, ``-0`` or empty; ``None`` and ``False`` are
    false; any other value follows Python (a non-empty list or dict is true).
    """
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE_STRINGS
    return bool(value)


def switch_key(value: Any) -> str:
    """The string a ``core.Switch`` value (or a YAML case key) is compared as.

    Booleans become ``true``/``false`` (as in Kestra), ``None`` becomes ``""``, anything else
    is ``str()``-ed.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def _rendered_str(ctx: RunContext, template: str) -> str:
    return switch_key(ctx.render(template))


@task_type("core.Log", aliases=(
    "io.kestra.plugin.core.log.Log",
    "io.kestra.core.tasks.log.Log",
))
class Log(TaskBase):
    """Write ``message`` (rendered) to the execution's log at ``level``. No outputs."""

    BLOCKING: ClassVar[bool] = False
    type: Literal["core.Log"] = Field(description="the task type")
    message: str = Field(description="text to log (rendered)")
    level: Literal["DEBUG", "INFO", "WARN", "ERROR"] = Field(
        default="INFO", description="log level of the message")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        ctx.log(self.level, _rendered_str(ctx, self.message))
        return None


@task_type("core.Switch", aliases=(
    "io.kestra.plugin.core.flow.Switch",
    "io.kestra.core.tasks.flows.Switch",
))
class Switch(TaskBase):
    """Run the task list of the case matching the rendered ``value``, else ``defaults``.

    The value is compared as a string (booleans as ``true``/``false``, null as ``""``); YAML
    case keys such as ``true`` or ``1`` are converted the same way, so ``true:`` matches a
    boolean value. Outputs ``{"value": <compared string>, "defaults": <whether defaults
    ran>}``; ``defaults`` is true also when no case matched and there are no default tasks.
    """

    BLOCKING: ClassVar[bool] = False
    type: Literal["core.Switch"] = Field(description="the task type")
    value: str = Field(description="value to switch on (rendered), compared as a string")
    cases: dict[str, list[AnyTask]] = Field(
        min_length=1, description="task list per case value; YAML keys such as `true` or `1` "
                                  "are compared as strings")
    defaults: list[AnyTask] = Field(
        default_factory=list, description="tasks run when no case matches; default none")

    @field_validator("cases", mode="before")
    @classmethod
    def _stringify_keys(cls, cases: Any) -> Any:
        if isinstance(cases, dict):
            keys = [switch_key(k) for k in cases]
            if len(set(keys)) != len(keys):
                raise ValueError("two cases have the same key once converted to strings")
            return dict(zip(keys, cases.values(), strict=True))
        return cases

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        key = _rendered_str(ctx, self.value)
        tasks = self.cases.get(key)
        if tasks is None:
            ctx.run_tasks(self.defaults, self)
        else:
            ctx.run_tasks(tasks, self)
        return {"value": key, "defaults": tasks is None}

    def child_lists(self) -> list[tuple[str, Sequence[TaskBase]]]:
        out: list[tuple[str, Sequence[TaskBase]]] = [
            (format_path(["cases", key]), tasks) for key, tasks in self.cases.items()
        ]
        if self.defaults:
            out.append(("defaults", self.defaults))
        return out + super().child_lists()


@task_type("core.If", aliases=(
    "io.kestra.plugin.core.flow.If",
    "io.kestra.core.tasks.flows.If",
))
class If(TaskBase):
    """Run ``then`` when the rendered ``condition`` is truthy, else ``else``.

    Truthy as in Kestra: ``true`` and non-zero numbers; strings other than ``false``, ``0``,
    ``-0`` and the empty one (case and surrounding blanks ignored); non-empty lists and maps.

    Outputs ``{"condition": <bool>}``.
    """

    model_config = ConfigDict(populate_by_name=True)

    BLOCKING: ClassVar[bool] = False
    type: Literal["core.If"] = Field(description="the task type")
    condition: str = Field(description="condition (rendered); false, `0`, `-0`, an empty "
                                       "string and null are false")
    then: list[AnyTask] = Field(min_length=1,
                                description="tasks run when the condition is truthy")
    else_: list[AnyTask] = Field(default_factory=list, alias="else",
                                 description="tasks run when it is not; default none")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        result = is_truthy(ctx.render(self.condition))
        ctx.run_tasks(self.then if result else self.else_, self)
        return {"condition": result}

    def child_lists(self) -> list[tuple[str, Sequence[TaskBase]]]:
        out: list[tuple[str, Sequence[TaskBase]]] = [("then", self.then)]
        if self.else_:
            out.append(("else", self.else_))
        return out + super().child_lists()


class _Group(TaskBase):
    """A task that runs a list of child tasks, ``tasks``."""

    BLOCKING: ClassVar[bool] = False
    tasks: list[AnyTask] = Field(min_length=1, description="the child tasks")

    def child_lists(self) -> list[tuple[str, Sequence[TaskBase]]]:
        return [("tasks", self.tasks), *super().child_lists()]


@task_type("core.Sequential", aliases=(
    "io.kestra.plugin.core.flow.Sequential",
    "io.kestra.core.tasks.flows.Sequential",
))
class Sequential(_Group):
    """Run ``tasks`` one after the other; a failing child stops the list. No outputs."""

    type: Literal["core.Sequential"] = Field(description="the task type")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        ctx.run_tasks(self.tasks, self)
        return None


@task_type("core.Parallel", aliases=(
    "io.kestra.plugin.core.flow.Parallel",
    "io.kestra.core.tasks.flows.Parallel",
))
class Parallel(_Group):
    """Run ``tasks`` concurrently, at most ``concurrency`` at a time (0 = all at once).

    All children run to their end even when one fails; the task then fails. No outputs.
    """

    type: Literal["core.Parallel"] = Field(description="the task type")
    concurrency: int = Field(default=0, ge=0, description="most children running at once; "
                                                          "0 runs them all at once")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        ctx.run_parallel(self.tasks, self, self.concurrency)
        return None


@task_type("core.Fail", aliases=(
    "io.kestra.plugin.core.execution.Fail",
    "io.kestra.core.tasks.executions.Fail",
))
class Fail(TaskBase):
    """Fail with the rendered ``errorMessage`` when ``condition`` is absent or truthy.

    With a falsy condition the task succeeds without outputs.
    """

    BLOCKING: ClassVar[bool] = False
    type: Literal["core.Fail"] = Field(description="the task type")
    errorMessage: str = Field(default="Task failure",
                              description="message the task fails with (rendered)")
    condition: str | None = Field(
        default=None,
        description="fail only when this (rendered) is truthy; default always fail")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        if self.condition is None or is_truthy(ctx.render(self.condition)):
            raise TaskFailure(_rendered_str(ctx, self.errorMessage))
        return None


@task_type("core.Set")
class Set(TaskBase):
    """Output the rendered ``values``: ``outputs.<id>.<key>`` (Kestra's OutputValues).

    The outputs are the values themselves, not nested under ``values``: in Jinja,
    ``outputs.x.values`` would find the dict method before the key.
    """

    BLOCKING: ClassVar[bool] = False
    type: Literal["core.Set"] = Field(description="the task type")
    values: dict[str, Any] = Field(
        min_length=1, description="outputs to set, by name (values rendered; native types "
                                  "kept)")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        return {key: ctx.render(value) for key, value in self.values.items()}


@task_type("core.OutputValues", aliases=(
    "io.kestra.plugin.core.output.OutputValues",
))
class OutputValues(TaskBase):
    """Output the rendered ``values`` under ``values``: ``outputs.<id>.values.<key>``, as in
    Kestra (``core.Set`` outputs them one level up)."""

    BLOCKING: ClassVar[bool] = False
    type: Literal["core.OutputValues"] = Field(description="the task type")
    values: dict[str, Any] = Field(
        min_length=1, description="outputs to set, by name (values rendered; native types "
                                  "kept)")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        return {"values": {key: ctx.render(value) for key, value in self.values.items()}}


@task_type("core.Return", aliases=(
    "io.kestra.plugin.core.debug.Return",
    "io.kestra.core.tasks.debugs.Return",
))
class Return(TaskBase):
    """Render ``format`` and output it as ``outputs.<id>.value`` (Kestra's debug Return)."""

    BLOCKING: ClassVar[bool] = False
    type: Literal["core.Return"] = Field(description="the task type")
    format: str | None = Field(default=None, description="the value to output (rendered)")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        return {"value": None if self.format is None else ctx.render(self.format)}


@task_type("core.Sleep", aliases=(
    "io.kestra.plugin.core.flow.Sleep",
))
class Sleep(TaskBase):
    """Wait ``duration`` (ISO-8601). No outputs."""

    type: Literal["core.Sleep"] = Field(description="the task type")
    duration: Duration = Field(description="how long to wait, e.g. PT5S")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        time.sleep(max(0.0, self.duration.total_seconds()))
        return None


@task_type("core.Assert", aliases=(
    "io.kestra.plugin.core.execution.Assert",
))
class Assert(TaskBase):
    """Fail unless every rendered condition is truthy; the error names the false ones."""

    BLOCKING: ClassVar[bool] = False
    type: Literal["core.Assert"] = Field(description="the task type")
    conditions: list[str] = Field(min_length=1,
                                  description="conditions (rendered), all must be truthy")
    errorMessage: str | None = Field(default=None,
                                     description="message the task fails with (rendered)")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        failed = [c for c in self.conditions if not is_truthy(ctx.render(c))]
        if failed:
            reason = (_rendered_str(ctx, self.errorMessage) if self.errorMessage
                      else "assertion failed")
            raise TaskFailure(f"{reason}: {', '.join(failed)}")
        return None


@task_type("core.ForEach", aliases=(
    "io.kestra.plugin.core.flow.ForEach",
))
class ForEach(_Group):
    """Run ``tasks`` once per item of ``values``; the children read the item as
    ``{{ taskrun.value }}`` (nested: ``{{ parent.taskrun.value }}``, ``parents[i]``).

    ``values`` is a list, or a template/JSON text that renders to one. Iterations run one
    after another; a child's outputs are those of the last iteration. Outputs
    ``{"count": <iterations>}``.
    """

    type: Literal["core.ForEach"] = Field(description="the task type")
    values: list[Any] | str = Field(
        description="the items: a list, or text (a template or JSON) rendering to a list")
    concurrencyLimit: int = Field(
        default=1, ge=0, description="accepted for Kestra compatibility; iterations always "
                                     "run one at a time")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        items = ctx.render(self.values) if isinstance(self.values, str) else self.values
        if isinstance(items, str):
            try:
                items = json.loads(items)
            except ValueError:
                raise TaskFailure(f"values must be a list (or JSON text of one), got "
                                  f"{items[:80]!r}") from None
        if not isinstance(items, list | tuple):
            raise TaskFailure(f"values must be a list, got {type(items).__name__}")
        for item in items:
            ctx.run_iteration(self.tasks, self, item)
        return {"count": len(items)}


_FUNCTIONS: dict[str, Callable[..., Any]] = {}


def _load_function(task_id: str, spec: str) -> Callable[..., Any]:
    """Import ``module:attr.path`` once per process; failures become :class:`TaskFailure`."""
    cached = _FUNCTIONS.get(spec)
    if cached is not None:
        return cached
    module_name, _, attr_path = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr_path.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise TaskFailure(
            f"core.Python {task_id}: cannot load function {spec}: {type(exc).__name__}: {exc}"
        ) from None
    if not callable(target):
        raise TaskFailure(f"core.Python {task_id}: {spec} is not callable")
    function: Callable[..., Any] = target
    _FUNCTIONS[spec] = function
    return function


@task_type("core.Python")
class Python(TaskBase):
    """Call ``function(context, **args)``: ``context`` is the expression context (read-only
    by convention), ``args`` are rendered.

    The function is imported once per process. A dict result is the task's outputs; any
    other non-None result is output as ``{"result": value}``; ``None`` gives no outputs.
    A missing module or attribute fails the task with a message naming the function;
    exceptions raised by the function itself fail the attempt as they are.
    """

    type: Literal["core.Python"] = Field(description="the task type")
    function: str = Field(pattern=FUNCTION_PATTERN,
                          description="function to call as `package.module:function` "
                                      "(importable on the worker)")
    args: dict[str, Any] = Field(default_factory=dict,
                                 description="keyword arguments (rendered) passed after the "
                                             "context")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        fn = _load_function(self.id, self.function)
        args = ctx.render(self.args) if self.args else {}
        result = fn(ctx.vars, **args)
        if result is None:
            return None
        if isinstance(result, dict):
            return {str(key): value for key, value in result.items()}
        return {"result": result}
