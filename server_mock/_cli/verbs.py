"""The verbs of the real ``clara`` CLI, against a running platform (e.g. ``clara-mock serve``).

``clara [command] [type] [flags]``, as the Clara Deploy SDK's CLI has them, so that a script
written for it needs little change (docs/cli.md has the mapping)::

    clara-mock create pipelines -p pipeline.yaml        # PIPELINE_ID: ...
    clara-mock create jobs -n my-job -p PIPELINE_ID -f input/   # JOB_ID: ..., PAYLOAD_ID: ...
    clara-mock start job -j JOB_ID
    clara-mock describe job -j JOB_ID --wait            # follows the job until it ends
    clara-mock logs -j JOB_ID [OPERATOR]
    clara-mock download JOB_ID:/operators results/
    clara-mock list jobs | pipelines

Types are accepted singular or plural (``job``/``jobs``). ``-q`` prints only the new id, for
``$(...)`` in scripts. Ids are printed as hyphenated UUIDs and accepted with or without hyphens.
``describe job --wait`` asks ``Jobs.Status`` every :data:`POLL_INTERVAL` seconds: the Platform
API has no stream of a job's changes, so a client polls (the published client's example does).
"""

from __future__ import annotations

import argparse
import fnmatch
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from server_mock._cli.admin import jobs_list, jobs_logs, jobs_status, pipelines_list
from server_mock._cli.connection import (
    EXIT_FAILED,
    EXIT_OK,
    ClientUsageError,
    connection_options,
    job_id_argument,
)
from server_mock._client import JobStatus, PlatformClient

__all__ = ["POLL_INTERVAL", "VERBS", "add_verb_commands", "download_source"]

VERBS = frozenset({"create", "start", "describe", "list", "logs", "download"})
POLL_INTERVAL = 0.25
"""Seconds between two ``Jobs.Status`` calls of ``describe job --wait``."""
DEFAULT_WAIT = 3600.0
_GLOB = set("*?[")


def _pipeline_id_argument(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a pipeline id (a UUID, as `clara-mock create pipelines` prints)"
        ) from None


def download_source(text: str) -> tuple[uuid.UUID, str]:
    """``download``'s ``JOB_ID[:PATH]``: the job and a path (or glob) in its payload.

    The path defaults to ``/operators`` (every operator's outputs); its leading ``/`` is
    optional.
    """
    job, _, path = text.partition(":")
    job_id = job_id_argument(job)
    cleaned = PurePosixPath("/" + (path.strip() or "operators")).as_posix().lstrip("/")
    if ".." in PurePosixPath(cleaned).parts:
        raise argparse.ArgumentTypeError(f"{text!r}: the path must stay inside the payload")
    return job_id, cleaned


def _wait_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return value


# -- the parser -----------------------------------------------------------------------------


def add_verb_commands(commands: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Register ``create``, ``start``, ``describe``, ``list``, ``logs`` and ``download``."""
    common = [connection_options(), *parents]

    create = commands.add_parser(
        "create", help="create a pipeline from a file, or a job (with its input folder)"
    )
    kinds = create.add_subparsers(dest="kind", required=True, metavar="TYPE")
    pipeline = kinds.add_parser(
        "pipelines",
        aliases=["pipeline"],
        parents=common,
        help="register a pipeline definition; prints PIPELINE_ID",
        description="Register a pipeline definition file (Pipelines.Create).",
    )
    pipeline.add_argument(
        "-p", "--pipeline-file", type=Path, required=True, metavar="FILE", help="the definition"
    )
    _quiet_option(pipeline)
    pipeline.set_defaults(client_handler=create_pipeline)
    job = kinds.add_parser(
        "jobs",
        aliases=["job"],
        parents=common,
        help="create a job of a pipeline and upload its input; prints JOB_ID, PAYLOAD_ID",
        description=(
            "Create a job of a registered pipeline (Jobs.Create) and upload the files of "
            "FOLDER into its payload's input/ (Payloads.Upload). The job is not started: "
            "`clara-mock start job -j JOB_ID`."
        ),
    )
    job.add_argument("-n", "--name", required=True, help="the job's name")
    job.add_argument(
        "-p",
        "--pipeline-id",
        type=_pipeline_id_argument,
        required=True,
        metavar="PIPELINE_ID",
        help="the pipeline the job runs",
    )
    job.add_argument(
        "-f", "--input", type=Path, metavar="FOLDER", help="the folder uploaded as the job's input"
    )
    _quiet_option(job)
    job.set_defaults(client_handler=create_job)

    start = commands.add_parser("start", help="start a created job")
    start_kinds = start.add_subparsers(dest="kind", required=True, metavar="TYPE")
    start_job = start_kinds.add_parser(
        "job", aliases=["jobs"], parents=common, help="start a created job (Jobs.Start)"
    )
    _job_option(start_job)
    start_job.set_defaults(client_handler=start_job_command)

    describe = commands.add_parser("describe", help="a job's state and its operators'")
    describe_kinds = describe.add_subparsers(dest="kind", required=True, metavar="TYPE")
    describe_job = describe_kinds.add_parser(
        "job",
        aliases=["jobs"],
        parents=common,
        help="a job's state, status, payload and operators (Jobs.Status)",
        description=(
            "Show a job's state. With --wait, print each change until the job ends, then "
            "exit 0 if it succeeded and 1 if not."
        ),
    )
    _job_option(describe_job)
    describe_job.add_argument(
        "--wait",
        action="store_true",
        help="follow the job until it ends; exit 1 unless it succeeded",
    )
    describe_job.add_argument(
        "--timeout",
        type=_wait_seconds,
        default=DEFAULT_WAIT,
        metavar="SECONDS",
        help=f"with --wait: give up after this long (default {DEFAULT_WAIT:g})",
    )
    describe_job.add_argument("--json", action="store_true", help="print JSON instead of text")
    describe_job.set_defaults(client_handler=describe_job_command)

    listing = commands.add_parser("list", help="list the jobs or the pipelines")
    list_kinds = listing.add_subparsers(dest="kind", required=True, metavar="TYPE")
    for name, alias, handler in (
        ("jobs", "job", jobs_list),
        ("pipelines", "pipeline", pipelines_list),
    ):
        kind = list_kinds.add_parser(name, aliases=[alias], parents=common, help=f"every {alias}")
        kind.add_argument("--json", action="store_true", help="print JSON instead of a table")
        kind.set_defaults(client_handler=handler)

    logs = commands.add_parser(
        "logs",
        parents=common,
        help="a job's operator logs (Jobs.ReadLogs)",
        description="Print the log of one operator of a job, or of each in turn.",
    )
    _job_option(logs)
    logs.add_argument(
        "operator", nargs="?", metavar="OPERATOR", help="the operator (default: every operator)"
    )
    logs.set_defaults(client_handler=jobs_logs)

    download = commands.add_parser(
        "download",
        parents=common,
        help="download files of a job's payload (default: its operators' outputs)",
        description=(
            "Download the files of a job's payload under PATH (a folder, a file, or a glob "
            "such as '/operators/*/output'; default /operators) into DEST, keeping their "
            "paths below PATH."
        ),
    )
    download.add_argument(
        "source", type=download_source, metavar="JOB_ID[:PATH]", help="the job and what to get"
    )
    download.add_argument("destination", type=Path, metavar="DEST", help="the local folder")
    download.set_defaults(client_handler=download_command)


def _job_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-j", "--job-id", dest="job_id", type=job_id_argument, required=True, metavar="JOB_ID"
    )


def _quiet_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print only the new id (for scripts)"
    )


# -- the commands ---------------------------------------------------------------------------


def create_pipeline(client: PlatformClient, args: argparse.Namespace, out: TextIO) -> None:
    """``create pipelines -p FILE``: register the definition; print its id.

    Raises:
        ClientUsageError: No such file.
    """
    path: Path = args.pipeline_file
    if not path.is_file():
        raise ClientUsageError(f"-p {path}: no such file")
    pipeline_id = client.create_pipeline(path)
    print(pipeline_id if args.quiet else f"PIPELINE_ID: {pipeline_id}", file=out)


def create_job(client: PlatformClient, args: argparse.Namespace, out: TextIO) -> None:
    """``create jobs -n NAME -p PIPELINE_ID [-f FOLDER]``: the job, its input uploaded.

    Raises:
        ClientUsageError: ``-f`` is not a folder (checked before anything is created).
    """
    folder: Path | None = args.input
    if folder is not None and not folder.is_dir():
        raise ClientUsageError(f"-f {folder}: not a folder")
    job_id = client.create_job(args.pipeline_id, args.name, [])
    payload_id = client.job_status(job_id).payload_id
    count = 0 if folder is None else client.upload_folder(payload_id, folder, prefix="input/")
    if args.quiet:
        print(job_id, file=out)
        return
    print(f"JOB_ID: {job_id}", file=out)
    print(f"PAYLOAD_ID: {payload_id}", file=out)
    if folder is not None:
        print(f"INPUT: {count} file(s) from {folder}", file=out)


def start_job_command(client: PlatformClient, args: argparse.Namespace, out: TextIO) -> None:
    """``start job -j JOB_ID``: start the job; say what it is now."""
    client.start_job(args.job_id)
    status = client.job_status(args.job_id)
    print(
        f"job {status.name} ({status.job_id}): started; now {status.state} ({status.status})",
        file=out,
    )


def _state_line(status: JobStatus) -> str:
    operators = ", ".join(f"{o.name} {o.status}" for o in status.operators)
    return f"{status.state} {status.status}: {operators}"


def describe_job_command(client: PlatformClient, args: argparse.Namespace, out: TextIO) -> int:
    """``describe job -j JOB_ID [--wait]``: the job's status; with --wait, until it ends."""
    if not args.wait:
        jobs_status(client, args, out)
        return EXIT_OK
    started = time.monotonic()
    tick = threading.Event()  # never set: waiting on it is the poll interval
    shown = None
    while True:
        status = client.job_status(args.job_id)
        line = _state_line(status)
        if line != shown:
            print(f"[{time.monotonic() - started:7.2f}s] {line}", file=out, flush=True)
            shown = line
        if status.state == "STOPPED":
            break
        if time.monotonic() - started >= args.timeout:
            print(
                f"job {status.name} ({status.job_id}): still {status.state} after "
                f"{args.timeout:g} s",
                file=out,
            )
            return EXIT_FAILED
        tick.wait(POLL_INTERVAL)
    jobs_status(client, args, out)
    succeeded = status.status == "HEALTHY" and all(
        o.status == "COMPLETED" for o in status.operators
    )
    return EXIT_OK if succeeded else EXIT_FAILED


def _selected(names: Sequence[str], path: str) -> tuple[list[str], str]:
    """The payload files ``path`` names (a folder, a file or a glob), and their base folder.

    Local paths are the files' paths relative to that base folder.
    """
    if not path:
        return list(names), ""
    parts = PurePosixPath(path).parts
    glob_at = next((i for i, part in enumerate(parts) if _GLOB & set(part)), None)
    if glob_at is not None:  # a file matches, or lies under a matching folder

        def matches(name: str) -> bool:
            pieces = PurePosixPath(name).parts
            return any(
                fnmatch.fnmatchcase("/".join(pieces[:k]), path) for k in range(1, len(pieces) + 1)
            )

        return [n for n in names if matches(n)], "/".join(parts[:glob_at])
    if path in names:  # one file
        parent = PurePosixPath(path).parent.as_posix()
        return [path], "" if parent == "." else parent
    return [n for n in names if n.startswith(path + "/")], path


def download_command(client: PlatformClient, args: argparse.Namespace, out: TextIO) -> int:
    """``download JOB_ID[:PATH] DEST``: the files of the job's payload under PATH, into DEST."""
    job_id, path = args.source
    status = client.job_status(job_id)
    names = client.payload_files(status.payload_id)
    chosen, base = _selected(names, path)
    if not chosen:
        listing = ", ".join(sorted(names)[:10]) or "none"
        print(
            f"job {status.name} ({job_id}): nothing in its payload matches /{path} "
            f"(its files: {listing}{', ...' if len(names) > 10 else ''})",
            file=out,
        )
        return EXIT_FAILED
    destination: Path = args.destination
    for name in chosen:
        relative = PurePosixPath(name).relative_to(base) if base else PurePosixPath(name)
        client.download(status.payload_id, name, destination / relative)
    print(
        f"{len(chosen)} file(s) of job {status.name} ({job_id}) downloaded to {destination}",
        file=out,
    )
    return EXIT_OK
