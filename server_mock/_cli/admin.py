"""``clara-mock jobs ...`` and ``clara-mock pipelines ...``: inspect and steer a running platform.

Clients of the public Clara Platform API (see :mod:`server_mock._cli.connection` for the
connection flags and exit codes). The verbs of the real ``clara`` CLI
(:mod:`server_mock._cli.verbs`) print their listings and statuses with the functions here.
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from server_mock._cli.connection import ClientUsageError, connection_options, job_id_argument
from server_mock._client import JobStatus, PlatformClient
from server_mock._proto.nvidia.clara.platform import common_pb2, jobs_pb2

__all__ = [
    "add_admin_commands",
    "format_table",
    "jobs_cancel",
    "jobs_list",
    "jobs_logs",
    "jobs_status",
    "pipelines_list",
]

_EPOCH_0001 = datetime(1, 1, 1, tzinfo=UTC)


# -- the parser -----------------------------------------------------------------------------


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_admin_commands(commands: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Register ``jobs`` and ``pipelines`` on the ``clara-mock`` subcommand parsers."""
    common = [connection_options(), *parents]
    formatter = argparse.RawDescriptionHelpFormatter

    jobs = commands.add_parser(
        "jobs",
        help="list, inspect, read the logs of, or cancel jobs on a running platform",
        description=(
            "Inspect and steer the jobs of a running platform (e.g. `clara-mock serve`).\n\n"
            "examples:\n"
            "  clara-mock jobs list\n"
            "  clara-mock jobs status 0c3b7f1e-1a2b-4c3d-8e9f-0a1b2c3d4e5f\n"
            "  clara-mock jobs logs 0c3b7f1e-1a2b-4c3d-8e9f-0a1b2c3d4e5f segment\n"
            "  clara-mock jobs cancel 0c3b7f1e-1a2b-4c3d-8e9f-0a1b2c3d4e5f --reason 'typo'\n\n"
            "Job ids are printed with hyphens and accepted with or without them."
        ),
        formatter_class=formatter,
    )
    actions = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list",
        parents=common,
        help="every job: id, name, state, status, pipeline, creation time",
        description="List every job the platform knows, oldest first.",
    )
    _json_option(listing)
    listing.set_defaults(client_handler=jobs_list)
    status = actions.add_parser(
        "status",
        parents=common,
        help="one job's state and its operators' states",
        description="Show a job's state, status, payload and each operator's status.",
    )
    status.add_argument("job_id", type=job_id_argument, metavar="JOB_ID", help="the job's id")
    _json_option(status)
    status.set_defaults(client_handler=jobs_status)
    logs = actions.add_parser(
        "logs",
        parents=common,
        help="an operator's log (stdout and stderr), or every operator's",
        description="Print the log lines of one operator of a job, or of each in turn.",
    )
    logs.add_argument("job_id", type=job_id_argument, metavar="JOB_ID", help="the job's id")
    logs.add_argument(
        "operator", nargs="?", metavar="OPERATOR", help="the operator (default: every operator)"
    )
    logs.set_defaults(client_handler=jobs_logs)
    cancel = actions.add_parser(
        "cancel",
        parents=common,
        help="cancel a job (running operators are told to stop)",
        description="Cancel a job: stages not yet ended are cancelled, and the job with them.",
    )
    cancel.add_argument("job_id", type=job_id_argument, metavar="JOB_ID", help="the job's id")
    cancel.add_argument(
        "--reason",
        default="cancelled from the command line",
        help="why (shown in the job's messages)",
    )
    cancel.set_defaults(client_handler=jobs_cancel)

    pipelines = commands.add_parser(
        "pipelines",
        help="list the pipelines of a running platform",
        description="Inspect the pipelines of a running platform (e.g. `clara-mock serve`).",
    )
    pipeline_actions = pipelines.add_subparsers(dest="action", required=True, metavar="ACTION")
    pipeline_list = pipeline_actions.add_parser(
        "list",
        parents=common,
        help="every pipeline: id and name",
        description="List every pipeline the platform knows.",
    )
    _json_option(pipeline_list)
    pipeline_list.set_defaults(client_handler=pipelines_list)


# -- the commands ---------------------------------------------------------------------------


def _time(stamp: common_pb2.Timestamp) -> str:
    if not stamp.value:
        return "-"
    moment = _EPOCH_0001 + timedelta(seconds=stamp.value)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned columns two spaces apart (the first row is the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    )


def _print_json(document: object, out: TextIO) -> None:
    print(json.dumps(document, indent=2, sort_keys=True), file=out)


def jobs_list(client: PlatformClient, args: argparse.Namespace, out: TextIO) -> None:
    """``jobs list`` / ``list jobs``: every job, as a table or JSON (``--json``)."""
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
    print(format_table(rows), file=out)


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


def jobs_status(client: PlatformClient, args: argparse.Namespace, out: TextIO) -> None:
    """``jobs status``: one job's state, status, payload and operators."""
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
        print("\n".join(f"  {line}" for line in format_table(rows).splitlines()), file=out)
    for message in status.messages:
        print(f"  message: {message}", file=out)


def jobs_logs(client: PlatformClient, args: argparse.Namespace, out: TextIO) -> None:
    """``jobs logs`` / ``logs``: one operator's log, or each operator's in turn.

    Raises:
        ClientUsageError: The job has no such operator.
    """
    if args.operator is not None:
        known = [o.name for o in client.job_status(args.job_id).operators]
        if known and args.operator not in known:
            raise ClientUsageError(
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


def jobs_cancel(client: PlatformClient, args: argparse.Namespace, out: TextIO) -> None:
    """``jobs cancel``: cancel the job and say what it is now."""
    client.cancel_job(args.job_id, args.reason)
    status = client.job_status(args.job_id)
    print(
        f"job {status.name} ({status.job_id}): cancel requested; now {status.state} "
        f"({status.status})",
        file=out,
    )


def pipelines_list(client: PlatformClient, args: argparse.Namespace, out: TextIO) -> None:
    """``pipelines list`` / ``list pipelines``: every pipeline, as a table or JSON."""
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
    print(format_table(rows), file=out)
