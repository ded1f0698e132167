"""The public (legacy) Clara Platform API served by the mock: Clara, Pipelines, Jobs, Payloads.

Wire-compatible with the published ``nvidia-clara-client`` 0.8.1.7. The servicers run on the
mock's event loop and work on :class:`~server_mock._platform_state.PlatformState`.

Error convention
----------------
A refused request is answered like the real platform does: gRPC status OK and a response whose
``ResponseHeader.code`` is negative (:class:`~server_mock._errors.ErrorCode`) with the reasons
in ``ResponseHeader.messages``. The published client checks that header after every call and
raises ``Exception("<messages joined by newlines>")``, a readable error; a non-OK gRPC status
would instead surface as a raw ``grpc.RpcError`` before the client ever looks at the header.
For callers that prefer gRPC terms, the equivalent status name (``NOT_FOUND``,
``INVALID_ARGUMENT``, ...) is also sent as trailing metadata ``clara-status-code``. Streaming
RPCs answer an error with a single message carrying the error header.

Two exceptions, both chosen so that the published client raises:

* ``Jobs.ReadLogs``: the client never reads the response headers, so an error header would
  silently become an empty log. ReadLogs errors abort the call with a gRPC status instead
  (``INVALID_ARGUMENT``/``NOT_FOUND``; details carry the message, trailing metadata the code).
* ``Models``: not implemented; every RPC ends with status ``UNIMPLEMENTED``.

``Clara.Stop`` is refused with code ``UNSUPPORTED``: a mock serving tests must not be shut
down by a client; stop it from the process that runs it. ``Clara.Utilization`` sends one
sample without GPUs (the mock manages none) and ends, also when ``watch`` is set.

Identifiers are sent as 32 lowercase hex digits (like the real platform) and accepted with or
without hyphens. Timestamps count seconds since 0001-01-01T00:00:00Z (the published client
subtracts 62135596800 to get Unix time).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Final

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from clara.contract import NAME_PATTERN, NAME_RULE
from server_mock._errors import ApiError, ErrorCode
from server_mock._jobs import CancelReason, Job, JobState, Stage, StageState
from server_mock._payloads import CHUNK_SIZE, PayloadRecord, PayloadType, Upload
from server_mock._pipeline_definition import MAX_DEFINITION_BYTES, PipelineDefinition
from server_mock._pipelines import DEFAULT_DEFINITION_PATH
from server_mock._platform_state import JobRecord, PlatformState
from server_mock._proto.nvidia.clara.platform import (
    clara_pb2,
    clara_pb2_grpc,
    common_pb2,
    jobs_pb2,
    jobs_pb2_grpc,
    models_pb2,
    payloads_pb2,
    payloads_pb2_grpc,
    pipelines_pb2,
    pipelines_pb2_grpc,
)

__all__ = [
    "DEFAULT_MAX_UPLOAD_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_ENTRIES",
    "MAX_METADATA_KEY_CHARS",
    "MAX_METADATA_VALUE_BYTES",
    "PLATFORM_VERSION",
    "SECONDS_TO_UNIX_EPOCH",
    "ClaraService",
    "JobsService",
    "PayloadsService",
    "PipelinesService",
    "add_platform_api_to_server",
    "from_timestamp",
    "parse_identifier",
    "to_timestamp",
]

_log = logging.getLogger("server_mock.api")

Context = grpc.aio.ServicerContext[object, object]

PLATFORM_VERSION: Final = common_pb2.Version(major=0, minor=8, patch=1, label="mock")
"""What ``Clara.Version`` answers: the API generation the published 0.8.x clients expect."""

SECONDS_TO_UNIX_EPOCH: Final = 62_135_596_800
"""Seconds from 0001-01-01T00:00:00Z to 1970-01-01T00:00:00Z."""

MAX_METADATA_ENTRIES: Final = 256
MAX_METADATA_KEY_CHARS: Final = 255
MAX_METADATA_VALUE_BYTES: Final = 64 * 1024
MAX_METADATA_BYTES: Final = 1024 * 1024
"""Limits of one object's metadata (keys and values, UTF-8, all entries together)."""

MAX_REASON_CHARS: Final = 4096
MAX_VARIABLES: Final = 256
MAX_PATH_CHARS: Final = 4096
MAX_DEFINITION_MESSAGES: Final = 10_000
DEFINITION_PIECE_CHARS: Final = 256 * 1024
"""Definition text per ``Pipelines.Details`` message (at most 1 MiB of UTF-8)."""
MAX_DAG_DEPTH: Final = 32
"""Nesting of ``PipelineDagNode`` kept well below protobuf's default recursion limit (100)."""
LOG_LINES_PER_MESSAGE: Final = 1000
LOG_BYTES_PER_MESSAGE: Final = 1024 * 1024
MAX_LOG_LINE_BYTES: Final = 64 * 1024
"""Longer log lines are split into pieces of this size."""

STATUS_TRAILER: Final = "clara-status-code"

DEFAULT_MAX_UPLOAD_BYTES: Final = 16 * 1024**3
"""The largest file ``Payloads.Upload`` accepts by default (``MockPlatform(max_upload_bytes=)``)."""

_UUID = re.compile(
    r"[0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")

_JOB_PRIORITIES = frozenset(
    {
        jobs_pb2.JOB_PRIORITY_LOWER,
        jobs_pb2.JOB_PRIORITY_NORMAL,
        jobs_pb2.JOB_PRIORITY_HIGHER,
        jobs_pb2.JOB_PRIORITY_IMMEDIATE,
    }
)
_PAYLOAD_TYPES = {
    PayloadType.PIPELINE: payloads_pb2.PAYLOAD_TYPE_PIPELINE,
    PayloadType.REUSABLE: payloads_pb2.PAYLOAD_TYPE_REUSABLE,
}


# --- conversions and validation ------------------------------------------------------------


def _ok() -> common_pb2.ResponseHeader:
    return common_pb2.ResponseHeader(code=0)


def _fail(context: Context, method: str, error: ApiError) -> common_pb2.ResponseHeader:
    """Log a refused request, set the status trailer, and return the error header."""
    _log.info("%s refused (%s): %s", method, error.code.name, error)
    context.set_trailing_metadata(((STATUS_TRAILER, error.status.name),))
    return common_pb2.ResponseHeader(code=int(error.code), messages=list(error.messages))


def _identifier(value: uuid.UUID | None) -> common_pb2.Identifier:
    return common_pb2.Identifier(value=value.hex if value is not None else "")


def _show(value: str) -> str:
    return repr(value if len(value) <= 64 else value[:61] + "...")


def parse_identifier(identifier: common_pb2.Identifier, what: str, code: ErrorCode) -> uuid.UUID:
    """Return the UUID of a required identifier (32 hex digits, with or without hyphens).

    Raises:
        ApiError: ``code``, when the identifier is missing or malformed.
    """
    value = identifier.value
    if not value:
        raise ApiError(code, f"{what} is required")
    if not _UUID.fullmatch(value):
        raise ApiError(
            code, f"{what} {_show(value)} is not an id (32 hex digits, with or without hyphens)"
        )
    return uuid.UUID(value)


def _check_text(value: str, what: str, code: ErrorCode, limit: int) -> None:
    if len(value) > limit:
        raise ApiError(code, f"{what} is longer than {limit} characters")
    if any(ord(c) < 0x20 and c not in "\t\n\r" for c in value) or "\x7f" in value:
        raise ApiError(code, f"{what} contains control characters")


def _check_metadata_key(key: str, code: ErrorCode) -> None:
    if not key:
        raise ApiError(code, "metadata keys must not be empty")
    if len(key) > MAX_METADATA_KEY_CHARS:
        raise ApiError(
            code, f"metadata key {_show(key)} is longer than {MAX_METADATA_KEY_CHARS} characters"
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise ApiError(code, f"metadata key {_show(key)} contains control characters")


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def merge_metadata(
    existing: Mapping[str, str], added: Mapping[str, str], code: ErrorCode
) -> dict[str, str]:
    """Return ``existing`` updated with ``added``, checking every limit.

    Raises:
        ApiError: ``code``, naming the key or limit at fault.
    """
    for key, value in added.items():
        _check_metadata_key(key, code)
        if _utf8_len(value) > MAX_METADATA_VALUE_BYTES:
            raise ApiError(
                code,
                f"the value of metadata key {_show(key)} is larger than "
                f"{MAX_METADATA_VALUE_BYTES} bytes",
            )
    merged = {**existing, **added}
    if len(merged) > MAX_METADATA_ENTRIES:
        raise ApiError(code, f"metadata would have more than {MAX_METADATA_ENTRIES} entries")
    if sum(_utf8_len(k) + _utf8_len(v) for k, v in merged.items()) > MAX_METADATA_BYTES:
        raise ApiError(code, f"metadata would be larger than {MAX_METADATA_BYTES} bytes")
    return merged


def _without_keys(
    existing: Mapping[str, str], keys: Iterable[str], code: ErrorCode
) -> dict[str, str]:
    keys = list(keys)
    for key in keys:
        _check_metadata_key(key, code)
    return {k: v for k, v in existing.items() if k not in keys}


def to_timestamp(unix: float | None) -> common_pb2.Timestamp:
    """A legacy Timestamp (seconds since 0001-01-01 UTC); unset (zero) for ``None``."""
    if unix is None:
        return common_pb2.Timestamp()
    return common_pb2.Timestamp(value=int(unix) + SECONDS_TO_UNIX_EPOCH)


def from_timestamp(timestamp: common_pb2.Timestamp) -> float | None:
    """Unix time of a legacy Timestamp; ``None`` when unset (zero)."""
    return None if timestamp.value == 0 else float(timestamp.value - SECONDS_TO_UNIX_EPOCH)


def _timestamp_text(unix: float | None) -> str:
    """The deprecated text form of a timestamp (``2020-01-31 12:00:00Z``)."""
    return "" if unix is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(unix))


def _check_name(name: str, what: str, code: ErrorCode) -> None:
    if not NAME_PATTERN.match(name):
        raise ApiError(code, f"{what} {_show(name)} is not {NAME_RULE}")


# --- job state mapping ---------------------------------------------------------------------


def job_state(job: Job) -> jobs_pb2.JobState.ValueType:
    """The legacy JobState of a job: pending (created), running, or stopped (ended)."""
    if job.state is JobState.CREATED:
        return jobs_pb2.JOB_STATE_PENDING
    if job.state is JobState.RUNNING:
        return jobs_pb2.JOB_STATE_RUNNING
    return jobs_pb2.JOB_STATE_STOPPED


def job_status(job: Job) -> jobs_pb2.JobStatus.ValueType:
    """The legacy JobStatus of a job: healthy, faulted (failed) or canceled."""
    if job.state is JobState.FAILED:
        return jobs_pb2.JOB_STATUS_FAULTED
    if job.state is JobState.CANCELLED:
        return jobs_pb2.JOB_STATUS_CANCELED
    return jobs_pb2.JOB_STATUS_HEALTHY


def operator_status(stage: Stage) -> jobs_pb2.JobOperatorStatus.ValueType:
    """The legacy JobOperatorStatus of a stage.

    Waiting is pending, ready is running, succeeded is completed; every other end (failed,
    timed out, cancelled by the job or by a failed upstream stage) is faulted: the legacy enum
    has no "canceled" operator status, and the job's status tells a cancellation apart.
    """
    if stage.state is StageState.WAITING:
        return jobs_pb2.JOB_OPERATOR_STATUS_PENDING
    if stage.state is StageState.READY:
        return jobs_pb2.JOB_OPERATOR_STATUS_RUNNING
    if stage.state is StageState.SUCCEEDED:
        return jobs_pb2.JOB_OPERATOR_STATUS_COMPLETED
    return jobs_pb2.JOB_OPERATOR_STATUS_FAULTED


def _job_messages(job: Job) -> list[str]:
    messages = [job.message] if job.message else []
    if not job.state.terminal:
        for name, stage in job.stages.items():
            if stage.state.terminal and stage.state is not StageState.SUCCEEDED:
                reason = (
                    " (upstream failed)"
                    if stage.cancel_reason is CancelReason.UPSTREAM_FAILED
                    else ""
                )
                messages.append(f"{name}: {stage.state.value}{reason}: {stage.message}")
    return messages


# --- Clara ---------------------------------------------------------------------------------


class ClaraService(clara_pb2_grpc.ClaraServicer):
    """``nvidia.clara.platform.Clara``: version, utilization; stop is refused."""

    async def Stop(
        self, request: clara_pb2.ClaraStopRequest, context: Context
    ) -> clara_pb2.ClaraStopResponse:
        """Refuse: a client must not shut the mock down (see the module docstring)."""
        error = ApiError(
            ErrorCode.UNSUPPORTED,
            "the mock platform does not stop on request: stop the process that runs it "
            "(Ctrl-C for the CLI, MockPlatform.stop() in tests)",
        )
        return clara_pb2.ClaraStopResponse(header=_fail(context, "Clara.Stop", error))

    async def Utilization(
        self, request: clara_pb2.ClaraUtilizationRequest, context: Context
    ) -> AsyncIterator[clara_pb2.ClaraUtilizationResponse]:
        """Send one sample without GPUs and end (also when ``watch`` is set)."""
        yield clara_pb2.ClaraUtilizationResponse(header=_ok())

    async def Version(
        self, request: clara_pb2.ClaraVersionRequest, context: Context
    ) -> clara_pb2.ClaraVersionResponse:
        """Return :data:`PLATFORM_VERSION`."""
        return clara_pb2.ClaraVersionResponse(header=_ok(), version=PLATFORM_VERSION)


# --- Pipelines -----------------------------------------------------------------------------


def _pipeline_dag(
    definition: PipelineDefinition,
) -> list[pipelines_pb2.PipelinesDetailsResponse.PipelineDagNode]:
    """Root operators, each nesting its successors.

    An operator reached a second time (a diamond) is listed by name only, so the graph costs
    one node per edge. Nesting stops at :data:`MAX_DAG_DEPTH`; an operator cut there is
    listed again at the top level with its successors.
    """
    node_type = pipelines_pb2.PipelinesDetailsResponse.PipelineDagNode
    expanded: set[str] = set()
    roots = [op.name for op in definition.operators if not op.upstream]
    pending = list(roots)
    result = []

    def build(name: str, depth: int) -> pipelines_pb2.PipelinesDetailsResponse.PipelineDagNode:
        node = node_type(name=name)
        if name in expanded:
            return node
        if depth >= MAX_DAG_DEPTH:
            pending.append(name)
            return node
        expanded.add(name)
        node.next.extend(build(child, depth + 1) for child in definition.downstream(name))
        return node

    while pending:
        name = pending.pop(0)
        if name not in expanded:
            result.append(build(name, 1))
    return result


class _DefinitionRequest:
    """The fields of a streamed Create/Update request, gathered from all its messages."""

    def __init__(self) -> None:
        self.files: dict[str, list[str]] = {}
        self.size = 0
        self.count = 0
        self.pipeline_id = ""
        self.metadata: dict[str, str] = {}

    def add(
        self,
        definition: pipelines_pb2.PipelineDefinitionFile,
        pipeline_id: common_pb2.Identifier,
        code: ErrorCode,
    ) -> None:
        self.count += 1
        if self.count > MAX_DEFINITION_MESSAGES:
            raise ApiError(
                code, f"the definition is split into more than {MAX_DEFINITION_MESSAGES} messages"
            )
        if pipeline_id.value:
            if self.pipeline_id and pipeline_id.value != self.pipeline_id:
                raise ApiError(
                    ErrorCode.INVALID_PIPELINE_ID,
                    "the messages of one request name different pipeline ids",
                )
            self.pipeline_id = pipeline_id.value
        if len(definition.path) > MAX_PATH_CHARS or "\x00" in definition.path:
            raise ApiError(code, f"definition file name {_show(definition.path)} is invalid")
        self.size += len(definition.content)
        if self.size > MAX_DEFINITION_BYTES:
            raise ApiError(
                ErrorCode.INVALID_DEFINITION,
                "invalid pipeline definition: larger than the limit of "
                f"{MAX_DEFINITION_BYTES} bytes",
            )
        self.files.setdefault(definition.path, []).append(definition.content)

    def single_file(self, code: ErrorCode) -> tuple[str, str]:
        if not self.files:
            raise ApiError(code, "the request carried no pipeline definition")
        if len(self.files) > 1:
            names = ", ".join(repr(p) for p in self.files)
            raise ApiError(
                code,
                f"the mock supports single-file pipeline definitions; the request has {names}",
            )
        [(path, pieces)] = self.files.items()
        return path or DEFAULT_DEFINITION_PATH, "".join(pieces)


def _parse_pipeline_id(identifier: common_pb2.Identifier) -> uuid.UUID:
    return parse_identifier(identifier, "pipeline id", ErrorCode.INVALID_PIPELINE_ID)


class PipelinesService(pipelines_pb2_grpc.PipelinesServicer):
    """``nvidia.clara.platform.Pipelines`` over :attr:`PlatformState.pipelines`."""

    def __init__(self, state: PlatformState) -> None:
        self._state = state

    async def Create(
        self,
        request_iterator: AsyncIterator[pipelines_pb2.PipelinesCreateRequest],
        context: Context,
    ) -> pipelines_pb2.PipelinesCreateResponse:
        """Register a pipeline; its definition is validated and nothing is stored on error."""
        try:
            gathered = _DefinitionRequest()
            async for request in request_iterator:
                gathered.add(
                    request.definition, request.pipeline_id, ErrorCode.INVALID_PIPELINE_REQUEST
                )
                # Checked per message, so a stream of distinct keys cannot grow without bound.
                gathered.metadata = merge_metadata(
                    gathered.metadata, request.metadata, ErrorCode.INVALID_PIPELINE_METADATA
                )
            path, text = gathered.single_file(ErrorCode.INVALID_PIPELINE_REQUEST)
            pipeline_id = (
                _parse_pipeline_id(common_pb2.Identifier(value=gathered.pipeline_id))
                if gathered.pipeline_id
                else None
            )
            metadata = merge_metadata({}, gathered.metadata, ErrorCode.INVALID_PIPELINE_METADATA)
            record = self._state.pipelines.create(
                text, path=path, metadata=metadata, pipeline_id=pipeline_id
            )
        except ApiError as error:
            return pipelines_pb2.PipelinesCreateResponse(
                header=_fail(context, "Pipelines.Create", error)
            )
        _log.info("pipeline %s (%s) created", record.pipeline_id.hex, record.name)
        return pipelines_pb2.PipelinesCreateResponse(
            header=_ok(), pipeline_id=_identifier(record.pipeline_id)
        )

    async def Details(
        self, request: pipelines_pb2.PipelinesDetailsRequest, context: Context
    ) -> AsyncIterator[pipelines_pb2.PipelinesDetailsResponse]:
        """Stream the definition in pieces; the first message has the graph and metadata."""
        try:
            record = self._state.pipelines.get(_parse_pipeline_id(request.pipeline_id))
        except ApiError as error:
            yield pipelines_pb2.PipelinesDetailsResponse(
                header=_fail(context, "Pipelines.Details", error)
            )
            return
        text = record.text
        pieces = [
            text[i : i + DEFINITION_PIECE_CHARS]
            for i in range(0, len(text), DEFINITION_PIECE_CHARS)
        ]
        for index, piece in enumerate(pieces or [""]):
            response = pipelines_pb2.PipelinesDetailsResponse(
                header=_ok(),
                pipeline_id=_identifier(record.pipeline_id),
                name=record.name,
                definition=pipelines_pb2.PipelineDefinitionFile(path=record.path, content=piece),
            )
            if index == 0:
                response.dag.extend(_pipeline_dag(record.definition))
                response.metadata.update(record.metadata)
            yield response

    async def List(
        self, request: pipelines_pb2.PipelinesListRequest, context: Context
    ) -> AsyncIterator[pipelines_pb2.PipelinesListResponse]:
        """One message per pipeline; a lone header message when there are none."""
        records = self._state.pipelines.all()
        if not records:
            yield pipelines_pb2.PipelinesListResponse(header=_ok())
        for record in records:
            yield pipelines_pb2.PipelinesListResponse(
                header=_ok(),
                details=pipelines_pb2.PipelinesListResponse.PipelineDetails(
                    pipeline_id=_identifier(record.pipeline_id),
                    name=record.name,
                    metadata=record.metadata,
                ),
            )

    async def Remove(
        self, request: pipelines_pb2.PipelinesRemoveRequest, context: Context
    ) -> pipelines_pb2.PipelinesRemoveResponse:
        """Unregister a pipeline; its jobs keep running their definition."""
        try:
            record = self._state.pipelines.remove(_parse_pipeline_id(request.pipeline_id))
        except ApiError as error:
            return pipelines_pb2.PipelinesRemoveResponse(
                header=_fail(context, "Pipelines.Remove", error)
            )
        _log.info("pipeline %s (%s) removed", record.pipeline_id.hex, record.name)
        return pipelines_pb2.PipelinesRemoveResponse(header=_ok())

    async def Update(
        self,
        request_iterator: AsyncIterator[pipelines_pb2.PipelinesUpdateRequest],
        context: Context,
    ) -> pipelines_pb2.PipelinesUpdateResponse:
        """Replace a pipeline's definition; nothing changes if the new one is invalid."""
        try:
            gathered = _DefinitionRequest()
            async for request in request_iterator:
                gathered.add(
                    request.definition, request.pipeline_id, ErrorCode.INVALID_PIPELINE_REQUEST
                )
            path, text = gathered.single_file(ErrorCode.INVALID_PIPELINE_REQUEST)
            pipeline_id = _parse_pipeline_id(common_pb2.Identifier(value=gathered.pipeline_id))
            self._state.pipelines.update(pipeline_id, text, path)
        except ApiError as error:
            return pipelines_pb2.PipelinesUpdateResponse(
                header=_fail(context, "Pipelines.Update", error)
            )
        return pipelines_pb2.PipelinesUpdateResponse(header=_ok())

    async def AddMetadata(
        self, request: pipelines_pb2.PipelinesAddMetadataRequest, context: Context
    ) -> pipelines_pb2.PipelinesAddMetadataResponse:
        """Merge key/value pairs into the pipeline's metadata."""
        try:
            record = self._state.pipelines.get(_parse_pipeline_id(request.pipeline_id))
            self._state.pipelines.set_metadata(
                record,
                merge_metadata(
                    record.metadata, request.metadata, ErrorCode.INVALID_PIPELINE_METADATA
                ),
            )
        except ApiError as error:
            return pipelines_pb2.PipelinesAddMetadataResponse(
                header=_fail(context, "Pipelines.AddMetadata", error)
            )
        return pipelines_pb2.PipelinesAddMetadataResponse(
            header=_ok(), pipeline_id=_identifier(record.pipeline_id), metadata=record.metadata
        )

    async def RemoveMetadata(
        self, request: pipelines_pb2.PipelinesRemoveMetadataRequest, context: Context
    ) -> pipelines_pb2.PipelinesRemoveMetadataResponse:
        """Delete keys from the pipeline's metadata (absent keys are ignored)."""
        try:
            record = self._state.pipelines.get(_parse_pipeline_id(request.pipeline_id))
            self._state.pipelines.set_metadata(
                record,
                _without_keys(record.metadata, request.keys, ErrorCode.INVALID_PIPELINE_METADATA),
            )
        except ApiError as error:
            return pipelines_pb2.PipelinesRemoveMetadataResponse(
                header=_fail(context, "Pipelines.RemoveMetadata", error)
            )
        return pipelines_pb2.PipelinesRemoveMetadataResponse(
            header=_ok(), pipeline_id=_identifier(record.pipeline_id), metadata=record.metadata
        )


# --- Jobs ----------------------------------------------------------------------------------


def _parse_job_id(identifier: common_pb2.Identifier) -> uuid.UUID:
    return parse_identifier(identifier, "job id", ErrorCode.INVALID_JOB_ID)


def _pipeline_identifier(job: Job, record: JobRecord | None) -> common_pb2.Identifier:
    if record is not None:
        return _identifier(record.pipeline_id)
    return common_pb2.Identifier(value=job.pipeline_id)


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
        self.pipelines = frozenset(_parse_pipeline_id(i) for i in raw.pipeline_id)
        self.completed_before = from_timestamp(raw.completed_before)
        self.created_after = from_timestamp(raw.created_after)

    def matches(self, job: Job, record: JobRecord | None) -> bool:
        if self.states and job_state(job) not in self.states:
            return False
        if self.statuses and job_status(job) not in self.statuses:
            return False
        if self.pipelines:
            pipeline_id = _pipeline_identifier(job, record).value
            if not _UUID.fullmatch(pipeline_id) or uuid.UUID(pipeline_id) not in self.pipelines:
                return False
        if self.completed_before is not None and (
            job.ended_at is None or job.ended_at >= self.completed_before
        ):
            return False
        return self.created_after is None or job.created_at > self.created_after


def _priority(record: JobRecord | None) -> jobs_pb2.JobPriority.ValueType:
    if record is None:
        return jobs_pb2.JOB_PRIORITY_NORMAL
    return jobs_pb2.JobPriority.ValueType(record.priority)


def _log_message(job: Job, operator: str, lines: list[str]) -> jobs_pb2.JobsReadLogsResponse:
    return jobs_pb2.JobsReadLogsResponse(
        header=_ok(), job_id=_identifier(job.job_id), operator_name=operator, logs=lines
    )


class JobsService(jobs_pb2_grpc.JobsServicer):
    """``nvidia.clara.platform.Jobs`` over :attr:`PlatformState.jobs` and its job records."""

    def __init__(self, state: PlatformState) -> None:
        self._state = state

    def _job(self, identifier: common_pb2.Identifier) -> tuple[Job, JobRecord | None]:
        job_id = _parse_job_id(identifier)
        job = self._state.get_job(job_id)
        return job, self._state.job_records.get(job_id)

    async def Create(
        self, request: jobs_pb2.JobsCreateRequest, context: Context
    ) -> jobs_pb2.JobsCreateResponse:
        """Create a job of a pipeline, and the job's payload; the job is not started."""
        try:
            pipeline_id = _parse_pipeline_id(request.pipeline_id)
            _check_name(request.name, "job name", ErrorCode.INVALID_JOB_NAME)
            priority = request.priority or jobs_pb2.JOB_PRIORITY_NORMAL
            if priority not in _JOB_PRIORITIES:
                raise ApiError(
                    ErrorCode.INVALID_JOB_PRIORITY,
                    f"priority {request.priority} is not a JobPriority",
                )
            inputs = [
                parse_identifier(i, "input payload id", ErrorCode.INVALID_PAYLOAD_ID)
                for i in request.input_payloads
            ]
            metadata = merge_metadata({}, request.metadata, ErrorCode.INVALID_JOB_METADATA)
            record = self._state.create_job(
                pipeline_id,
                request.name,
                priority=priority,
                input_payload_ids=inputs,
                metadata=metadata,
            )
        except ApiError as error:
            return jobs_pb2.JobsCreateResponse(header=_fail(context, "Jobs.Create", error))
        _log.info(
            "job %s (%s) created from pipeline %s", record.job_id.hex, request.name, pipeline_id.hex
        )
        return jobs_pb2.JobsCreateResponse(
            header=_ok(),
            job_id=_identifier(record.job_id),
            payload_id=_identifier(record.payload_id),
        )

    async def Start(
        self, request: jobs_pb2.JobsStartRequest, context: Context
    ) -> jobs_pb2.JobsStartResponse:
        """Copy the input payloads into the job's input folder and launch its operators."""
        try:
            job_id = _parse_job_id(request.job_id)
            code = ErrorCode.INVALID_JOB_VARIABLES
            if len(request.Variables) > MAX_VARIABLES:
                raise ApiError(code, f"more than {MAX_VARIABLES} variables")
            variables: dict[str, str] = {}
            for pair in request.Variables:
                if not _VARIABLE.fullmatch(pair.name):
                    raise ApiError(
                        code,
                        f"variable name {_show(pair.name)} is not a letter or '_' followed by "
                        "up to 254 letters, digits or '_'",
                    )
                if pair.name in variables:
                    raise ApiError(code, f"variable {pair.name!r} is given twice")
                if _utf8_len(pair.value) > MAX_METADATA_VALUE_BYTES or "\x00" in pair.value:
                    raise ApiError(
                        code, f"the value of variable {pair.name!r} is invalid or too large"
                    )
                variables[pair.name] = pair.value
            job = await self._state.start_job(job_id, variables)
        except ApiError as error:
            return jobs_pb2.JobsStartResponse(header=_fail(context, "Jobs.Start", error))
        record = self._state.job_records.get(job_id)
        _log.info("job %s started", job_id.hex)
        return jobs_pb2.JobsStartResponse(
            header=_ok(),
            priority=_priority(record),
            state=job_state(job),
            status=job_status(job),
        )

    async def Status(
        self, request: jobs_pb2.JobsStatusRequest, context: Context
    ) -> jobs_pb2.JobsStatusResponse:
        """The job's state, status, times, operators and graph."""
        try:
            job, record = self._job(request.job_id)
        except ApiError as error:
            return jobs_pb2.JobsStatusResponse(header=_fail(context, "Jobs.Status", error))
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
            header=_ok(),
            job_id=_identifier(job.job_id),
            pipeline_id=_pipeline_identifier(job, record),
            payload_id=_identifier(record.payload_id if record else None),
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
            messages=_job_messages(job),
            timestamp_created=_timestamp_text(job.created_at),
            timestamp_started=_timestamp_text(job.started_at),
            timestamp_stopped=_timestamp_text(job.ended_at),
        )

    async def List(
        self, request: jobs_pb2.JobsListRequest, context: Context
    ) -> AsyncIterator[jobs_pb2.JobsListResponse]:
        """One message per matching job; a lone header message when none match."""
        try:
            job_filter = _JobFilter(request)
        except ApiError as error:
            yield jobs_pb2.JobsListResponse(header=_fail(context, "Jobs.List", error))
            return
        records = self._state.job_records
        matching = [
            j for j in self._state.jobs.all() if job_filter.matches(j, records.get(j.job_id))
        ]
        if not matching:
            yield jobs_pb2.JobsListResponse(header=_ok())
        for job in matching:
            record = records.get(job.job_id)
            yield jobs_pb2.JobsListResponse(
                header=_ok(),
                job_details=jobs_pb2.JobsListResponse.JobDetails(
                    job_id=_identifier(job.job_id),
                    payload_id=_identifier(record.payload_id if record else None),
                    pipeline_id=_pipeline_identifier(job, record),
                    job_name=job.name,
                    state=job_state(job),
                    status=job_status(job),
                    priority=_priority(record),
                    created=to_timestamp(job.created_at),
                    started=to_timestamp(job.started_at),
                    stopped=to_timestamp(job.ended_at),
                    metadata=record.metadata if record else {},
                    timestamp_created=_timestamp_text(job.created_at),
                    timestamp_started=_timestamp_text(job.started_at),
                    timestamp_stopped=_timestamp_text(job.ended_at),
                ),
            )

    async def Cancel(
        self, request: jobs_pb2.JobsCancelRequest, context: Context
    ) -> jobs_pb2.JobsCancelResponse:
        """Cancel a job that has not ended; an ended job is left as it is (not an error)."""
        try:
            job, _record = self._job(request.job_id)
            _check_text(request.reason, "reason", ErrorCode.INVALID_JOB_REQUEST, MAX_REASON_CHARS)
        except ApiError as error:
            return jobs_pb2.JobsCancelResponse(header=_fail(context, "Jobs.Cancel", error))
        if job.cancel(request.reason or "cancelled by request"):
            _log.info("job %s cancelled: %s", job.job_id.hex, job.message)
        return jobs_pb2.JobsCancelResponse(
            header=_ok(),
            job_id=_identifier(job.job_id),
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
                    f"job {job.job_id.hex} has no operator {_show(request.operator_name)}",
                )
        except ApiError as error:
            _fail(context, "Jobs.ReadLogs", error)
            await context.abort(
                error.status, "\n".join(error.messages), ((STATUS_TRAILER, error.status.name),)
            )
            return
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

    async def AddMetadata(
        self, request: jobs_pb2.JobsAddMetadataRequest, context: Context
    ) -> jobs_pb2.JobsAddMetadataResponse:
        """Merge key/value pairs into the job's metadata."""
        try:
            job, record = self._job(request.job_id)
            current = record.metadata if record is not None else {}
            merged = merge_metadata(current, request.metadata, ErrorCode.INVALID_JOB_METADATA)
            self._state.set_job_metadata(job, merged)
        except ApiError as error:
            return jobs_pb2.JobsAddMetadataResponse(
                header=_fail(context, "Jobs.AddMetadata", error)
            )
        return jobs_pb2.JobsAddMetadataResponse(
            header=_ok(), job_id=_identifier(job.job_id), metadata=merged
        )

    async def RemoveMetadata(
        self, request: jobs_pb2.JobsRemoveMetadataRequest, context: Context
    ) -> jobs_pb2.JobsRemoveMetadataResponse:
        """Delete keys from the job's metadata (absent keys are ignored)."""
        try:
            job, record = self._job(request.job_id)
            current = record.metadata if record is not None else {}
            kept = _without_keys(current, request.keys, ErrorCode.INVALID_JOB_METADATA)
            self._state.set_job_metadata(job, kept)
        except ApiError as error:
            return jobs_pb2.JobsRemoveMetadataResponse(
                header=_fail(context, "Jobs.RemoveMetadata", error)
            )
        return jobs_pb2.JobsRemoveMetadataResponse(
            header=_ok(), job_id=_identifier(job.job_id), metadata=kept
        )


# --- Payloads ------------------------------------------------------------------------------


def _parse_payload_id(identifier: common_pb2.Identifier) -> uuid.UUID:
    return parse_identifier(identifier, "payload id", ErrorCode.INVALID_PAYLOAD_ID)


def _file_details(name: str, size: int, mode: int) -> payloads_pb2.PayloadFileDetails:
    return payloads_pb2.PayloadFileDetails(name=name, size=size, mode=mode)


class PayloadsService(payloads_pb2_grpc.PayloadsServicer):
    """``nvidia.clara.platform.Payloads`` over :attr:`PlatformState.payloads`.

    Args:
        state: The platform's state.
        max_upload_bytes: The largest file an upload may write.
    """

    def __init__(
        self, state: PlatformState, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    ) -> None:
        self._state = state
        self._max_upload_bytes = max_upload_bytes

    def _payload(self, identifier: common_pb2.Identifier) -> PayloadRecord:
        return self._state.payloads.get(_parse_payload_id(identifier))

    async def Create(
        self, request: payloads_pb2.PayloadsCreateRequest, context: Context
    ) -> payloads_pb2.PayloadsCreateResponse:
        """Create an empty reusable payload."""
        try:
            metadata = merge_metadata({}, request.metadata, ErrorCode.INVALID_PAYLOAD_METADATA)
        except ApiError as error:
            return payloads_pb2.PayloadsCreateResponse(
                header=_fail(context, "Payloads.Create", error)
            )
        record = self._state.payloads.create(PayloadType.REUSABLE, metadata=metadata)
        return payloads_pb2.PayloadsCreateResponse(
            header=_ok(),
            payload_id=_identifier(record.payload_id),
            type=payloads_pb2.PAYLOAD_TYPE_REUSABLE,
        )

    async def Details(
        self, request: payloads_pb2.PayloadsDetailsRequest, context: Context
    ) -> AsyncIterator[payloads_pb2.PayloadsDetailsResponse]:
        """One message per file (a lone header message for an empty payload)."""
        try:
            record = self._payload(request.payload_id)
        except ApiError as error:
            yield payloads_pb2.PayloadsDetailsResponse(
                header=_fail(context, "Payloads.Details", error)
            )
            return
        files = self._state.payloads.files(record)
        for index in range(max(len(files), 1)):
            response = payloads_pb2.PayloadsDetailsResponse(
                header=_ok(),
                payload_id=_identifier(record.payload_id),
                type=_PAYLOAD_TYPES[record.type],
                job_id=_identifier(record.job_id),
            )
            if files:
                info = files[index]
                response.file.CopyFrom(_file_details(info.name, info.size, info.mode))
            if index == 0:
                response.metadata.update(record.metadata)
            yield response

    async def Upload(
        self, request_iterator: AsyncIterator[payloads_pb2.PayloadsUploadRequest], context: Context
    ) -> payloads_pb2.PayloadsUploadResponse:
        """Write one file from its chunks; it appears only once complete.

        Every chunk names the payload and the file (the published client repeats them, and
        sends each chunk's own length as ``details.size``, which is therefore not checked).
        """
        upload: Upload | None = None
        try:
            payload_id: uuid.UUID | None = None
            async for request in request_iterator:
                if upload is None:
                    payload_id = _parse_payload_id(request.payload_id)
                    record = self._state.payloads.get(payload_id)
                    self._state.check_payload_writable(record)
                    upload = self._state.payloads.begin_upload(record, request.details.name)
                else:
                    if (
                        request.payload_id.value
                        and _parse_payload_id(request.payload_id) != payload_id
                    ):
                        raise ApiError(
                            ErrorCode.INVALID_UPLOAD,
                            "the chunks of one upload name different payloads",
                        )
                    if request.details.name and request.details.name != upload.name:
                        raise ApiError(
                            ErrorCode.INVALID_UPLOAD,
                            "the chunks of one upload name different files",
                        )
                if upload.size + len(request.data) > self._max_upload_bytes:
                    raise ApiError(
                        ErrorCode.INVALID_UPLOAD,
                        f"data: file {_show(upload.name)} is larger than the upload limit of "
                        f"{self._max_upload_bytes} bytes",
                    )
                upload.write(request.data)
            if upload is None or payload_id is None:
                # The published client sends no message at all for an empty file: accept the
                # stream (nothing names a payload or a file, so nothing is stored) and warn.
                _log.warning(
                    "Payloads.Upload: a stream without any message names no file; nothing "
                    "stored (an empty file is uploaded as one message without data)"
                )
                return payloads_pb2.PayloadsUploadResponse(header=_ok())
            # The payload may have been deleted, or its job started, while the chunks came in.
            if self._state.payloads.get(payload_id) is not upload.record:
                raise ApiError(ErrorCode.PAYLOAD_NOT_FOUND, f"payload {payload_id.hex} not found")
            self._state.check_payload_writable(upload.record)
            info = upload.commit()
        except ApiError as error:
            return payloads_pb2.PayloadsUploadResponse(
                header=_fail(context, "Payloads.Upload", error)
            )
        except OSError as os_error:  # e.g. the disk is full
            _log.exception("Payloads.Upload failed")
            failure = ApiError(ErrorCode.INTERNAL, f"the mock could not store the file: {os_error}")
            return payloads_pb2.PayloadsUploadResponse(
                header=_fail(context, "Payloads.Upload", failure)
            )
        finally:
            if upload is not None:
                upload.abort()
        return payloads_pb2.PayloadsUploadResponse(
            header=_ok(), details=_file_details(info.name, info.size, info.mode)
        )

    async def Download(
        self, request: payloads_pb2.PayloadsDownloadRequest, context: Context
    ) -> AsyncIterator[payloads_pb2.PayloadsDownloadResponse]:
        """Stream a file in chunks of :data:`CHUNK_SIZE`; the first carries header and details."""
        try:
            record = self._payload(request.payload_id)
            info, handle = self._state.payloads.open_file(record, request.name)
        except ApiError as error:
            yield payloads_pb2.PayloadsDownloadResponse(
                header=_fail(context, "Payloads.Download", error)
            )
            return
        with handle:
            first = True
            while True:
                data = handle.read(CHUNK_SIZE)
                if not data and not first:
                    return
                response = payloads_pb2.PayloadsDownloadResponse(data=data)
                if first:
                    response.header.CopyFrom(_ok())
                    response.details.CopyFrom(_file_details(info.name, info.size, info.mode))
                    first = False
                yield response
                if not data:
                    return

    async def Remove(
        self, request: payloads_pb2.PayloadsRemoveRequest, context: Context
    ) -> payloads_pb2.PayloadsRemoveResponse:
        """Delete one file (a job's payload only before the job starts)."""
        try:
            record = self._payload(request.payload_id)
            self._state.check_payload_writable(record)
            self._state.payloads.remove_file(record, request.name)
        except ApiError as error:
            return payloads_pb2.PayloadsRemoveResponse(
                header=_fail(context, "Payloads.Remove", error)
            )
        return payloads_pb2.PayloadsRemoveResponse(header=_ok())

    async def Delete(
        self, request: payloads_pb2.PayloadsDeleteRequest, context: Context
    ) -> payloads_pb2.PayloadsDeleteResponse:
        """Delete a payload and its files (a job's payload only once the job has ended)."""
        try:
            record = self._payload(request.payload_id)
            self._state.check_payload_deletable(record)
            self._state.payloads.delete(record.payload_id)
        except ApiError as error:
            return payloads_pb2.PayloadsDeleteResponse(
                header=_fail(context, "Payloads.Delete", error)
            )
        return payloads_pb2.PayloadsDeleteResponse(header=_ok())

    async def AddMetadata(
        self, request: payloads_pb2.PayloadsAddMetadataRequest, context: Context
    ) -> payloads_pb2.PayloadsAddMetadataResponse:
        """Merge key/value pairs into the payload's metadata."""
        try:
            record = self._payload(request.payload_id)
            self._state.payloads.set_metadata(
                record,
                merge_metadata(
                    record.metadata, request.metadata, ErrorCode.INVALID_PAYLOAD_METADATA
                ),
            )
        except ApiError as error:
            return payloads_pb2.PayloadsAddMetadataResponse(
                header=_fail(context, "Payloads.AddMetadata", error)
            )
        return payloads_pb2.PayloadsAddMetadataResponse(
            header=_ok(), payload_id=_identifier(record.payload_id), metadata=record.metadata
        )

    async def RemoveMetadata(
        self, request: payloads_pb2.PayloadsRemoveMetadataRequest, context: Context
    ) -> payloads_pb2.PayloadsRemoveMetadataResponse:
        """Delete keys from the payload's metadata (absent keys are ignored)."""
        try:
            record = self._payload(request.payload_id)
            self._state.payloads.set_metadata(
                record,
                _without_keys(record.metadata, request.keys, ErrorCode.INVALID_PAYLOAD_METADATA),
            )
        except ApiError as error:
            return payloads_pb2.PayloadsRemoveMetadataResponse(
                header=_fail(context, "Payloads.RemoveMetadata", error)
            )
        return payloads_pb2.PayloadsRemoveMetadataResponse(
            header=_ok(), payload_id=_identifier(record.payload_id), metadata=record.metadata
        )


# --- Models and registration ---------------------------------------------------------------


def _unimplemented_service(service: ServiceDescriptor) -> grpc.GenericRpcHandler[Any, Any]:
    """A handler answering every RPC of ``service`` with ``UNIMPLEMENTED``."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        details = (
            f"the mock platform does not implement {service.name}.{method.name} "
            "(the Models service is not served)"
        )

        async def refuse(_request: object, context: Context, details: str = details) -> None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, details)

        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(refuse)
        elif method.client_streaming:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(refuse)
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(refuse)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(refuse)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def add_platform_api_to_server(
    server: grpc.aio.Server,
    state: PlatformState,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
) -> list[str]:
    """Serve the Clara, Pipelines, Jobs, Payloads and (unimplemented) Models services.

    ``max_upload_bytes`` bounds the size of one uploaded file.

    Returns:
        The services' full names, for reflection and health checking.
    """
    clara_pb2_grpc.add_ClaraServicer_to_server(ClaraService(), server)
    pipelines_pb2_grpc.add_PipelinesServicer_to_server(PipelinesService(state), server)
    jobs_pb2_grpc.add_JobsServicer_to_server(JobsService(state), server)
    payloads_pb2_grpc.add_PayloadsServicer_to_server(
        PayloadsService(state, max_upload_bytes), server
    )
    models = models_pb2.DESCRIPTOR.services_by_name["Models"]
    server.add_generic_rpc_handlers((_unimplemented_service(models),))
    return [
        clara_pb2.DESCRIPTOR.services_by_name["Clara"].full_name,
        pipelines_pb2.DESCRIPTOR.services_by_name["Pipelines"].full_name,
        jobs_pb2.DESCRIPTOR.services_by_name["Jobs"].full_name,
        payloads_pb2.DESCRIPTOR.services_by_name["Payloads"].full_name,
        models.full_name,
    ]
