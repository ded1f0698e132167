"""The stage's outbox: its outcome, written durably unless the platform acknowledges it at once.

When the platform gives a stage an outbox folder (``NVIDIA_CLARA_OUTBOX``), the driver writes
the outcome record there while it reports (see below when), and removes it once the platform
acknowledged the report. A record still there when the operator process ends is an
outcome the platform never received over gRPC: the platform applies it itself, by its report
id, so it is applied at most once whichever way it arrives (docs/contract.md, "The outbox").

The write is deferred (:class:`PendingRecord`, on a reused daemon thread): it starts when the
first attempt has not been acknowledged within :data:`WRITE_DELAY`, when an attempt fails,
or when the report is given up, whichever comes first; a report acknowledged sooner writes
nothing. The write and its two fsyncs cost more than a round trip on a local disk, and even
overlapped with the attempt they slowed a no-op life-cycle by about 1 ms on 2 busy cores
(docs/performance.md). The record is durable within about ``WRITE_DELAY`` plus a few
milliseconds of the first attempt, long before a report budget (seconds) runs out, and
before the life-cycle ends when the report was not acknowledged (:data:`WRITE_WAIT` at most:
a disk that hangs must not hang the operator).

The write is atomic and durable: the record goes to a temporary file in the same folder, which
is flushed and fsynced, renamed over the record (an atomic replace on POSIX), and then the
folder is fsynced so that the rename itself survives a power cut. A crash at any moment leaves
the previous record or the new one, never a torn one; a crash before the rename may leave a
temporary file (``.outcome.json.*.tmp``), which readers ignore.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from clara._result import StageOutcome
from clara._threads import run_in_thread
from clara.contract import OUTBOX_RECORD_NAME, OUTBOX_SCHEMA_VERSION

__all__ = [
    "WRITE_DELAY",
    "WRITE_WAIT",
    "PendingRecord",
    "outbox_record",
    "remove_record",
    "write_record",
]

_log = logging.getLogger("clara")

TEMPORARY_SUFFIX = ".tmp"
WRITE_DELAY = 0.1  # seconds: a report acknowledged within this needs no record
WRITE_WAIT = 2.0  # seconds: how long an unacknowledged report waits for its record


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


class PendingRecord:
    """An outcome record to be written to an outbox, on a thread of its own, unless not needed.

    The write starts :data:`WRITE_DELAY` after construction, or at once on :meth:`write_now`
    or :meth:`wait`. Call :meth:`acknowledged` once the platform answered the report: a
    record not yet written is not written, and one already written is removed.

    Args:
        folder: The outbox folder.
        record: The record (:func:`outbox_record`).
        log_fields: The fields every log record carries.
    """

    def __init__(
        self, folder: Path, record: dict[str, object], log_fields: Mapping[str, str]
    ) -> None:
        self.folder = folder
        self._record = record
        self._log_fields = log_fields
        self._lock = threading.Lock()
        self._due = threading.Event()  # set: write now (or, once acknowledged, end)
        self._finished = threading.Event()
        self._written = False
        self._acknowledged = False
        self.error: OSError | None = None
        # Not holding interpreter exit: the life-cycle waits (bounded) for a record it needs,
        # and one that is not needed may be cut short (the platform ignores temporary files).
        run_in_thread(self._run, "clara-outbox")

    def _run(self) -> None:
        self._due.wait(WRITE_DELAY)  # a bounded wait: the delay, or until told
        with self._lock:
            needed = not self._acknowledged
        if needed:
            self._write()
        self._finished.set()

    def _write(self) -> None:
        try:
            write_record(self.folder, self._record)
        except OSError as error:
            self.error = error
            _log.warning(
                "could not write the outcome to the outbox %s (%s): it is reported over gRPC only",
                self.folder,
                error,
                extra=self._log_fields,
            )
        with self._lock:
            self._written = self.error is None
            remove = self._written and self._acknowledged
        if remove:
            self._remove()

    def write_now(self) -> None:
        """Start the write without waiting for the delay (an attempt failed)."""
        self._due.set()

    def acknowledged(self) -> None:
        """The platform answered the report: the record is not needed (removed if written)."""
        with self._lock:
            self._acknowledged = True
            remove = self._written
        self._due.set()  # the writer's thread ends now if it has not started writing
        if remove:
            self._remove()

    def wait(self, timeout: float = WRITE_WAIT) -> bool:
        """Write now and wait up to ``timeout`` seconds; return True if the record is durable."""
        self._due.set()
        return self._finished.wait(timeout) and self.error is None

    def _remove(self) -> None:
        try:
            remove_record(self.folder)
        except OSError as error:  # harmless: the platform would apply it again, to no effect
            _log.warning(
                "could not remove the acknowledged outcome from the outbox %s: %s",
                self.folder,
                error,
                extra=self._log_fields,
            )
