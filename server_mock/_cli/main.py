"""``clara-mock``: serve the mock platform, run a pipeline on it, or drive a running one.

The parser and the dispatch; each command lives in a module of its own (see
:mod:`server_mock._cli`). Global flags (``-v``) are accepted before or after the command.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from server_mock._cli.admin import add_admin_commands
from server_mock._cli.capacity_flags import add_capacity_flags
from server_mock._cli.common import EXIT_JOB_FAILED, EXIT_USAGE, UsageError
from server_mock._cli.connection import run_client
from server_mock._cli.runner_flags import RunnerUsageError, add_runner_flags
from server_mock._cli.signals import Interrupted
from server_mock._cli.tls_args import add_tls_arguments
from server_mock._cli.verbs import add_verb_commands

__all__ = ["main"]

DEFAULT_PORT = 50051
DISTRIBUTION = "clara-stage-driver"


def _version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # run from a checkout without install
        return "unknown (not installed)"


def _global_options() -> argparse.ArgumentParser:
    """The flags every command accepts after its name too (``clara-mock run -v ...``)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,  # keeps the value given before the command
        help="more logging (-vv for debug)",
    )
    return options


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clara-mock",
        description=(
            "A local Clara platform: serve its APIs, run a pipeline end to end, or drive a "
            "running platform with the verbs of the clara CLI."
        ),
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)"
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}", help="print the version"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    globals_ = [_global_options()]

    serve_parser = commands.add_parser(
        "serve",
        parents=globals_,
        help="serve the stage API and the Clara Platform API until interrupted",
        description=(
            "Serve the stage API and the Clara Platform API until Ctrl-C or SIGTERM. Without "
            "--host/--port it listens on $CLARA_MOCK_ADDRESS when set (HOST:PORT, where the "
            f"client commands connect by default), else 127.0.0.1:{DEFAULT_PORT}."
        ),
    )
    serve_parser.add_argument("--host", help="interface to bind (default: loopback)")
    serve_parser.add_argument(
        "--port", type=int, help=f"port (default {DEFAULT_PORT}; 0 = any free port)"
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
        parents=globals_,
        help="run a pipeline on an embedded platform and write its outputs",
        description=(
            "Start an embedded platform, create the pipeline, copy in the input folder, run "
            "the job with live progress, write the outputs, the operators' logs "
            "(logs/<operator>.log) and the run's log (run.log) to --output, and print a "
            "summary. Exits 0 if the job succeeded, 1 if not, 2 if refused before anything "
            "ran, 130/143 when interrupted (SIGINT/SIGTERM cancel the job)."
        ),
    )
    run_parser.add_argument("pipeline", type=Path, help="the pipeline definition (YAML)")
    run_parser.add_argument(
        "--input", type=Path, required=True, help="folder uploaded as the input"
    )
    run_parser.add_argument(
        "--output",
        type=Path,
        help="folder the outputs and logs are written to (default: clara-runs/<job>-<id>)",
    )
    run_parser.add_argument("--job-name", help="the job's name (default: the pipeline's name)")
    run_parser.add_argument(
        "--stream-logs",
        action="store_true",
        help="print the operators' output as it comes, each line prefixed with its operator",
    )
    _add_runner_arguments(run_parser, command_dir_help=None)
    add_admin_commands(commands, parents=globals_)
    add_verb_commands(commands, parents=globals_)
    return parser


def _add_runner_arguments(parser: argparse.ArgumentParser, command_dir_help: str | None) -> None:
    add_capacity_flags(parser)
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
    add_runner_flags(parser)


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the ``clara-mock`` command line; return the process exit code."""
    stream = out or sys.stdout
    args = _build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    handler = getattr(args, "client_handler", None)
    if handler is not None:
        words = [getattr(args, name, None) for name in ("command", "action", "kind")]
        prefix = " ".join(["clara-mock", *(word for word in words if word)])
        return run_client(args, stream, handler, prefix)
    return _platform_command(args, stream)


def _platform_command(args: argparse.Namespace, stream: TextIO) -> int:
    """``serve`` or ``run``: the commands that start a platform of their own."""
    from server_mock import _extra  # noqa: PLC0415

    try:
        _extra.require()  # the client commands need only the driver's install; these, the mock's
    except _extra.MockExtraMissingError as error:
        print(f"clara-mock {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    # Imported here, not at the top: the client commands start faster without the platform.
    from server_mock._cli.run import run  # noqa: PLC0415
    from server_mock._cli.serve import serve  # noqa: PLC0415
    from server_mock._errors import ApiError  # noqa: PLC0415
    from server_mock._persistence import StateStoreError  # noqa: PLC0415

    try:
        if args.command == "serve":
            return serve(args, stream)
        return run(args, stream)
    except (UsageError, StateStoreError, RunnerUsageError) as error:
        print(f"clara-mock {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ApiError as error:
        print(f"clara-mock {args.command}: platform error: {error}", file=sys.stderr)
        return EXIT_JOB_FAILED
    except Interrupted as stop:
        print(f"clara-mock {args.command}: interrupted by {stop.name}", file=sys.stderr)
        return stop.exit_code
