"""How ``core.Subflow`` finds and runs its child flow (installed by the compiler).

The semantics and guarantees are :mod:`waxflow.subflow`'s. Here: child flows are looked up
by namespace and id among the flow files of ``$WAXFLOW_FLOWS_PATH`` (else the current
directory), loaded and validated once per process, and each runs on its own engine (its
templates compiled once) with the parent's batch scope, so its Kafka output joins the
parent's transaction. The child's log lines are added to the parent's execution, their task
id prefixed with the Subflow task's (``handle/show``).

It also installs what the core cannot reach: ForEachItem's batch files (:class:`StorageItems`)
and the ``read(uri)`` expression function, both on internal storage
(:mod:`waxflow.connectors.storage`); ``read`` reads only files under its location.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import yaml

from waxflow.connectors import storage
from waxflow.dataflows.spec import parse_flow
from waxflow.errors import FlowError
from waxflow.execution import Execution, State, TriggerInfo
from waxflow.expressions import Expressions, install_reader, tojson
from waxflow.flow import FlowBase, InputError
from waxflow.operators.engine import Engine
from waxflow.subflow import ChildFlowTask, ChildRun, install, install_files
from waxflow.tasks import RunContext, TaskFailure

_ENGINES: dict[tuple[str, str], Engine] = {}
_LOCK = threading.Lock()


def _search_dirs() -> list[tuple[Path, bool]]:
    """(directory, recursive) to look for flow files in."""
    path = os.environ.get("WAXFLOW_FLOWS_PATH")
    if path:
        return [(Path(p), True) for p in path.split(os.pathsep) if p]
    return [(Path.cwd(), False)]


def _flow_files() -> Iterator[Path]:
    for folder, recursive in _search_dirs():
        for pattern in ("*.yaml", "*.yml"):
            yield from sorted(folder.rglob(pattern) if recursive else folder.glob(pattern))


def searched() -> str:
    """Where :func:`locate_flow` looks, for messages."""
    path = os.environ.get("WAXFLOW_FLOWS_PATH")
    return f"$WAXFLOW_FLOWS_PATH={path}" if path else f"{Path.cwd()} ($WAXFLOW_FLOWS_PATH unset)"


def locate_flow(namespace: str, flow_id: str) -> Path | None:
    """The first flow file (see module doc) whose ``id`` and ``namespace`` are these; None
    when there is none (files that do not load as YAML are passed over)."""
    for path in _flow_files():
        try:
            head = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if (isinstance(head, dict) and head.get("id") == flow_id
                and head.get("namespace") == namespace):
            return path
    return None


def find_flow(namespace: str, flow_id: str) -> FlowBase:
    """The validated flow ``namespace.flow_id`` (see module doc); TaskFailure naming where
    it looked, or the file's first problem when the flow file does not validate."""
    path = locate_flow(namespace, flow_id)
    if path is None:
        raise TaskFailure(f"no flow {namespace}.{flow_id} among the flow files of {searched()}")
    try:
        return parse_flow(path)
    except FlowError as exc:
        first = exc.problems[0] if exc.problems else None
        raise TaskFailure(f"subflow {namespace}.{flow_id} ({path}) is not valid: {first}"
                          ) from None


def _engine(namespace: str, flow_id: str) -> Engine:
    key = (namespace, flow_id)
    with _LOCK:
        engine = _ENGINES.get(key)
    if engine is None:
        from waxflow.dataflows.compiler import flow_globals

        child = find_flow(namespace, flow_id)
        # each run sets its own ``inputs`` (run_subflow): the globals hold none
        engine = Engine(child, Expressions(extra_globals=flow_globals(child, {})))
        with _LOCK:
            engine = _ENGINES.setdefault(key, engine)
    return engine


def run_subflow(ctx: RunContext, task: ChildFlowTask, inputs: dict[str, Any],
                iteration: int | None, labels: dict[str, str]) -> ChildRun:
    """Run the child of ``task`` to its end inside the calling task (module doc of
    :mod:`waxflow.subflow`): the task's outputs, and how to add the child's log lines to the
    parent's execution. ``iteration`` (ForEachItem's batch number) ends the child's id.
    Safe to call from several threads at once for the same parent (ForEachItem)."""
    engine = _engine(task.namespace, task.flowId)
    child = engine.flow
    try:
        values = child.input_values(inputs)
    except InputError as exc:
        raise TaskFailure(f"subflow {task.namespace}.{task.flowId}: {exc}") from None
    parent: Mapping[str, Any] = ctx.vars.get("execution") or {}
    taskrun: Mapping[str, Any] = ctx.vars.get("taskrun") or {}
    flow: Mapping[str, Any] = ctx.vars.get("flow") or {}
    parent_id = str(parent.get("id", ""))
    child_id = f"{parent_id}.{taskrun.get('id') or task.id}"
    if iteration is not None:
        child_id += f".{iteration}"
    labels = {**(dict(ctx.vars.get("labels") or {}) if task.inheritLabels else {}),
              **child.labels, **labels}
    execution = Execution(id=child_id, namespace=child.namespace, flow_id=child.id,
                          trigger=TriggerInfo(type="core.Subflow"), upstream_id=parent_id,
                          labels=labels)
    trigger = {"executionId": parent_id, "namespace": flow.get("namespace"),
               "flowId": flow.get("id")}
    run = engine.begin(execution, trigger, ctx.batch)
    run.vars["inputs"] = values  # type: ignore[index]  # the execution's own variables
    engine.advance(run)  # not deferrable: retries wait in place, it returns when terminal
    if child.outputs:  # Kestra: the child's flow-level outputs (none when it failed)
        child_outputs: dict[str, Any] = dict(execution.outputs or {})
    else:  # waxflow's older reading, for a child without flow-level outputs
        child_outputs = {r.task_id: r.outputs for r in execution.task_runs
                         if r.outputs is not None and r.state in (State.SUCCESS, State.WARNING)}
    out: dict[str, Any] = {"executionId": child_id, "state": execution.state.name,
                           "outputs": child_outputs}
    if execution.error:
        out["error"] = dict(execution.error)

    def flush() -> None:
        caller = getattr(ctx, "execution", None)  # the parent's history shows the child's logs
        if isinstance(caller, Execution):
            for line in execution.logs or []:
                caller.log(line["level"], line["message"],
                           task_id=f"{task.id}/{line['taskId']}",
                           task_run_id=line["taskRunId"], attempt=line["attempt"])

    return ChildRun(out, flush)


def concurrency_limit(namespace: str, flow_id: str) -> int | None:
    """The ``concurrency.limit`` of the child flow ``namespace.flow_id`` (None: it sets
    none); TaskFailure as :func:`find_flow` when there is no such valid flow."""
    limit = _engine(namespace, flow_id).flow.concurrency
    return limit.limit if limit is not None else None


class StorageItems:
    """ForEachItem's batch files, in internal storage (:class:`waxflow.subflow.ItemFiles`)."""

    def split(self, uri: str, prefix: str, *, rows: int | None, partitions: int | None,
              separator: str) -> list[str]:
        """Cut the file ``uri`` into batches of ``rows`` lines (or ``partitions`` batches of
        about equal size), each stored as ``<prefix>/<n>.<ext>``; a binary ION file is cut by
        records, each batch written as JSON lines. An empty file has no batch."""
        try:
            data = storage_bytes(uri)
        except ValueError as exc:
            raise TaskFailure(f"items: {exc}") from None
        if data.startswith(storage.ION_BVM):
            lines = [tojson(r) for r in storage.parse_records(data)]
            sep, ext = "\n", "jsonl"
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise TaskFailure(f"items {uri} is neither text nor ION") from None
            lines = [line for line in text.split(separator) if line.strip()]
            sep, ext = separator, PurePosixPath(urlparse(uri).path).suffix[1:] or "txt"
        if not lines:
            return []
        size = rows or 1
        if partitions:
            size = -(-len(lines) // partitions)
        store = storage.Storage()
        out = []
        for n, start in enumerate(range(0, len(lines), size), start=1):
            chunk = sep.join(lines[start:start + size]) + sep
            out.append(store.put_data(f"{prefix}/{n}.{ext}", chunk.encode("utf-8")))
        return out

    def write_lines(self, name: str, lines: list[dict[str, Any]]) -> str:
        """Store ``lines`` as JSON lines named ``name``; its URI."""
        text = "".join(tojson(line) + "\n" for line in lines)
        return storage.Storage().put_data(name, text.encode("utf-8"))


def storage_bytes(uri: str) -> bytes:
    """The content of an internal storage file; ValueError for anything outside the storage
    location (another path, another bucket)."""
    store = storage.Storage()
    if store.base.startswith("s3://"):
        if not uri.startswith(store.base + "/"):
            raise ValueError(f"{uri} is not in internal storage ({store.origin})")
    else:
        root = Path(store.base.removeprefix("file://")).resolve()
        if not storage.local_path(uri).resolve().is_relative_to(root):
            raise ValueError(f"{uri} is not in internal storage ({store.origin})")
    try:
        return storage.read_bytes(uri)
    except storage.StorageError as exc:
        raise ValueError(str(exc)) from None


def read_storage_text(uri: str) -> str:
    """``read(uri)``: the text of an internal storage file (:func:`storage_bytes`)."""
    try:
        data = storage_bytes(uri)
    except ValueError as exc:
        raise ValueError(f"read(): {exc}") from None
    if data.startswith(storage.ION_BVM):
        raise ValueError(f"read(): {uri} is binary ION, not text (convert it first, e.g. "
                         "with serdes.IonToJson)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"read(): {uri} is not UTF-8 text") from None


install(run_subflow, concurrency_limit)
install_files(StorageItems())
install_reader(read_storage_text)
