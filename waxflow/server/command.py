"""``waxflow server [--host H] [--port P] [--token T] [--flow FILE ...]``.

Serves the web UI and the JSON API over the execution-log index (the one ``waxflow
executions`` uses), keeping it in sync from the log topic while it runs. Listens on
127.0.0.1 unless ``--host`` says otherwise; any other address needs a token (``--token`` or
``$WAXFLOW_SERVER_TOKEN``), and a token, once set, is required by every request. Every secret
the flows could use (``$WAXFLOW_SECRET_*``, the secrets file) is masked in what the server
reads from the broker itself (record previews); documents are masked by the engine. Every
Kafka client of the server (the index sync, record previews, lag) takes the connection and
security settings of ``$WAXFLOW_KAFKA_PROPERTIES`` (:mod:`.history_client`).
"""

from __future__ import annotations

import argparse
import os
import sys

from waxflow.recovery.executions_cli import _common
from waxflow.server.security import is_loopback

TOKEN_ENV = "WAXFLOW_SERVER_TOKEN"


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port (1-65535), got {text!r}")
    return value


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``server``; it sets ``func``."""
    p = subparsers.add_parser("server", help="web UI and JSON API over the execution history")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other needs a token)")
    p.add_argument("--port", type=_port, default=8080, help="port (default 8080)")
    p.add_argument("--token", default=None,
                   help=f"require this token on every request (default ${TOKEN_ENV})")
    p.add_argument("--flow", action="append", default=[], metavar="FILE",
                   help="a flow file (or a directory of them) the Replay button may run; "
                        "repeatable")
    _common(p)
    for action in p._actions:  # the table/json switch means nothing here
        if action.dest == "format":
            action.help = argparse.SUPPRESS
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    """Check the options, start the index sync, run uvicorn until interrupted."""
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    loopback = is_loopback(args.host)
    if token is not None and not token.strip():
        token = None
    if not loopback and token is None:
        print(f"waxflow: error: --host {args.host} is not loopback: give a token with --token "
              f"or ${TOKEN_ENV} (every request will need it)", file=sys.stderr)
        return 1
    from waxflow.server.history_client import history_client

    client = history_client(args.bootstrap)  # $WAXFLOW_KAFKA_PROPERTIES: a secured cluster
    bootstrap = client.bootstrap
    topic = args.topic_log or os.environ.get("WAXFLOW_EXECUTION_LOG", "waxflow.executions")
    # a replay writes to the log this server reads, on this broker unless the flow says
    os.environ["WAXFLOW_EXECUTION_LOG"] = topic
    os.environ.setdefault("WAXFLOW_BOOTSTRAP", bootstrap)

    import uvicorn

    from waxflow.expressions import SecretError, Secrets
    from waxflow.server.app import create_app
    from waxflow.server.context import ServerContext
    from waxflow.server.index_worker import IndexWorker
    from waxflow.server.replays import FlowFiles

    flows = FlowFiles(args.flow)  # a bad flow file: FlowError, printed by the CLI
    try:  # record previews read from the broker mask every secret the flows could use
        Secrets().register_all()
    except SecretError as exc:
        print(f"waxflow: error: {exc}", file=sys.stderr)
        return 1
    for line in flows.skipped:
        print(f"waxflow: warning: not a flow, skipped: {line}", file=sys.stderr)
    worker = IndexWorker(args.index, bootstrap=bootstrap, topic=topic, client=client.conf,
                         sync_timeout=min(args.sync_timeout, 5.0), sync=not args.no_sync)
    ctx = ServerContext(worker=worker, flows=flows, kafka_conf=client.with_bootstrap())
    app = create_app(ctx, token=token, loopback=loopback)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"waxflow server: http://{shown}:{args.port}/ (index {worker.status.topic} @ "
          f"{bootstrap}{', token required' if token else ''})", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                    access_log=False, server_header=False)
    finally:
        worker.close()
    return 0
