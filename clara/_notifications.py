"""Notifications: what the driver tells the operator's notification callback."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = ["Notification", "NotificationKind"]


class NotificationKind(enum.Enum):
    """What happened. Values are stable strings, usable as log fields."""

    STARTED = "started"
    """``start()`` was called and the life-cycle began."""
    CONNECT_RETRY = "connect_retry"
    """A call to the platform failed transiently and will be retried."""
    CONNECTED = "connected"
    """The platform answered the first call."""
    CONTEXT_RECEIVED = "context_received"
    """The stage context (job id, name, timeout, entries) is known."""
    PREPARE_STARTED = "prepare_started"
    """The prepare callback was called."""
    PREPARE_FINISHED = "prepare_finished"
    """The prepare callback returned."""
    WAITING_FOR_INPUTS = "waiting_for_inputs"
    """The driver is waiting for every upstream stage to complete."""
    STREAM_RECONNECTING = "stream_reconnecting"
    """The signal stream broke and is being re-opened."""
    INPUTS_READY = "inputs_ready"
    """Every upstream stage succeeded: execute may run."""
    CANCELLED = "cancelled"
    """The platform cancelled the stage (job cancelled, or an upstream stage failed)."""
    EXECUTE_STARTED = "execute_started"
    """The execute callback was called."""
    EXECUTE_FINISHED = "execute_finished"
    """The execute callback returned."""
    TIMED_OUT = "timed_out"
    """Execute ran past the stage timeout."""
    CLEANUP_STARTED = "cleanup_started"
    """The cleanup callback was called."""
    CLEANUP_FINISHED = "cleanup_finished"
    """The cleanup callback returned."""
    OUTCOME_REPORTED = "outcome_reported"
    """The platform acknowledged the stage's outcome."""
    ERROR = "error"
    """Something failed; ``Notification.error`` holds the exception where there is one."""
    COMPLETED = "completed"
    """The life-cycle ended; ``wait_for_completion()`` returns."""


@dataclass(frozen=True, slots=True)
class Notification:
    """One event of the driver's life-cycle.

    Attributes:
        kind: What happened.
        message: A human-readable description.
        error: The exception behind an error, where there is one.
        time: When it happened (UTC).
    """

    kind: NotificationKind
    message: str
    error: BaseException | None = None
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
