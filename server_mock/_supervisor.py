"""The platform side of one stage's life-cycle, while its operator process runs.

One loop (:func:`supervise`) for every process, whether this platform process spawned it
or adopted it after a restart (both are a :class:`~server_mock._operator_process.ProcessHandle`):

* a stage still READY ``timeout_grace`` after its timeout (counted from when its inputs
  became ready: :attr:`Stage.ready_at <server_mock._jobs.Stage.ready_at>`, which a restart
  keeps) is timed out and its process stopped;
* a process still alive ``exit_grace`` after its stage ended (cancelled, failed upstream,
  timed out; from :attr:`Stage.ended_at <server_mock._jobs.Stage.ended_at>`) is sent SIGTERM,
  then SIGKILL ``kill_grace`` later;
* a process that ends before its stage did: the outcome its driver left in its outbox is
  applied (:func:`server_mock._outbox.apply_outbox`), else the stage fails, saying how the
  process ended (a child's exit code; "exit code unknown" for an adopted process).

Cancelling the supervisor kills the process (the platform is stopping its operators), unless
the supervisor was *released* (``serve --state`` stopping: the operators run on, and the next
platform process adopts them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from server_mock._definition import OperatorSpec
from server_mock._jobs import Job, Stage, StageState
from server_mock._operator_process import ProcessHandle
from server_mock._outbox import apply_outbox
from server_mock._resources import ResourceLimits, memory_exhaustion, parse_requests
from server_mock._workspace import JobLayout

__all__ = ["RunnerTimeouts", "Supervised", "ended_while_down", "supervise"]

_log = logging.getLogger("server_mock.runner")

_KILL_WAIT = 10.0  # seconds a killed process gets to be seen gone when supervision is cancelled


@dataclass(frozen=True, slots=True)
class RunnerTimeouts:
    """The grace periods the launcher gives operator processes, in seconds.

    Attributes:
        timeout_grace: Past the stage timeout, how long the driver has to report TIMED_OUT
            itself before the platform times the stage out and stops the process.
        exit_grace: After the stage ended, how long the process has to exit on its own.
        kill_grace: After SIGTERM, how long before SIGKILL (operators and services).
        service_ready: How long a service has to accept connections on its ports.
    """

    timeout_grace: float = 20.0
    exit_grace: float = 30.0
    kill_grace: float = 15.0
    service_ready: float = 20.0


@dataclass(frozen=True, slots=True)
class Supervised:
    """One stage's operator process, as its supervisor needs it.

    Attributes:
        job: The stage's job.
        stage: The stage.
        process: Its operator's process.
        log_path: The process's log.
        log_offset: Where its output starts in the log (a restarted job appends).
        limits: Its ``requests`` as limits (to explain a death by lack of memory).
        outbox_dir: Its driver's outbox.
        adopted: Whether a previous platform process launched it (its exit code is unknown).
    """

    job: Job
    stage: Stage
    process: ProcessHandle
    log_path: Path
    log_offset: int
    limits: ResourceLimits
    outbox_dir: Path
    adopted: bool = False

    @classmethod
    def of(
        cls,
        job: Job,
        operator: OperatorSpec,
        layout: JobLayout,
        process: ProcessHandle,
        log_offset: int,
        *,
        limits: ResourceLimits | None = None,
        adopted: bool = False,
    ) -> Supervised:
        """``operator``'s process in ``job``, with its log and outbox from ``layout``.

        ``limits`` default to the operator's ``requests`` (none if they do not parse).
        """
        if limits is None:
            try:
                limits = parse_requests(operator)
            except ValueError:
                limits = ResourceLimits()
        name = operator.name
        log, outbox = layout.log_path(name), layout.outbox_dir(name)
        return cls(job, job.stage(name), process, log, log_offset, limits, outbox, adopted)


def _loop_time_of(wall: float, loop: asyncio.AbstractEventLoop) -> float:
    """The loop's clock reading at the wall-clock moment ``wall`` (seconds since the epoch)."""
    return loop.time() + (wall - time.time())


async def supervise(
    target: Supervised, timeouts: RunnerTimeouts, *, released: Callable[[], bool]
) -> int | None:
    """Watch one operator process until it ends; enforce its stage's deadlines.

    Args:
        target: The process and its stage.
        timeouts: The grace periods.
        released: True once the platform stops without stopping its operators: a
            cancellation then leaves the process running.

    Returns:
        The process's exit code (negative: killed by that signal); ``None`` when unknown.
    """
    job, stage, process = target.job, target.stage, target.process
    loop = asyncio.get_running_loop()
    name = stage.spec.name
    exited = asyncio.ensure_future(process.wait())
    # Deadlines on the loop's clock: when the running stage times out (armed once it is
    # ready) and when the process must be gone (armed once the stage ended).
    timeout_at: float | None = None
    stop_at: float | None = None
    signals_sent = 0
    try:
        while not exited.done():
            changed = stage.changed()
            now = loop.time()
            if stage.state is StageState.READY and timeout_at is None:
                ready_at = stage.ready_at if stage.ready_at is not None else time.time()
                limit = stage.spec.timeout.total_seconds() + timeouts.timeout_grace
                timeout_at = _loop_time_of(ready_at + limit, loop)
            if stage.state.terminal and stop_at is None:
                ended_at = stage.ended_at if stage.ended_at is not None else time.time()
                stop_at = _loop_time_of(ended_at + timeouts.exit_grace, loop)
            if stage.state is StageState.READY and timeout_at is not None and now >= timeout_at:
                job.fail_stage(
                    name,
                    StageState.TIMED_OUT,
                    f"ran past its timeout of {stage.spec.timeout}; process stopped",
                )
                _log.warning("job %s: %s timed out; stopping it", job.job_id, name)
                stop_at = now
            if stop_at is not None and now >= stop_at:
                signals_sent += 1
                if signals_sent == 1:
                    process.terminate()
                else:
                    process.kill()
                stop_at = now + timeouts.kill_grace
            pending = [t for t in (timeout_at, stop_at) if t is not None and t > now]
            deadline = min(pending, default=now + 3600)
            waiter = asyncio.ensure_future(changed.wait())
            await asyncio.wait(
                {exited, waiter}, timeout=deadline - now, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
    except asyncio.CancelledError:
        if not released():
            process.kill()
            with contextlib.suppress(asyncio.CancelledError, ProcessLookupError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(exited), _KILL_WAIT)
            process.end_leftovers()
        # The waiter's pidfd must be unwatched before it is closed (its number is reused).
        exited.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await exited
        process.close()
        raise
    process.end_leftovers()  # no process the operator started outlives it
    process.close()
    code = exited.result()
    _ended(target, code)
    return code


def _ended(target: Supervised, code: int | None) -> None:
    """The process ended: apply its outbox, or fail its stage if it had not ended."""
    job, stage, name = target.job, target.stage, target.stage.spec.name
    pid = target.process.pid
    if code is None:
        _log.info("job %s: %s (pid %d, adopted) ended; exit code unknown", job.job_id, name, pid)
    else:
        _log.info("job %s: %s exited with code %d", job.job_id, name, code)
    exhausted = None
    if target.limits.memory_bytes is not None and code != 0:
        signum = -code if code is not None and code < 0 else None
        exhausted = memory_exhaustion(target.log_path, target.log_offset, signum)
    memory = (
        f"; it ran out of memory ({exhausted}): requests.memory limits it to "
        f"{target.limits.describe_memory()} of data memory (RLIMIT_DATA)"
        if exhausted
        else ""
    )
    # An outcome the driver wrote to its outbox but could not report over gRPC.
    outbox = apply_outbox(job, name, target.outbox_dir) if not stage.state.terminal else None
    if outbox is not None and not outbox.applied:
        if code is None:
            how = (
                f"operator process (pid {pid}, adopted after a restart of the platform) ended "
                "before reporting an outcome; exit code unknown (it is not this platform "
                "process's child)"
            )
        else:
            reason = f"signal {-code}" if code < 0 else f"code {code}"
            how = f"operator process exited with {reason} before reporting an outcome"
        job.fail_stage(
            name, StageState.FAILED, f"{how}{memory}{outbox.note} (see {target.log_path})"
        )
    elif memory:
        _log.warning("job %s: %s%s", job.job_id, name, memory)
        with contextlib.suppress(OSError), target.log_path.open("a", encoding="utf-8") as log:
            log.write(f"clara-mock: operator {name}{memory}\n")


def ended_while_down(
    job: Job, name: str, log_path: Path, outbox_dir: Path, *, never_recorded: bool
) -> None:
    """After a restart, a stage's process is not there: apply its outbox, else fail the stage.

    Args:
        job: The stage's job.
        name: The stage, not ended yet.
        log_path: Its process's log.
        outbox_dir: Its driver's outbox.
        never_recorded: The platform died while spawning it: no process was recorded.
    """
    outbox = apply_outbox(job, name, outbox_dir)
    if outbox.applied:
        return
    if never_recorded:
        how = (
            "the platform stopped while launching its operator process, before it could "
            "record the process: it is not supervised, and its outcome cannot be known"
        )
    else:
        how = (
            "operator process ended while the platform was down, before reporting an "
            "outcome (exit code unknown)"
        )
    job.fail_stage(name, StageState.FAILED, f"{how}{outbox.note} (see {log_path})")
