"""JavaScript file transforms (Kestra's ``io.kestra.plugin.graalvm.js.FileTransform``), run
by V8 through ``mini-racer`` (an embedded V8; no Node.js, no GraalVM).

``js.FileTransform`` reads the rows ``from`` designates (an internal-storage or ``file://``
URI of an ION file, a map, a list, or JSON text of one of them), runs ``script`` once per row
and stores the rows it leaves as a new ION file (output ``uri``). As in Kestra, the script
sees the row as the variable ``row`` and:

* leaves ``row`` as it is, or changes it, or assigns a new value: that value is written;
* sets ``row = null``: the row is dropped;
* sets ``rows`` to an array: its items are written instead of ``row`` (one row becomes
  several, or none with ``[]``);
* may call ``logger.info/debug/warn/error(format, ...args)`` (``{}`` placeholders, Kestra's
  SLF4J style): the lines go to the task's log.

``row`` and ``rows`` are assigned, not declared (``let row`` is a syntax error). Rows reach
the script as JSON: ION timestamps become ISO-8601 text, decimals numbers, blobs base64 text
(:func:`waxflow.expressions.tojson`); a row the script returns must be JSON-serializable
(``undefined`` fields are dropped, as ``JSON.stringify`` does).

Guarantees: a script without ``{{`` is compiled when the flow is validated, so a syntax error
fails ``waxflow validate`` naming the property and the script's line; one with a template is
rendered once per run (with the flow's variables, never per row), then compiled. Each run
has a V8 context of its own (runs of several executions never share globals). A script error
fails the task naming the row's index, the script's line and V8's message, on one line; the
task's ``timeout`` also bounds the script (V8 is terminated, not abandoned). Rows are
processed in order, one at a time: ``concurrent`` is accepted and changes nothing.

Memory: each run's V8 heap is capped at ``$WAXFLOW_JS_MAX_MEMORY_MB`` mebibytes (default
512; the rows read from ``from`` count, as JSON objects in V8). A script that allocates
past it is stopped by V8 and fails the task with one line naming the task and the limit;
the process, its other executions and V8 itself go on (without the cap, V8 aborts the whole
process when its heap is exhausted). A value that is not a whole number of at least
:data:`MIN_MEMORY_MB` fails the task naming the variable.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from waxflow.connectors.serdes_tasks import execution_file_name
from waxflow.connectors.storage import Storage, StorageError, read_records
from waxflow.expressions import tojson
from waxflow.tasks import RunContext, TaskBase, TaskFailure, task_type

__all__ = ["DEFAULT_MEMORY_MB", "MEMORY_ENV", "MIN_MEMORY_MB", "FileTransform",
           "memory_limit_mb"]

_PACKAGE = "mini-racer"
#: the environment variable capping a run's V8 heap (MiB), its default and its floor (V8
#: needs a few MiB for an empty context and the driver)
MEMORY_ENV = "WAXFLOW_JS_MAX_MEMORY_MB"
DEFAULT_MEMORY_MB = 512
MIN_MEMORY_MB = 16
#: the row function's first line holds the script's first line, so V8's line numbers are
#: the script's
_ROW_FUNCTION = "function __waxflow_row(row, rows) {"
_DRIVER = r"""
var __waxflow_log = [];
function __waxflow_format(args) {
  var text = String(args[0]);
  var i = 1;
  text = text.replace(/\{\}/g, function () {
    if (i >= args.length) return "{}";
    var v = args[i++];
    return typeof v === "string" ? v : JSON.stringify(v);
  });
  return text;
}
var logger = {};
["trace", "debug", "info", "warn", "error"].forEach(function (level) {
  logger[level] = function () {
    __waxflow_log.push([level.toUpperCase(), __waxflow_format(arguments)]);
  };
});
function __waxflow_all(text) {
  var input = JSON.parse(text), out = [];
  for (var i = 0; i < input.length; i++) {
    var r;
    try {
      r = __waxflow_row(input[i], undefined);
    } catch (e) {
      return JSON.stringify({index: i, error: String(e && e.stack || e), log: __waxflow_log});
    }
    if (r[1] !== undefined && r[1] !== null) {
      if (!Array.isArray(r[1])) {
        return JSON.stringify({index: i, error: "`rows` must be an array, got " + typeof r[1],
                               log: __waxflow_log});
      }
      for (var j = 0; j < r[1].length; j++) out.push(r[1][j] === undefined ? null : r[1][j]);
    } else if (r[0] !== null && r[0] !== undefined) {
      out.push(r[0]);
    }
  }
  return JSON.stringify({rows: out, log: __waxflow_log});
}
"""


def _engine() -> Any:
    try:
        from py_mini_racer import MiniRacer
    except ImportError:
        raise ValueError(f"JavaScript needs the {_PACKAGE} package (pip install {_PACKAGE})"
                         ) from None
    return MiniRacer()


def memory_limit_mb() -> int:
    """``$WAXFLOW_JS_MAX_MEMORY_MB`` (default :data:`DEFAULT_MEMORY_MB`); TaskFailure when it
    is not a whole number of at least :data:`MIN_MEMORY_MB`."""
    raw = os.environ.get(MEMORY_ENV, "").strip().replace("_", "")
    if not raw:
        return DEFAULT_MEMORY_MB
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < MIN_MEMORY_MB:
        raise TaskFailure(f"${MEMORY_ENV}={raw!r}: expected a whole number of MiB, at least "
                          f"{MIN_MEMORY_MB}")
    return value


def _program(script: str) -> str:
    return f"{_ROW_FUNCTION}{script}\n;return [row, rows];\n}}\n{_DRIVER}"


def _js_message(exc: BaseException) -> str:
    """V8's message on one line, with the script's line when V8 names one."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    where = re.search(r"(?:<anonymous>|__waxflow_row \(<anonymous>):(\d+)", text)
    errors = [ln for ln in lines if re.match(r"^(Uncaught )?[A-Za-z]*Error\b", ln)]
    message = errors[0] if errors else (lines[0] if lines else type(exc).__name__)
    message = re.sub(r"^<anonymous>:\d+:\s*", "", message)
    return (f"line {where.group(1)}: " if where else "") + message[:300]


@functools.lru_cache(maxsize=64)
def _check_syntax(script: str) -> None:
    """ValueError naming the line when ``script`` is not valid JavaScript."""
    engine = _engine()
    try:
        engine.eval(_program(script), timeout_sec=10)
    except Exception as exc:
        raise ValueError(f"not valid JavaScript: {_js_message(exc)}") from None
    finally:
        engine.close()


def _rows(source: Any) -> Iterator[Any]:
    """The rows ``from`` designates (see the module doc)."""
    if isinstance(source, str):
        text = source.strip()
        if text.startswith(("[", "{")):
            try:
                source = json.loads(text)
            except ValueError as exc:
                raise TaskFailure(f"`from` is neither a file URI nor JSON: {exc}") from None
        elif not text:
            raise TaskFailure("`from` rendered to an empty string, expected a file URI")
        else:
            try:
                yield from read_records(text)
            except StorageError as exc:
                raise TaskFailure(f"`from`: {exc}") from None
            except Exception as exc:  # a file that is not ION
                raise TaskFailure(f"`from` file {text} is not an ION file: "
                                  f"{type(exc).__name__}: {str(exc)[:200]}") from None
            return
    if isinstance(source, dict):
        yield source
    elif isinstance(source, list):
        yield from source
    else:
        raise TaskFailure(f"`from` must be a file URI, a map or a list, got "
                          f"{type(source).__name__}")


@task_type("js.FileTransform", aliases=("io.kestra.plugin.graalvm.js.FileTransform",
                                        "io.kestra.plugin.scripts.nashorn.FileTransform"))
class FileTransform(TaskBase):
    """Transform each row of a file with a JavaScript script (``row``; ``row = null`` drops
    it, ``rows = [...]`` emits several) into a new ION file; outputs ``uri``."""

    BLOCKING: ClassVar[bool] = True  # file I/O and user code
    type: Literal["js.FileTransform"] = Field(description="the task type")
    from_: Any = Field(alias="from",
                       description="the rows (rendered): an ION file's internal-storage or "
                                   "file:// URI (e.g. `{{ outputs.read.uri }}`), a map, a "
                                   "list, or JSON text of one of them")
    script: str = Field(min_length=1,
                        description="JavaScript run once per row: it reads and assigns `row` "
                                    "(null drops the row) or assigns `rows` (an array: several "
                                    "rows); `logger.info('{}', x)` logs; rendered once per run "
                                    "when it holds a template")
    concurrent: int | None = Field(
        default=None, ge=2, description="accepted for Kestra compatibility: rows are "
                                        "transformed in order, one at a time")

    model_config = {**TaskBase.model_config, "populate_by_name": True}

    @field_validator("script")
    @classmethod
    def _compiles(cls, value: str) -> str:
        if "{{" not in value and "{%" not in value:
            _check_syntax(value)
        return value

    def run(self, ctx: RunContext) -> dict[str, Any] | None:
        script = self.script
        if "{{" in script or "{%" in script:
            script = str(ctx.render(script))
        rows = list(_rows(ctx.render(self.from_)))
        try:
            payload = tojson(rows)
        except (TypeError, ValueError) as exc:
            raise TaskFailure(f"a row of `from` has no JSON form: {exc}") from None
        timeout = self.timeout.total_seconds() if self.timeout is not None else None
        limit_mb = memory_limit_mb()
        try:
            engine = _engine()
        except ValueError as exc:
            raise TaskFailure(str(exc)) from None
        try:
            engine.set_hard_memory_limit(limit_mb * 1024 * 1024)
            try:
                engine.eval(_program(script), timeout_sec=10)
            except Exception as exc:
                raise TaskFailure(f"`script` is not valid JavaScript: {_js_message(exc)}"
                                  ) from None
            try:
                result = json.loads(engine.call("__waxflow_all", payload,
                                                timeout_sec=timeout))
            except TimeoutError:
                # V8 reports the terminated call later, on the engine's event loop: one more
                # (queued) evaluation lets that report land before the engine closes
                engine.eval("0")
                raise TaskFailure(f"`script` timed out after {timeout:g}s") from None
            except Exception as exc:
                if engine.was_hard_memory_limit_reached():
                    raise TaskFailure(
                        f"js.FileTransform {self.id}: the script used more than the "
                        f"{limit_mb} MiB V8 memory limit and was stopped (raise "
                        f"${MEMORY_ENV}, or transform fewer rows per run)") from None
                raise TaskFailure(f"`script` failed: {_js_message(exc)}") from None
        finally:
            engine.close()
        for level, line in result.get("log", []):
            ctx.log(level, str(line))
        if "error" in result:
            raise TaskFailure(f"`script` failed on row {result['index']}: "
                              f"{_js_message(RuntimeError(result['error']))}")
        try:
            uri, _ = Storage().put_records(execution_file_name(ctx, self.id, "ion"),
                                           result["rows"])
        except StorageError as exc:
            raise TaskFailure(str(exc)) from None
        return {"uri": uri}
