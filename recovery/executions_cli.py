"""``waxflow executions list|show|trace``: answer questions from the execution-log index.

Every command syncs the local index from the log first (unless ``--no-sync``), then answers.
``--format json`` prints exactly one JSON document on stdout; ``table`` prints rich tables.
Exit codes: 0 answered (an empty list or trace is an answer), 1 user-facing error (unknown or
ambiguous id, broker unreachable, index unusable) with one line on stderr, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

if TYPE_CHECKING:  # the index (DuckDB, pyarrow: ~0.3 s) is imported when a command runs,
    # not when `waxflow run` builds its argument parser
    from waxflow.recovery.index import ExecutionIndex

STATE_STYLES = {
    "SUCCESS": "green", "WARNING": "yellow", "FAILED": "bold red", "RUNNING": "cyan",
    "CREATED": "blue", "RETRYING": "magenta", "SKIPPED": "dim",
}
LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")
LEVEL_STYLES = {"TRACE": "dim", "DEBUG": "dim", "INFO": "", "WARN": "yellow", "ERROR": "red"}
_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_T = TypeVar("_T")


def parse_when(text: str) -> datetime:
    """``1h``/``30m``/``2d`` (that long ago) or an ISO datetime (naive = UTC), as aware UTC."""
    m = _RELATIVE.match(text.strip())
    if m:
        return datetime.now(UTC) - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO datetime or a relative time like 1h/30m: {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _level(text: str) -> str:
    """A log level name (case-insensitive; WARNING = WARN) for ``--level``."""
    name = text.strip().upper()
    name = "WARN" if name == "WARNING" else name
    if name not in LEVELS:
        raise argparse.ArgumentTypeError(
            f"unknown log level {text!r} (one of {', '.join(LEVELS)})")
    return name


def filter_logs(logs: object, level: str) -> list[dict[str, Any]]:
    """The log lines of an execution document at or above ``level``; lines with an unknown
    level are kept (they cannot be ranked)."""
    floor = LEVELS.index(level)
    if not isinstance(logs, list):
        return []
    return [line for line in logs if isinstance(line, dict)
            and (str(line.get("level")).upper() not in LEVELS
                 or LEVELS.index(str(line.get("level")).upper()) >= floor)]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="json: one JSON document on stdout (default: table)")
    parser.add_argument("--bootstrap", default=None,
                        help="bootstrap servers (default $WAXFLOW_BOOTSTRAP, else those of "
                             "$WAXFLOW_KAFKA_PROPERTIES, else 127.0.0.1:9092); a secured "
                             "cluster's client settings: $WAXFLOW_KAFKA_PROPERTIES")
    parser.add_argument("--topic-log", default=None,
                        help="execution-log topic (default $WAXFLOW_EXECUTION_LOG or "
                             "waxflow.executions)")
    parser.add_argument("--index", default=None, metavar="PATH",
                        help="index file (default $WAXFLOW_HOME/index.duckdb or "
                             ".waxflow/index.duckdb)")
    parser.add_argument("--no-sync", action="store_true",
                        help="answer from the index as it is, without reading the log")
    parser.add_argument("--sync-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="bound on reading the log (default 10)")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``executions`` with ``list``, ``show`` and ``trace``; each sets ``func``."""
    p = subparsers.add_parser("executions", help="query the execution history")
    sub = p.add_subparsers(dest="executions_cmd", required=True)

    ls = sub.add_parser("list", help="executions, newest first")
    ls.add_argument("--flow", help="flow id or namespace.flowId")
    ls.add_argument("--state", help="e.g. FAILED (case-insensitive)")
    ls.add_argument("--topic", help="trigger topic (record or batch)")
    ls.add_argument("--since", type=parse_when, help="ISO datetime (naive = UTC) or 1h, 30m, 2d")
    ls.add_argument("--until", type=parse_when, help="same forms as --since (exclusive)")
    ls.add_argument("--text", help="a substring of the record key, or an execution id prefix")
    ls.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    ls.add_argument("--offset", type=int, default=0, help="skip this many first (default 0)")
    _common(ls)
    ls.set_defaults(func=_list)

    show = sub.add_parser("show", help="one execution: task runs, attempts, errors, runs")
    show.add_argument("id", metavar="ID", help="execution id or a unique prefix (>= 6 chars)")
    show.add_argument("--level", type=_level, default=None, metavar="LEVEL",
                      help="log lines at or above this level: " + ", ".join(LEVELS)
                      + " (default: all)")
    _common(show)
    show.set_defaults(func=_show)

    trace = sub.add_parser("trace", help="what happened to one record (and downstream)")
    trace.add_argument("topic", metavar="TOPIC")
    trace.add_argument("partition", metavar="PARTITION", type=int)
    trace.add_argument("offset", metavar="OFFSET", type=int)
    _common(trace)
    trace.set_defaults(func=_trace)


# -- commands ------------------------------------------------------------------------------


def _err(msg: str) -> int:
    print(f"waxflow: error: {msg}", file=sys.stderr)
    return 1


def _with_index(args: argparse.Namespace, answer: Callable[[ExecutionIndex], int]) -> int:
    """Open (and sync) the index, run ``answer``; user-facing failures become exit 1.
    ``args.kafka_client`` (set by ``waxflow.cli``): the Kafka client settings (security)
    under the index's consumers; a cluster refusing them raises :class:`IndexAccessError`
    for the caller to explain."""
    import duckdb

    from waxflow.recovery.index import (
        AmbiguousIdError,
        ExecutionIndex,
        IndexAccessError,
        IndexBusyError,
        IndexSyncError,
    )

    try:
        with ExecutionIndex(args.index, client=getattr(args, "kafka_client", None)) as index:
            if not args.no_sync:
                bootstrap = args.bootstrap or os.environ.get("WAXFLOW_BOOTSTRAP",
                                                              "127.0.0.1:9092")
                topic = args.topic_log or os.environ.get("WAXFLOW_EXECUTION_LOG",
                                                         "waxflow.executions")
                index.sync(bootstrap, topic, timeout=args.sync_timeout)
                if not index.last_sync_complete:
                    print(f"waxflow: warning: reading {topic} took over {args.sync_timeout:g}s;"
                          " answering from what was read", file=sys.stderr)
            return answer(index)
    except IndexAccessError:
        raise
    except (IndexSyncError, IndexBusyError, AmbiguousIdError) as exc:
        return _err(str(exc))
    except (OSError, duckdb.Error) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        return _err(f"execution index {args.index or 'default'}: {first}")


def _emit_json(value: object) -> None:
    print(json.dumps(value, indent=2, default=str))


def _print_answer(fmt: str, value: _T, view: Callable[[_T], RenderableType]) -> int:
    """``value`` as JSON (``--format json``) or as its rich ``view``; exit code 0."""
    if fmt == "json":
        _emit_json(value)
    else:
        Console().print(view(value))
    return 0


def _list(args: argparse.Namespace) -> int:
    def answer(index: ExecutionIndex) -> int:
        rows = index.list(flow=args.flow, state=args.state, topic=args.topic,
                          since=args.since, until=args.until, text=args.text,
                          limit=args.limit, offset=args.offset)
        return _print_answer(args.format, rows, _list_table)
    return _with_index(args, answer)


def _show(args: argparse.Namespace) -> int:
    def answer(index: ExecutionIndex) -> int:
        doc = index.show(args.id)
        if doc is None:
            hint = " (prefixes need at least 6 characters)" if len(args.id) < 6 else ""
            return _err(f"no execution matches {args.id!r}{hint}")
        if args.level is not None:
            doc["logs"] = filter_logs(doc.get("logs"), args.level)
        if doc.get("documentError") and args.format != "json":
            print(f"waxflow: warning: {doc['documentError']}; showing the indexed summary",
                  file=sys.stderr)
        return _print_answer(args.format, doc, _show_view)
    return _with_index(args, answer)


def _trace(args: argparse.Namespace) -> int:
    def answer(index: ExecutionIndex) -> int:
        rows = index.trace(args.topic, args.partition, args.offset)
        if args.format == "json":
            _emit_json(rows)
        elif not rows:
            print(f"no execution recorded for {args.topic}/{args.partition}@{args.offset}")
        else:
            Console().print(_trace_tree(f"{args.topic}/{args.partition}@{args.offset}", rows))
        return 0
    return _with_index(args, answer)


# -- rendering -----------------------------------------------------------------------------


def state_text(state: object) -> Text:
    """A state name coloured by outcome."""
    name = str(state) if state else "?"
    return Text(name, style=STATE_STYLES.get(name, ""))


def trigger_text(trigger: object, sep: str = ", ") -> str:
    """``topic/partition@offset`` for a record, ``topic/p:first-last, ...`` for a batch."""
    if not isinstance(trigger, dict):
        return ""
    offsets = trigger.get("offsets")
    if isinstance(offsets, dict) and offsets:
        parts = [f"{k}:{v[0]}-{v[1]}" if isinstance(v, list) and len(v) == 2 else str(k)
                 for k, v in offsets.items()]
        return sep.join(parts)
    if trigger.get("topic") is not None:
        return f"{trigger['topic']}/{trigger.get('partition')}@{trigger.get('offset')}"
    return str(trigger.get("type") or "")


def when_text(value: object) -> str:
    """An ISO date as ``YYYY-MM-DD HH:MM:SS`` UTC; empty when absent."""
    from waxflow.recovery.index import normalize_date

    norm = normalize_date(value)
    return f"{norm[:10]} {norm[11:19]}" if norm else ""


def duration_text(ms: object) -> str:
    """Milliseconds for people: ``350ms``, ``4.2s``, ``3m07s``, ``2h05m``."""
    if not isinstance(ms, int | float) or isinstance(ms, bool):
        return ""
    if ms < 1000:
        return f"{ms:.0f}ms"
    secs = ms / 1000
    if secs < 60:
        return f"{secs:.1f}s"
    mins, sec = divmod(int(secs), 60)
    return f"{mins}m{sec:02d}s" if mins < 60 else f"{mins // 60}h{mins % 60:02d}m"


def _list_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(rows)} execution(s)", title_justify="left", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, collapse_padding=True)
    for col in ("id", "flow", "state", "trigger", "start (UTC)", "duration", "runs"):
        table.add_column(col, justify="right" if col == "runs" else "left",
                         no_wrap=col not in ("flow", "trigger"),
                         overflow="fold" if col == "trigger" else "ellipsis")
    for r in rows:
        table.add_row(Text(str(r["id"])[:12]), Text(str(r.get("flowId") or "")),
                      state_text(r.get("state")), Text(trigger_text(r.get("trigger"), "\n")),
                      when_text(r.get("startDate")), duration_text(r.get("durationMs")),
                      str(r.get("runs") or 0))
    return table


def _error_text(error: object) -> str:
    if isinstance(error, dict):
        msg = error.get("message") or json.dumps(error)
        return f"{error['taskId']}: {msg}" if error.get("taskId") else str(msg)
    return "" if error is None else str(error)


def _show_view(doc: dict[str, Any]) -> Group:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    trig = doc.get("trigger") if isinstance(doc.get("trigger"), dict) else {}
    fields: list[tuple[str, Text | str]] = [
        ("flow", f"{doc.get('namespace') or ''}.{doc.get('flowId') or ''}"),
        ("state", state_text(doc.get("state"))),
        ("trigger", f"{(trig or {}).get('type') or ''} {trigger_text(trig)}".strip()),
        ("start", when_text(doc.get("startDate"))), ("end", when_text(doc.get("endDate"))),
        ("duration", duration_text(doc.get("durationMs"))), ("run", str(doc.get("runId") or "")),
    ]
    if doc.get("upstreamExecutionId"):
        fields.append(("upstream", str(doc["upstreamExecutionId"])))
    if doc.get("error"):
        fields.append(("error", Text(_error_text(doc["error"]), style="red")))
    if doc.get("labels"):
        fields.append(("labels", json.dumps(doc["labels"])))
    if isinstance(doc.get("outputs"), dict):  # the flow's `outputs`
        fields.append(("outputs", json.dumps(doc["outputs"], ensure_ascii=False)))
    for name, value in fields:
        head.add_row(name, value if isinstance(value, Text) else Text(value))
    parts: list[Any] = [Panel(head, title=Text(f"execution {doc.get('id')}"), expand=False)]

    tasks = Table(title="task runs", title_justify="left")
    for col in ("task", "type", "state", "attempts", "duration", "error"):
        tasks.add_column(col)
    for tr in doc.get("taskRuns") or []:
        if not isinstance(tr, dict):
            continue
        attempts = [a for a in tr.get("attempts") or [] if isinstance(a, dict)]
        errors = [_error_text(a.get("error")) for a in attempts if a.get("error")]
        last = attempts[-1] if attempts else {}
        ms = _span_ms(last.get("startDate"), last.get("endDate"))
        task = f"  {tr.get('taskId')}" if tr.get("parentTaskId") else str(tr.get("taskId"))
        tasks.add_row(Text(task), Text(str(tr.get("type") or "")), state_text(tr.get("state")),
                      str(len(attempts)), duration_text(ms),
                      Text(errors[-1] if errors else "", style="red"))
    parts.append(tasks)

    logs = [line for line in doc.get("logs") or [] if isinstance(line, dict)]
    if logs or doc.get("logsDropped"):
        from waxflow.recovery.index import normalize_date

        dropped = doc.get("logsDropped")
        title = f"logs ({len(logs)} line(s)" + (
            f"; {dropped} more dropped past the limit" if dropped else "") + ")"
        lt = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
        for col in ("time (UTC)", "level", "task", "message"):
            lt.add_column(col, overflow="fold", no_wrap=col in ("time (UTC)", "level"))
        for line in logs:
            level = str(line.get("level") or "")
            task = str(line.get("taskId") or "")
            if line.get("attempt") not in (None, 1):
                task += f" #{line['attempt']}"
            stamp = normalize_date(line.get("ts"))
            lt.add_row(stamp[11:23] if stamp else str(line.get("ts") or ""),
                       Text(level, style=LEVEL_STYLES.get(level, "")), Text(task),
                       Text(str(line.get("message") or "")))
        parts.append(lt)

    runs = doc.get("runs") or []
    if len(runs) > 1:
        rt = Table(title=f"runs: replayed {len(runs) - 1} time(s)", title_justify="left")
        for col in ("run", "state", "start (UTC)", "last (UTC)"):
            rt.add_column(col)
        for run in runs:
            rt.add_row(Text(str(run.get("runId") or "?")), state_text(run.get("state")),
                       when_text(run.get("startDate")), when_text(run.get("lastDate")))
        parts.append(rt)
    return Group(*parts)


def _span_ms(start: object, end: object) -> float | None:
    from waxflow.recovery.index import normalize_date

    a, b = normalize_date(start), normalize_date(end)
    if not a or not b:
        return None
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
    return (datetime.strptime(b, fmt) - datetime.strptime(a, fmt)).total_seconds() * 1000


def _trace_tree(label: str, rows: list[dict[str, Any]]) -> Tree:
    root = Tree(Text(label, style="bold"))
    nodes: dict[str, Tree] = {}
    for r in rows:  # ordered by depth: a downstream row's upstream node already exists
        parent = nodes.get(str(r.get("upstreamExecutionId"))) if r["depth"] else None
        line = Text.assemble(
            (str(r["id"])[:12], "bold"), "  ", state_text(r.get("state")), "  ",
            f"{r.get('namespace') or ''}.{r.get('flowId') or ''}  ",
            (f"[{r['match']}] ", "dim"), trigger_text(r.get("trigger")), "  ",
            when_text(r.get("startDate")), "  ", duration_text(r.get("durationMs")),
            (f"  runs={r['runs']}" if (r.get("runs") or 0) > 1 else ""),
            (f"  {_error_text(r.get('error'))}" if r.get("error") else "", "red"))
        nodes[str(r["id"])] = (parent or root).add(line)
    return root


def print_executions(docs: list[dict[str, Any]], fmt: str) -> None:
    """Print execution documents (``waxflow test``/``replay``): JSON, or a table plus the
    details of every execution that did not succeed."""
    if fmt == "json":
        _emit_json(docs)
        return
    console = Console()
    if len(docs) == 1:
        console.print(_show_view(docs[0]))
        return
    console.print(_list_table([{**d, "runs": 1} for d in docs]))
    for d in docs:
        if d.get("state") not in ("SUCCESS", "SKIPPED"):
            console.print(_show_view(d))
