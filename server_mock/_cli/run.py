"""``clara-mock run``: one pipeline, end to end, on an embedded platform.

The command talks to its embedded platform one way: through :class:`MockPlatform`'s public
methods (register the pipeline, create the job with its input, start it, follow its changes,
cancel it). The Platform API over gRPC would do for the set-up, but not for following: its
``Jobs.Status`` has no per-stage messages, times in whole seconds, and no change notification
(a client polls), while ``MockPlatform.wait_for_change`` wakes on each change of the job.
The outputs are read from the job's payload folder, which is on this machine.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import TextIO

from server_mock._cli.common import EXIT_INTERRUPTED, EXIT_JOB_FAILED, EXIT_OK, UsageError
from server_mock._cli.runner_args import launcher_from_args
from server_mock._jobs import JobState, StageState
from server_mock._platform import JobSnapshot, MockPlatform, PipelineJob, StageSnapshot
from server_mock._runner import LocalProcessLauncher

__all__ = ["run"]

RUN_DEADLINE = 3 * 3600.0  # the job's own stage timeouts end it well before this
SHUTDOWN_WAIT = 60.0


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run the pipeline of ``args``; return the exit code (1 if the job did not succeed).

    Raises:
        UsageError: A flag is wrong (the message names it).
        server_mock._errors.ApiError: The platform refused the definition or the job.
    """
    pipeline: Path = args.pipeline
    if not pipeline.is_file():
        raise UsageError(f"PIPELINE {pipeline}: no such file")
    if not args.input.is_dir():
        raise UsageError(f"--input {args.input}: not a folder")
    launcher = launcher_from_args(args, pipeline.resolve().parent)
    with tempfile.TemporaryDirectory(prefix="clara-run-") as temp:
        workspace = args.workspace or Path(temp)
        platform = MockPlatform(workspace=workspace, launcher=launcher, require_stage_tokens=True)
        launcher.attach(lambda: platform.address, platform.stage_tokens.issue)
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
    pipeline: Path = args.pipeline
    pipeline_id = platform.create_pipeline(pipeline.read_text(encoding="utf-8"), path=pipeline.name)
    job = platform.create_pipeline_job(pipeline_id, args.job_name, input_dir=args.input)
    print(
        f"job {job.name} ({job.job_id}): {len(job.input_files)} input file(s) uploaded; starting",
        file=out,
    )
    platform.start_job(job.job_id)
    try:
        final = _follow(platform, job.job_id, started, out)
    except KeyboardInterrupt:
        print("interrupted: cancelling the job", file=out, flush=True)
        platform.cancel_job(job.job_id, "interrupted from the command line")
        platform.wait_for_job(job.job_id, SHUTDOWN_WAIT)
        return EXIT_INTERRUPTED
    output = args.output or Path("clara-runs") / f"{job.name}-{job.job_id.hex[:8]}"
    written = _write_outputs(job, output)
    # Operators exit shortly after reporting; wait so the summary shows their exit codes.
    platform.call_async(lambda: launcher.wait_idle(SHUTDOWN_WAIT), SHUTDOWN_WAIT + 5)
    codes = {
        stage: code
        for (job_key, stage), code in launcher.exit_codes.items()
        if job_key == str(job.job_id)
    }
    print(_summary(final, codes), file=out)
    print(f"{written} output file(s) written to {output}", file=out, flush=True)
    return EXIT_OK if final.state is JobState.SUCCEEDED else EXIT_JOB_FAILED


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


def _write_outputs(job: PipelineJob, output: Path) -> int:
    """Copy the operators' outputs (``operators/...`` of the job's payload) to ``output``."""
    source = job.layout.root / "operators"
    files = sorted(p for p in source.rglob("*") if p.is_file())
    for path in files:
        target = output / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return len(files)
