"""The ``waxflow`` command line.

Exit codes (DESIGN §6): 0 success, 1 flow or runtime error (one message on stderr, no
traceback), 2 usage error (argparse's own).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from connectors.broker import (
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_PORT,
    BrokerError,
    LocalBroker,
    default_data_dir,
)

Command = Callable[[argparse.Namespace], int]


def _err(msg: str) -> int:
    print(f"waxflow: error: {msg}", file=sys.stderr)
    return 1


def _broker_of(args: argparse.Namespace) -> LocalBroker:
    return LocalBroker(
        data_dir=Path(args.data_dir) if args.data_dir else default_data_dir(),
        port=args.port,
        controller_port=args.controller_port,
        share_lock_ms=args.share_lock_ms,
    )


def _broker_start(args: argparse.Namespace) -> int:
    broker = _broker_of(args)
    if broker.running():
        print(f"broker already running (pid {broker.pid()}) on {broker.bootstrap}")
        return 0
    secs = broker.start()
    print(f"broker started (pid {broker.pid()}) on {broker.bootstrap} in {secs:.1f}s; "
          f"log: {broker.log_file}")
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
    print(f"broker running (pid {pid}) on {broker.bootstrap}; log: {broker.log_file}")
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
        sp.add_argument("--port", type=int, default=DEFAULT_PORT)
        sp.add_argument("--controller-port", type=int, default=DEFAULT_CONTROLLER_PORT)
        sp.add_argument("--share-lock-ms", type=int,
                        default=int(os.environ.get("WAXFLOW_SHARE_LOCK_MS", "30000")),
                        help="share-group record lock duration (tests use 1000)")
        if name == "stop":
            sp.add_argument("--wipe", action="store_true", help="also delete the data dir")
        sp.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; subcommands register themselves here."""
    parser = argparse.ArgumentParser(prog="waxflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    _add_broker(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``waxflow`` console script."""
    args = build_parser().parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except BrokerError as exc:
        return _err(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
