"""What the driver needs from the platform (:class:`StageLink`), and a standalone stand-in.

The gRPC implementation lives in :mod:`clara._grpc_link`, imported only when a driver
connects, so ``import clara`` does not load the protobuf runtime.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from clara._config import DriverConfig
from clara._context import StageContext
from clara._result import StageOutcome

__all__ = ["EventKind", "Signal", "SignalKind", "StageLink", "StandaloneStageLink"]

_log = logging.getLogger("clara")


class SignalKind(enum.Enum):
    """What the platform says about a waiting stage."""

    WAITING = "waiting"
    INPUTS_READY = "inputs_ready"
    JOB_CANCELLED = "job_cancelled"
    UPSTREAM_FAILED = "upstream_failed"
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class Signal:
    """One message of the stage's signal stream; the first may carry the stage's context."""

    kind: SignalKind
    message: str
    context: StageContext | None = None


class EventKind(enum.Enum):
    """Life-cycle events reported to the platform for progress display."""

    CONTEXT_RECEIVED = "context_received"
    PREPARE_STARTED = "prepare_started"
    PREPARE_FINISHED = "prepare_finished"
    INPUTS_READY = "inputs_ready"
    EXECUTE_STARTED = "execute_started"
    EXECUTE_FINISHED = "execute_finished"
    CLEANUP_STARTED = "cleanup_started"
    CLEANUP_FINISHED = "cleanup_finished"
    ERROR = "error"


class StageLink(Protocol):
    """What the driver needs from the platform. Methods make one attempt each."""

    def watch(self, timeout: float, *, with_context: bool) -> Iterator[Signal]:
        """Open the signal stream (at once, or at the first ``next``) and yield its signals.

        With ``with_context``, the first signal carries the stage's context (or the stream
        fails with :class:`~clara.InvalidArgumentError`).
        """

    def stop_watching(self) -> None:
        """End an open ``watch`` from another thread; the iterator then stops quietly."""

    def complete(
        self, report_id: str, outcome: StageOutcome, message: str, timeout: float
    ) -> tuple[str, bool]:
        """Report the outcome; return the stage's state name and whether this report applied."""

    def report_event(self, kind: EventKind, message: str) -> None:
        """Queue a progress event; it goes out at the next ``flush_events`` or ``complete``."""

    def flush_events(self) -> None:
        """Start sending the queued events without waiting for them."""

    def close(self) -> None:
        """Release the link's resources (queued events get a short, bounded chance to go)."""


class StandaloneStageLink:
    """Stands in for the platform when ``NVIDIA_CLARA_NOSYNCLOCK`` is set.

    The context comes from the environment (``NVIDIA_CLARA_JOBNAME``, ``NVIDIA_CLARA_TIMEOUT``,
    ``NVIDIA_CLARA_INPUTPATHS``/``NVIDIA_CLARA_OUTPUTPATHS`` or else ``NVIDIA_CLARA_INPUT``/
    ``NVIDIA_CLARA_OUTPUT``), the inputs are ready at once, and nothing is reported anywhere.
    """

    def __init__(self, config: DriverConfig) -> None:
        self._config = config
        self._stopped = threading.Event()

    def watch(self, timeout: float, *, with_context: bool) -> Iterator[Signal]:
        """Yield INPUTS_READY, then hold the stream open until stopped or ``timeout``.

        The context, when asked for, comes from the standalone settings.
        """
        config = self._config
        assert config.job_name is not None and config.stage_timeout is not None  # standalone
        context = StageContext(
            job_id=config.job_id,
            job_name=config.job_name,
            pipeline_id="",
            stage_name=config.stage_name,
            stage_timeout=config.stage_timeout,
            inputs=config.standalone_inputs,
            outputs=config.standalone_outputs,
        )
        yield Signal(
            SignalKind.INPUTS_READY,
            "standalone: inputs are ready at once",
            context if with_context else None,
        )
        self._stopped.wait(timeout)

    def stop_watching(self) -> None:
        """End the held-open stream."""
        self._stopped.set()

    def complete(
        self, report_id: str, outcome: StageOutcome, message: str, timeout: float
    ) -> tuple[str, bool]:
        """Nothing to report to: say so."""
        return "standalone", False

    def report_event(self, kind: EventKind, message: str) -> None:
        """Nothing to report to."""

    def flush_events(self) -> None:
        """Nothing to send."""

    def close(self) -> None:
        """Release the held-open stream."""
        self._stopped.set()
