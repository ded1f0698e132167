"""Outcomes from a stage's outbox: what a driver wrote but could not report over gRPC.

The mock gives every operator an outbox folder (``NVIDIA_CLARA_OUTBOX``, the job's
``outbox/<operator>/``). Its driver writes the outcome record there, durably, unless its first
``CompleteStage`` attempt is acknowledged at once, and removes it once a report was
acknowledged (:mod:`clara._outbox`).
A record still there when the process has ended is an outcome the platform may never have
received: :func:`apply_outbox` applies it through the same rule as a report over gRPC
(:meth:`server_mock._jobs.Job.complete_stage`: once per stage, idempotent by report id), so it
is applied at most once whichever way it arrived first.

The supervisor calls it when it sees an operator's process end with its stage not yet ended
(:mod:`server_mock._runner`); a restarted platform calls it for each stage whose process ended
while it was down. A record that cannot be used (unreadable, not JSON, another schema, another
stage's, a bad field) is logged and ignored: it never stops the caller, and the reason is
returned so that the stage's failure message can name it. The record is left in place: applying
it again changes nothing.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from clara.contract import OUTBOX_RECORD_NAME, OUTBOX_SCHEMA_VERSION
from server_mock._jobs import Job, OutcomeRefusedError, StageOutcome
from server_mock._stage_service import MAX_MESSAGE_CHARS, REPORT_ID_PATTERN

__all__ = [
    "MAX_RECORD_BYTES",
    "OutboxError",
    "OutboxRecord",
    "OutboxResult",
    "apply_outbox",
    "read_record",
]

_log = logging.getLogger("server_mock.outbox")

MAX_RECORD_BYTES = 64 * 1024  # a record is a few hundred bytes; a bigger file is not one


class OutboxError(ValueError):
    """An outbox record cannot be used; the text names the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """An outcome record read from a stage's outbox (schema: docs/contract.md)."""

    job_id: uuid.UUID
    stage_name: str
    report_id: str
    outcome: StageOutcome
    message: str
    written_at: float


@dataclass(frozen=True, slots=True)
class OutboxResult:
    """What :func:`apply_outbox` did.

    Attributes:
        applied: True when the record ended the stage (now, or earlier under the same report
            id, e.g. over gRPC); False when there was no usable record or the stage had ended
            otherwise.
        problem: Why a record present in the outbox was not applied; ``""`` otherwise.
    """

    applied: bool
    problem: str = ""

    @property
    def note(self) -> str:
        """``problem`` as a clause to append to a stage's failure message (``""`` if none)."""
        return f"; {self.problem}" if self.problem else ""


def read_record(folder: Path) -> OutboxRecord | None:
    """Read the outcome record in ``folder``; ``None`` when there is none.

    Raises:
        OutboxError: The record is unreadable, too large, not JSON, of another schema, or a
            field is missing or malformed; the message names the file and the field.
    """
    path = folder / OUTBOX_RECORD_NAME
    try:
        with path.open("rb") as file:
            data = file.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise OutboxError(f"outbox record {path} cannot be read: {error}") from None
    if len(data) > MAX_RECORD_BYTES:
        raise OutboxError(f"outbox record {path} is larger than {MAX_RECORD_BYTES} bytes")
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OutboxError(f"outbox record {path} is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise OutboxError(f"outbox record {path}: expected a JSON object")
    return _record_from(path, document)


def _record_from(path: Path, document: dict[str, object]) -> OutboxRecord:
    def field(name: str, kind: type | tuple[type, ...]) -> object:
        value = document.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise OutboxError(f"outbox record {path}: {name}: {value!r} is missing or malformed")
        return value

    schema = document.get("schema")
    if schema != OUTBOX_SCHEMA_VERSION or isinstance(schema, bool):
        raise OutboxError(
            f"outbox record {path}: schema: {schema!r}; this platform reads schema "
            f"{OUTBOX_SCHEMA_VERSION}"
        )
    report_id = str(field("report_id", str))
    if not REPORT_ID_PATTERN.fullmatch(report_id):
        raise OutboxError(
            f"outbox record {path}: report_id: {report_id[:64]!r} is not 1-128 printable "
            "ASCII characters"
        )
    raw_outcome = field("outcome", str)
    try:
        outcome = StageOutcome(raw_outcome)
    except ValueError:
        raise OutboxError(
            f"outbox record {path}: outcome: {raw_outcome!r} is not one of "
            f"{[o.value for o in StageOutcome]}"
        ) from None
    raw_job_id = str(field("job_id", str))
    try:
        job_id = uuid.UUID(raw_job_id)
    except ValueError:
        raise OutboxError(
            f"outbox record {path}: job_id: {raw_job_id[:64]!r} is not a UUID"
        ) from None
    written_at = field("written_at", (int, float))
    assert isinstance(written_at, int | float)  # checked by field()
    return OutboxRecord(
        job_id=job_id,
        stage_name=str(field("stage_name", str)),
        report_id=report_id,
        outcome=outcome,
        message=str(field("message", str))[:MAX_MESSAGE_CHARS],
        written_at=float(written_at),
    )


def apply_outbox(job: Job, stage_name: str, folder: Path) -> OutboxResult:
    """Apply the outcome record in ``folder`` to ``stage_name`` of ``job``, if there is one.

    Idempotent: the record goes through :meth:`Job.complete_stage` with its report id, so a
    record already applied (over gRPC or by an earlier call) changes nothing, and a stage
    that ended otherwise keeps its state. Never raises for a bad record: it is logged, and
    the returned :attr:`OutboxResult.problem` says why it was not used.

    Args:
        job: The stage's job.
        stage_name: The stage whose operator process ended.
        folder: The stage's outbox folder.

    Raises:
        server_mock._jobs.UnknownStageError: The job has no such stage (a caller's error).
    """
    ended_before = job.stage(stage_name).state.terminal  # unknown stage: the caller's error
    try:
        record = read_record(folder)
        if record is None:
            return OutboxResult(applied=False)
        if record.job_id != job.job_id or record.stage_name != stage_name:
            raise OutboxError(
                f"outbox record {folder / OUTBOX_RECORD_NAME} is for stage "
                f"{record.stage_name!r} of job {record.job_id}, not {stage_name!r} of job "
                f"{job.job_id}"
            )
        state, applied = job.complete_stage(
            stage_name, record.report_id, record.outcome, record.message
        )
    except (OutboxError, OutcomeRefusedError) as error:
        problem = f"its outbox record was not used: {error}"
        _log.warning("job %s stage %s: %s", job.job_id, stage_name, problem)
        return OutboxResult(applied=False, problem=problem)
    if not applied:
        verdict = "not applied: the stage had ended otherwise"
    elif ended_before:
        verdict = "applied before, under the same report id: nothing changed"
    else:
        verdict = "applied: the driver could not report it"
    _log.info(
        "job %s stage %s: outcome %s in its outbox (report %s, written at %.3f); state %s, %s",
        job.job_id,
        stage_name,
        record.outcome.value,
        record.report_id,
        record.written_at,
        state.value,
        verdict,
    )
    return OutboxResult(applied=applied)
