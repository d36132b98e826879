"""Which instance lock a flow takes, and taking it (:mod:`waxflow.connectors.instance_lock`).

Kept apart from the compiler so that the launcher of ``waxflow run --processes N``, which
holds the lock for its processes and runs no dataflow itself, imports neither Bytewax's
operators nor the compiler's connectors (measured: ~0.3 s of CPU per launch).
"""

from __future__ import annotations

import os

from waxflow.connectors import instance_lock
from waxflow.connectors.kafka_config import client_conf
from waxflow.dataflows.runner import PROCESS_ID_ENV
from waxflow.flow import FlowBase, KafkaTrigger, RealtimeTrigger


def hold_instance(flow: FlowBase) -> None:
    """Take the flow's instance lock (:mod:`waxflow.connectors.instance_lock`): a second
    running instance of the flow and group refuses to start. Share groups need none (they
    hand each record to one member); members of a cluster other than process 0 neither
    (process 0, or the parent of ``waxflow run --processes N``, holds it for them)."""
    trig = flow.trigger
    if os.environ.get(PROCESS_ID_ENV, "0") != "0":
        return
    if isinstance(trig, KafkaTrigger):
        if trig.groupType == "SHARE":
            return
        conf, group = client_conf(trig.properties), trig.groupId
    else:
        conf, group = client_conf(None), f"{flow.namespace}.{flow.id}.schedule"
    # a realtime flow's source waits for the lock before it reads or makes a transactional
    # producer, so one process takes it while its dataflow starts; process 0 of a cluster
    # holds it before the cluster forms (the other members do not wait for it)
    background = isinstance(trig, RealtimeTrigger) and PROCESS_ID_ENV not in os.environ
    instance_lock.hold(conf, group, f"flow {flow.namespace}.{flow.id} (group {group})",
                       background=background)
