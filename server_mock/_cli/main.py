"""``clara-mock``: serve the mock platform, or run a pipeline on it end to end.

The parser and the dispatch; each command lives in a module of its own (see
:mod:`server_mock._cli`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from server_mock._cli.admin import ADMIN_COMMANDS, add_admin_commands, run_admin
from server_mock._cli.common import EXIT_JOB_FAILED, EXIT_USAGE, UsageError
from server_mock._cli.run import run
from server_mock._cli.serve import serve
from server_mock._cli.tls_args import add_tls_arguments
from server_mock._errors import ApiError
from server_mock._persistence import StateStoreError

__all__ = ["main"]

DEFAULT_PORT = 50051


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clara-mock",
        description="A local Clara platform: serve its APIs, or run a pipeline end to end.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve_parser = commands.add_parser(
        "serve",
        help="serve the stage API and the Clara Platform API until interrupted",
        description="Serve the stage API and the Clara Platform API until Ctrl-C or SIGTERM.",
    )
    serve_parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default: loopback)"
    )
    serve_parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any)"
    )
    serve_parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without TLS (anyone on the network can use it)",
    )
    add_tls_arguments(serve_parser)
    serve_parser.add_argument(
        "--state",
        type=Path,
        metavar="PATH",
        help="keep pipelines, payloads and jobs in this SQLite file so they survive a restart "
        "(payload files go to PATH.workspace unless --workspace is given; default: in memory)",
    )
    _add_runner_arguments(serve_parser, command_dir_help="working folder of operator commands")

    run_parser = commands.add_parser(
        "run",
        help="run a pipeline on an embedded platform and write its outputs",
        description=(
            "Start an embedded platform, create the pipeline, upload the input payload, run "
            "the job with live progress, write the outputs and print a summary. Exits 1 if "
            "the job did not succeed."
        ),
    )
    run_parser.add_argument("pipeline", type=Path, help="the pipeline definition (YAML)")
    run_parser.add_argument(
        "--input", type=Path, required=True, help="folder uploaded as the input"
    )
    run_parser.add_argument(
        "--output",
        type=Path,
        help="folder the operators' outputs are written to (default: clara-runs/<job>)",
    )
    run_parser.add_argument("--job-name", help="the job's name (default: the pipeline's name)")
    _add_runner_arguments(run_parser, command_dir_help=None)
    add_admin_commands(commands)
    return parser


def _add_runner_arguments(parser: argparse.ArgumentParser, command_dir_help: str | None) -> None:
    parser.add_argument(
        "--workspace", type=Path, help="folder for payloads and job data (default: temporary)"
    )
    parser.add_argument(
        "--operator-map",
        type=Path,
        help="YAML mapping container image[:tag] to a local command (overrides `command`)",
    )
    if command_dir_help is not None:
        parser.add_argument("--operators-dir", type=Path, default=Path.cwd(), help=command_dir_help)


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the ``clara-mock`` command line; return the process exit code."""
    stream = out or sys.stdout
    args = _build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    if args.command in ADMIN_COMMANDS:
        return run_admin(args, stream)
    try:
        if args.command == "serve":
            return serve(args, stream)
        return run(args, stream)
    except (UsageError, StateStoreError) as error:
        print(f"clara-mock {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ApiError as error:
        print(f"clara-mock {args.command}: platform error: {error}", file=sys.stderr)
        return EXIT_JOB_FAILED
