"""The ``waxflow`` command line.

Exit codes: 0 success, 1 flow or runtime error (one message on stderr, no
traceback), 2 usage error (argparse's own). Every numeric option is checked here, by its
``type`` function, so a value out of range (``-w 0``, ``--stop-when-idle -1``) is a usage
error naming the option and what it expects, never a job that does nothing or a runtime
error from deeper down.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from waxflow.connectors.broker import (
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_PORT,
    LocalBroker,
    default_data_dir,
)
from waxflow.connectors.broker_security import ADMIN_USER
from waxflow.errors import FlowError, WaxflowError

if TYPE_CHECKING:
    from waxflow.dataflows.local_run import DryRunScope
    from waxflow.flow import FlowBase

Command = Callable[[argparse.Namespace], int]

# `broker start` sets the share-group record lock and its minimum to --share-lock-ms, and
# Kafka 4.2 accepts 1000-30000 for the minimum (group.share.min.record.lock.duration.ms)
SHARE_LOCK_MS = (1000, 30000)


def whole(low: int, high: int | None = None, *, what: str = "a whole number"
          ) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]``, else a usage error saying so."""
    expected = f"{what} >= {low}" if high is None else f"{what} from {low} to {high}"

    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return check


def seconds(text: str) -> float:
    """An argparse ``type``: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


PORT = whole(1, 65535, what="a TCP port")
POSITIVE = whole(1)


def share_lock_ms(text: str) -> int:
    """``--share-lock-ms`` (its default comes from ``$WAXFLOW_SHARE_LOCK_MS``, then 30000)."""
    try:
        return whole(*SHARE_LOCK_MS, what="milliseconds")(text)
    except argparse.ArgumentTypeError as exc:
        if text == os.environ.get("WAXFLOW_SHARE_LOCK_MS"):
            raise argparse.ArgumentTypeError(f"{exc} (from $WAXFLOW_SHARE_LOCK_MS)") from None
        raise


def _flow_err(exc: FlowError) -> int:
    print(str(exc), file=sys.stderr)
    return 1


def _err(msg: str) -> int:
    print(f"waxflow: error: {msg}", file=sys.stderr)
    return 1


def _broker_of(args: argparse.Namespace) -> LocalBroker:
    return LocalBroker(
        data_dir=Path(args.data_dir) if args.data_dir else default_data_dir(),
        port=args.port,
        controller_port=args.controller_port,
        share_lock_ms=args.share_lock_ms,
        secure=getattr(args, "secure", False),
    )


def _secure_lines(broker: LocalBroker) -> str:
    """Where a secure broker's client settings are (never the password itself)."""
    if not broker.security.exists():
        return ""
    files = broker.security
    return (f"\nSASL_SSL (SCRAM-SHA-512) with ACLs; admin user {ADMIN_USER} (super user); "
            f"CA file: {files.ca_file}\nclient settings (with the admin password): "
            f"{files.client_properties}")


def _broker_start(args: argparse.Namespace) -> int:
    broker = _broker_of(args)
    if broker.running():
        print(f"broker already running (pid {broker.pid()}) on {broker.bootstrap}"
              f"{_secure_lines(broker)}")
        return 0
    secs = broker.start(timeout=args.timeout)
    print(f"broker started (pid {broker.pid()}) on {broker.bootstrap} in {secs:.1f}s; "
          f"log: {broker.log_file}{_secure_lines(broker)}")
    return 0


def _broker_stop(args: argparse.Namespace) -> int:
    broker = _broker_of(args)
    was = broker.stop(wipe=args.wipe)
    print("broker stopped" if was else "no broker was running", end="")
    print(f"; data wiped ({broker.data_dir})" if args.wipe else "")
    return 0


def _broker_status(args: argparse.Namespace) -> int:
    broker = _broker_of(args)
    pid = broker.pid()
    if pid is None:
        print(f"broker not running (data dir {broker.data_dir})")
        return 1
    print(f"broker running (pid {pid}) on {broker.bootstrap}; log: {broker.log_file}"
          f"{_secure_lines(broker)}")
    return 0


def _add_broker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("broker", help="a local single-node Apache Kafka (KRaft) broker")
    bsub = p.add_subparsers(dest="broker_cmd", required=True)
    for name, func, help_ in (
        ("start", _broker_start, "start it (resolving and caching the jars on first use)"),
        ("stop", _broker_stop, "stop the broker this data dir started"),
        ("status", _broker_status, "say whether it runs and where (exit 1 when not)"),
    ):
        sp = bsub.add_parser(name, help=help_)
        sp.add_argument("--data-dir", default=None,
                        help="storage, pid and log (default $WAXFLOW_BROKER_DIR or "
                             "~/.local/state/waxflow/broker)")
        sp.add_argument("--port", type=PORT, default=DEFAULT_PORT)
        sp.add_argument("--controller-port", type=PORT, default=DEFAULT_CONTROLLER_PORT)
        # a string default goes through `type` too: a bad $WAXFLOW_SHARE_LOCK_MS is a usage
        # error naming the option and the variable
        sp.add_argument("--share-lock-ms", type=share_lock_ms,
                        default=os.environ.get("WAXFLOW_SHARE_LOCK_MS") or "30000",
                        help="share-group record lock duration, 1000-30000 (default "
                             "$WAXFLOW_SHARE_LOCK_MS or 30000; tests use 1000)")
        if name == "stop":
            sp.add_argument("--wipe", action="store_true", help="also delete the data dir")
        if name == "start":
            sp.add_argument("--timeout", type=seconds, default=90.0, metavar="SECONDS",
                            help="how long to wait for the broker to answer (default 90)")
            sp.add_argument("--secure", action="store_true",
                            help="a SASL_SSL listener (SCRAM-SHA-512 users, a self-signed CA "
                                 "made here, ACLs enforced) instead of PLAINTEXT; the admin's "
                                 "client settings go to DATA_DIR/secure/client.properties")
        sp.set_defaults(func=func)


def _validate(args: argparse.Namespace) -> int:
    from waxflow.dataflows.preflight import validate

    flow, notes = validate(args.flow)  # the file, then its child flows
    for note in notes:
        print(note)
    ntasks = sum(1 for _ in flow.all_tasks())
    enabled = flow.enabled_triggers
    started_by = enabled[0].type if enabled else "no trigger: a manual flow, see `waxflow test`"
    print(f"{args.flow}: valid flow {flow.namespace}.{flow.id} ({started_by}, {ntasks} tasks)")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from waxflow.dataflows.spec import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _run(args: argparse.Namespace) -> int:
    from waxflow.dataflows.preflight import preflight
    from waxflow.dataflows.runner import run_cluster
    from waxflow.logs import setup_logging

    try:
        setup_logging(os.environ.get("WAXFLOW_LOG_LEVEL", "INFO"), args.log_format)
    except ValueError as exc:
        return _err(f"$WAXFLOW_LOG_LEVEL: {exc}")
    from waxflow.connectors.instance_lock import HELD_ENV

    if os.environ.get(HELD_ENV) != "1":
        # refuse to start a flow that cannot work (validation, secrets, env, outputs,
        # core.Python imports), with every problem at once, before any process is spawned
        # (a cluster member started by hand on its host checks too; --processes children
        # were checked by their parent)
        # (and a value that does not fit, or a required input with neither a default nor
        # an --input value: one line)
        preflight(args.flow, inputs=dict(args.input))
    from waxflow.dataflows.spec import parse_flow

    flow = parse_flow(args.flow)
    if not flow.enabled_triggers:
        return _run_manual(args, flow)
    addresses = _addresses(args.addresses)
    if args.processes > 1 and args.process_id is None:
        base = ["run", args.flow, "-w", str(args.workers), "--epoch-ms", str(args.epoch_ms),
                "--stuck-after", str(args.stuck_after)]
        if args.recovery_dir:
            base += ["--recovery-dir", args.recovery_dir]
        if args.stop_when_idle is not None:
            base += ["--stop-when-idle", str(args.stop_when_idle)]
        if args.ticks is not None:
            base += ["--ticks", str(args.ticks)]
        base += ["--log-format", args.log_format]
        for name, value in args.input:
            base += ["--input", f"{name}={value}"]
        return run_cluster(base, args.processes, flow_path=args.flow,
                           metrics_port=args.metrics_port, member=_member(args))
    return _member(args)(args.process_id, addresses, args.metrics_port)


def _member(args: argparse.Namespace) -> Callable[[int | None, list[str] | None, int | None],
                                                  int]:
    """Run the flow in this process as ``args`` say, as process ``process_id`` of
    ``addresses`` (a cluster) serving metrics on ``metrics_port``; the exit code. The
    members of ``--processes N`` are forks of their launcher that call it."""
    from waxflow.dataflows.runner import run_here

    def run(process_id: int | None, addresses: list[str] | None,
            metrics_port: int | None) -> int:
        try:
            run_here(args.flow, workers=args.workers,
                     epoch=timedelta(milliseconds=args.epoch_ms),
                     recovery_dir=args.recovery_dir, stop_when_idle=args.stop_when_idle,
                     process_id=process_id, addresses=addresses, max_ticks=args.ticks,
                     metrics_port=metrics_port, stuck_after=args.stuck_after,
                     inputs=dict(args.input))
        except KeyboardInterrupt:  # as main() says it (a forked member has no main())
            return 130
        except Exception as exc:
            return _failed(exc, "the job")
        return 0

    return run


def _failed(exc: Exception, what: str) -> int:
    """Exit 1 with one line on a run that raised: the user's mistake as such, anything else
    as its last line (re-raised for its traceback under ``$WAXFLOW_DEBUG``)."""
    from waxflow.dataflows.runner import user_error

    msg = user_error(exc)
    if msg is None:
        if os.environ.get("WAXFLOW_DEBUG"):
            raise exc
        last = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
        msg = f"{what} failed: {last[0]} (set WAXFLOW_DEBUG=1 for the traceback)"
    return _err(msg)


def _run_manual(args: argparse.Namespace, flow: FlowBase) -> int:
    """A flow without an enabled trigger (Kestra's manual flow) runs once, here; exit 0 when
    its execution ended SUCCESS or WARNING, 1 otherwise, with one line saying which."""
    from waxflow.dataflows.local_run import run_manual

    if args.processes > 1 or args.process_id is not None or args.addresses:
        return _err("the flow has no trigger (a manual flow): it runs once, in this process; "
                    "--processes, --process-id and --addresses do not apply")
    try:
        execution = run_manual(flow, inputs=dict(args.input))
    except Exception as exc:
        return _failed(exc, "the run")
    state = str(execution.state)
    print(f"waxflow: manual execution {execution.id} of {flow.namespace}.{flow.id} ended "
          f"{state}", file=sys.stderr)
    return 0 if state in ("SUCCESS", "WARNING") else 1


def _addresses(text: str | None) -> list[str] | None:
    """``--addresses``: comma- (or semicolon-) separated ``host:port`` entries."""
    if not text:
        return None
    return [a.strip() for a in text.replace(";", ",").split(",") if a.strip()]


def _test(args: argparse.Namespace) -> int:
    from waxflow.dataflows.local_run import DryRunScope, run_jsonl
    from waxflow.dataflows.preflight import validate
    from waxflow.logs import setup_logging
    from waxflow.recovery.executions_cli import print_executions

    consume: dict[str, Path] = {}
    for spec in args.consume:
        topic, sep, file = spec.partition("=")
        if not sep or not topic or not file:
            _err(f"--consume {spec}: expected TOPIC=FILE.jsonl")
            return 2
        consume[topic] = Path(file)
    try:  # core.Log and the other task logs go to stderr, as in a run
        setup_logging(os.environ.get("WAXFLOW_LOG_LEVEL", "INFO"))
    except ValueError as exc:
        return _err(f"$WAXFLOW_LOG_LEVEL: {exc}")
    flow, notes = validate(args.flow)  # as `waxflow validate`: the file, then its children
    for note in notes:
        print(note, file=sys.stderr)
    scope = DryRunScope()
    docs = run_jsonl(flow, Path(args.records) if args.records else None,
                     consume=consume, scope=scope, inputs=dict(args.input))
    print_executions(docs, args.format)
    _show_produced(scope, Path(args.outputs) if args.outputs else None)
    return 0 if all(d["state"] in ("SUCCESS", "WARNING", "SKIPPED") for d in docs) else 1


def _show_produced(scope: DryRunScope, outputs: Path | None) -> None:
    """What the dry run did not send: one JSON line per record, on stderr (stdout holds the
    executions) or in ``outputs/TOPIC.jsonl``."""
    if outputs is not None:
        outputs.mkdir(parents=True, exist_ok=True)
        by_topic: dict[str, list[str]] = {}
        for rec in scope.produced:
            by_topic.setdefault(rec.topic, []).append(json.dumps(rec.document()))
        for topic, lines in by_topic.items():
            (outputs / f"{topic}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for rec in scope.produced:
        where = "" if outputs is None else f" (in {outputs / (rec.topic + '.jsonl')})"
        print(f"dry run, not sent to {rec.topic}{where}: {json.dumps(rec.document())}",
              file=sys.stderr)


def _replay(args: argparse.Namespace) -> int:
    from waxflow.dataflows.local_run import replay
    from waxflow.dataflows.spec import parse_flow
    from waxflow.recovery.executions_cli import print_executions
    from waxflow.recovery.index import ExecutionIndex, IndexAccessError
    from waxflow.server.history_client import explain_refusal, history_client

    flow = parse_flow(args.flow)
    client = history_client(args.bootstrap)
    try:
        with ExecutionIndex(args.index, client=client.conf) as index:
            index.sync(client.bootstrap,
                       os.environ.get("WAXFLOW_EXECUTION_LOG", "waxflow.executions"))
            doc = index.show(args.id)
    except IndexAccessError as exc:
        return _err(explain_refusal(client, exc))
    if doc is None:
        return _err(f"no execution {args.id} in the execution log")
    trig = doc["trigger"]
    if trig.get("offset") is None:
        return _err(f"execution {doc['id']} is not the execution of one record")
    try:
        execution = replay(flow, doc["id"], topic=trig["topic"], partition=trig["partition"],
                           offset=trig["offset"])
    except LookupError as exc:
        return _err(str(exc))
    print_executions([execution.document()], args.format)
    return 0 if execution.state in ("SUCCESS", "WARNING") else 1


def _add_flow_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    v = sub.add_parser("validate", help="check a flow file (exit 1 with file:line messages)")
    v.add_argument("flow")
    v.set_defaults(func=_validate)
    s = sub.add_parser("schema", help="print the JSON Schema of the flow file")
    s.set_defaults(func=_schema)
    r = sub.add_parser("run", help="run a flow on Kafka")
    r.add_argument("flow")
    r.add_argument("-w", "--workers", type=POSITIVE, default=1,
                   help="worker threads per process (>= 1)")
    r.add_argument("--processes", type=POSITIVE, default=1,
                   help="processes in the cluster (>= 1)")
    r.add_argument("--recovery-dir", default=None, help="Bytewax recovery directory")
    r.add_argument("--stop-when-idle", type=seconds, default=None, metavar="SECONDS",
                   help="stop once no record arrived for SECONDS (> 0) and all work is "
                        "committed")
    r.add_argument("--epoch-ms", type=POSITIVE, default=200,
                   help="epoch length in milliseconds, >= 1 (commit cadence)")
    r.add_argument("--ticks", type=POSITIVE, default=None, metavar="N",
                   help="schedule flows: stop after N (>= 1) ticks")
    r.add_argument("--log-format", choices=("text", "json"),
                   default=os.environ.get("WAXFLOW_LOG_FORMAT", "text"),
                   help="log lines as text or one JSON object per line (for log shippers); "
                        "secrets are masked in both")
    r.add_argument("--addresses", default=None, metavar="HOST:PORT,...",
                   help="a cluster across hosts: every member's address (Bytewax -a), the "
                        "same list in the same order on every host; with --process-id")
    r.add_argument("--process-id", type=whole(0), default=None, metavar="I",
                   help="this member's index in --addresses (Bytewax -i)")
    r.add_argument("--metrics-port", type=PORT,
                   default=os.environ.get("WAXFLOW_METRICS_PORT") or None, metavar="PORT",
                   help="serve Prometheus /metrics, /healthz and /readyz on PORT (default "
                        "$WAXFLOW_METRICS_PORT; off when unset); --processes N: process i "
                        "serves PORT+i")
    r.add_argument("--stuck-after", type=seconds,
                   default=os.environ.get("WAXFLOW_STUCK_AFTER") or "300", metavar="SECONDS",
                   help="/healthz fails once executions are in flight and none finished "
                        "for SECONDS (default $WAXFLOW_STUCK_AFTER or 300)")
    r.add_argument("--input", type=flow_input, action="append", default=[],
                   metavar="NAME=VALUE",
                   help="a value of one of the flow's inputs for every execution "
                        "(repeatable; the others take their defaults)")
    r.set_defaults(func=_run)
    t = sub.add_parser("test", help="dry run: a flow's executions on records from a JSONL "
                                     "file; nothing is read from or sent to Kafka")
    t.add_argument("flow")
    t.add_argument("--records", metavar="FILE.jsonl",
                   help="the trigger's records, one JSON per line (needed for Kafka "
                        "triggers)")
    t.add_argument("--consume", action="append", default=[], metavar="TOPIC=FILE.jsonl",
                   help="the records kafka.Consume reads from TOPIC (repeatable)")
    t.add_argument("--outputs", metavar="DIR",
                   help="write what kafka.Produce would send to DIR/TOPIC.jsonl")
    t.add_argument("--format", choices=("table", "json"), default="table")
    t.add_argument("--input", type=flow_input, action="append", default=[],
                   metavar="NAME=VALUE",
                   help="a value of one of the flow's inputs (repeatable; the others take "
                        "their defaults)")
    t.set_defaults(func=_test)


def flow_input(text: str) -> tuple[str, str]:
    """``--input NAME=VALUE``: one of the flow's ``inputs`` (converted to its type later)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value


def add_replay(executions: argparse.ArgumentParser) -> None:
    """``waxflow executions replay ID --flow FLOW`` (needs the execution engine)."""
    sub = next(a for a in executions._actions
               if isinstance(a, argparse._SubParsersAction))
    rp = sub.add_parser("replay", help="run an execution's record again under the same id")
    rp.add_argument("id", metavar="ID")
    rp.add_argument("--flow", required=True, help="the flow file the execution belongs to")
    rp.add_argument("--format", choices=("table", "json"), default="table")
    rp.add_argument("--bootstrap", default=None)
    rp.add_argument("--index", default=None)
    rp.set_defaults(func=_replay)


def _with_history_client(func: Command) -> Command:
    """``func`` (an ``executions`` command of :mod:`waxflow.recovery.executions_cli`, which
    may not import the connectors) with the history's Kafka client settings: ``--bootstrap``
    resolved (``$WAXFLOW_BOOTSTRAP``, ``$WAXFLOW_KAFKA_PROPERTIES``' servers, the default)
    and ``args.kafka_client`` the security settings of ``$WAXFLOW_KAFKA_PROPERTIES``; a
    cluster refusing them is one line naming the principal and the topic (exit 1)."""
    def run(args: argparse.Namespace) -> int:
        from waxflow.recovery.index import IndexAccessError
        from waxflow.server.history_client import explain_refusal, history_client

        client = history_client(args.bootstrap)
        args.bootstrap, args.kafka_client = client.bootstrap, client.conf
        try:
            return func(args)
        except IndexAccessError as exc:
            return _err(explain_refusal(client, exc))
    return run


def _wrap_executions(executions: argparse.ArgumentParser) -> None:
    """Give ``executions list|show|trace`` the history's client settings."""
    sub = next(a for a in executions._actions
               if isinstance(a, argparse._SubParsersAction))
    for name in ("list", "show", "trace"):
        command = sub.choices[name]
        command.set_defaults(func=_with_history_client(command.get_default("func")))


# numeric options registered by other modules with a bare int/float type, by dest: the
# range each accepts (tests/unit/test_cli_args.py fails on a bare int/float left anywhere)
RANGES_BY_DEST: dict[str, Callable[[str], object]] = {
    "limit": whole(1),                 # executions list --limit
    "sync_timeout": seconds,           # executions * --sync-timeout
    "partition": whole(0, what="a partition number"),   # executions trace PARTITION
    "offset": whole(0, what="an offset"),               # executions trace OFFSET
}


def subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every subcommand parser under it."""
    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases: once
                out += subparsers(child)
    return out


def _check_numbers(parser: argparse.ArgumentParser) -> None:
    """Give the bare ``int``/``float`` options of other modules their range check."""
    for p in subparsers(parser):
        for action in p._actions:
            if action.type in (int, float) and action.dest in RANGES_BY_DEST:
                action.type = RANGES_BY_DEST[action.dest]


#: the subcommands this module defines (the others come from the history's and the server's
#: modules)
OWN_COMMANDS = ("broker", "validate", "schema", "run", "test")


def build_parser(*, own_only: bool = False) -> argparse.ArgumentParser:
    """The full argument parser; subcommands register themselves here. ``own_only``: only
    :data:`OWN_COMMANDS`, for a command line naming one of them first (its parser is the
    same; the others' modules cost ~25 ms of CPU to import, rich's tables among them, in
    every process of ``waxflow run``)."""
    parser = argparse.ArgumentParser(prog="waxflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    _add_broker(sub)
    _add_flow_commands(sub)
    if not own_only:
        from waxflow.recovery.executions_cli import add_parser as add_executions
        from waxflow.server.command import add_parser as add_server

        add_executions(sub)
        _wrap_executions(sub.choices["executions"])
        add_replay(sub.choices["executions"])
        add_server(sub)
    _check_numbers(parser)
    return parser


def _check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors a single option's ``type`` cannot see."""
    port, controller = getattr(args, "port", None), getattr(args, "controller_port", None)
    if port is not None and port == controller:
        parser.error(f"argument --controller-port: expected a port other than --port "
                     f"{port}, got {controller}")
    process_id, addresses = getattr(args, "process_id", None), getattr(args, "addresses", None)
    members = _addresses(addresses)
    if members is not None:
        bad = [a for a in members if a.rpartition(":")[0] == "" or
               not a.rpartition(":")[2].isdigit()]
        if bad:
            parser.error(f"argument --addresses: expected host:port entries separated by "
                         f"commas, got {bad[0]!r}")
        if process_id is None:
            parser.error("argument --addresses: needs --process-id (this member's index)")
        if process_id >= len(members):
            parser.error(f"argument --process-id: expected a number below the "
                         f"{len(members)} --addresses, got {process_id}")
        if getattr(args, "processes", 1) > 1:
            parser.error("argument --processes: not with --addresses (each host starts its "
                         "own member)")
    elif process_id is not None:
        parser.error("argument --process-id: needs --addresses (every member's host:port)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``waxflow`` console script."""
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(own_only=bool(words) and words[0] in OWN_COMMANDS)
    args = parser.parse_args(words)
    _check_combinations(parser, args)
    func: Command = args.func
    try:
        return func(args)
    except FlowError as exc:
        return _flow_err(exc)
    except WaxflowError as exc:  # BrokerError, InstanceConflict, ...: one line, no traceback
        return _err(str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `waxflow executions list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
