"""Compile a validated flow into a Bytewax ``Dataflow``.

kafka.RealtimeTrigger (consumer group):
``input (KafkaGroupSource) → deserialize → execute → output (DoneSink)``; the commit order
is documented in ``waxflow.operators.checkpoint``. With ``groupType: SHARE`` the input is a
``KafkaShareSource`` (one ShareConsumer per worker) and the execute step hands each
record's outcome back to it for the ack (no step between them moves items). Templates are
compiled here, once per flow.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from waxflow.connectors.execution_log import ExecutionLog
from waxflow.connectors.kafka_config import client_conf
from waxflow.connectors.kafka_output import KafkaOutput
from waxflow.connectors.kafka_source import KafkaGroupSource
from waxflow.connectors.serdes import Deserializer, deserializer
from waxflow.dataflows import subflow_runner  # noqa: F401  (installs core.Subflow's runner)
from waxflow.dataflows.instance import hold_instance as hold_instance  # load_flow's
from waxflow.expressions import Expressions, render_static
from waxflow.flow import (
    BatchTrigger,
    FlowBase,
    KafkaTrigger,
    RealtimeTrigger,
    ScheduleTrigger,
    unused_serde_properties,
)
from waxflow.operators.checkpoint import DoneSink
from waxflow.operators.deserialize import deserialize
from waxflow.operators.engine import Engine
from waxflow.operators.execute import RecordExecutions, execute
from waxflow.operators.executor import Executor
from waxflow.records import RawRecord

LOG = logging.getLogger("waxflow.compiler")


@dataclass(frozen=True)
class RunOptions:
    """Knobs of one run: ``waxflow run`` sets them from its flags."""

    stop_when_idle: float | None = None
    batch_size: int = 500
    max_ticks: int | None = None  # schedule flows: stop after this many ticks
    #: values of the flow's inputs for every execution (the others take their defaults)
    inputs: Mapping[str, Any] = field(default_factory=dict)


def _dataflow(flow: FlowBase) -> Dataflow:
    """An empty Bytewax dataflow named after the flow (Bytewax refuses dots in ids)."""
    return Dataflow(f"{flow.namespace}-{flow.id}".replace(".", "_"))


def _precompile(flow: FlowBase, exprs: Expressions) -> None:
    def walk(value: Any) -> None:
        if isinstance(value, str):
            exprs.compile(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(k)
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for _, task in flow.all_tasks():
        for name, value in task:
            if name not in ("id", "type", "errors"):
                walk(value)


def flow_globals(flow: FlowBase, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """What every execution of ``flow`` reads besides its own variables: ``inputs.*``
    (``inputs``, converted) and ``vars.*`` (the flow's ``variables``)."""
    return {"inputs": dict(inputs), "vars": dict(flow.variables)}


def flow_expressions(flow: FlowBase, inputs: Mapping[str, Any] | None = None) -> Expressions:
    """The expressions of ``flow``, with its ``inputs.*`` (the given values, else the
    defaults, converted once: :meth:`FlowBase.input_values` raises
    :class:`~waxflow.flow.InputError`) and ``vars.*`` in every execution's context."""
    return Expressions(extra_globals=flow_globals(flow, flow.input_values(inputs)))


def build_executor(flow: FlowBase, *, standalone: bool = False,
                   inputs: Mapping[str, Any] | None = None) -> Executor:
    """The execution runner of ``flow`` (templates compiled once, here).

    ``standalone``: executions run outside the consumer-group dataflow (replay, test), so a
    transactional Produce commits its own transaction instead of the batch's. ``inputs``:
    values of the flow's inputs (a triggered flow takes their defaults).
    """
    enabled = flow.enabled_triggers
    trig = enabled[0] if enabled else None  # None: a manual flow (run once)
    exprs = flow_expressions(flow, inputs)
    _precompile(flow, exprs)
    conf = client_conf(trig.properties if isinstance(trig, KafkaTrigger) else None)

    def log_factory() -> ExecutionLog:
        return ExecutionLog({k: v for k, v in conf.items()
                             if not k.startswith(("isolation.", "auto.offset", "group.", "share.",
                                                   "max.poll"))})

    group_conf = ({**conf, "group.id": trig.groupId}
                  if isinstance(trig, KafkaTrigger) and trig.groupType == "CONSUMER"
                  and not standalone else None)
    realtime = trig if isinstance(trig, RealtimeTrigger) else None
    return Executor(
        engine=Engine(flow, exprs), log_factory=log_factory,
        output=KafkaOutput(f"{flow.namespace}.{flow.id}", group_conf),
        stop_on_failure=isinstance(trig, KafkaTrigger) and trig.onFailure == "STOP",
        max_concurrency=_max_concurrency(flow, realtime),
        key_ordering=realtime is not None and realtime.keyOrdering,
        # a batch, a tick or a manual run may run long: the history shows it RUNNING from
        # its start
        running_docs=None if realtime is not None else True)


def _max_concurrency(flow: FlowBase, realtime: RealtimeTrigger | None) -> int:
    """Executions in flight per worker: the trigger's ``maxConcurrency``, lowered to the
    flow's ``concurrency.limit`` (Kestra's QUEUE: the others wait their turn)."""
    if realtime is None:
        return 1
    limit = flow.concurrency.limit if flow.concurrency is not None else realtime.maxConcurrency
    return min(realtime.maxConcurrency, limit)


def build_runner(flow: FlowBase, *, standalone: bool = False,
                 inputs: Mapping[str, Any] | None = None) -> RecordExecutions:
    """The execute step's batch function of a realtime flow (see :func:`build_executor`)."""
    trig = flow.kafka_trigger
    dlq = trig.onSerdeError.topic if trig.onSerdeError.type == "DLQ" else None
    executor = build_executor(flow, standalone=standalone, inputs=inputs)
    return RecordExecutions(flow=flow, executor=executor, trigger_type=flow.trigger.type,
                            dlq_topic=dlq)


def trigger_deserializer(trig: KafkaTrigger, field: str) -> Deserializer:
    """The trigger's key or value deserializer (AVRO through its schema registry)."""
    name = trig.keyDeserializer if field == "key" else trig.valueDeserializer
    unused = unused_serde_properties(trig.serdeProperties)
    if unused and field == "value":
        LOG.warning("trigger %s: serdeProperties %s select nothing (waxflow reads "
                    "schema.registry.url and basic.auth.user.info; the deserializers are "
                    "keyDeserializer/valueDeserializer, beside serdeProperties)",
                    trig.id, ", ".join(unused))
    if name == "AVRO":
        from waxflow.connectors.avro import avro_deserializer

        return avro_deserializer(render_static(trig.registry_properties()))
    return deserializer(name)


def _compile_schedule(flow: FlowBase, trig: ScheduleTrigger, options: RunOptions
                      ) -> Dataflow:
    from waxflow.operators.schedule import ScheduleSource, TickExecutions, execute_ticks

    runner = TickExecutions(flow=flow, trigger=trig,
                            executor=build_executor(flow, inputs=options.inputs))
    df = _dataflow(flow)
    ticks = op.input("schedule", df, ScheduleSource(trig, options.max_ticks))
    op.output("done", execute_ticks("execute", ticks, runner), DoneSink())
    return df


def _compile_batch(flow: FlowBase, trig: BatchTrigger, options: RunOptions) -> Dataflow:
    from waxflow.connectors.kafka_batch import batch_source
    from waxflow.connectors.storage import Storage
    from waxflow.operators.microbatch import BatchExecutions, execute_batches

    runner = BatchExecutions(flow=flow, trigger=trig,
                             executor=build_executor(flow, inputs=options.inputs),
                             key_de=trigger_deserializer(trig, "key"),
                             value_de=trigger_deserializer(trig, "value"), storage=Storage())
    # a consumer group, or a share group whose batches are acked by their outcome
    source, runner.outcomes = batch_source(client_conf(trig.properties), trig,
                                           idle_stop=options.stop_when_idle)
    df = _dataflow(flow)
    batches = op.input("kafka", df, source)
    op.output("done", execute_batches("execute", batches, runner), DoneSink())
    return df


def _produces(flow: FlowBase, transactional: bool) -> list[Any]:
    """The flow's ``kafka.Produce`` tasks that produce inside their batch's transaction
    (``transactional``), or the others. (A flow with Produce tasks imported their module
    when it was parsed; one without does not import it here, with its libraries.)"""
    module = sys.modules.get("waxflow.connectors.kafka_produce")
    if module is None:
        return []
    return [t for _, t in flow.all_tasks()
            if isinstance(t, module.Produce) and t.transactional == transactional]


def _joins_transaction(flow: FlowBase) -> bool:
    """Whether the flow's executions produce inside their batch's Kafka transaction."""
    return bool(_produces(flow, True))


def _txn_warm_up(flow: FlowBase, runner: RecordExecutions) -> Callable[[], None] | None:
    """Initialise the worker's transactional producers before its source starts reading."""
    confs = [client_conf(t.properties) for t in _produces(flow, True)]
    output = runner.executor.output
    if not confs or output is None:
        return None
    return lambda: output.warm_up(confs)


def compile_flow(flow: FlowBase, options: RunOptions | None = None) -> Dataflow:
    """The Bytewax dataflow of ``flow`` (a RealtimeTrigger flow, consumer-group mode)."""
    options = options or RunOptions()
    if isinstance(flow.trigger, ScheduleTrigger):
        return _compile_schedule(flow, flow.trigger, options)
    if isinstance(flow.trigger, BatchTrigger):
        return _compile_batch(flow, flow.trigger, options)
    trig = flow.kafka_trigger
    conf = client_conf(trig.properties)
    runner = build_runner(flow, inputs=options.inputs)
    source: Source[RawRecord]
    # executions outlive their step; a consumer group's transactional Produce tasks commit
    # in the epoch's transaction with the offsets below which everything is done (a share
    # group has no offsets: such a task commits its own transaction)
    share = trig.groupType == "SHARE"
    txn_confs = [client_conf(t.properties) for t in _produces(flow, True)]
    progress, txn = runner.pipelined(txn_confs[0] if txn_confs and not share else None)
    pipeline = runner.pipeline
    assert pipeline is not None
    if share:
        from waxflow.connectors.kafka_share import KafkaShareSource

        source = KafkaShareSource(conf, trig.groupId, trig.topic_list(),
                                  batch_size=options.batch_size,
                                  idle_stop=options.stop_when_idle,
                                  max_deliveries=trig.maxDeliveries,
                                  warm_up=runner.executor.resources, progress=progress)
        runner.share = True
    else:
        source = KafkaGroupSource(conf, trig.groupId, trig.topic_list(),
                                  pattern=trig.topicPattern, partitions=trig.partitions,
                                  since=trig.since, batch_size=options.batch_size,
                                  idle_stop=options.stop_when_idle,
                                  warm_up=_txn_warm_up(flow, runner), progress=progress,
                                  checkpoint=txn, start=functools.partial(
                                      pipeline.warm_up, _produces(flow, False)))
    df = _dataflow(flow)
    raw = op.input("kafka", df, source)
    decoded = deserialize("deserialize", raw, key_de=trigger_deserializer(trig, "key"),
                          value_de=trigger_deserializer(trig, "value"),
                          on_error=trig.onSerdeError.type, header_filters=trig.headerFilters)
    done = execute("execute", decoded, runner)
    op.output("done", done, DoneSink())
    return df
