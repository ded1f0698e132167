"""The stage API (``nvidia.clara.platform.stage.v1.StageService``) served to drivers."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from clara.contract import MAX_EVENTS_PER_BATCH, NAME_PATTERN, NAME_RULE
from clara.stage_api import stage_service_pb2 as pb
from clara.stage_api import stage_service_pb2_grpc as pb_grpc
from server_mock._auth import AuthResult, StageTokens, token_from_metadata
from server_mock._jobs import (
    CancelReason,
    EventReport,
    Job,
    JobStore,
    OutcomeRefusedError,
    Stage,
    StageOutcome,
    StageState,
    UnknownJobError,
    UnknownStageError,
)

__all__ = ["StageService"]

_log = logging.getLogger("server_mock.stage")
_T = TypeVar("_T")

REPORT_ID_PATTERN = re.compile(r"[\x21-\x7e]{1,128}")  # the proto: 1-128 chars; here printable
MAX_MESSAGE_CHARS = 4096
# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799

_STATES = {
    StageState.WAITING: pb.STAGE_STATE_WAITING,
    StageState.READY: pb.STAGE_STATE_READY,
    StageState.SUCCEEDED: pb.STAGE_STATE_SUCCEEDED,
    StageState.FAILED: pb.STAGE_STATE_FAILED,
    StageState.TIMED_OUT: pb.STAGE_STATE_TIMED_OUT,
    StageState.CANCELLED: pb.STAGE_STATE_CANCELLED,
}
_OUTCOMES = {
    pb.STAGE_OUTCOME_SUCCEEDED: StageOutcome.SUCCEEDED,
    pb.STAGE_OUTCOME_FAILED: StageOutcome.FAILED,
    pb.STAGE_OUTCOME_CANCELLED: StageOutcome.CANCELLED,
    pb.STAGE_OUTCOME_TIMED_OUT: StageOutcome.TIMED_OUT,
}


_EVENT_KINDS = {
    value: name.removeprefix("STAGE_EVENT_KIND_").lower()
    for name, value in pb.StageEventKind.items()
    if value != pb.STAGE_EVENT_KIND_UNSPECIFIED
}


class _InvalidEventError(ValueError):
    """A reported event is malformed; the text names the field and the bad value."""


def _event_report(
    kind: pb.StageEventKind.ValueType,
    message: str,
    at: timestamp_pb2.Timestamp | None,
    field: str,
) -> EventReport:
    """Check one reported event and convert it for :meth:`Job.record_events`.

    Args:
        kind: The event's kind, as sent.
        message: The event's details (truncated to ``MAX_MESSAGE_CHARS``).
        at: The driver's time of the event; ``None`` when unset (the receive time is used).
        field: The event's path in the request, prefixed to the names in errors, e.g.
            ``"events[3]."``; ``""`` for the fields of ``ReportStageEventRequest``.

    Raises:
        _InvalidEventError: The kind is unknown or UNSPECIFIED, or the time is out of range.
    """
    name = _EVENT_KINDS.get(kind)
    if name is None:
        raise _InvalidEventError(f"{field}kind: {kind} is not a valid event kind")
    if at is None:
        return name, message[:MAX_MESSAGE_CHARS], None
    if not (_MIN_SECONDS <= at.seconds <= _MAX_SECONDS and 0 <= at.nanos <= 999_999_999):
        raise _InvalidEventError(
            f"{field}time: seconds={at.seconds} nanos={at.nanos} is not a valid timestamp "
            "(0001-01-01 to 9999-12-31 UTC, nanos 0-999999999)"
        )
    return name, message[:MAX_MESSAGE_CHARS], at.seconds + at.nanos / 1e9


def _event_reports(events: Sequence[pb.StageEvent], minimum: int) -> list[EventReport]:
    """Check a request's ``events`` (all of them, before any is recorded) and convert them.

    Raises:
        _InvalidEventError: The count is outside ``minimum``-``MAX_EVENTS_PER_BATCH``, or an
            event is malformed.
    """
    if not minimum <= len(events) <= MAX_EVENTS_PER_BATCH:
        raise _InvalidEventError(
            f"events: {len(events)} events; expected {minimum}-{MAX_EVENTS_PER_BATCH}"
        )
    return [
        _event_report(e.kind, e.message, e.time if e.HasField("time") else None, f"events[{i}].")
        for i, e in enumerate(events)
    ]


def _context_of(job: Job, stage: Stage) -> pb.StageContext:
    spec = stage.spec
    timeout = duration_pb2.Duration()
    timeout.FromTimedelta(spec.timeout)
    return pb.StageContext(
        job_id=str(job.job_id),
        job_name=job.name,
        pipeline_id=job.pipeline_id,
        stage_name=spec.name,
        timeout=timeout,
        inputs=[
            pb.InputEntry(
                name=i.name,
                path=i.path,
                from_stage=i.from_stage,
                from_output=i.from_output,
                declared_path=i.declared_path,
            )
            for i in spec.inputs
        ],
        outputs=[
            pb.OutputEntry(name=o.name, path=o.path, declared_path=o.declared_path)
            for o in spec.outputs
        ],
        state=_STATES[stage.state],
        variables=dict(spec.variables),
    )


async def _checked(
    context: grpc.aio.ServicerContext[object, object], check: Callable[[], _T]
) -> _T:
    """Return ``check()``; abort the call with INVALID_ARGUMENT when an event is malformed."""
    try:
        return check()
    except _InvalidEventError as error:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        raise AssertionError("unreachable: abort raises") from None


def _signal_of(stage: Stage) -> pb.StageSignal.ValueType:
    if stage.state is StageState.WAITING:
        return pb.STAGE_SIGNAL_WAITING
    if stage.state is StageState.READY:
        return pb.STAGE_SIGNAL_INPUTS_READY
    if stage.cancel_reason is CancelReason.JOB_CANCELLED:
        return pb.STAGE_SIGNAL_JOB_CANCELLED
    if stage.cancel_reason is CancelReason.UPSTREAM_FAILED:
        return pb.STAGE_SIGNAL_UPSTREAM_FAILED
    return pb.STAGE_SIGNAL_COMPLETED


class StageService(pb_grpc.StageServiceServicer):
    """Serves the stage API from a :class:`JobStore` (on the server's event loop).

    Args:
        jobs: The platform's jobs.
        tokens: When given, every call must carry the token of the stage it names (see
            :mod:`server_mock._auth`); ``None`` accepts calls without tokens.
    """

    def __init__(self, jobs: JobStore, tokens: StageTokens | None = None) -> None:
        self._jobs = jobs
        self._tokens = tokens

    async def _authorize(
        self,
        job_id: uuid.UUID,
        stage_name: str,
        context: grpc.aio.ServicerContext[object, object],
    ) -> None:
        if self._tokens is None:
            return
        presented = token_from_metadata(context.invocation_metadata())
        verdict = self._tokens.check(presented, job_id, stage_name)
        if verdict is AuthResult.OK:
            return
        _log.warning(
            "stage API call for job %s stage %s refused: %s token",
            job_id,
            stage_name,
            verdict.value,
        )
        if verdict is AuthResult.WRONG_STAGE:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the stage token is not valid for stage {stage_name!r} of job {job_id}",
            )
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "a valid stage token is required: metadata 'authorization: Bearer <token>' "
            "(NVIDIA_CLARA_STAGE_TOKEN)"
            if verdict is AuthResult.MISSING
            else "the stage token is not valid",
        )

    async def _resolve(
        self, ref: pb.StageRef, context: grpc.aio.ServicerContext[object, object]
    ) -> tuple[Job, Stage]:
        try:
            job_id = uuid.UUID(ref.job_id)
        except ValueError:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"stage.job_id: {ref.job_id[:64]!r} is not a UUID",
            )
        if not NAME_PATTERN.match(ref.stage_name):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"stage.stage_name: {ref.stage_name[:64]!r} is not {NAME_RULE}",
            )
        await self._authorize(job_id, ref.stage_name, context)
        try:
            job = self._jobs.get(job_id)
            return job, job.stage(ref.stage_name)
        except (UnknownJobError, UnknownStageError) as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        raise AssertionError("unreachable: abort raises")

    async def GetStageContext(
        self,
        request: pb.GetStageContextRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> pb.GetStageContextResponse:
        """Return the stage's identity, timeout and entries."""
        job, stage = await self._resolve(request.stage, context)
        return pb.GetStageContextResponse(context=_context_of(job, stage))

    async def WatchStage(
        self,
        request: pb.WatchStageRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[pb.WatchStageResponse]:
        """Send the stage's current signal (with its context if asked), then one per change.

        The stream ends once the stage is terminal.
        """
        job, stage = await self._resolve(request.stage, context)
        last: tuple[int, int] | None = None
        first_context = _context_of(job, stage) if request.include_context else None
        while True:
            changed = stage.changed()
            signal, state, terminal = _signal_of(stage), _STATES[stage.state], stage.state.terminal
            if (signal, state) != last:
                last = (signal, state)
                # The stage may change while this yield waits for the client: decide whether to
                # end from what was sent, so a terminal state is always sent before the end.
                yield pb.WatchStageResponse(
                    signal=signal, state=state, message=stage.message, context=first_context
                )
                first_context = None
            if terminal:
                return
            await changed.wait()

    async def CompleteStage(
        self,
        request: pb.CompleteStageRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> pb.CompleteStageResponse:
        """Apply the stage's outcome once; retries with the same report id are acknowledged."""
        if not REPORT_ID_PATTERN.fullmatch(request.report_id):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "report_id: expected 1-128 printable ASCII characters",
            )
        outcome = _OUTCOMES.get(request.outcome)
        if outcome is None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"outcome: {request.outcome} is not a valid StageOutcome",
            )
            raise AssertionError("unreachable: abort raises")
        events = await _checked(context, lambda: _event_reports(request.events, minimum=0))
        job, stage = await self._resolve(request.stage, context)
        try:
            state, applied = job.complete_stage(
                stage.spec.name, request.report_id, outcome, request.message[:MAX_MESSAGE_CHARS]
            )
        except OutcomeRefusedError as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
            raise AssertionError("unreachable: abort raises") from None
        # Recorded even when the report did not apply: the events are still the driver's real
        # history. A retry of the same report records nothing.
        recorded = (
            job.record_report_events(stage.spec.name, request.report_id, events) if events else 0
        )
        _log.info(
            "job %s stage %s reported %s (report %s): state %s, applied %s, %d events recorded",
            job.job_id,
            stage.spec.name,
            outcome.value,
            request.report_id,
            state.value,
            applied,
            recorded,
        )
        return pb.CompleteStageResponse(state=_STATES[state], applied=applied)

    async def ReportStageEvent(
        self,
        request: pb.ReportStageEventRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> pb.ReportStageEventResponse:
        """Record a driver's progress event."""
        at = request.time if request.HasField("time") else None
        event = await _checked(
            context, lambda: _event_report(request.kind, request.message, at, field="")
        )
        job, stage = await self._resolve(request.stage, context)
        job.record_events(stage.spec.name, [event])
        return pb.ReportStageEventResponse()

    async def ReportStageEvents(
        self,
        request: pb.ReportStageEventsRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> pb.ReportStageEventsResponse:
        """Record a batch of a driver's progress events: all of them, or none if one is bad."""
        events = await _checked(context, lambda: _event_reports(request.events, minimum=1))
        job, stage = await self._resolve(request.stage, context)
        job.record_events(stage.spec.name, events)
        return pb.ReportStageEventsResponse()
