"""``clara-mock``: serve the mock platform, or run a pipeline on it end to end."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from server_mock._cli_admin import ADMIN_COMMANDS, add_admin_commands, run_admin
from server_mock._client import PlatformApiError, PlatformClient
from server_mock._jobs import StageState
from server_mock._persistence import StateStoreError
from server_mock._platform import JobSnapshot, MockPlatform, StageSnapshot
from server_mock._runner import LocalProcessLauncher, OperatorMapError, load_operator_map
from server_mock._runner_cli import RunnerUsageError, add_runner_flags, runner_options
from server_mock._tls import (
    TlsUsageError,
    add_tls_arguments,
    operator_address,
    serve_tls_from_args,
)

__all__ = ["main"]

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEFAULT_PORT = 50051
RUN_DEADLINE = 3 * 3600.0  # the job's own stage timeouts end it well before this
SHUTDOWN_WAIT = 60.0

_log = logging.getLogger("server_mock.cli")


class UsageError(Exception):
    """A command-line argument is wrong; the message names it."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clara-mock",
        description="A local Clara platform: serve its APIs, or run a pipeline end to end.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="serve the stage API and the Clara Platform API until interrupted",
        description="Serve the stage API and the Clara Platform API until Ctrl-C or SIGTERM.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback)")
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any)"
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without TLS (anyone on the network can use it)",
    )
    add_tls_arguments(serve)
    serve.add_argument(
        "--state",
        type=Path,
        metavar="PATH",
        help="keep pipelines, payloads and jobs in this SQLite file so they survive a restart "
        "(payload files go to PATH.workspace unless --workspace is given; default: in memory)",
    )
    _add_runner_arguments(serve, command_dir_help="working folder of operator commands")

    run = commands.add_parser(
        "run",
        help="run a pipeline on an embedded platform and write its outputs",
        description=(
            "Start an embedded platform, create the pipeline, upload the input payload, run "
            "the job with live progress, write the outputs and print a summary. Exits 1 if "
            "the job did not succeed."
        ),
    )
    run.add_argument("pipeline", type=Path, help="the pipeline definition (YAML)")
    run.add_argument("--input", type=Path, required=True, help="folder uploaded as the input")
    run.add_argument(
        "--output",
        type=Path,
        help="folder the operators' outputs are written to (default: clara-runs/<job>)",
    )
    run.add_argument("--job-name", help="the job's name (default: the pipeline's name)")
    _add_runner_arguments(run, command_dir_help=None)
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
    add_runner_flags(parser)


def _operator_map(args: argparse.Namespace) -> dict[str, list[str]]:
    if args.operator_map is None:
        return {}
    try:
        return load_operator_map(args.operator_map)
    except OperatorMapError as error:
        raise UsageError(f"--operator-map: {error}") from None


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# -- serve ------------------------------------------------------------------------------


def _serve(args: argparse.Namespace, out: TextIO) -> int:
    if not 0 <= args.port < 65536:
        raise UsageError(f"--port {args.port}: expected 0-65535")
    try:
        tls = serve_tls_from_args(args)
    except TlsUsageError as error:
        raise UsageError(str(error)) from None
    if not _is_loopback(args.host) and (tls is None or not tls.server.mutual) and not args.insecure:
        raise UsageError(
            f"--host {args.host}: mutual TLS is required to listen beyond loopback (whoever "
            "can call Jobs.Start can run code): give --tls-cert, --tls-key and --tls-client-ca, "
            "or pass --insecure to accept that anyone who can reach the port can use the platform"
        )
    if not _is_loopback(args.host) and (tls is None or not tls.server.mutual):
        print(
            f"clara-mock serve: warning: anyone who can reach {args.host} can use the Clara "
            "Platform API; --tls-client-ca restricts it to holders of a client certificate",
            file=sys.stderr,
        )
    operators_dir = args.operators_dir.resolve()
    if not operators_dir.is_dir():
        raise UsageError(f"--operators-dir {args.operators_dir}: not a folder")
    launcher_holder: list[MockPlatform] = []
    launcher = LocalProcessLauncher(
        lambda: operator_address(launcher_holder[0].address),
        operators_dir,
        operator_map=_operator_map(args),
        extra_env=tls.operator_env if tls is not None else None,
        # A lambda: the platform (and its token store) is created after the launcher.
        stage_token=lambda job, stage: launcher_holder[0].stage_tokens.issue(job, stage),  # noqa: PLW0108
        **runner_options(args),
    )
    platform = MockPlatform(
        args.host,
        args.port,
        workspace=args.workspace,
        state_path=args.state,
        launcher=launcher,
        tls=tls.server if tls is not None else None,
        require_stage_tokens=True,
    )
    launcher_holder.append(platform)
    stopped = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stopped.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        address = platform.start()
        print(f"clara-mock listening on {address}", file=out, flush=True)
        while not stopped.wait(3600):
            pass
        print("clara-mock stopping", file=out, flush=True)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if launcher_holder and platform.running:
            platform.call_async(launcher.stop_all, timeout=SHUTDOWN_WAIT)
        platform.stop()
    return EXIT_OK


# -- run --------------------------------------------------------------------------------


def _display_state(stage: StageSnapshot) -> str:
    if stage.state is StageState.READY:
        return "running" if "execute_started" in stage.events else "ready"
    if stage.state is StageState.WAITING:
        return "preparing" if "prepare_started" in stage.events else "waiting"
    return str(stage.state.value)


def _duration(stage: StageSnapshot) -> str:
    if stage.ready_at is None or stage.ended_at is None:
        return "-"
    return f"{stage.ended_at - stage.ready_at:.2f}s"


def _summary(job: JobSnapshot, exit_codes: dict[str, int]) -> str:
    rows = [("STAGE", "STATE", "DURATION", "EXIT", "MESSAGE")]
    for name, stage in job.stages.items():
        code = exit_codes.get(name)
        rows.append(
            (
                name,
                stage.state.value,
                _duration(stage),
                "-" if code is None else str(code),
                stage.message[:80],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
        for row in rows
    ]
    lines.append(f"job {job.name} ({job.job_id}): {job.state.value}")
    return "\n".join(lines)


def _run(args: argparse.Namespace, out: TextIO) -> int:
    pipeline: Path = args.pipeline
    if not pipeline.is_file():
        raise UsageError(f"PIPELINE {pipeline}: no such file")
    if not args.input.is_dir():
        raise UsageError(f"--input {args.input}: not a folder")
    operator_map = _operator_map(args)
    holder: list[MockPlatform] = []
    launcher = LocalProcessLauncher(
        lambda: holder[0].address,
        pipeline.resolve().parent,
        operator_map=operator_map,
        stage_token=lambda job, stage: holder[0].stage_tokens.issue(job, stage),  # noqa: PLW0108
        **runner_options(args),
    )
    with tempfile.TemporaryDirectory(prefix="clara-run-") as temp:
        workspace = args.workspace or Path(temp)
        platform = MockPlatform(workspace=workspace, launcher=launcher, require_stage_tokens=True)
        holder.append(platform)
        platform.start()
        try:
            return _run_job(args, platform, launcher, out)
        finally:
            platform.call_async(lambda: launcher.wait_idle(SHUTDOWN_WAIT), SHUTDOWN_WAIT + 5)
            platform.call_async(launcher.stop_all, timeout=SHUTDOWN_WAIT)
            platform.stop()


def _run_job(
    args: argparse.Namespace, platform: MockPlatform, launcher: LocalProcessLauncher, out: TextIO
) -> int:
    started = time.monotonic()
    with PlatformClient(platform.address) as client:
        pipeline_id = client.create_pipeline(args.pipeline)
        payload_id = client.create_payload()
        count = client.upload_folder(payload_id, args.input)
        name = args.job_name or _pipeline_name(platform, pipeline_id)
        job_id = client.create_job(pipeline_id, name, [payload_id])
        print(f"job {name} ({job_id}): {count} input file(s) uploaded; starting", file=out)
        client.start_job(job_id)
        try:
            job = _follow(platform, job_id, started, out)
        except KeyboardInterrupt:
            print("interrupted: cancelling the job", file=out, flush=True)
            client.cancel_job(job_id, "interrupted from the command line")
            platform.wait_for_job(job_id, SHUTDOWN_WAIT)
            return EXIT_INTERRUPTED
        status = client.job_status(job_id)
        output = args.output or Path("clara-runs") / f"{name}-{job_id.hex[:8]}"
        written = _write_outputs(client, status.payload_id, output)
    # Operators exit shortly after reporting; wait so the summary shows their exit codes.
    platform.call_async(lambda: launcher.wait_idle(SHUTDOWN_WAIT), SHUTDOWN_WAIT + 5)
    codes = {
        stage: code
        for (job_key, stage), code in launcher.exit_codes.items()
        if job_key == str(job_id)
    }
    print(_summary(job, codes), file=out)
    print(f"{written} output file(s) written to {output}", file=out, flush=True)
    return EXIT_OK if job.state.value == "succeeded" else EXIT_JOB_FAILED


def _pipeline_name(platform: MockPlatform, pipeline_id: uuid.UUID) -> str:
    name: str = platform.call(lambda: platform.state.pipelines.get(pipeline_id).definition.name)
    return name


def _follow(platform: MockPlatform, job_id: uuid.UUID, started: float, out: TextIO) -> JobSnapshot:
    """Print each stage's state changes until the job ends; return the final snapshot."""
    shown: dict[str, str] = {}
    version = -1
    deadline = time.monotonic() + RUN_DEADLINE
    while True:
        version, job = platform.wait_for_change(job_id, version, timeout=60)
        for name, stage in job.stages.items():
            state = _display_state(stage)
            if shown.get(name) != state:
                shown[name] = state
                detail = f" ({stage.message})" if stage.message and stage.state.terminal else ""
                elapsed = time.monotonic() - started
                print(f"[{elapsed:7.2f}s] {name}: {state}{detail}", file=out, flush=True)
        if job.state.terminal:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job.state.value} after {RUN_DEADLINE} s")


def _write_outputs(client: PlatformClient, payload_id: uuid.UUID, output: Path) -> int:
    names = [n for n in client.payload_files(payload_id) if n.startswith("operators/")]
    for name in names:
        client.download(payload_id, name, output / name.removeprefix("operators/"))
    return len(names)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the ``clara-mock`` command line; return the process exit code."""
    stream = out or sys.stdout
    args = _build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    if args.command in ADMIN_COMMANDS:
        return run_admin(args, stream)
    try:
        if args.command == "serve":
            return _serve(args, stream)
        return _run(args, stream)
    except (UsageError, StateStoreError, RunnerUsageError) as error:
        print(f"clara-mock {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except PlatformApiError as error:
        print(f"clara-mock {args.command}: platform error: {error}", file=sys.stderr)
        return EXIT_JOB_FAILED
