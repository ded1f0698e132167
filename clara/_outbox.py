"""The stage's outbox: its outcome, written durably before it is reported over gRPC.

When the platform gives a stage an outbox folder (``NVIDIA_CLARA_OUTBOX``), the driver writes
the outcome record there before the first ``CompleteStage`` attempt, and removes it once the
platform acknowledged the report. A record still there when the operator process ends is an
outcome the platform never received over gRPC: the platform applies it itself, by its report
id, so it is applied at most once whichever way it arrives (docs/contract.md, "The outbox").

The write is atomic and durable: the record goes to a temporary file in the same folder, which
is flushed and fsynced, renamed over the record (an atomic replace on POSIX), and then the
folder is fsynced so that the rename itself survives a power cut. A crash at any moment leaves
the previous record or the new one, never a torn one; a crash before the rename may leave a
temporary file (``.outcome.json.*.tmp``), which readers ignore.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from pathlib import Path

from clara._result import StageOutcome
from clara.contract import OUTBOX_RECORD_NAME, OUTBOX_SCHEMA_VERSION

__all__ = ["outbox_record", "remove_record", "write_record"]

TEMPORARY_SUFFIX = ".tmp"


def outbox_record(
    *,
    job_id: uuid.UUID,
    stage_name: str,
    report_id: str,
    outcome: StageOutcome,
    message: str,
) -> dict[str, object]:
    """The outcome record, as the JSON object the outbox holds (schema: docs/contract.md)."""
    return {
        "schema": OUTBOX_SCHEMA_VERSION,
        "job_id": str(job_id),
        "stage_name": stage_name,
        "report_id": report_id,
        "outcome": outcome.value,
        "message": message,
        "written_at": time.time(),
    }


def write_record(folder: Path, record: dict[str, object]) -> Path:
    """Write ``record`` as the folder's outcome record, atomically and durably; return its path.

    The folder is created if it is missing.

    Raises:
        OSError: The folder cannot be created or written; the previous record, if any, is
            left as it was, and no temporary file is left behind.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / OUTBOX_RECORD_NAME
    temporary = folder / f".{OUTBOX_RECORD_NAME}.{os.getpid()}.{uuid.uuid4().hex}{TEMPORARY_SUFFIX}"
    data = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            written = 0
            while written < len(data):
                written += os.write(descriptor, data[written:])
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    _fsync_folder(folder)
    return target


def remove_record(folder: Path) -> None:
    """Remove the folder's outcome record: the platform has acknowledged it over gRPC.

    Not fsynced: should the removal be lost in a crash, the platform finds a record it already
    applied, and applying it again changes nothing (same report id).
    """
    with contextlib.suppress(FileNotFoundError):
        (folder / OUTBOX_RECORD_NAME).unlink()


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
