"""The flow files the server knows (``--flow``), and replays of failed executions.

A replay is what ``waxflow executions replay ID --flow FLOW`` does: read the execution's
record from Kafka again and run it under the same id (a new ``runId``), writing its documents
to the execution log. Only executions of one record can be replayed, and only with the flow
file of their flow: :meth:`FlowFiles.replay_blocker` says why not, in one line.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waxflow.dataflows.spec import parse_flow
from waxflow.errors import FlowError, WaxflowError
from waxflow.flow import FlowBase, KafkaTrigger


class ReplayError(WaxflowError, RuntimeError):
    """A replay that cannot be done; one line for the user."""


@dataclass(frozen=True)
class KnownFlow:
    """A flow file given with ``--flow``."""

    path: Path
    flow: FlowBase

    @property
    def name(self) -> str:
        return f"{self.flow.namespace}.{self.flow.id}"

    def consumer_group(self) -> tuple[str, list[str], dict[str, Any]] | None:
        """(group id, topics, client config) of its Kafka trigger; None for other triggers."""
        from waxflow.connectors.kafka_config import client_conf

        trig = next((t for t in self.flow.enabled_triggers if isinstance(t, KafkaTrigger)),
                    None)
        if trig is None:
            return None
        conf = client_conf(trig.properties)
        topics = [t for t in trig.topic_list() if "{{" not in t]
        return trig.groupId, topics, conf


def _flow_paths(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix in (".yaml", ".yml"))
        else:
            out.append(p)
    return out


class FlowFiles:
    """The flows of the ``--flow`` files and directories (``*.yaml``/``*.yml`` inside),
    by ``namespace.flowId``. A file that is not a valid flow fails startup with its
    FlowError (file:line); in a directory, YAML files that are not flows are skipped and
    listed in :attr:`skipped`."""

    def __init__(self, paths: Iterable[str | Path]) -> None:
        self.flows: dict[str, KnownFlow] = {}
        self.skipped: list[str] = []
        explicit = {Path(p) for p in paths if not Path(p).is_dir()}
        for path in _flow_paths(paths):
            try:
                flow = parse_flow(path)
            except FlowError as exc:
                if path in explicit:
                    raise
                self.skipped.append(f"{path}: {str(exc).splitlines()[0]}")
                continue
            known = KnownFlow(path, flow)
            if known.name in self.flows:
                raise ReplayError(f"{path}: flow {known.name} is also defined in "
                                  f"{self.flows[known.name].path}")
            self.flows[known.name] = known
        self._lock = threading.Lock()

    def get(self, namespace: str | None, flow_id: str | None) -> KnownFlow | None:
        return self.flows.get(f"{namespace}.{flow_id}")

    def replay_blocker(self, doc: dict[str, Any]) -> str | None:
        """Why this execution cannot be replayed here, or None when it can."""
        name = f"{doc.get('namespace')}.{doc.get('flowId')}"
        trig = doc.get("trigger") if isinstance(doc.get("trigger"), dict) else {}
        if trig is None or trig.get("offset") is None or trig.get("topic") is None:
            return "only the execution of one record can be replayed (not a batch or a tick)"
        if name not in self.flows:
            return (f"the server has no flow file for {name}: start it with "
                    "--flow FILE (or a directory of flows)")
        if not doc.get("terminal"):
            return "the execution is still running"
        return None

    def replay(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Run the execution's record again under the same id; return the new terminal
        document. One replay at a time per server. Raises :class:`ReplayError`."""
        from waxflow.dataflows.local_run import replay

        blocker = self.replay_blocker(doc)
        if blocker is not None:
            raise ReplayError(blocker)
        known = self.flows[f"{doc['namespace']}.{doc['flowId']}"]
        trig = doc["trigger"]
        with self._lock:
            try:
                execution = replay(known.flow, str(doc["id"]), topic=str(trig["topic"]),
                                   partition=int(trig["partition"]),
                                   offset=int(trig["offset"]))
            except LookupError as exc:
                raise ReplayError(str(exc)) from None
        document: dict[str, Any] = execution.document()
        return document
