"""``nvidia.clara.platform.Jobs`` over :attr:`PlatformState.jobs` and its job records."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import ClassVar

from server_mock._errors import ApiError, ErrorCode
from server_mock._jobs import Job
from server_mock._platform_api.convert import (
    JOB_PRIORITIES,
    from_timestamp,
    identifier,
    is_identifier,
    job_messages,
    job_state,
    job_status,
    operator_status,
    parse_identifier,
    priority,
    show,
    timestamp_text,
    to_timestamp,
)
from server_mock._platform_api.fields import check_name, check_text, utf8_len
from server_mock._platform_api.limits import (
    LOG_BYTES_PER_MESSAGE,
    LOG_LINES_PER_MESSAGE,
    MAX_LOG_LINE_BYTES,
    MAX_REASON_CHARS,
    MAX_VARIABLE_VALUE_BYTES,
    MAX_VARIABLES,
)
from server_mock._platform_api.metadata import edit_metadata
from server_mock._platform_api.pipelines import parse_pipeline_id
from server_mock._platform_api.responses import Context, abort, ok, streaming_rpc, unary_rpc
from server_mock._platform_state import JobRecord, PlatformState
from server_mock._proto.nvidia.clara.platform import common_pb2, jobs_pb2, jobs_pb2_grpc

__all__ = ["JobsService"]

_log = logging.getLogger("server_mock.api")

_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")


def _parse_job_id(value: common_pb2.Identifier) -> uuid.UUID:
    return parse_identifier(value, "job id", ErrorCode.INVALID_JOB_ID)


def _pipeline_identifier(job: Job, record: JobRecord | None) -> common_pb2.Identifier:
    if record is not None:
        return identifier(record.pipeline_id)
    return common_pb2.Identifier(value=job.pipeline_id)


def _priority(record: JobRecord | None) -> jobs_pb2.JobPriority.ValueType:
    return priority(None if record is None else record.priority)


def _variables(request: jobs_pb2.JobsStartRequest) -> dict[str, str]:
    """The named values of a start request, checked.

    Raises:
        ApiError: ``INVALID_JOB_VARIABLES``, naming the variable.
    """
    code = ErrorCode.INVALID_JOB_VARIABLES
    if len(request.Variables) > MAX_VARIABLES:
        raise ApiError(code, f"more than {MAX_VARIABLES} variables")
    variables: dict[str, str] = {}
    for pair in request.Variables:
        if not _VARIABLE.fullmatch(pair.name):
            raise ApiError(
                code,
                f"variable name {show(pair.name)} is not a letter or '_' followed by "
                "up to 254 letters, digits or '_'",
            )
        if pair.name in variables:
            raise ApiError(code, f"variable {pair.name!r} is given twice")
        if utf8_len(pair.value) > MAX_VARIABLE_VALUE_BYTES or "\x00" in pair.value:
            raise ApiError(code, f"the value of variable {pair.name!r} is invalid or too large")
        variables[pair.name] = pair.value
    return variables


class _JobFilter:
    """A validated ``JobsListRequest.JobFilter``."""

    def __init__(self, request: jobs_pb2.JobsListRequest) -> None:
        code = ErrorCode.INVALID_JOB_FILTER
        raw = request.filter
        for state in raw.has_state:
            if state not in jobs_pb2.JobState.values():
                raise ApiError(code, f"filter.has_state: {state} is not a JobState")
        for status in raw.has_status:
            if status not in jobs_pb2.JobStatus.values():
                raise ApiError(code, f"filter.has_status: {status} is not a JobStatus")
        self.states = frozenset(raw.has_state)
        self.statuses = frozenset(raw.has_status)
        self.pipelines = frozenset(parse_pipeline_id(i) for i in raw.pipeline_id)
        self.completed_before = from_timestamp(raw.completed_before)
        self.created_after = from_timestamp(raw.created_after)

    def matches(self, job: Job, record: JobRecord | None) -> bool:
        if self.states and job_state(job) not in self.states:
            return False
        if self.statuses and job_status(job) not in self.statuses:
            return False
        if self.pipelines:
            pipeline_id = _pipeline_identifier(job, record).value
            if not is_identifier(pipeline_id) or uuid.UUID(pipeline_id) not in self.pipelines:
                return False
        if self.completed_before is not None and (
            job.ended_at is None or job.ended_at >= self.completed_before
        ):
            return False
        return self.created_after is None or job.created_at > self.created_after


def _log_message(job: Job, operator: str, lines: list[str]) -> jobs_pb2.JobsReadLogsResponse:
    return jobs_pb2.JobsReadLogsResponse(
        header=ok(), job_id=identifier(job.job_id), operator_name=operator, logs=lines
    )


class JobsService(jobs_pb2_grpc.JobsServicer):
    """``nvidia.clara.platform.Jobs`` over :attr:`PlatformState.jobs` and its job records."""

    store_error: ClassVar[ErrorCode] = ErrorCode.JOB_STORE_ERROR

    def __init__(self, state: PlatformState) -> None:
        self._state = state

    def _job(self, value: common_pb2.Identifier) -> tuple[Job, JobRecord | None]:
        job_id = _parse_job_id(value)
        job = self._state.get_job(job_id)
        return job, self._state.job_records.get(job_id)

    @unary_rpc(jobs_pb2.JobsCreateResponse)
    async def Create(
        self, request: jobs_pb2.JobsCreateRequest, context: Context
    ) -> jobs_pb2.JobsCreateResponse:
        """Create a job of a pipeline, and the job's payload; the job is not started."""
        pipeline_id = parse_pipeline_id(request.pipeline_id)
        check_name(request.name, "job name", ErrorCode.INVALID_JOB_NAME)
        wanted = request.priority or jobs_pb2.JOB_PRIORITY_NORMAL
        if wanted not in JOB_PRIORITIES:
            raise ApiError(
                ErrorCode.INVALID_JOB_PRIORITY, f"priority {request.priority} is not a JobPriority"
            )
        inputs = [
            parse_identifier(i, "input payload id", ErrorCode.INVALID_PAYLOAD_ID)
            for i in request.input_payloads
        ]
        metadata = edit_metadata(
            {},
            ErrorCode.INVALID_JOB_METADATA,
            f"the new job {request.name!r}",
            add=request.metadata,
        )
        record = self._state.create_job(
            pipeline_id, request.name, priority=wanted, input_payload_ids=inputs, metadata=metadata
        )
        _log.info(
            "job %s (%s) created from pipeline %s", record.job_id.hex, request.name, pipeline_id.hex
        )
        return jobs_pb2.JobsCreateResponse(
            header=ok(), job_id=identifier(record.job_id), payload_id=identifier(record.payload_id)
        )

    @unary_rpc(jobs_pb2.JobsStartResponse)
    async def Start(
        self, request: jobs_pb2.JobsStartRequest, context: Context
    ) -> jobs_pb2.JobsStartResponse:
        """Copy the input payloads into the job's input folder and launch its operators."""
        job_id = _parse_job_id(request.job_id)
        job = await self._state.start_job(job_id, _variables(request))
        waiting = self._state.waiting_messages(job_id)
        _log.info("job %s %s", job_id.hex, waiting[0] if waiting else "started")
        return jobs_pb2.JobsStartResponse(
            header=ok(),
            priority=_priority(self._state.job_records.get(job_id)),
            state=job_state(job),
            status=job_status(job),
        )

    @unary_rpc(jobs_pb2.JobsStatusResponse)
    async def Status(
        self, request: jobs_pb2.JobsStatusRequest, context: Context
    ) -> jobs_pb2.JobsStatusResponse:
        """The job's state, status, times, operators and graph."""
        job, record = self._job(request.job_id)
        operators = [
            jobs_pb2.JobsStatusResponse.JobOperatorDetails(
                name=name,
                status=operator_status(stage),
                created=to_timestamp(job.created_at),
                started=to_timestamp(stage.ready_at),
                stopped=to_timestamp(stage.ended_at),
            )
            for name, stage in job.stages.items()
        ]
        node = jobs_pb2.JobsStatusResponse.JobDagNode
        dag = [
            node(
                name=name,
                input_dependencies=[node(name=u) for u in job.stages if u in stage.spec.upstream],
            )
            for name, stage in job.stages.items()
        ]
        return jobs_pb2.JobsStatusResponse(
            header=ok(),
            job_id=identifier(job.job_id),
            pipeline_id=_pipeline_identifier(job, record),
            payload_id=identifier(record.payload_id if record else None),
            state=job_state(job),
            status=job_status(job),
            name=job.name,
            priority=_priority(record),
            created=to_timestamp(job.created_at),
            started=to_timestamp(job.started_at),
            stopped=to_timestamp(job.ended_at),
            operator_details=operators,
            metadata=record.metadata if record else {},
            dag=dag,
            messages=[*job_messages(job), *self._state.waiting_messages(job.job_id)],
            timestamp_created=timestamp_text(job.created_at),
            timestamp_started=timestamp_text(job.started_at),
            timestamp_stopped=timestamp_text(job.ended_at),
        )

    @streaming_rpc(jobs_pb2.JobsListResponse)
    async def List(
        self, request: jobs_pb2.JobsListRequest, context: Context
    ) -> AsyncIterator[jobs_pb2.JobsListResponse]:
        """One message per matching job; a lone header message when none match."""
        job_filter = _JobFilter(request)
        records = self._state.job_records
        matching = [
            j for j in self._state.jobs.all() if job_filter.matches(j, records.get(j.job_id))
        ]
        if not matching:
            yield jobs_pb2.JobsListResponse(header=ok())
        for job in matching:
            record = records.get(job.job_id)
            yield jobs_pb2.JobsListResponse(
                header=ok(),
                job_details=jobs_pb2.JobsListResponse.JobDetails(
                    job_id=identifier(job.job_id),
                    payload_id=identifier(record.payload_id if record else None),
                    pipeline_id=_pipeline_identifier(job, record),
                    job_name=job.name,
                    state=job_state(job),
                    status=job_status(job),
                    priority=_priority(record),
                    created=to_timestamp(job.created_at),
                    started=to_timestamp(job.started_at),
                    stopped=to_timestamp(job.ended_at),
                    metadata=record.metadata if record else {},
                    timestamp_created=timestamp_text(job.created_at),
                    timestamp_started=timestamp_text(job.started_at),
                    timestamp_stopped=timestamp_text(job.ended_at),
                ),
            )

    @unary_rpc(jobs_pb2.JobsCancelResponse)
    async def Cancel(
        self, request: jobs_pb2.JobsCancelRequest, context: Context
    ) -> jobs_pb2.JobsCancelResponse:
        """Cancel a job that has not ended; an ended job is left as it is (not an error)."""
        job, _record = self._job(request.job_id)
        check_text(request.reason, "reason", ErrorCode.INVALID_JOB_REQUEST, MAX_REASON_CHARS)
        if job.cancel(request.reason or "cancelled by request"):
            _log.info("job %s cancelled: %s", job.job_id.hex, job.message)
        return jobs_pb2.JobsCancelResponse(
            header=ok(),
            job_id=identifier(job.job_id),
            job_state=job_state(job),
            job_status=job_status(job),
        )

    async def ReadLogs(
        self, request: jobs_pb2.JobsReadLogsRequest, context: Context
    ) -> AsyncIterator[jobs_pb2.JobsReadLogsResponse]:
        """Stream the lines of the operator's log file (none before the operator ran).

        Errors abort the call with a gRPC status: the published client ignores headers here.
        """
        try:
            job, record = self._job(request.job_id)
            if request.operator_name not in job.stages:
                raise ApiError(
                    ErrorCode.UNKNOWN_OPERATOR,
                    f"job {job.job_id.hex} has no operator {show(request.operator_name)}",
                )
        except ApiError as error:
            await abort(context, "Jobs.ReadLogs", error)
        path = record.layout.log_path(request.operator_name) if record else None
        lines: list[str] = []
        sent = False
        if path is not None and path.is_file():
            with path.open("rb") as log:
                size = 0
                for raw in iter(lambda: log.readline(MAX_LOG_LINE_BYTES), b""):
                    lines.append(
                        raw.removesuffix(b"\n").removesuffix(b"\r").decode("utf-8", "replace")
                    )
                    size += len(raw)
                    if len(lines) >= LOG_LINES_PER_MESSAGE or size >= LOG_BYTES_PER_MESSAGE:
                        yield _log_message(job, request.operator_name, lines)
                        lines, size, sent = [], 0, True
        if lines or not sent:
            yield _log_message(job, request.operator_name, lines)

    @unary_rpc(jobs_pb2.JobsAddMetadataResponse)
    async def AddMetadata(
        self, request: jobs_pb2.JobsAddMetadataRequest, context: Context
    ) -> jobs_pb2.JobsAddMetadataResponse:
        """Merge key/value pairs into the job's metadata."""
        job, record = self._job(request.job_id)
        current = record.metadata if record is not None else {}
        metadata = edit_metadata(
            current, ErrorCode.INVALID_JOB_METADATA, f"job {job.job_id.hex}", add=request.metadata
        )
        self._state.set_job_metadata(job, metadata)
        return jobs_pb2.JobsAddMetadataResponse(
            header=ok(), job_id=identifier(job.job_id), metadata=metadata
        )

    @unary_rpc(jobs_pb2.JobsRemoveMetadataResponse)
    async def RemoveMetadata(
        self, request: jobs_pb2.JobsRemoveMetadataRequest, context: Context
    ) -> jobs_pb2.JobsRemoveMetadataResponse:
        """Delete keys from the job's metadata (absent keys are ignored)."""
        job, record = self._job(request.job_id)
        current = record.metadata if record is not None else {}
        metadata = edit_metadata(
            current, ErrorCode.INVALID_JOB_METADATA, f"job {job.job_id.hex}", remove=request.keys
        )
        self._state.set_job_metadata(job, metadata)
        return jobs_pb2.JobsRemoveMetadataResponse(
            header=ok(), job_id=identifier(job.job_id), metadata=metadata
        )
