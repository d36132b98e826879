"""The compiled per-record path of simple realtime flows: a flow compiled once into a function
over plain data, run over a batch of records in one tight loop.

What it guarantees: for every record it runs, the same terminal document as the general path
(:mod:`waxflow.operators.engine` + :meth:`Execution.to_json
<waxflow.execution.Execution.to_json>`: the same keys, order and values; only dates,
durations and ``runId`` differ, as between two runs), the same ``kafka.Produce`` records
(topic, key, value, headers, partition, timestamp), the same log lines (printed on stderr
through ``waxflow.task`` too), and — through :meth:`Pipeline.submit_fast
<waxflow.operators.pipeline.Pipeline.submit_fast>` — the same bookkeeping: outputs enqueued on
the quiet producers, then the terminal document; the offset is done only at the first
snapshot after the broker acknowledged both (G1); a failed record makes the execution FAILED
(:meth:`FastRun.execution` builds the very :class:`~waxflow.execution.Execution` the general
path would have, which is then failed and documented again).

When a flow takes it (:func:`compile_flow`; anything else returns None: the general path,
unchanged): a consumer-group ``kafka.RealtimeTrigger`` flow run inline in quiet mode, whose
tasks are only ``core.Set``, ``core.Switch``, ``core.If``, ``core.Log``, ``core.Return`` and
``kafka.Produce`` (nested in Switch/If; a transactional one only where the flow's
transactions take its producer properties), with no ``runIf``, ``timeout``,
``finally``, flow ``outputs`` or ``afterExecution`` (``retry``, ``allowFailure`` and
``errors`` only matter when a task fails, and then the record falls back); whose every
template is a constant, a path or one :mod:`waxflow.template_direct` evaluates, and reads
only ``trigger``, ``outputs``, ``flow``, ``labels``, ``env`` or ``execution``.
A transactional Produce's records are held for the epoch's transaction as the general path
holds them; the execution object a refused record fails is built then.

When a record falls back (:meth:`CompiledFlow.run` returns None, nothing of it emitted yet):
any exception while running its tasks (a failing task: the general path records it), a
document that would hold a NaN or infinity or exceed ``VALUE_MAX_BYTES`` (the general path
trims it), a log message over that size, more log lines than ``LOG_LINES``. A batch goes to
the general path whole when a secret is registered (documents are redacted there) or the
job is stopping. ``$WAXFLOW_FASTPATH=0`` turns the path off.

Differences, by design: the clock is read twice per record, so each attempt carries the
execution's start and end dates; with metrics on, the pipeline counts each run once
settled from :meth:`FastRun.metric` (no document parsed). An at-least-once record the
client refuses at once (e.g. over ``message.max.bytes``) sends the execution back to the
general path if it was its first record (nothing sent yet), and is a failed delivery of
the execution otherwise (FAILED at the snapshot, where the general path fails the task at
once).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jinja2
import jinja2.meta

from waxflow.connectors.kafka_produce import Prepared, Produce, load_records
from waxflow.core_tasks import If, Log, Return, Set, Switch, is_truthy, switch_key
from waxflow.execution import (
    DOC_MAX_BYTES,
    LOG_LINES,
    VALUE_MAX_BYTES,
    Attempt,
    Execution,
    State,
    TaskRun,
    TriggerInfo,
    from_us,
    iso_us,
    json_scalar,
    json_value,
    jsonable,
    now,
    now_us,
    run_id,
)
from waxflow.execution import encode_json as _encode
from waxflow.expressions import Expressions, redact
from waxflow.flow import FlowBase
from waxflow.logs import line_level, python_level
from waxflow.records import Decoded, headers_text
from waxflow.tasks import TaskBase

LOG = logging.getLogger("waxflow.fastpath")
#: a string's JSON text (what json_scalar writes for one)
_STRING = json.encoder.encode_basestring
TASK_LOG = logging.getLogger("waxflow.task")  # where the engine prints a task's log lines

#: ``$WAXFLOW_FASTPATH``: ``0`` (or ``false``/``off``) keeps every flow on the general path
ENV = "WAXFLOW_FASTPATH"
#: the variables a compiled template may read (the engine's, minus the task's own)
ROOTS = frozenset({"trigger", "outputs", "flow", "labels", "env", "execution"})
#: globals a compiled template may name: values, no side effect, nothing secret
_GLOBALS = frozenset({"dict", "null"})
_PARSER = jinja2.Environment()
_MARKERS = ("{{", "{%", "{#")


def enabled() -> bool:
    """Whether ``$WAXFLOW_FASTPATH`` leaves the path on (the default)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "off", "no")


class NotEligible(Exception):
    """The flow is not one the path takes (the message says why)."""


class _State:
    """One record's run: its variables, task runs, log lines and records to send."""

    __slots__ = ("ctx", "exec_id", "logs", "outputs", "records", "runs")

    def __init__(self, ctx: dict[str, Any], outputs: dict[str, Any], exec_id: str) -> None:
        self.ctx = ctx
        self.outputs = outputs
        self.exec_id = exec_id
        #: [task, outputs] per task run, in the order the engine adds them
        self.runs: list[list[Any]] = []
        self.logs: list[dict[str, Any]] | None = None
        #: (task, records) per Produce task run
        self.records: list[tuple[Produce, list[Prepared]]] = []


Step = Callable[[_State], None]


class FastRun:
    """What one record's execution made: its document, its records to send, its log lines;
    :meth:`execution` builds the execution object the general path would hold."""

    __slots__ = ("_execution", "_flow", "document", "end", "exec_id", "logs", "rec", "records",
                 "rid", "runs", "start", "upstream")

    def __init__(self, *, flow: CompiledFlow, rec: Decoded, exec_id: str, rid: str,
                 start: int, end: int, runs: list[list[Any]],
                 logs: list[dict[str, Any]] | None, upstream: str | None,
                 records: list[tuple[Produce, list[Prepared]]], document: bytes) -> None:
        self._flow = flow
        self.rec = rec
        self.exec_id = exec_id
        self.rid = rid
        self.start = start
        self.end = end
        self.runs = runs
        self.logs = logs
        self.upstream = upstream
        self.records = records
        self.document = document
        self._execution: Execution | None = None

    def execution(self) -> Execution:
        """The execution as the general path holds it (built once, on demand: a record
        that failed its delivery fails it)."""
        if self._execution is None:
            self._execution = self._flow.execution_of(self)
        return self._execution

    def metric(self) -> tuple[str, str, str, float, list[tuple[str, str]]]:
        """What the metrics count of it once done (:data:`waxflow.connectors.metrics.
        Compiled`): its id, flow, topic, duration and task runs (id, type), each a SUCCESS
        in one attempt, as :meth:`execution` builds them."""
        return (self.exec_id, self._flow.name, self.rec.raw.topic,
                (self.end - self.start) / 1_000_000,
                [(meta[0].id, meta[0].type) for meta, _out in self.runs])


class CompiledFlow:
    """One flow compiled for the path (see the module doc); thread-safe."""

    def __init__(self, *, flow: FlowBase, exprs: Expressions, env: Mapping[str, Any],
                 trigger_type: str) -> None:
        """Raises :class:`NotEligible` for a flow the path does not take."""
        if flow.finally_ or flow.outputs or flow.afterExecution:
            raise NotEligible("the flow has finally, outputs or afterExecution")
        self.flow = flow
        #: ``namespace.id``, as metrics label it
        self.name = f"{flow.namespace}.{flow.id}"
        self._exprs = exprs
        self.trigger_type = trigger_type
        self.needs_execution = False
        #: its transactional Produce tasks (their records are held for the epoch's
        #: transaction, :mod:`waxflow.operators.transactions`)
        self.transactional: list[Produce] = []
        self._flow_vars = {"id": flow.id, "namespace": flow.namespace}
        self._labels = flow.labels
        self._env = env
        self._steps = self._compile_list(flow.tasks, None)
        self.produces = any(isinstance(t, Produce) for _, t in flow.all_tasks())
        # constant text of the document
        self._head = ('{"id":', f',"namespace":{json_scalar(flow.namespace)},'
                      f'"flowId":{json_scalar(flow.id)},"state":"SUCCESS","terminal":true,'
                      f'"runId":')
        self._trigger_head = f'{{"type":{json_scalar(trigger_type)},"topic":'
        self._labels_text = json_scalar(dict(flow.labels))
        #: the document's text up to a record's partition, by topic
        self._topic_text: dict[str, str] = {}

    # -- compiling -----------------------------------------------------------------------------
    def _template(self, value: Any, where: str) -> Any:
        """``value`` compiled (:meth:`Expressions.compile_value`), checked for the path."""
        self._check(value, where)
        return self._exprs.compile_value(value)

    def _check(self, value: Any, where: str) -> None:
        if isinstance(value, str):
            if not any(m in value for m in _MARKERS):
                return
            if not self._exprs.compile(value).DIRECT:  # Jinja proper: the general path
                raise NotEligible(f"{where}: template {value!r} is not evaluated directly")
            roots = jinja2.meta.find_undeclared_variables(_PARSER.parse(value))
            if not roots <= ROOTS | _GLOBALS:
                raise NotEligible(f"{where}: template {value!r} reads "
                                  f"{sorted(roots - ROOTS - _GLOBALS)}")
            if "execution" in roots:
                self.needs_execution = True
        elif isinstance(value, dict):
            for k, v in value.items():
                self._check(k, where)
                self._check(v, where)
        elif isinstance(value, list | tuple):
            for v in value:
                self._check(v, where)

    def _compile_list(self, tasks: Sequence[TaskBase], parent: TaskBase | None) -> list[Step]:
        return [self._compile(t, parent) for t in tasks if not t.disabled]

    def _compile(self, task: TaskBase, parent: TaskBase | None) -> Step:
        where = f"task {task.id}"
        if task.runIf is not None or task.timeout is not None:
            raise NotEligible(f"{where}: runIf or timeout")
        parent_id = parent.id if parent is not None else None
        prefix = (f'{{"taskId":{json_scalar(task.id)},"type":{json_scalar(task.type)},'
                  f'"parentTaskId":{"null" if parent_id is None else json_scalar(parent_id)},'
                  f'"state":"SUCCESS","attempts":[{{"state":"SUCCESS","startDate":')
        meta = (task, parent_id, prefix)
        task_id = task.id
        if type(task) is Set:
            values = [(k, self._template(v, where)) for k, v in task.values.items()]

            def set_(st: _State) -> None:
                entry: list[Any] = [meta, None]
                st.runs.append(entry)
                ctx = st.ctx
                out = {k: t.render(ctx) for k, t in values}
                entry[1] = st.outputs[task_id] = out
            return set_
        if type(task) is Return:
            fmt = self._template(task.format, where) if task.format is not None else None

            def return_(st: _State) -> None:
                entry: list[Any] = [meta, None]
                st.runs.append(entry)
                out = {"value": None if fmt is None else fmt.render(st.ctx)}
                entry[1] = st.outputs[task_id] = out
            return return_
        if type(task) is Switch:
            value = self._template(task.value, where)
            cases = {k: self._compile_list(ts, task) for k, ts in task.cases.items()}
            defaults = self._compile_list(task.defaults, task)

            def switch(st: _State) -> None:
                entry: list[Any] = [meta, None]
                st.runs.append(entry)
                key = switch_key(value.render(st.ctx))
                steps = cases.get(key)
                for step in (defaults if steps is None else steps):
                    step(st)
                entry[1] = st.outputs[task_id] = {"value": key, "defaults": steps is None}
            return switch
        if type(task) is If:
            condition = self._template(task.condition, where)
            then = self._compile_list(task.then, task)
            else_ = self._compile_list(task.else_, task)

            def if_(st: _State) -> None:
                entry: list[Any] = [meta, None]
                st.runs.append(entry)
                result = is_truthy(condition.render(st.ctx))
                for step in (then if result else else_):
                    step(st)
                entry[1] = st.outputs[task_id] = {"condition": result}
            return if_
        if type(task) is Log:
            message = self._template(task.message, where)
            level = line_level(task.level)

            def log(st: _State) -> None:
                index = len(st.runs)
                st.runs.append([meta, None])
                text = redact(switch_key(message.render(st.ctx)))
                if len(text) > VALUE_MAX_BYTES:
                    raise NotEligible("a long log message")  # the general path cuts it
                line = {"ts": now().isoformat(), "level": level, "taskId": task_id,
                        "taskRunId": f"{st.exec_id[:16]}-{index}", "attempt": 1,
                        "message": text}
                if st.logs is None:
                    st.logs = []
                if len(st.logs) >= LOG_LINES:
                    raise NotEligible("more log lines than kept")
                st.logs.append(line)
            return log
        if type(task) is Produce:
            if task.transactional:
                self.transactional.append(task)
            source = self._template(task.from_, where)
            topic = self._template(task.topic, where) if task.topic else None
            headers = self._template(task.headers, where) if task.headers else None
            task.serializers()  # built once, now: a serializer that cannot be built fails

            def produce(st: _State) -> None:
                entry: list[Any] = [meta, None]
                st.runs.append(entry)
                ctx = st.ctx
                items = load_records(source.render(ctx))
                default_topic = topic.render(ctx) if topic is not None else None
                task_headers = ({k: str(v) for k, v in headers.render(ctx).items()}
                                if headers is not None else {})
                records = task.prepare(items, default_topic, task_headers, st.exec_id)
                st.records.append((task, records))
                entry[1] = st.outputs[task_id] = {"messagesCount": len(records)}
            return produce
        raise NotEligible(f"{where}: type {task.type}")

    # -- running -------------------------------------------------------------------------------
    def run(self, rec: Decoded, exec_id: str) -> FastRun | None:
        """The execution of one decoded record (no serde error, not filtered), or None: the
        general path must run it (module doc). Emits nothing."""
        raw = rec.raw
        start = now_us()  # (microseconds: FastRun's times)
        rid = run_id()
        headers = headers_text(raw.headers)
        outputs: dict[str, Any] = {}
        ctx: dict[str, Any] = {
            "trigger": {
                "key": rec.key, "value": rec.value, "topic": raw.topic,
                "partition": raw.partition, "offset": raw.offset, "timestamp": raw.timestamp,
                "headers": headers, "deliveryCount": raw.delivery_count},
            "outputs": outputs, "flow": self._flow_vars, "labels": self._labels,
            "env": self._env,
        }
        if self.needs_execution:
            ctx["execution"] = {"id": exec_id, "startDate": iso_us(start), "runId": rid,
                                "state": State.RUNNING.value}
        st = _State(ctx, outputs, exec_id)
        try:
            for step in self._steps:
                step(st)
        except Exception:  # the general path runs it (and records the failure)
            return None
        end = now_us()
        upstream = headers.get("waxflow.execution.id")
        try:
            text = self._document(rec, exec_id, rid, start, end, st.runs, st.logs, upstream)
        except ValueError:  # a NaN or infinity: the general path writes it
            return None
        data = text.encode()
        if len(data) > VALUE_MAX_BYTES or len(data) > DOC_MAX_BYTES:
            return None  # the general path trims it
        return FastRun(flow=self, rec=rec, exec_id=exec_id, rid=rid, start=start, end=end,
                       runs=st.runs, logs=st.logs, upstream=upstream, records=st.records,
                       document=data)

    def _document(self, rec: Decoded, exec_id: str, rid: str, start: int,
                  end: int, runs: list[list[Any]], logs: list[dict[str, Any]] | None,
                  upstream: str | None) -> str:
        """:meth:`Execution._json_text` of the execution the general path would hold
        (``exec_id`` and ``rid`` are hex: written without escaping)."""
        raw = rec.raw
        s, e = f'"{iso_us(start)}"', f'"{iso_us(end)}"'  # (json_date of from_us(...))
        attempt_tail = f',"endDate":{e},"error":null}}],"outputs":'
        parts = []
        for (_task, _parent, prefix), out in runs:
            parts.append(f"{prefix}{s}{attempt_tail}"
                         f"{json_value(jsonable(out)) if out else 'null'}}}")
        head, mid = self._head
        # (json_scalar's text, spelled out for the types these fields nearly always have:
        # ids are hex, partitions and offsets ints, a duration a finite float)
        topic = self._topic_text.get(raw.topic)
        if topic is None:
            topic = f'{self._trigger_head}{json_scalar(raw.topic)},"partition":'
            if len(self._topic_text) < 1024:
                self._topic_text[raw.topic] = topic
        partition, offset, key = raw.partition, raw.offset, rec.key
        timestamp, count = raw.timestamp, raw.delivery_count
        trigger = (f'{topic}'
                   f'{partition if type(partition) is int else json_scalar(partition)},'
                   f'"offset":{offset if type(offset) is int else json_scalar(offset)},'
                   f'"key":{_STRING(key) if type(key) is str else json_scalar(jsonable(key))},'
                   f'"timestamp":'
                   f'{timestamp if type(timestamp) is int else json_scalar(timestamp)},'
                   f'"offsets":null,"messagesCount":null,"deliveryCount":'
                   f'{"null" if count is None else json_scalar(count)}}}')
        text = (f'{head}"{exec_id}"{mid}"{rid}","startDate":{s},'
                f'"endDate":{e},"durationMs":'
                f'{float.__repr__((end - start) / 1_000_000 * 1000)},'
                f'"trigger":{trigger},"taskRuns":[{",".join(parts)}],"error":null,'
                f'"upstreamExecutionId":'
                f'{"null" if upstream is None else json_scalar(upstream)},'
                f'"labels":{self._labels_text}')
        if logs:
            text += f',"logs":{_encode(logs)}'
        return text + "}"

    def print_logs(self, run: FastRun) -> None:
        """Print a run's log lines on stderr as the engine does (``waxflow.task``)."""
        for line in run.logs or ():
            TASK_LOG.log(python_level(line["level"]), "[%s %s] %s", run.exec_id[:12],
                         line["taskId"] or "-", line["message"])

    def execution_of(self, run: FastRun) -> Execution:
        """The :class:`Execution` the general path would hold for ``run`` (terminal)."""
        rec, raw = run.rec, run.rec.raw
        execution = Execution(
            id=run.exec_id, namespace=self.flow.namespace, flow_id=self.flow.id,
            trigger=TriggerInfo(type=self.trigger_type, topic=raw.topic,
                                partition=raw.partition, offset=raw.offset,
                                key=jsonable(rec.key), timestamp=raw.timestamp,
                                delivery_count=raw.delivery_count),
            run_id=run.rid, start=from_us(run.start), upstream_id=run.upstream,
            labels=dict(self.flow.labels))
        for (task, parent_id, _prefix), out in run.runs:
            execution.task_runs.append(TaskRun(
                task.id, task.type, parent_id, state=State.SUCCESS,
                attempts=[Attempt(State.SUCCESS, from_us(run.start), from_us(run.end))],
                outputs=out if isinstance(out, dict) else None))
        if run.logs:
            execution.logs = list(run.logs)
        execution.state, execution.end = State.SUCCESS, from_us(run.end)
        return execution


def compile_flow(*, flow: FlowBase, exprs: Expressions, env: Mapping[str, Any],
                 trigger_type: str) -> CompiledFlow | None:
    """The flow compiled for the path, or None (the general path: not eligible, or the path
    is switched off by ``$WAXFLOW_FASTPATH``); logs why at DEBUG."""
    if not enabled():
        return None
    try:
        compiled = CompiledFlow(flow=flow, exprs=exprs, env=env, trigger_type=trigger_type)
    except NotEligible as exc:
        LOG.debug("flow %s.%s takes the general path: %s", flow.namespace, flow.id, exc)
        return None
    except Exception as exc:  # (a template the flow's checks let through): the general path
        LOG.debug("flow %s.%s takes the general path: %s: %s", flow.namespace, flow.id,
                  type(exc).__name__, exc)
        return None
    LOG.info("flow %s.%s: its records run on the compiled per-batch path", flow.namespace,
             flow.id)
    return compiled
