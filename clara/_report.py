"""The life-cycle's last step: report the stage's outcome, once, however the network behaves.

One report id per life-cycle, sent on every ``CompleteStage`` attempt, so that the platform
applies it at most once. Each attempt has its own deadline, ``min(rpc timeout, time left)``;
an attempt that fails UNAVAILABLE or past that deadline is retried on a fresh connection (the
link retires the channel, :mod:`clara._grpc_link`), until the report budget is spent.

When the platform gave the stage an outbox (``NVIDIA_CLARA_OUTBOX``), the outcome is written
there durably (:mod:`clara._outbox`) unless the first attempt is acknowledged within
``clara._outbox.WRITE_DELAY`` (100 ms): as soon as an attempt fails, or the first one takes
longer. It is removed once the platform acknowledged the report, and otherwise left for the
platform to apply when the process ends (the life-cycle does not end before it is durable).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING

from clara._config import DriverConfig
from clara._exceptions import PlatformError
from clara._notifications import NotificationKind
from clara._notifier import Notifier
from clara._result import StageResult
from clara._retry import IDEMPOTENT_RETRYABLE, call_with_retry
from clara._stage_link import StageLink

if TYPE_CHECKING:
    from clara._outbox import PendingRecord

__all__ = ["report_outcome"]

_log = logging.getLogger("clara")


def report_outcome(  # noqa: PLR0917 - private; every collaborator is needed
    link: StageLink,
    result: StageResult,
    config: DriverConfig,
    interrupted: threading.Event,
    notifier: Notifier,
    log_fields: Mapping[str, str],
) -> StageResult:
    """Report ``result`` until acknowledged or the report budget is spent; return the result.

    Args:
        link: The stage link to report over.
        result: The stage's outcome.
        config: The driver's settings (timeouts, retry policy, outbox).
        interrupted: Set by a local cancellation (SIGTERM): the budget is the grace period.
        notifier: Where retries, the acknowledgement and a failure are told.
        log_fields: The fields every log record carries.

    Returns:
        ``result``, marked ``reported`` once the platform acknowledged it; when it never did,
        with the last platform error.
    """
    report_id = uuid.uuid4().hex
    timeouts = config.timeouts
    # A process asked to stop (SIGTERM) still reports, but only within the grace period.
    budget = timeouts.grace if interrupted.is_set() else timeouts.report
    deadline = time.monotonic() + budget.total_seconds()
    rpc_timeout = timeouts.rpc.total_seconds()
    # Written only if the report is not acknowledged at once: see clara._outbox.
    outbox = _start_outbox(config, report_id, result, log_fields)
    report_retry = notifier.retry_reporter("CompleteStage")

    def on_retry(attempt: int, error: PlatformError, delay: float) -> None:
        if outbox is not None:
            outbox.write_now()  # the platform may be out of reach for long
        report_retry(attempt, error, delay)

    try:
        # The one retry mechanism of CompleteStage (the channel has no gRPC retry policy):
        # the same report id on every attempt, so the platform applies it at most once.
        state, applied = call_with_retry(
            lambda left: link.complete(
                report_id, result.outcome, result.message, min(left, rpc_timeout)
            ),
            policy=config.retry,
            deadline=deadline,
            stop=threading.Event(),  # reporting is never abandoned early
            on_retry=on_retry,
            retry_on=IDEMPOTENT_RETRYABLE,
        )
    except PlatformError as error:
        message = f"could not report outcome {result.outcome.value}: {error}"
        if outbox is not None and outbox.wait():
            message += f"; it waits in the outbox {outbox.folder}"
        notifier.emit(NotificationKind.ERROR, message, error)
        return StageResult(result.outcome, result.message, result.error or error)
    if outbox is not None:
        outbox.acknowledged()
    if applied:
        message = f"{result.outcome.value} -> {state}"
    else:
        message = f"{result.outcome.value} acknowledged, but the stage was already {state}"
    notifier.emit(NotificationKind.OUTCOME_REPORTED, message)
    return StageResult(result.outcome, result.message, result.error, reported=True)


def _start_outbox(
    config: DriverConfig, report_id: str, result: StageResult, log_fields: Mapping[str, str]
) -> PendingRecord | None:
    """Start writing the outcome to the stage's outbox, if it has one."""
    if config.outbox is None:
        return None
    # Imported here: only a driver with an outbox pays for loading json.
    from clara._outbox import PendingRecord, outbox_record  # noqa: PLC0415

    record = outbox_record(
        job_id=config.job_id,
        stage_name=config.stage_name,
        report_id=report_id,
        outcome=result.outcome,
        message=result.message,
    )
    return PendingRecord(config.outbox, record, log_fields)
