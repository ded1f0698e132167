"""``clara-mock jobs ...`` and ``clara-mock pipelines ...``: inspect and steer a running platform.

These commands are clients of the public Clara Platform API (through
:class:`~server_mock._client.PlatformClient`), so they work against ``clara-mock serve`` or
any platform serving that API. Every command takes ``--address HOST:PORT`` (default
``127.0.0.1:50051``); TLS flags for a platform served with ``--tls-cert``.

Exit codes: 0 done, 1 the platform refused or could not be reached, 2 a bad argument (the
message names it).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import grpc

from server_mock._client import JobStatus, PlatformApiError, PlatformClient
from server_mock._proto.nvidia.clara.platform import common_pb2, jobs_pb2

__all__ = ["ADMIN_COMMANDS", "add_admin_commands", "run_admin"]

ADMIN_COMMANDS = frozenset({"jobs", "pipelines"})
DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_CONNECT_TIMEOUT = 5.0
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
_EPOCH_0001 = datetime(1, 1, 1, tzinfo=UTC)


class AdminUsageError(Exception):
    """An argument is wrong; the message names it."""


class PlatformUnreachableError(Exception):
    """The platform did not answer at the address; the message says where and what to check."""


# -- argument types -------------------------------------------------------------------------


def address_argument(text: str) -> str:
    """``--address``: ``HOST:PORT`` (``[v6]:PORT`` for IPv6)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT (e.g. {DEFAULT_ADDRESS}, [::1]:50051)"
        )
    return text.strip()


def job_id_argument(text: str) -> uuid.UUID:
    """A job id: a UUID, with or without hyphens (as ``jobs list`` prints it)."""
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a job id (expected a UUID such as "
            "0c3b7f1e-1a2b-4c3d-8e9f-0a1b2c3d4e5f; `clara-mock jobs list` shows them)"
        ) from None


def _timeout_argument(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in (0, 3600]")
    return value


# -- the parser -----------------------------------------------------------------------------


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument(
        "--address",
        type=address_argument,
        default=DEFAULT_ADDRESS,
        metavar="HOST:PORT",
        help=f"the platform's address (default {DEFAULT_ADDRESS}, as `clara-mock serve` binds)",
    )
    group.add_argument(
        "--connect-timeout",
        type=_timeout_argument,
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up when the platform does not answer within this (default "
        f"{DEFAULT_CONNECT_TIMEOUT:g})",
    )
    group.add_argument(
        "--tls-ca",
        type=Path,
        metavar="FILE",
        help="connect over TLS, trusting this CA bundle (PEM); for `serve --tls-cert`",
    )
    group.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="client certificate (PEM), for mutual TLS"
    )
    group.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="client certificate's key (PEM)"
    )
    group.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="the name the server certificate must carry (default: the address's host)",
    )
    return common


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_admin_commands(commands: Any) -> None:
    """Register ``jobs`` and ``pipelines`` on the ``clara-mock`` subcommand parsers."""
    common = _connection_options()
    formatter = argparse.RawDescriptionHelpFormatter

    jobs = commands.add_parser(
        "jobs",
        help="list, inspect, read the logs of, or cancel jobs on a running platform",
        description=(
            "Inspect and steer the jobs of a running platform (e.g. `clara-mock serve`).\n\n"
            "examples:\n"
            "  clara-mock jobs list\n"
            "  clara-mock jobs status 0c3b7f1e-1a2b-4c3d-8e9f-0a1b2c3d4e5f\n"
            "  clara-mock jobs logs 0c3b7f1e1a2b4c3d8e9f0a1b2c3d4e5f segment\n"
            "  clara-mock jobs cancel 0c3b7f1e1a2b4c3d8e9f0a1b2c3d4e5f --reason 'wrong input'"
        ),
        formatter_class=formatter,
    )
    actions = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list",
        parents=[common],
        help="every job: id, name, state, status, pipeline, creation time",
        description="List every job the platform knows, oldest first.",
    )
    _json_option(listing)
    status = actions.add_parser(
        "status",
        parents=[common],
        help="one job's state and its operators' states",
        description="Show a job's state, status, payload and each operator's status.",
    )
    status.add_argument("job_id", type=job_id_argument, metavar="JOB_ID", help="the job's id")
    _json_option(status)
    logs = actions.add_parser(
        "logs",
        parents=[common],
        help="an operator's log (stdout and stderr), or every operator's",
        description="Print the log lines of one operator of a job, or of each in turn.",
    )
    logs.add_argument("job_id", type=job_id_argument, metavar="JOB_ID", help="the job's id")
    logs.add_argument(
        "operator", nargs="?", metavar="OPERATOR", help="the operator (default: every operator)"
    )
    cancel = actions.add_parser(
        "cancel",
        parents=[common],
        help="cancel a job (running operators are told to stop)",
        description="Cancel a job: stages not yet ended are cancelled, and the job with them.",
    )
    cancel.add_argument("job_id", type=job_id_argument, metavar="JOB_ID", help="the job's id")
    cancel.add_argument(
        "--reason",
        default="cancelled from the command line",
        help="why (shown in the job's messages)",
    )

    pipelines = commands.add_parser(
        "pipelines",
        help="list the pipelines of a running platform",
        description="Inspect the pipelines of a running platform (e.g. `clara-mock serve`).",
    )
    pipeline_actions = pipelines.add_subparsers(dest="action", required=True, metavar="ACTION")
    pipeline_list = pipeline_actions.add_parser(
        "list",
        parents=[common],
        help="every pipeline: id and name",
        description="List every pipeline the platform knows.",
    )
    _json_option(pipeline_list)


# -- running --------------------------------------------------------------------------------


def _read(flag: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise AdminUsageError(f"{flag} {path}: {error.strerror or error}") from None


def _open_channel(args: argparse.Namespace) -> grpc.Channel:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise AdminUsageError("--tls-cert and --tls-key go together (mutual TLS needs both)")
    if args.tls_ca is None:
        if args.tls_cert is not None or args.tls_server_name:
            raise AdminUsageError("--tls-cert, --tls-key and --tls-server-name need --tls-ca")
        return grpc.insecure_channel(args.address)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read("--tls-ca", args.tls_ca),
        private_key=_read("--tls-key", args.tls_key),
        certificate_chain=_read("--tls-cert", args.tls_cert),
    )
    options = []
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    return grpc.secure_channel(args.address, credentials, options=options)


def _wait_for_connection(channel: grpc.Channel, timeout: float) -> str | None:
    """Wait until the channel is ready; return why not (refused, timed out) or None."""
    seen: list[grpc.ChannelConnectivity] = []
    changed = threading.Condition()

    def on_change(state: grpc.ChannelConnectivity) -> None:
        with changed:
            seen.append(state)
            changed.notify_all()

    channel.subscribe(on_change, try_to_connect=True)
    try:
        with changed:
            ended = changed.wait_for(lambda: bool(seen) and seen[-1] in _SETTLED, timeout=timeout)
            last = seen[-1] if seen else None
    finally:
        channel.unsubscribe(on_change)
    if ended and last is grpc.ChannelConnectivity.READY:
        return None
    if ended:
        return "the connection failed"
    return f"no platform answered within {timeout:g} s"


_SETTLED = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE)


def _connect(args: argparse.Namespace) -> PlatformClient:
    channel = _open_channel(args)
    problem = _wait_for_connection(channel, args.connect_timeout)
    if problem is not None:
        channel.close()
        hint = (
            "check --tls-ca/--tls-cert/--tls-key against the server's TLS settings"
            if args.tls_ca is not None
            else "is `clara-mock serve` running there? a TLS server also needs --tls-ca"
        )
        raise PlatformUnreachableError(f"--address {args.address}: {problem}; {hint}")
    return PlatformClient(args.address, channel=channel)


def run_admin(args: argparse.Namespace, out: TextIO, err: TextIO | None = None) -> int:
    """Run a ``jobs``/``pipelines`` command; return the exit code (errors go to ``err``)."""
    errors = err or sys.stderr
    prefix = f"clara-mock {args.command} {args.action}"
    handlers: dict[tuple[str, str], Callable[[PlatformClient, argparse.Namespace, TextIO], None]]
    handlers = {
        ("jobs", "list"): _jobs_list,
        ("jobs", "status"): _jobs_status,
        ("jobs", "logs"): _jobs_logs,
        ("jobs", "cancel"): _jobs_cancel,
        ("pipelines", "list"): _pipelines_list,
    }
    try:
        with _connect(args) as client:
            handlers[(args.command, args.action)](client, args, out)
    except AdminUsageError as error:
        print(f"{prefix}: error: {error}", file=errors)
        return EXIT_USAGE
    except PlatformUnreachableError as error:
        print(f"{prefix}: error: {error}", file=errors)
        return EXIT_FAILED
    except PlatformApiError as error:
        print(f"{prefix}: platform error: {error}", file=errors)
        return EXIT_FAILED
    out.flush()
    return EXIT_OK


# -- the commands ---------------------------------------------------------------------------


def _time(stamp: common_pb2.Timestamp) -> str:
    if not stamp.value:
        return "-"
    moment = _EPOCH_0001 + timedelta(seconds=stamp.value)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    )


def _print_json(document: object, out: TextIO) -> None:
    print(json.dumps(document, indent=2, sort_keys=True), file=out)


def _jobs_list(client: PlatformClient, args: argparse.Namespace, out: TextIO) -> None:
    jobs = [
        {
            "job_id": str(uuid.UUID(d.job_id.value)),
            "name": d.job_name,
            "state": jobs_pb2.JobState.Name(d.state).removeprefix("JOB_STATE_"),
            "status": jobs_pb2.JobStatus.Name(d.status).removeprefix("JOB_STATUS_"),
            "pipeline_id": str(uuid.UUID(d.pipeline_id.value)) if d.pipeline_id.value else "",
            "created": _time(d.created),
        }
        for d in client.list_jobs()
    ]
    if args.json:
        _print_json(jobs, out)
        return
    if not jobs:
        print("no jobs", file=out)
        return
    header = ("JOB ID", "NAME", "STATE", "STATUS", "PIPELINE", "CREATED")
    rows = [header] + [
        (j["job_id"], j["name"], j["state"], j["status"], j["pipeline_id"], j["created"])
        for j in jobs
    ]
    print(_table(rows), file=out)


def _status_document(status: JobStatus) -> dict[str, Any]:
    return {
        "job_id": str(status.job_id),
        "name": status.name,
        "state": status.state,
        "status": status.status,
        "payload_id": str(status.payload_id),
        "operators": {o.name: o.status for o in status.operators},
        "messages": list(status.messages),
    }


def _jobs_status(client: PlatformClient, args: argparse.Namespace, out: TextIO) -> None:
    status = client.job_status(args.job_id)
    if args.json:
        _print_json(_status_document(status), out)
        return
    print(f"job {status.name} ({status.job_id})", file=out)
    print(f"  state:   {status.state}", file=out)
    print(f"  status:  {status.status}", file=out)
    print(f"  payload: {status.payload_id}", file=out)
    if status.operators:
        rows = [("OPERATOR", "STATUS"), *((o.name, o.status) for o in status.operators)]
        print("\n".join(f"  {line}" for line in _table(rows).splitlines()), file=out)
    for message in status.messages:
        print(f"  message: {message}", file=out)


def _jobs_logs(client: PlatformClient, args: argparse.Namespace, out: TextIO) -> None:
    if args.operator is not None:
        known = [o.name for o in client.job_status(args.job_id).operators]
        if known and args.operator not in known:
            raise AdminUsageError(
                f"OPERATOR {args.operator!r}: job {args.job_id} has no such operator "
                f"(operators: {', '.join(known)})"
            )
        for line in client.read_logs(args.job_id, args.operator):
            print(line, file=out)
        return
    operators = [o.name for o in client.job_status(args.job_id).operators]
    for index, operator in enumerate(operators):
        if index:
            print(file=out)
        print(f"==> {operator} <==", file=out)
        for line in client.read_logs(args.job_id, operator):
            print(line, file=out)


def _jobs_cancel(client: PlatformClient, args: argparse.Namespace, out: TextIO) -> None:
    client.cancel_job(args.job_id, args.reason)
    status = client.job_status(args.job_id)
    print(
        f"job {status.name} ({status.job_id}): cancel requested; now {status.state} "
        f"({status.status})",
        file=out,
    )


def _pipelines_list(client: PlatformClient, args: argparse.Namespace, out: TextIO) -> None:
    pipelines = [
        {"pipeline_id": str(uuid.UUID(d.pipeline_id.value)), "name": d.name}
        for d in client.list_pipelines()
    ]
    if args.json:
        _print_json(pipelines, out)
        return
    if not pipelines:
        print("no pipelines", file=out)
        return
    rows = [("PIPELINE ID", "NAME"), *((p["pipeline_id"], p["name"]) for p in pipelines)]
    print(_table(rows), file=out)
