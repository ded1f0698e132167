"""How a life-cycle event reaches the operator: a log record, and the notification callback.

Every event is logged on the ``clara`` logger and handed to the operator's notification
callback, in order, on a thread of the notifier's own, so that a slow callback never stalls
the life-cycle. At the end of a life-cycle the notifier waits a bounded time for what is still
queued; if the callback is slower than that, the life-cycle ends anyway (its waiters wake), and
interpreter exit waits, at most :data:`EXIT_DRAIN_TIMEOUT`, for the notifications queued before
the end (the last of them is ``completed``), so that an operator whose main thread returns
at once still sees them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from clara._exceptions import PlatformError
from clara._notifications import Notification, NotificationKind
from clara._threads import DaemonExecutor, run_in_thread, wait_for_any
from clara.contract import TIMEOUT_GRACE

__all__ = ["EXIT_DRAIN_TIMEOUT", "Notifier"]

_log = logging.getLogger("clara")

EXIT_DRAIN_TIMEOUT = TIMEOUT_GRACE.total_seconds()
"""How long interpreter exit waits for notifications still queued when a life-cycle ended: the
platform's own grace for a terminating operator, past which waiting is pointless."""

_LEVELS = {
    NotificationKind.ERROR: logging.ERROR,
    NotificationKind.TIMED_OUT: logging.WARNING,
    NotificationKind.CANCELLED: logging.WARNING,
    NotificationKind.CONNECT_RETRY: logging.WARNING,
    NotificationKind.STREAM_RECONNECTING: logging.WARNING,
}


class Notifier:
    """Logs each event of one life-cycle and delivers it to the notification callback.

    Args:
        driver: What the callback receives as its first argument (the user's handle).
        callback: ``callback(driver, notification)``, or ``None`` to only log.
        log_fields: The fields every log record carries (``job_id``, ``stage``).
    """

    def __init__(
        self,
        driver: Any,
        callback: Callable[[Any, Notification], object] | None,
        log_fields: Mapping[str, str],
    ) -> None:
        self._driver = driver
        self._callback = callback
        self._log_fields = dict(log_fields)
        # One thread, so notifications arrive in order; it starts on first use.
        self._executor = DaemonExecutor(1, "clara-notify") if callback is not None else None

    def emit(
        self, kind: NotificationKind, message: str, error: BaseException | None = None
    ) -> None:
        """Log the event on the ``clara`` logger and queue it for the notification callback."""
        level = _LEVELS.get(kind, logging.INFO)
        if _log.isEnabledFor(level):
            _log.log(
                level,
                "%s: %s",
                kind.value,
                message,
                extra={**self._log_fields, "event": kind.value},
                exc_info=error if kind is NotificationKind.ERROR and error is not None else None,
            )
        if self._executor is None:
            return
        notification = Notification(kind, message, error)
        try:
            self._executor.submit(self._deliver, notification)
        except RuntimeError:  # already closed (a late watcher message): log, don't drop
            _log.warning(
                "notification %s after completion: %s", kind.value, message, extra=self._log_fields
            )

    def retry_reporter(self, method: str) -> Callable[[int, PlatformError, float], None]:
        """An ``on_retry`` for :func:`~clara._retry.call_with_retry` that emits CONNECT_RETRY."""

        def on_retry(attempt: int, error: PlatformError, delay: float) -> None:
            self.emit(
                NotificationKind.CONNECT_RETRY,
                f"{method} attempt {attempt} failed ({error.code.name}); retrying in {delay:.2f} s",
                error,
            )

        return on_retry

    def close(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the queued notifications, then accept no more.

        What is still queued then is delivered in the background, and interpreter exit waits
        for it, at most :data:`EXIT_DRAIN_TIMEOUT` seconds.
        """
        executor = self._executor
        if executor is None:
            return
        drained = executor.submit(_nothing)  # done once everything queued before it ran
        if not wait_for_any([drained], timeout):
            _log.warning(
                "the notification callback is still busy at the end of the life-cycle; "
                "interpreter exit waits up to %.0f s for the notifications queued before it",
                EXIT_DRAIN_TIMEOUT,
                extra=self._log_fields,
            )
            run_in_thread(
                lambda: wait_for_any([drained], EXIT_DRAIN_TIMEOUT),
                "clara-notify-drain",
                hold_exit=True,
            )
        executor.shutdown(wait=False)

    def _deliver(self, notification: Notification) -> None:
        assert self._callback is not None
        try:
            self._callback(self._driver, notification)
        except Exception:
            _log.exception(
                "notification callback raised on %s",
                notification.kind.value,
                extra=self._log_fields,
            )


def _nothing() -> None:
    return None
