"""The stage API (``nvidia.clara.platform.stage.v1.StageService``) served to drivers."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator

import grpc
from google.protobuf import duration_pb2

from clara._proto.nvidia.clara.platform.stage.v1 import stage_service_pb2 as pb
from clara._proto.nvidia.clara.platform.stage.v1 import stage_service_pb2_grpc as pb_grpc
from server_mock._auth import AuthResult, StageTokens, token_from_metadata
from server_mock._jobs import (
    CancelReason,
    Job,
    JobState,
    JobStore,
    Stage,
    StageState,
    UnknownJobError,
    UnknownStageError,
)

__all__ = ["StageService"]

_log = logging.getLogger("server_mock.stage")

_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
_REPORT_ID = re.compile(r"[\x21-\x7e]{1,128}")
MAX_MESSAGE_CHARS = 4096

_STATES = {
    StageState.WAITING: pb.STAGE_STATE_WAITING,
    StageState.READY: pb.STAGE_STATE_READY,
    StageState.SUCCEEDED: pb.STAGE_STATE_SUCCEEDED,
    StageState.FAILED: pb.STAGE_STATE_FAILED,
    StageState.TIMED_OUT: pb.STAGE_STATE_TIMED_OUT,
    StageState.CANCELLED: pb.STAGE_STATE_CANCELLED,
}
_OUTCOMES = {
    pb.STAGE_OUTCOME_SUCCEEDED: "succeeded",
    pb.STAGE_OUTCOME_FAILED: "failed",
    pb.STAGE_OUTCOME_CANCELLED: "cancelled",
    pb.STAGE_OUTCOME_TIMED_OUT: "timed_out",
}


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
        if not _NAME.fullmatch(ref.stage_name):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"stage.stage_name: {ref.stage_name[:64]!r} is not 1-255 of [A-Za-z0-9_-]",
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
        spec = stage.spec
        timeout = duration_pb2.Duration()
        timeout.FromTimedelta(spec.timeout)
        return pb.GetStageContextResponse(
            context=pb.StageContext(
                job_id=str(job.job_id),
                job_name=job.name,
                pipeline_id=job.pipeline_id,
                stage_name=spec.name,
                timeout=timeout,
                inputs=[
                    pb.InputEntry(
                        name=i.name, path=i.path, from_stage=i.from_stage, from_output=i.from_output
                    )
                    for i in spec.inputs
                ],
                outputs=[pb.OutputEntry(name=o.name, path=o.path) for o in spec.outputs],
                state=_STATES[stage.state],
                variables=dict(spec.variables),
            )
        )

    async def WatchStage(
        self,
        request: pb.WatchStageRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[pb.WatchStageResponse]:
        """Send the stage's current signal, then one per change, until it is terminal."""
        _, stage = await self._resolve(request.stage, context)
        last: tuple[int, int] | None = None
        while True:
            changed = stage.changed()
            signal, state, terminal = _signal_of(stage), _STATES[stage.state], stage.state.terminal
            if (signal, state) != last:
                last = (signal, state)
                # The stage may change while this yield waits for the client: decide whether to
                # end from what was sent, so a terminal state is always sent before the end.
                yield pb.WatchStageResponse(signal=signal, state=state, message=stage.message)
            if terminal:
                return
            await changed.wait()

    async def CompleteStage(
        self,
        request: pb.CompleteStageRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> pb.CompleteStageResponse:
        """Apply the stage's outcome once; retries with the same report id are acknowledged."""
        if not _REPORT_ID.fullmatch(request.report_id):
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
        job, stage = await self._resolve(request.stage, context)
        if job.state is JobState.CREATED:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"stage: job {job.job_id} has not started; its stages cannot report yet",
            )
        if outcome == "succeeded" and stage.state is StageState.WAITING:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"outcome: stage {stage.spec.name!r} cannot succeed before its inputs are ready",
            )
        state, applied = job.complete_stage(
            stage.spec.name, request.report_id, outcome, request.message[:MAX_MESSAGE_CHARS]
        )
        _log.info(
            "job %s stage %s reported %s (report %s): state %s, applied %s",
            job.job_id,
            stage.spec.name,
            outcome,
            request.report_id,
            state.value,
            applied,
        )
        return pb.CompleteStageResponse(state=_STATES[state], applied=applied)

    async def ReportStageEvent(
        self,
        request: pb.ReportStageEventRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> pb.ReportStageEventResponse:
        """Record a driver's progress event."""
        if request.kind == pb.STAGE_EVENT_KIND_UNSPECIFIED or (
            request.kind not in pb.StageEventKind.values()
        ):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"kind: {request.kind} is not a valid event kind"
            )
        job, stage = await self._resolve(request.stage, context)
        kind = pb.StageEventKind.Name(request.kind).removeprefix("STAGE_EVENT_KIND_").lower()
        job.record_event(stage.spec.name, kind, request.message[:MAX_MESSAGE_CHARS])
        return pb.ReportStageEventResponse()
