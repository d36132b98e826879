"""Numeric CLI options: a value out of range is a usage error (exit 2) naming the option and
what it expects, before any work starts. Before, ``waxflow run FLOW -w 0`` (or
``--stop-when-idle 0``, ``--processes 0``, ``--epoch-ms 0``) exited 0 having processed
nothing, and ``-w -3`` exited 1 with a Rust conversion error."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from waxflow.cli import build_parser, main, subparsers

WAXFLOW = str(Path(sys.executable).with_name("waxflow"))
FLOW = "flow.yaml"  # never read: the arguments are refused first

# (argv, the option as argparse names it, what the message must say)
BAD: list[tuple[list[str], str, str]] = [
    (["run", FLOW, "-w", "0"], "-w/--workers", "expected a whole number >= 1, got '0'"),
    (["run", FLOW, "-w", "-3"], "-w/--workers", "expected a whole number >= 1, got '-3'"),
    (["run", FLOW, "--workers", "two"], "-w/--workers", "got 'two'"),
    (["run", FLOW, "-w", "1.5"], "-w/--workers", "got '1.5'"),
    (["run", FLOW, "--processes", "0"], "--processes", "expected a whole number >= 1"),
    (["run", FLOW, "--stop-when-idle", "0"], "--stop-when-idle",
     "expected a number of seconds > 0, got '0'"),
    (["run", FLOW, "--stop-when-idle", "-1"], "--stop-when-idle", "got '-1'"),
    (["run", FLOW, "--stop-when-idle", "nan"], "--stop-when-idle", "got 'nan'"),
    (["run", FLOW, "--stop-when-idle", "inf"], "--stop-when-idle", "got 'inf'"),
    (["run", FLOW, "--epoch-ms", "0"], "--epoch-ms", "expected a whole number >= 1"),
    (["run", FLOW, "--ticks", "0"], "--ticks", "expected a whole number >= 1"),
    (["run", FLOW, "--process-id", "-1"], "--process-id", "expected a whole number >= 0"),
    (["run", FLOW, "--process-id", "2", "--addresses", "127.0.0.1:1;127.0.0.1:2"],
     "--process-id", "expected a number below the 2 --addresses, got 2"),
    (["broker", "start", "--port", "0"], "--port",
     "expected a TCP port from 1 to 65535, got '0'"),
    (["broker", "status", "--port", "65536"], "--port", "from 1 to 65535"),
    (["broker", "stop", "--controller-port", "-1"], "--controller-port", "from 1 to 65535"),
    (["broker", "status", "--port", "9092", "--controller-port", "9092"],
     "--controller-port", "expected a port other than --port 9092"),
    (["broker", "start", "--share-lock-ms", "999"], "--share-lock-ms",
     "expected milliseconds from 1000 to 30000, got '999'"),
    (["broker", "start", "--share-lock-ms", "30001"], "--share-lock-ms", "1000 to 30000"),
    (["executions", "list", "--limit", "0"], "--limit", "expected a whole number >= 1"),
    (["executions", "list", "--limit", "-1"], "--limit", "got '-1'"),
    (["executions", "list", "--sync-timeout", "0"], "--sync-timeout",
     "expected a number of seconds > 0"),
    (["executions", "show", "abcdef", "--sync-timeout", "-2"], "--sync-timeout", "got '-2'"),
    (["executions", "trace", "t", "-1", "0"], "PARTITION",
     "expected a partition number >= 0, got '-1'"),
    (["executions", "trace", "t", "0", "-5"], "OFFSET", "expected an offset >= 0, got '-5'"),
]


@pytest.mark.parametrize(("argv", "option", "expected"), BAD,
                         ids=[" ".join(a[0:1] + a[2:]) for a, _o, _e in BAD])
def test_out_of_range_is_a_usage_error(argv: list[str], option: str, expected: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert f"error: argument {option}: " in last, err
    assert expected in last, err
    assert "Traceback" not in err


def test_the_console_script_exits_2_with_one_error_line(tmp_path: Path) -> None:
    """The installed ``waxflow`` command, as a user runs it: no job starts."""
    flow = tmp_path / "flow.yaml"
    flow.write_text("not even read\n")
    res = subprocess.run([WAXFLOW, "run", str(flow), "-w", "-3"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if "error:" in ln]
    assert errors == ["waxflow run: error: argument -w/--workers: expected a whole number "
                      ">= 1, got '-3'"], res.stderr
    assert "Traceback" not in res.stderr and "panicked" not in res.stderr


def test_a_bad_share_lock_from_the_environment_names_the_variable(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WAXFLOW_SHARE_LOCK_MS", "soon")
    with pytest.raises(SystemExit) as exc:
        main(["broker", "status"])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --share-lock-ms: expected milliseconds from 1000 to 30000, got 'soon' " \
           "(from $WAXFLOW_SHARE_LOCK_MS)" in last


def test_values_in_range_parse_to_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAXFLOW_SHARE_LOCK_MS", "1000")
    parser = build_parser()
    args = parser.parse_args(["run", FLOW, "-w", "2", "--processes", "3", "--stop-when-idle",
                              "0.5", "--epoch-ms", "1", "--ticks", "1"])
    assert (args.workers, args.processes, args.stop_when_idle, args.epoch_ms, args.ticks) \
        == (2, 3, 0.5, 1, 1)
    args = parser.parse_args(["broker", "start", "--port", "65535", "--controller-port", "1"])
    assert (args.port, args.controller_port, args.share_lock_ms) == (65535, 1, 1000)
    args = parser.parse_args(["executions", "trace", "t", "0", "0", "--sync-timeout", "0.1"])
    assert (args.partition, args.offset, args.sync_timeout) == (0, 0, 0.1)
    assert parser.parse_args(["executions", "list", "--limit", "1"]).limit == 1


def test_no_numeric_option_is_left_unchecked() -> None:
    """Every subcommand's options: none keeps a bare ``int``/``float`` type (which accepts
    0 and negatives), so an option added later without a range fails here."""
    bare = [f"{p.prog} {'/'.join(a.option_strings) or a.dest}"
            for p in subparsers(build_parser()) for a in p._actions
            if a.type in (int, float)]
    assert bare == []
    progs = {p.prog for p in subparsers(build_parser())}
    assert {"waxflow run", "waxflow test", "waxflow broker start", "waxflow executions list",
            "waxflow executions trace", "waxflow executions replay"} <= progs


def test_type_errors_are_argparse_usage_errors() -> None:
    """The checks raise ArgumentTypeError (argparse prints it as is, exit 2), never
    ValueError (argparse would print only 'invalid <type> value')."""
    run = next(p for p in subparsers(build_parser()) if p.prog == "waxflow run")
    workers = next(a for a in run._actions if a.dest == "workers")
    assert callable(workers.type)
    with pytest.raises(argparse.ArgumentTypeError):
        workers.type("0")


def test_a_command_of_this_module_gets_the_same_parser_alone() -> None:
    """``waxflow run ...`` (and the other commands :mod:`waxflow.cli` defines) is parsed by
    a parser without the history's and the server's commands: each of its subcommands
    reads and documents its options as the full parser's does."""
    def by_prog(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        return {p.prog: p for p in subparsers(parser)}

    full, own = by_prog(build_parser()), by_prog(build_parser(own_only=True))
    assert "waxflow executions list" in full and "waxflow executions list" not in own
    assert {"waxflow run", "waxflow test", "waxflow validate", "waxflow schema",
            "waxflow broker start"} <= set(own)
    for prog, parser in own.items():
        if prog != "waxflow":
            assert parser.format_help() == full[prog].format_help(), prog
