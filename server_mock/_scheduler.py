"""Jobs started when the capacity allows them: :mod:`server_mock._capacity` driven by job changes.

``Jobs.Start`` hands a job to :meth:`CapacityScheduler.submit`. The job is queued behind the
waiting jobs of its priority and above; when it is at the head and its whole demand fits, it
is admitted: its reservation is taken, each operator is given its own GPU ids (the launcher
sets them as ``CUDA_VISIBLE_DEVICES``) and its operators are launched. Until then it stays
created, which the Platform API reports as ``JOB_STATE_PENDING`` ("accepted and queued by the
service, but has not yet started running", *JobState*, Clara Deploy SDK 0.7.4).

Nothing polls. One task follows each job the scheduler knows, waking on the job's own change
event (:meth:`Job.changed <server_mock._jobs.Job.changed>`): when one of its stages ends, that
operator's share is given back and the queue is tried again; a queued job that is cancelled
leaves the queue. Everything runs on the platform's event-loop thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol

from server_mock._capacity import Capacity, CapacityQueue, JobDemand, Reservation
from server_mock._definition import PipelineDefinition
from server_mock._jobs import Job, JobState, StageState

__all__ = ["CapacityScheduler", "ScheduledRecord"]

_log = logging.getLogger("server_mock.scheduler")


class ScheduledRecord(Protocol):
    """What the scheduler keeps in a job's record (saved with it, so a restart resumes it).

    Attributes:
        priority: The legacy ``JobPriority`` (1 lower ... 4 immediate).
        queued: The job's place in the queue (its ticket) while it waits; ``None`` otherwise.
        gpu_ids: The GPU ids each operator was given when the job was admitted.
    """

    priority: int
    queued: int | None
    gpu_ids: dict[str, tuple[str, ...]]


class CapacityScheduler:
    """Admits jobs in priority order as the capacity allows, and gives it back as stages end.

    Not thread-safe: call it on the platform's event-loop thread.

    Args:
        capacity: What the platform can run at once.
        launch: Launches an admitted job's operators; raises when they cannot be launched.
    """

    def __init__(self, capacity: Capacity, launch: Callable[[Job], Awaitable[None]]) -> None:
        self.queue: CapacityQueue[uuid.UUID] = CapacityQueue(capacity)
        self._launch = launch
        self._jobs: dict[uuid.UUID, tuple[Job, ScheduledRecord]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def capacity(self) -> Capacity:
        """What the platform can run at once."""
        return self.queue.capacity

    def check(self, definition: PipelineDefinition) -> JobDemand:
        """The demand of a job of ``definition``, refused when it could never fit.

        Raises:
            CapacityExceededError: An operator, or all of them together, ask for more than
                the whole capacity (the message names them, the field and both amounts).
        """
        demand = JobDemand.of(definition)
        demand.check(self.capacity)
        return demand

    async def submit(self, job: Job, record: ScheduledRecord, demand: JobDemand) -> bool:
        """Launch the job now if it is first in line and fits, else queue it.

        A job queued is saved with its ticket (``record.queued``) before this returns.

        Returns:
            True when the job was launched now, False when it waits in the queue.

        Raises:
            Exception: What ``launch`` raised (the job was admitted and could not be
                launched; its reservation is given back), or what saving the queued job
                raised (it is not queued then).
        """
        key = job.job_id
        self._jobs[key] = (job, record)
        ticket = self.queue.enqueue(key, record.priority, demand)
        admitted = self.queue.admit()
        own = next((r for k, r in admitted if k == key), None)
        self._launch_admitted([(k, r) for k, r in admitted if k != key])
        if own is None:
            try:
                _set_queued(job, record, ticket)
            except BaseException:
                self.queue.remove(key)
                del self._jobs[key]
                raise
            _log.info(
                "job %s queued (ticket %d, priority %d): it needs %s; %d job(s) wait",
                key.hex,
                ticket,
                record.priority,
                _describe(demand),
                len(self.queue.waiting()),
            )
            self._follow(job, record)
            return False
        _assign(job, record, own)
        try:
            await self._launch(job)
        except BaseException:
            self.queue.release_all(key)
            record.gpu_ids = {}
            del self._jobs[key]
            self._pump()
            raise
        self._follow(job, record)
        return True

    def restore(self, jobs: Iterable[tuple[Job, ScheduledRecord, JobDemand]]) -> None:
        """Take back the running and queued jobs of a state file, then try the queue.

        A running job holds again the share of its stages that have not ended, with the GPU
        ids it was given; a created job with a ticket waits again in its place.
        """
        for job, record, demand in jobs:
            key = job.job_id
            if job.state is JobState.RUNNING:
                self._jobs[key] = (job, record)
                self.queue.reserve(key, demand, gpu_ids=record.gpu_ids)
                ended = [name for name, stage in job.stages.items() if stage.state.terminal]
                self.queue.release(key, ended)
                self._follow(job, record)
            elif job.state is JobState.CREATED and record.queued is not None:
                self._jobs[key] = (job, record)
                self.queue.enqueue(key, record.priority, demand, ticket=record.queued)
                self._follow(job, record)
        if self._jobs:
            _log.info(
                "capacity %s: %d job(s) hold a share, %d wait",
                self.capacity.describe(),
                len(self._jobs) - len(self.queue.waiting()),
                len(self.queue.waiting()),
            )
        self._pump()

    def waiting_message(self, job_id: uuid.UUID) -> str | None:
        """Why a queued job has not started yet (for Jobs.Status); ``None`` if it is not queued."""
        waiting = self.queue.waiting()
        demand = self.queue.demand_of(job_id)
        if demand is None:
            return None
        cpus, memory, gpus = self.queue.free()
        return (
            f"queued for capacity: number {waiting.index(job_id) + 1} of {len(waiting)} in the "
            f"queue; it needs {_describe(demand)}, free now: {max(cpus, 0)} CPU(s), "
            f"{max(memory, 0) // (1024 * 1024)} MiB, {gpus} GPU(s)"
        )

    # -- internals ------------------------------------------------------------------------

    def _follow(self, job: Job, record: ScheduledRecord) -> None:
        self._spawn(self._follow_job(job, record), f"capacity-follow-{job.job_id.hex[:8]}")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow_job(self, job: Job, record: ScheduledRecord) -> None:
        """Until the job holds nothing and waits for nothing, settle it at each change."""
        while True:
            changed = job.changed()
            if self._settle(job, record):
                break
            await changed.wait()
        self._jobs.pop(job.job_id, None)

    def _settle(self, job: Job, record: ScheduledRecord) -> bool:
        """Apply the job's current state; True once the scheduler is done with it."""
        key = job.job_id
        if key in self.queue.waiting():
            if not job.state.terminal:
                return False
            self.queue.remove(key)  # cancelled while it waited
            _log.info("job %s left the queue: %s", key.hex, job.state.value)
            _save_quietly(job, record, None)
            self._pump()  # it may have blocked the head
            return True
        reservation = self.queue.reservation(key)
        if reservation is None:
            return True
        held = set(reservation.held)
        if job.state.terminal:
            self.queue.release_all(key)
        else:
            self.queue.release(key, [n for n in held if job.stages[n].state.terminal])
        remaining = self.queue.reservation(key)
        if remaining is None or remaining.held != held:
            self._pump()
        return remaining is None

    def _pump(self) -> None:
        """Admit the jobs at the head of the queue that fit now, and launch them."""
        self._launch_admitted(self.queue.admit())

    def _launch_admitted(self, admitted: list[tuple[uuid.UUID, Reservation]]) -> None:
        for key, reservation in admitted:
            job, record = self._jobs[key]
            _assign(job, record, reservation)
            _log.info("job %s admitted: %s", key.hex, _describe(reservation.demand))
            self._spawn(self._launch_queued(job, record), f"capacity-launch-{key.hex[:8]}")

    async def _launch_queued(self, job: Job, record: ScheduledRecord) -> None:
        """Launch a job admitted from the queue; a failure ends it failed, saying why."""
        try:
            await self._launch(job)
        except Exception as error:  # no caller to tell: the job's stages carry the message
            _log.warning("job %s: could not launch it from the queue: %s", job.job_id.hex, error)
            _fail_unlaunched(job, f"launch failed: {error}")
        finally:
            _save_quietly(job, record, None)


def _assign(job: Job, record: ScheduledRecord, reservation: Reservation) -> None:
    """Give each stage the GPU ids of its reservation (its ``CUDA_VISIBLE_DEVICES``)."""
    record.gpu_ids = dict(reservation.gpu_ids)
    for name, stage in job.stages.items():
        stage.spec = dataclasses.replace(stage.spec, gpus=reservation.gpu_ids.get(name, ()))


def _set_queued(job: Job, record: ScheduledRecord, ticket: int | None) -> None:
    """Set the job's ticket and save the job; on failure restore the ticket and re-raise."""
    before, record.queued = record.queued, ticket
    if job.on_change is None:
        return
    try:
        job.on_change(job)
    except BaseException:
        record.queued = before
        raise


def _save_quietly(job: Job, record: ScheduledRecord, ticket: int | None) -> None:
    """:func:`_set_queued` where no caller can be told: a failed save is logged."""
    try:
        _set_queued(job, record, ticket)
    except Exception as error:
        _log.warning("job %s: saving its place in the queue failed: %s", job.job_id.hex, error)


def _fail_unlaunched(job: Job, message: str) -> None:
    """End a job whose operators could not be launched: every stage not ended fails."""
    if job.state is JobState.CREATED:
        job.start()
    for name, stage in job.stages.items():
        if not stage.state.terminal:
            job.fail_stage(name, StageState.FAILED, message)


def _describe(demand: JobDemand) -> str:
    return f"{demand.cpus} CPU(s), {demand.memory_bytes // (1024 * 1024)} MiB, {demand.gpus} GPU(s)"
