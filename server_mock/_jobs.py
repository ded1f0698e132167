"""Jobs and their stages: the platform's DAG state machine.

Everything here runs on the mock platform's event-loop thread, so it needs no locks. A job's
stages form a DAG: a stage's inputs become ready when every upstream stage succeeded; a stage
that does not succeed cancels its dependants (transitively) without running them; when every
stage is terminal the job is terminal. Watchers wait on :meth:`Job.changed`, a broadcast that
fires on every change, and recompute what they need (level-triggered, never missing an edge).
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import TypeAlias

from clara.contract import DEFAULT_STAGE_TIMEOUT

__all__ = [
    "EventReport",
    "InputRef",
    "Job",
    "JobState",
    "JobStore",
    "OutcomeRefusedError",
    "Stage",
    "StageOutcome",
    "StageSpec",
    "StageState",
    "UnknownJobError",
    "UnknownStageError",
]

MAX_EVENTS_PER_STAGE = 256
MAX_REPORTS_REMEMBERED = 64  # per stage: the report ids whose events were recorded


class StageState(enum.Enum):
    """A stage's state; the last four are terminal."""

    WAITING = "waiting"
    READY = "ready"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for SUCCEEDED, FAILED, TIMED_OUT and CANCELLED."""
        return self not in (StageState.WAITING, StageState.READY)


class JobState(enum.Enum):
    """A job's state."""

    CREATED = "created"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for SUCCEEDED, FAILED and CANCELLED."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class StageOutcome(enum.Enum):
    """The outcome a stage's driver reports (the four ends of a stage it can name)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def state(self) -> StageState:
        """The stage's state once this outcome is applied."""
        return StageState(self.value)


class CancelReason(enum.Enum):
    """Why the platform cancelled a stage."""

    JOB_CANCELLED = "job_cancelled"
    UPSTREAM_FAILED = "upstream_failed"


@dataclass(frozen=True, slots=True)
class InputRef:
    """One input of a stage.

    Attributes:
        path: Where the stage reads it (a local folder).
        from_stage: The upstream stage; ``""`` for the job's input payload.
        from_output: The upstream output's name; ``""`` for its unnamed output.
        name: The input entry's name.
        declared_path: The path the pipeline definition declares (e.g. ``/input``); ``""``
            when the stage has no definition.
    """

    path: str
    from_stage: str = ""
    from_output: str = ""
    name: str = ""
    declared_path: str = ""


@dataclass(frozen=True, slots=True)
class OutputRef:
    """One output of a stage.

    Attributes:
        path: The local folder it is written to.
        name: The output entry's name.
        declared_path: The path the pipeline definition declares (e.g. ``/output``); ``""``
            when the stage has no definition.
    """

    path: str
    name: str = ""
    declared_path: str = ""


@dataclass(frozen=True, slots=True)
class StageSpec:
    """What the platform knows of a stage before the job starts.

    ``models`` maps each model the operator declares (``models:``) to the folder it sees the
    model's files in; set when the job starts. ``gpus`` are the GPU ids the platform's
    capacity reserved for the stage (its ``CUDA_VISIBLE_DEVICES``), set when the job is
    admitted; ``None`` when the platform counts no capacity (the launcher picks then).
    """

    name: str
    inputs: tuple[InputRef, ...] = ()
    outputs: tuple[OutputRef, ...] = ()
    timeout: timedelta = DEFAULT_STAGE_TIMEOUT
    variables: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    models: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    gpus: tuple[str, ...] | None = None

    @property
    def upstream(self) -> frozenset[str]:
        """The stages this stage's inputs come from."""
        return frozenset(i.from_stage for i in self.inputs if i.from_stage)


@dataclass(slots=True)
class StageEvent:
    """A life-cycle event a driver reported.

    Attributes:
        kind: The step, e.g. ``"execute_started"``.
        message: The driver's details.
        happened_at: When it happened, in seconds since the epoch: by the driver's clock when
            the driver sent a time, else the platform's receive time.
        driver_time: True when ``happened_at`` is the driver's time.
    """

    kind: str
    message: str
    happened_at: float
    driver_time: bool


#: One event of a batch for :meth:`Job.record_events`: kind, message, and the driver's time
#: (seconds since the epoch), or ``None`` to stamp it with the receive time.
EventReport: TypeAlias = tuple[str, str, float | None]


def _happened_at(event: StageEvent) -> float:
    return event.happened_at


def _already_recorded(events: list[StageEvent], kind: str, message: str, at: float) -> bool:
    """Whether ``events`` (ordered by time) holds this driver-timed event."""
    i = bisect.bisect_left(events, at, key=_happened_at)
    while i < len(events) and events[i].happened_at == at:
        e = events[i]
        if e.driver_time and e.kind == kind and e.message == message:
            return True
        i += 1
    return False


@dataclass(slots=True)
class Stage:
    """A stage of a running job (mutable; owned by the loop thread)."""

    spec: StageSpec
    state: StageState = StageState.WAITING
    message: str = ""
    report_id: str = ""
    reports_applied: int = 0
    cancel_reason: CancelReason | None = None
    ready_at: float | None = None
    ended_at: float | None = None
    events: list[StageEvent] = field(default_factory=list)
    # The reports whose events were recorded, oldest first (a dict as an ordered set).
    event_reports: dict[str, None] = field(default_factory=dict, repr=False)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def changed(self) -> asyncio.Event:
        """Return the event the next change of this stage's state sets (take it first).

        Only this stage's watchers wake, so a job with many waiting stages costs one wake-up
        per change, not one per stage.
        """
        return self._changed

    def touch(self) -> None:
        """Wake this stage's watchers: its state or message changed."""
        self._changed.set()
        self._changed = asyncio.Event()


class UnknownJobError(LookupError):
    """No job has the given id."""


class UnknownStageError(LookupError):
    """The job has no stage with the given name."""


class OutcomeRefusedError(Exception):
    """An outcome report the state machine refuses; nothing changed.

    The text starts with the request field at fault (``stage: ...`` or ``outcome: ...``).
    """


class Job:
    """A job: its stages and the DAG rules between them.

    ``on_change``, when set, is called with the job after each transition (start, a stage's
    end, cancellation), before the caller gets control back: the persistence hook. Progress
    events (:meth:`record_events`) are not transitions and do not call it.
    """

    def __init__(
        self,
        job_id: uuid.UUID,
        name: str,
        pipeline_id: str,
        stages: Iterable[StageSpec],
    ) -> None:
        self.job_id = job_id
        self.name = name
        self.pipeline_id = pipeline_id
        self.stages: dict[str, Stage] = {}
        for spec in stages:
            if spec.name in self.stages:
                raise ValueError(f"stage {spec.name!r} is defined twice")
            self.stages[spec.name] = Stage(spec)
        self._children: dict[str, list[str]] = {name: [] for name in self.stages}
        for stage in self.stages.values():
            unknown = stage.spec.upstream - self.stages.keys()
            if unknown:
                raise ValueError(f"stage {stage.spec.name!r} reads from unknown {sorted(unknown)}")
            for upstream in sorted(stage.spec.upstream):
                self._children[upstream].append(stage.spec.name)
        if not self.stages:
            raise ValueError("a job needs at least one stage")
        self.state = JobState.CREATED
        self.message = ""
        self.created_at = time.time()
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self._changed = asyncio.Event()
        self.version = 0
        self.on_change: Callable[[Job], None] | None = None

    # -- waiting ------------------------------------------------------------------------

    def changed(self) -> asyncio.Event:
        """Return the event the next change of this job sets (take it before reading state)."""
        return self._changed

    def _broadcast(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def _transitioned(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    # -- lookups ------------------------------------------------------------------------

    def stage(self, name: str) -> Stage:
        """Return the stage called ``name``.

        Raises:
            UnknownStageError: No such stage.
        """
        try:
            return self.stages[name]
        except KeyError:
            raise UnknownStageError(f"job {self.job_id} has no stage {name!r}") from None

    # -- transitions --------------------------------------------------------------------

    def start(self) -> None:
        """Start the job: stages without upstream stages become ready."""
        if self.state is not JobState.CREATED:
            raise ValueError(f"job {self.job_id} is already {self.state.value}")
        self.state = JobState.RUNNING
        self.started_at = time.time()
        for stage in self.stages.values():
            self._update_readiness(stage)
        self._broadcast()
        self._transitioned()

    def complete_stage(
        self, name: str, report_id: str, outcome: StageOutcome, message: str
    ) -> tuple[StageState, bool]:
        """Apply a stage's outcome report, once per stage.

        Every rule about outcome reports lives here, so that each front end (the stage API,
        the pytest plugin, tests) gets the same answer: a stage of a job that has not started
        cannot report; a stage cannot succeed before its inputs are ready (it may fail, time
        out or be cancelled while waiting); a stage that has ended keeps its state, and a
        retry of the report that ended it is acknowledged again.

        Returns:
            The stage's state after the report, and whether the report with this id is the
            one that set it (a retried report gets the same answer as the first).

        Raises:
            UnknownStageError: No such stage.
            OutcomeRefusedError: The job has not started, or the stage reports success while
                still waiting for its inputs. Nothing changes.
        """
        stage = self.stage(name)
        if self.state is JobState.CREATED:
            raise OutcomeRefusedError(
                f"stage: job {self.job_id} has not started; its stages cannot report yet"
            )
        if stage.state.terminal:
            return stage.state, bool(stage.report_id) and stage.report_id == report_id
        if outcome is StageOutcome.SUCCEEDED and stage.state is StageState.WAITING:
            raise OutcomeRefusedError(
                f"outcome: stage {name!r} cannot succeed before its inputs are ready"
            )
        stage.report_id = report_id
        stage.reports_applied += 1
        self._end_stage(stage, outcome.state, message)
        self._settle(stage)
        self._transitioned()
        return stage.state, True

    def fail_stage(self, name: str, state: StageState, message: str) -> bool:
        """End a stage from the platform's side (e.g. its process died or timed out).

        Returns:
            False when the stage was already terminal (nothing changed).
        """
        stage = self.stage(name)
        if stage.state.terminal:
            return False
        self._end_stage(stage, state, message)
        self._settle(stage)
        self._transitioned()
        return True

    def cancel(self, message: str = "cancelled by request") -> bool:
        """Cancel every stage that has not ended; return False if the job already ended."""
        if self.state.terminal:
            return False
        for stage in self.stages.values():
            if not stage.state.terminal:
                stage.cancel_reason = CancelReason.JOB_CANCELLED
                self._end_stage(stage, StageState.CANCELLED, message)
        self.state = JobState.CANCELLED
        self.message = message
        self.ended_at = time.time()
        self._broadcast()
        self._transitioned()
        return True

    def record_event(self, name: str, kind: str, message: str) -> None:
        """Keep one driver's progress event, stamped with the receive time."""
        self.record_events(name, [(kind, message, None)])

    def record_report_events(self, name: str, report_id: str, batch: Iterable[EventReport]) -> int:
        """Keep the events carried by outcome report ``report_id``, once per report.

        The contract promises that a retry of the same report does not record its events
        twice, events without a driver time included (which :meth:`record_events` cannot
        recognise again). A stage remembers its last ``MAX_REPORTS_REMEMBERED`` report ids.

        Returns:
            How many events were recorded (0 for a retry).
        """
        reports = self.stage(name).event_reports
        if report_id in reports:
            return 0
        reports[report_id] = None
        if len(reports) > MAX_REPORTS_REMEMBERED:
            del reports[next(iter(reports))]
        return self.record_events(name, batch)

    def record_events(self, name: str, batch: Iterable[EventReport]) -> int:
        """Keep a batch of a driver's progress events.

        The stage's events stay ordered by :attr:`StageEvent.happened_at` (a batch may arrive
        after a newer one; equal times keep their arrival order), and only the newest
        ``MAX_EVENTS_PER_STAGE`` are kept. An event with a driver time that is identical (kind,
        message, time) to one recorded before this batch is dropped: so a retried report
        records its events once. Watchers wake once per batch that recorded anything.

        Returns:
            How many of the batch's events were recorded.
        """
        events = self.stage(name).events
        now = time.time()
        newest = events[-1].happened_at if events else float("-inf")
        fresh: list[StageEvent] = []
        # Judge duplicates against the events recorded before this batch only: identical
        # events within one batch are distinct events (e.g. two errors in one clock tick).
        for kind, message, at in batch:
            if at is None:
                fresh.append(StageEvent(kind, message, now, driver_time=False))
            elif at > newest or not _already_recorded(events, kind, message, at):
                fresh.append(StageEvent(kind, message, at, driver_time=True))
        if not fresh:
            return 0
        for event in fresh:
            if not events or event.happened_at >= events[-1].happened_at:
                events.append(event)  # the usual case: newer than everything recorded
            else:
                bisect.insort_right(events, event, key=_happened_at)
        del events[:-MAX_EVENTS_PER_STAGE]
        self._broadcast()
        return len(fresh)

    # -- internals ----------------------------------------------------------------------

    def _end_stage(self, stage: Stage, state: StageState, message: str) -> None:
        stage.state = state
        stage.message = message
        stage.ended_at = time.time()
        stage.touch()

    def _update_readiness(self, stage: Stage) -> None:
        if stage.state is not StageState.WAITING or self.state is not JobState.RUNNING:
            return
        if all(self.stages[u].state is StageState.SUCCEEDED for u in stage.spec.upstream):
            stage.state = StageState.READY
            stage.ready_at = time.time()
            stage.touch()

    def _settle(self, ended_first: Stage) -> None:
        """Propagate a stage's end down the DAG, then end the job if every stage ended.

        Only the stages below ``ended_first`` are visited: the work per report is bounded by
        its descendants, not by the size of the job.
        """
        pending = [ended_first]
        while pending:
            ended = pending.pop()
            for name in self._children[ended.spec.name]:
                child = self.stages[name]
                if ended.state is StageState.SUCCEEDED:
                    self._update_readiness(child)
                elif not child.state.terminal:
                    child.cancel_reason = CancelReason.UPSTREAM_FAILED
                    self._end_stage(
                        child,
                        StageState.CANCELLED,
                        f"upstream stage {ended.spec.name} {ended.state.value}",
                    )
                    pending.append(child)
        if self.state is JobState.RUNNING and all(s.state.terminal for s in self.stages.values()):
            failed = [s for s in self.stages.values() if s.state is not StageState.SUCCEEDED]
            self.state = JobState.FAILED if failed else JobState.SUCCEEDED
            self.message = (
                "; ".join(f"{s.spec.name}: {s.state.value} ({s.message})" for s in failed)
                if failed
                else "all stages succeeded"
            )
            self.ended_at = time.time()
        self._broadcast()


class JobStore:
    """All jobs of the platform, by id.

    ``on_change``, when set, becomes the :attr:`Job.on_change` of every job added, and is
    called for the new job itself.
    """

    def __init__(self) -> None:
        self._jobs: dict[uuid.UUID, Job] = {}
        self.on_change: Callable[[Job], None] | None = None

    def add(self, job: Job) -> Job:
        """Register a new job."""
        if job.job_id in self._jobs:
            raise ValueError(f"job {job.job_id} already exists")
        self._jobs[job.job_id] = job
        if self.on_change is not None:
            job.on_change = self.on_change
            try:
                self.on_change(job)
            except BaseException:
                del self._jobs[job.job_id]
                raise
        return job

    def get(self, job_id: uuid.UUID) -> Job:
        """Return the job with this id.

        Raises:
            UnknownJobError: No such job.
        """
        try:
            return self._jobs[job_id]
        except KeyError:
            raise UnknownJobError(f"no job {job_id}") from None

    def all(self) -> list[Job]:
        """Every job, oldest first."""
        return list(self._jobs.values())
