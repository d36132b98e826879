"""JSONata transforms (Kestra's ``io.kestra.plugin.transform.jsonata`` tasks), evaluated by
``jsonata-python`` (a pure-Python port of the JSONata reference implementation).

``jsonata.TransformValue`` transforms one value (``from``: a JSON text or a rendered value
such as ``{{ trigger.value }}``) and outputs ``value``. ``jsonata.TransformItems`` transforms
each record of an ION file (``from``: an internal-storage URI) and stores the results as a
new ION file (``uri``, ``processedItemsTotal``); with ``explodeArray`` an array result gives
one record per item.

Guarantees: an expression without ``{{`` is compiled when the flow is validated, so a syntax
error fails ``waxflow validate`` naming the property; one with a template is rendered, then
compiled, per run. Each evaluation has its own variable frame (the compiled expression is
shared by threads). Every evaluation error fails the task with JSONata's message on one line.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from waxflow.connectors.serdes_tasks import execution_file_name
from waxflow.connectors.storage import Storage, StorageError, read_records
from waxflow.tasks import RunContext, TaskBase, TaskFailure, task_type

__all__ = ["TransformItems", "TransformValue"]

_PACKAGE = "jsonata-python"


@functools.lru_cache(maxsize=256)
def _compiled(expression: str) -> Any:
    """The compiled expression (ValueError with JSONata's reason, on one line)."""
    try:
        import jsonata  # type: ignore[import-untyped]
    except ImportError:
        raise ValueError(f"JSONata needs the {_PACKAGE} package (pip install {_PACKAGE})"
                         ) from None
    try:
        return jsonata.Jsonata(expression)
    except Exception as exc:
        raise ValueError(f"not a valid JSONata expression: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _plain(value: Any) -> Any:
    """A JSONata result as plain JSON-like values (its sequences are list subclasses)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class _Jsonata(TaskBase):
    """``expression`` and ``maxDepth``, shared by the JSONata tasks."""

    expression: str = Field(description="the JSONata expression (rendered when it holds a "
                                        "template)")
    maxDepth: int = Field(default=1000, ge=1,
                          description="accepted for Kestra compatibility: evaluation depth "
                                      "is bounded by Python's recursion limit")

    @field_validator("expression")
    @classmethod
    def _compiles(cls, value: str) -> str:
        if "{{" not in value and "{%" not in value:
            _compiled(value)
        return value

    def _evaluate(self, ctx: RunContext, data: Any) -> Any:
        source = self.expression
        if "{{" in source or "{%" in source:
            source = str(ctx.render(source))
        try:
            expr = _compiled(source)
        except ValueError as exc:
            raise TaskFailure(str(exc)) from None
        try:
            return _plain(expr.evaluate(data, {}))  # {}: a frame of its own (thread-safe)
        except RecursionError:
            raise TaskFailure("JSONata evaluation nested too deep") from None
        except Exception as exc:
            raise TaskFailure(f"JSONata evaluation failed: {_one_line(exc)}") from None


@task_type("jsonata.TransformValue",
           aliases=("io.kestra.plugin.transform.jsonata.TransformValue",))
class TransformValue(_Jsonata):
    """Transform one value with a JSONata expression; outputs ``value``."""

    BLOCKING: ClassVar[bool] = False
    type: Literal["jsonata.TransformValue"] = Field(description="the task type")
    from_: Any = Field(alias="from", description="the value (rendered): JSON text, or a "
                                                 "value such as `{{ trigger.value }}`")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        data = ctx.render(self.from_)
        if isinstance(data, str | bytes):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise TaskFailure(f"`from` is not JSON: {exc}") from None
        return {"value": self._evaluate(ctx, data)}


@task_type("jsonata.TransformItems",
           aliases=("io.kestra.plugin.transform.jsonata.TransformItems",))
class TransformItems(_Jsonata):
    """Transform each record of an ION file with a JSONata expression into a new ION file;
    outputs ``uri`` and ``processedItemsTotal``."""

    type: Literal["jsonata.TransformItems"] = Field(description="the task type")
    from_: str = Field(alias="from", description="the ION file (rendered internal-storage "
                                                 "URI, e.g. `{{ outputs.read.uri }}`)")
    explodeArray: bool = Field(default=True,
                               description="an array result gives one record per item")

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        source = str(ctx.render(self.from_))
        out: list[Any] = []
        count = 0
        try:
            for record in read_records(source):
                count += 1
                result = self._evaluate(ctx, record)
                if self.explodeArray and isinstance(result, list):
                    out.extend(result)
                elif result is not None:
                    out.append(result)
        except StorageError as exc:
            raise TaskFailure(f"`from`: {exc}") from None
        try:
            uri, _ = Storage().put_records(execution_file_name(ctx, self.id, "ion"), out)
        except StorageError as exc:
            raise TaskFailure(str(exc)) from None
        return {"uri": uri, "processedItemsTotal": count}
