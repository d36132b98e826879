"""Unit-test helpers for task types: resolve ``AnyTask`` and a small fake ``RunContext``."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jinja2.nativetypes import NativeEnvironment
from pydantic import TypeAdapter

import waxflow.connectors.http
import waxflow.connectors.notify
import waxflow.core_tasks  # noqa: F401  (registers core.*)
from waxflow.tasks import TaskBase


def resolve_task_union() -> Any:
    """The discriminated union of every registered task type, with ``AnyTask`` resolved in
    each model: the flow loader's own (:func:`waxflow.dataflows.spec.task_union`, built once),
    so tests and flow files see the same models, aliases included."""
    from waxflow.dataflows.spec import task_union

    return task_union()


def parse_task(data: Mapping[str, Any]) -> Any:
    """Validate one task mapping (as loaded from YAML) into its task model."""
    return TypeAdapter(resolve_task_union()).validate_python(dict(data))


class FakeContext:
    """A RunContext that renders with Jinja's native environment and records what ran."""

    def __init__(self, variables: Mapping[str, Any] | None = None) -> None:
        self._vars: dict[str, Any] = {"outputs": {}, **(variables or {})}
        self._env = NativeEnvironment()
        self._lock = threading.Lock()
        self.logs: list[tuple[str, str]] = []
        self.ran: list[str] = []
        self.parallel: list[tuple[list[str], int]] = []
        self.parents: list[str] = []

    @property
    def vars(self) -> Mapping[str, Any]:
        return self._vars

    def render(self, value: Any) -> Any:
        if isinstance(value, str):
            if "{{" in value or "{%" in value:
                return self._env.from_string(value).render(self._vars)
            return value
        if isinstance(value, dict):
            return {k: self.render(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.render(v) for v in value]
        return value

    def _run_one(self, task: TaskBase) -> None:
        with self._lock:
            self.ran.append(task.id)
        out = task.run(self)
        if out is not None:
            with self._lock:
                self._vars["outputs"][task.id] = out

    def run_tasks(self, tasks: Sequence[TaskBase], parent: TaskBase) -> None:
        self.parents.append(parent.id)
        for task in tasks:
            self._run_one(task)

    def run_parallel(self, tasks: Sequence[TaskBase], parent: TaskBase, concurrency: int) -> None:
        self.parallel.append(([t.id for t in tasks], concurrency))
        with ThreadPoolExecutor(max_workers=concurrency or len(tasks)) as pool:
            for future in [pool.submit(self._run_one, t) for t in tasks]:
                future.result()

    def log(self, level: str, message: str) -> None:
        self.logs.append((level, message))
