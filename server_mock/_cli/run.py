"""``clara-mock run``: one pipeline, end to end, on an embedded platform.

The command talks to its embedded platform one way: through :class:`MockPlatform`'s public
methods (register the pipeline, create the job with its input, start it, follow its changes,
cancel it). The Platform API over gRPC would do for the set-up, but not for following: its
``Jobs.Status`` has no per-stage messages, times in whole seconds, and no change notification
(a client polls), while ``MockPlatform.wait_for_change`` wakes on each change of the job.
The outputs and logs are read from the job's payload folder, which is on this machine.

What it leaves in ``--output`` (default ``clara-runs/<job>-<id>``): each operator's outputs
(``<operator>/<output>/...``), each operator's log (``logs/<operator>.log``) and the run's own
log (``run.log``: every progress line and the summary, messages whole).

Before anything starts it refuses what would fail anyway: a missing pipeline or input folder,
an ``--output`` that is a file, an invalid definition, an operator whose program or script is
missing. SIGINT and SIGTERM cancel the job, stop the operators (SIGKILL for any still running
:data:`STOP_GRACE` seconds later), print what was cancelled, remove the temporary workspace
and exit with 128 + the signal's number (130, 143).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from server_mock._capacity import CapacityExceededError, JobDemand
from server_mock._cli.capacity_flags import capacity_from_args
from server_mock._cli.common import EXIT_JOB_FAILED, EXIT_OK, UsageError
from server_mock._cli.operator_logs import LogFollower, keep_logs
from server_mock._cli.preflight import check_operator_commands, check_output_folder
from server_mock._cli.progress import (
    LineProgress,
    LiveProgress,
    RunLog,
    TransitionTracker,
)
from server_mock._cli.runner_args import launcher_from_args
from server_mock._cli.runner_flags import service_data_folder
from server_mock._cli.signals import Interrupted, InterruptHandler
from server_mock._definition import (
    PipelineDefinition,
    PipelineDefinitionError,
    parse_pipeline_definition,
)
from server_mock._jobs import JobState
from server_mock._platform import JobSnapshot, MockPlatform, PipelineJob
from server_mock._runner import LocalProcessLauncher

__all__ = ["STOP_GRACE", "run"]

RUN_DEADLINE = 3 * 3600.0  # the job's own stage timeouts end it well before this
SHUTDOWN_WAIT = 60.0
STOP_GRACE = 5.0
"""Seconds the operators of an interrupted run get to exit after the cancellation."""
_FOLLOW_WAKE = 60.0  # the live table ticks on its own; this only bounds each wait


@dataclass(frozen=True, slots=True)
class _Checked:
    """What the checks before the run established."""

    pipeline: Path
    text: str
    definition: PipelineDefinition
    command_dir: Path


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run the pipeline of ``args``; return the exit code (1 if the job did not succeed).

    Raises:
        UsageError: A flag, the definition or an operator's command is wrong (the message
            names it); nothing was started.
        server_mock._errors.ApiError: The platform refused the job.
        Interrupted: SIGINT or SIGTERM arrived before the job existed.
    """
    checked = _check(args)
    capacity = capacity_from_args(args)
    try:
        JobDemand.of(checked.definition).check(capacity)
    except CapacityExceededError as error:
        raise UsageError(f"PIPELINE {checked.pipeline}: it can never run here: {error}") from None
    launcher = launcher_from_args(args, checked.command_dir)
    check_operator_commands(checked.definition, launcher, checked.command_dir)
    with (
        InterruptHandler("clara-mock run") as interrupts,
        tempfile.TemporaryDirectory(prefix="clara-run-") as temp,
    ):
        workspace = args.workspace or Path(temp)
        platform = MockPlatform(
            workspace=workspace, launcher=launcher, require_stage_tokens=True, capacity=capacity
        )
        launcher.attach(
            lambda: platform.address,
            platform.stage_tokens.issue,
            service_data=service_data_folder(args, workspace),
        )
        try:
            platform.start()
            session = _Run(
                args,
                checked,
                platform=platform,
                launcher=launcher,
                interrupts=interrupts,
                out=out,
            )
            return session.execute()
        finally:
            interrupts.hold()
            _shut_down(platform, launcher)


def _check(args: argparse.Namespace) -> _Checked:
    pipeline: Path = args.pipeline
    if not pipeline.is_file():
        raise UsageError(f"PIPELINE {pipeline}: no such file")
    if not args.input.is_dir():
        raise UsageError(f"--input {args.input}: not a folder")
    if args.output is not None:
        check_output_folder(args.output)
    try:
        text = pipeline.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"PIPELINE {pipeline}: cannot read it: {error}") from None
    try:
        definition = parse_pipeline_definition(text)
    except PipelineDefinitionError as error:
        raise UsageError(f"PIPELINE {pipeline}: invalid pipeline definition: {error}") from None
    return _Checked(pipeline, text, definition, pipeline.resolve().parent)


def _shut_down(platform: MockPlatform, launcher: LocalProcessLauncher) -> None:
    """Let the operators exit, kill those that do not, stop the platform (on every path)."""
    try:
        if platform.running:
            try:
                platform.call_async(lambda: launcher.wait_idle(SHUTDOWN_WAIT), SHUTDOWN_WAIT + 5)
            finally:
                platform.call_async(launcher.stop_all, timeout=SHUTDOWN_WAIT)
    finally:
        platform.stop()  # also cancels what is still pending on its loop (a launch in progress)


class _Run:
    """One run: the job, its display, its logs and outputs."""

    def __init__(
        self,
        args: argparse.Namespace,
        checked: _Checked,
        *,
        platform: MockPlatform,
        launcher: LocalProcessLauncher,
        interrupts: InterruptHandler,
        out: TextIO,
    ) -> None:
        self._args = args
        self._checked = checked
        self._platform = platform
        self._launcher = launcher
        self._interrupts = interrupts
        self._out = out
        self._operators = [op.name for op in checked.definition.operators]

    def execute(self) -> int:
        """Create, start and follow the job; keep its outputs and logs; return the exit code."""
        started = time.time()
        pipeline_id = self._platform.create_pipeline(
            self._checked.text, path=self._checked.pipeline.name
        )
        job = self._platform.create_pipeline_job(
            pipeline_id, self._args.job_name, input_dir=self._args.input
        )
        output: Path = self._args.output or Path("clara-runs") / f"{job.name}-{str(job.job_id)[:8]}"
        check_output_folder(output)
        logs = output / "logs"
        jobs_logs, kept_logs = str(job.layout.logs_dir), str(logs)

        def rewrite(message: str) -> str:
            # Messages name the job's log files, in the workspace that is removed at exit.
            return message.replace(jobs_logs, kept_logs)

        display = LiveProgress if _is_terminal(self._out) else LineProgress
        progress: LineProgress = display(self._out, started, rewrite)
        progress.run_log = RunLog(output / "run.log")
        try:
            try:
                with progress:
                    code = self._follow(job, progress, started)
            finally:
                written = self._keep(job, output)  # on every path: the logs explain a failure
            progress.note(f"{written} output file(s) written to {output}")
            progress.note(
                f"operator logs: {logs}/<operator>.log; this run's log: {output / 'run.log'}"
            )
        finally:
            progress.run_log.close()
        return code

    def _follow(self, job: PipelineJob, progress: LineProgress, started: float) -> int:
        progress.note(
            f"job {job.name} ({job.job_id}): {len(job.input_files)} input file(s); starting"
        )
        follower = None
        if self._args.stream_logs:
            follower = LogFollower(job.layout, self._operators, progress.operator_line)
            follower.start()
        tracker = TransitionTracker(started)
        interrupted: Interrupted | None = None
        killed: list[str] = []
        try:
            try:
                self._platform.start_job(job.job_id)
                final = self._until_ended(job, progress, tracker)
                # Operators exit shortly after reporting; wait, so exit codes and logs are whole.
                self._platform.call_async(
                    lambda: self._launcher.wait_idle(SHUTDOWN_WAIT), SHUTDOWN_WAIT + 5
                )
            except Interrupted as stop:
                interrupted = stop
                final, killed = self._stop(job, stop, progress, tracker)
        finally:
            if follower is not None:
                follower.stop()
        progress.finish(final, self._exit_codes(job))
        if interrupted is not None:
            self._report_stop(final, interrupted, killed, progress)
            return interrupted.exit_code
        return EXIT_OK if final.state is JobState.SUCCEEDED else EXIT_JOB_FAILED

    def _until_ended(
        self, job: PipelineJob, progress: LineProgress, tracker: TransitionTracker
    ) -> JobSnapshot:
        version = -1
        deadline = time.monotonic() + RUN_DEADLINE
        while True:
            version, snapshot = self._platform.wait_for_change(
                job.job_id, version, timeout=_FOLLOW_WAKE
            )
            progress.update(snapshot, tracker.changes(snapshot))
            if snapshot.state.terminal:
                return snapshot
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job.job_id} still running after {RUN_DEADLINE} s")

    def _stop(
        self,
        job: PipelineJob,
        stop: Interrupted,
        progress: LineProgress,
        tracker: TransitionTracker,
    ) -> tuple[JobSnapshot, list[str]]:
        """Cancel the job and stop its operators: SIGKILL for those alive after the grace.

        Returns:
            The job as it ended, and the operators that had to be killed.
        """
        self._interrupts.hold()
        progress.note(f"{stop.name} received: cancelling job {job.name} ({job.job_id})")
        self._platform.cancel_job(job.job_id, _stop_reason(stop))
        exited = self._platform.call_async(
            lambda: self._launcher.wait_idle(STOP_GRACE), STOP_GRACE + 5
        )
        killed: list[str] = []
        if not exited:
            running = [name for name in self._operators if name not in self._exit_codes(job)]
            self._platform.call_async(self._launcher.stop_all, timeout=SHUTDOWN_WAIT)
            killed = [name for name in running if name not in self._exit_codes(job)]
        final = self._platform.job(job.job_id)
        progress.update(final, tracker.changes(final))
        return final, killed

    def _report_stop(
        self, final: JobSnapshot, stop: Interrupted, killed: list[str], progress: LineProgress
    ) -> None:
        cancelled = [
            name
            for name, stage in final.stages.items()
            if stage.state.value == "cancelled" and stage.message == _stop_reason(stop)
        ]
        progress.note(
            f"interrupted by {stop.name}: {len(cancelled)} stage(s) cancelled"
            + (f" ({', '.join(cancelled)})" if cancelled else "")
        )
        if killed:
            progress.note(
                f"killed (SIGKILL) {STOP_GRACE:g} s after the cancellation: {', '.join(killed)}"
            )

    def _exit_codes(self, job: PipelineJob) -> dict[str, int]:
        key = str(job.job_id)
        return {
            stage: code
            for (job_key, stage), code in self._launcher.exit_codes.items()
            if job_key == key
        }

    def _keep(self, job: PipelineJob, output: Path) -> int:
        """Copy the operators' outputs and logs to ``output``; return the output file count."""
        keep_logs(job.layout, self._operators, output / "logs")
        source = job.layout.root / "operators"
        files = sorted(p for p in source.rglob("*") if p.is_file())
        for path in files:
            target = output / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        return len(files)


def _stop_reason(stop: Interrupted) -> str:
    return f"interrupted by {stop.name} (clara-mock run)"


def _is_terminal(out: TextIO) -> bool:
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM", "") != "dumb"
