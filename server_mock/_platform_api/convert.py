"""Conversions between the legacy Platform API's messages and the mock's Python values.

Identifiers are sent as 32 lowercase hex digits (like the real platform) and accepted with or
without hyphens. Timestamps count seconds since 0001-01-01T00:00:00Z (the published client
subtracts 62135596800 to get Unix time). Job states map onto the legacy JobState, JobStatus
and JobOperatorStatus enums here, and nowhere else.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Final

from server_mock._errors import ApiError, ErrorCode
from server_mock._jobs import CancelReason, Job, JobState, Stage, StageState
from server_mock._payloads import PayloadType
from server_mock._proto.nvidia.clara.platform import common_pb2, jobs_pb2, payloads_pb2

__all__ = [
    "JOB_PRIORITIES",
    "SECONDS_TO_UNIX_EPOCH",
    "from_timestamp",
    "identifier",
    "is_identifier",
    "job_messages",
    "job_state",
    "job_status",
    "operator_status",
    "parse_identifier",
    "payload_type",
    "priority",
    "show",
    "timestamp_text",
    "to_timestamp",
]

SECONDS_TO_UNIX_EPOCH: Final = 62_135_596_800
"""Seconds from 0001-01-01T00:00:00Z to 1970-01-01T00:00:00Z."""

JOB_PRIORITIES: Final = frozenset(
    {
        jobs_pb2.JOB_PRIORITY_LOWER,
        jobs_pb2.JOB_PRIORITY_NORMAL,
        jobs_pb2.JOB_PRIORITY_HIGHER,
        jobs_pb2.JOB_PRIORITY_IMMEDIATE,
    }
)
"""The ``JobPriority`` values a job may have (not UNKNOWN)."""

_UUID = re.compile(
    r"[0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_PAYLOAD_TYPES = {
    PayloadType.PIPELINE: payloads_pb2.PAYLOAD_TYPE_PIPELINE,
    PayloadType.REUSABLE: payloads_pb2.PAYLOAD_TYPE_REUSABLE,
}


def show(value: str) -> str:
    """``repr`` of a value for an error message, shortened to about 64 characters."""
    return repr(value if len(value) <= 64 else value[:61] + "...")


# -- identifiers ---------------------------------------------------------------------------


def identifier(value: uuid.UUID | None) -> common_pb2.Identifier:
    """The Identifier of ``value`` (32 hex digits); an empty one for ``None``."""
    return common_pb2.Identifier(value=value.hex if value is not None else "")


def is_identifier(value: str) -> bool:
    """Whether ``value`` is a UUID in one of the accepted forms."""
    return _UUID.fullmatch(value) is not None


def parse_identifier(value: common_pb2.Identifier, what: str, code: ErrorCode) -> uuid.UUID:
    """Return the UUID of a required identifier (32 hex digits, with or without hyphens).

    Raises:
        ApiError: ``code``, when the identifier is missing or malformed.
    """
    text = value.value
    if not text:
        raise ApiError(code, f"{what} is required")
    if not is_identifier(text):
        raise ApiError(
            code, f"{what} {show(text)} is not an id (32 hex digits, with or without hyphens)"
        )
    return uuid.UUID(text)


# -- timestamps ----------------------------------------------------------------------------


def to_timestamp(unix: float | None) -> common_pb2.Timestamp:
    """A legacy Timestamp (seconds since 0001-01-01 UTC); unset (zero) for ``None``."""
    if unix is None:
        return common_pb2.Timestamp()
    return common_pb2.Timestamp(value=int(unix) + SECONDS_TO_UNIX_EPOCH)


def from_timestamp(timestamp: common_pb2.Timestamp) -> float | None:
    """Unix time of a legacy Timestamp; ``None`` when unset (zero)."""
    return None if timestamp.value == 0 else float(timestamp.value - SECONDS_TO_UNIX_EPOCH)


def timestamp_text(unix: float | None) -> str:
    """The deprecated text form of a timestamp (``2020-01-31 12:00:00Z``)."""
    return "" if unix is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(unix))


# -- jobs and payloads ---------------------------------------------------------------------


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


def job_messages(job: Job) -> list[str]:
    """The messages of ``Jobs.Status``.

    The job's own message, then (while the job still runs) one per stage that ended badly.
    """
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


def priority(value: int | None) -> jobs_pb2.JobPriority.ValueType:
    """The legacy JobPriority of a job record's priority; normal for jobs without a record."""
    if value is None:
        return jobs_pb2.JOB_PRIORITY_NORMAL
    return jobs_pb2.JobPriority.ValueType(value)


def payload_type(value: PayloadType) -> payloads_pb2.PayloadType.ValueType:
    """The legacy PayloadType of a payload."""
    return _PAYLOAD_TYPES[value]
