"""Which stages the launcher launched, and as which process: what a restart adopts.

Launching is recorded in two steps, each saved (with ``--state``) before the next step:
``launching`` before the operator's process is spawned, then ``launched`` with the process's
identity (:class:`ProcessIdentity`) right after. A restarted platform reads the records
(:meth:`server_mock._runner.LocalProcessLauncher.resume`): no record means never launched
(launched now); ``launching`` without an identity means the platform died while spawning it;
``launched`` names the process to adopt, if it is still the same process.

A pid alone does not name a process: the kernel reuses pids. Its start time
(``/proc/<pid>/stat`` field 22, clock ticks since boot) and the boot's id
(``/proc/sys/kernel/random/boot_id``) together with it do.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from server_mock._operator_process import stat_fields

__all__ = ["LaunchRecord", "LaunchStatus", "LaunchStore", "ProcessIdentity", "identity_of"]

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_START_TIME_FIELD = 19  # field 22 of /proc/<pid>/stat, counted after the ")" of the name
_ENDED_STATES = (b"Z", b"X")  # zombie, dead: field 3, the first after the name


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """One process, for as long as the machine runs: a pid that is reused gets another.

    Attributes:
        pid: The process id.
        start_ticks: When it started, in clock ticks since boot.
        boot_id: The boot it started in.
    """

    pid: int
    start_ticks: int
    boot_id: str


def identity_of(pid: int, *, running: bool = False) -> ProcessIdentity | None:
    """The identity of the process ``pid`` now, or ``None`` when there is none.

    Args:
        pid: The process id.
        running: Count a zombie (ended, not yet reaped by its parent) as no process.
    """
    fields = stat_fields(pid)
    if not fields or (running and fields[0] in _ENDED_STATES):
        return None
    try:
        boot_id = _BOOT_ID.read_text(encoding="ascii").strip()
        return ProcessIdentity(pid, int(fields[_START_TIME_FIELD]), boot_id)
    except (OSError, IndexError, ValueError):
        return None


class LaunchStatus(enum.Enum):
    """How far the launch of a stage's operator got."""

    LAUNCHING = "launching"  # about to be spawned (or the platform died while spawning it)
    LAUNCHED = "launched"  # spawned; its identity is known (or, from schema 2, unknown)


@dataclass(frozen=True, slots=True)
class LaunchRecord:
    """The launch of one stage's operator.

    Attributes:
        job_id: The job.
        stage: The stage.
        status: How far the launch got.
        runner: ``"sandbox"`` or ``"process"``: how to stop what it started.
        identity: The launched process; ``None`` before the spawn, or when a state file
            from before these records says the stage was launched without saying as what.
    """

    job_id: uuid.UUID
    stage: str
    status: LaunchStatus
    runner: str
    identity: ProcessIdentity | None = None


class LaunchStore:
    """The launch records of every job (on the loop thread).

    ``on_saved``, when set (the state file's hook), is called with each new or changed
    record before the method that made it returns; what it raises (the state file refused the
    write) propagates and the record is not kept.
    """

    def __init__(self) -> None:
        self._records: dict[tuple[uuid.UUID, str], LaunchRecord] = {}
        self.on_saved: Callable[[LaunchRecord], None] | None = None

    def get(self, job_id: uuid.UUID, stage: str) -> LaunchRecord | None:
        """The record of ``stage`` of ``job_id``; ``None`` if it was never launched."""
        return self._records.get((job_id, stage))

    def launching(self, job_id: uuid.UUID, stage: str, runner: str) -> LaunchRecord:
        """Record that ``stage``'s operator is about to be spawned."""
        return self._save(LaunchRecord(job_id, stage, LaunchStatus.LAUNCHING, runner))

    def launched(
        self, job_id: uuid.UUID, stage: str, runner: str, identity: ProcessIdentity | None
    ) -> LaunchRecord:
        """Record the process ``stage``'s operator runs as."""
        return self._save(LaunchRecord(job_id, stage, LaunchStatus.LAUNCHED, runner, identity))

    def restore(self, record: LaunchRecord) -> None:
        """Put back a record loaded from the state file (not saved again)."""
        self._records[(record.job_id, record.stage)] = record

    def all(self) -> list[LaunchRecord]:
        """Every record."""
        return list(self._records.values())

    def _save(self, record: LaunchRecord) -> LaunchRecord:
        if self.on_saved is not None:
            self.on_saved(record)
        self._records[(record.job_id, record.stage)] = record
        return record
