"""The signal-stream watcher: connect, reconnect, and deliver what the platform says.

One thread per life-cycle reads the stage's ``WatchStage`` stream and delivers each signal into
:class:`StageSignals`, futures the life-cycle waits on. The stream's first message brings the
stage context (one round trip says who the stage is and whether it may run); connecting is
retried like an idempotent call until the connect timeout. A stream that breaks while the
stage may still change is reopened (without the context), with backoff; one whose deadline
passes while the stage still runs is renewed the same way, quietly. Transient failures are
those of the retry module (:data:`~clara._retry.IDEMPOTENT_RETRYABLE`): one list, not two.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent import futures

import grpc

from clara._callback_start import settle
from clara._config import DriverConfig
from clara._context import StageContext
from clara._exceptions import (
    ClaraError,
    DeadlineExceededError,
    InvalidArgumentError,
    PlatformError,
)
from clara._notifications import NotificationKind
from clara._notifier import Notifier
from clara._retry import IDEMPOTENT_RETRYABLE, call_with_retry
from clara._stage_link import Signal, SignalKind, StageLink
from clara._threads import ThreadTask, run_in_thread, wait_for_any

__all__ = ["SignalWatcher", "StageSignals"]

_log = logging.getLogger("clara")


class StageSignals:
    """What the signal stream has said so far, as futures the life-cycle can wait on.

    ``context`` completes with the stage context from the stream's first message (or the
    error that ended connecting); ``decided`` completes with the first decisive signal
    (inputs ready, cancelled, upstream failed, completed elsewhere) or with the stream's
    permanent error; ``cancelled`` completes when the stage must stop. The watcher thread
    writes them, and so does a local cancellation (SIGTERM) from the main thread: whichever
    comes first wins, the other changes nothing.
    """

    def __init__(self) -> None:
        self.context: futures.Future[StageContext] = futures.Future()
        self.decided: futures.Future[Signal] = futures.Future()
        self.cancelled: futures.Future[Signal] = futures.Future()
        self.local: Signal | None = None  # the local cancellation, once there is one

    def deliver(self, received: Signal) -> None:
        """Record one signal of the stream (or a local cancellation)."""
        if received.context is not None:
            settle(self.context, received.context)
        if received.kind is SignalKind.WAITING:
            return
        settle(self.decided, received)
        if received.kind is not SignalKind.INPUTS_READY:
            settle(self.cancelled, received)

    def cancel_locally(self, reason: str) -> bool:
        """Stop the stage as a platform cancel would; False if it was cancelled before."""
        if self.local is not None:
            return False
        self.local = Signal(SignalKind.JOB_CANCELLED, reason)
        self.deliver(self.local)
        return True

    def fail_connect(self, error: BaseException) -> None:
        """Connecting failed for good: the life-cycle waiting for the context gets ``error``."""
        with contextlib.suppress(futures.InvalidStateError):
            self.context.set_exception(error)

    def fail(self, error: BaseException) -> None:
        """The stream failed for good before a decisive signal: ``decided`` gets ``error``."""
        with contextlib.suppress(futures.InvalidStateError):
            self.decided.set_exception(error)


class SignalWatcher:
    """Watches one stage's signal stream on a thread of its own, feeding :class:`StageSignals`.

    Args:
        config: The driver's settings (target, timeouts, retry policy).
        link: The stage link whose ``watch`` opens the stream.
        signals: Where the signals go.
        notifier: Where connect retries, reconnects and failures are told.
        interrupted: Set by a local cancellation (SIGTERM): connecting stops retrying.
        log_fields: The fields every log record carries.
    """

    def __init__(  # noqa: PLR0917 - private; every collaborator is needed
        self,
        config: DriverConfig,
        link: StageLink,
        signals: StageSignals,
        notifier: Notifier,
        interrupted: threading.Event,
        log_fields: Mapping[str, str],
    ) -> None:
        self._config = config
        self._link = link
        self._signals = signals
        self._notifier = notifier
        self._interrupted = interrupted
        self._log_fields = log_fields
        self._stop = threading.Event()
        self._until = 0.0  # the watcher's bound (monotonic), final once connected
        self._task: ThreadTask | None = None

    def start(self) -> None:
        """Open the stream now, on the calling thread, and watch it on a thread of its own.

        Opening before the thread starts lets the first round trip overlap the thread's
        start. Until the stage timeout is known, the watcher is bounded by the connect and
        inputs timeouts (see :meth:`extend`).
        """
        timeouts = self._config.timeouts
        self.extend((timeouts.connect + timeouts.inputs + 2 * timeouts.grace).total_seconds())
        opened = self._link.watch(self._left(), with_context=True)
        self._task = run_in_thread(lambda: self._watch(opened), "clara-watch")

    def extend(self, seconds: float) -> None:
        """Bound watching (and reconnecting) to ``seconds`` from now."""
        self._until = time.monotonic() + seconds

    def wait_for_context(self) -> StageContext:
        """Wait for the watcher to connect and return the stage context.

        Raises:
            PlatformError: Connecting failed (the watcher's error), the platform sent no
                context within the connect timeout, or the stage was cancelled locally
                (SIGTERM) first.
        """
        timeouts = self._config.timeouts
        signals = self._signals
        wait_for_any(
            [signals.context, signals.cancelled],
            (timeouts.connect + timeouts.grace).total_seconds(),
        )
        if signals.context.done():
            return signals.context.result()
        if self._interrupted.is_set():  # the life-cycle turns this into CANCELLED
            raise PlatformError(
                "WatchStage", grpc.StatusCode.CANCELLED, "connecting was interrupted by SIGTERM"
            )
        raise DeadlineExceededError(
            "WatchStage",
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"the platform at {self._config.target} sent no stage context within "
            f"{timeouts.connect}",
        )

    def stop(self) -> None:
        """Stop watching: nothing the stream says can change the outcome any more."""
        self._stop.set()
        self._link.stop_watching()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the watcher's thread to end."""
        if self._task is not None:
            self._task.join(timeout)

    def _left(self) -> float:
        return max(self._until - time.monotonic(), 0.001)

    def _watch(self, opened: Iterator[Signal]) -> None:
        """Connect, then feed the signal stream into the signals until stopped."""
        try:
            stream = self._connect(opened)
        except ClaraError as error:
            self._signals.fail_connect(error)  # the life-cycle reports it
            return
        attempt = 0
        while True:
            try:
                for received in stream:
                    attempt = 0
                    self._receive(received)
                _log.debug("signal stream ended", extra=self._log_fields)
                return
            except PlatformError as error:
                if self._stop.is_set():
                    return
                if not isinstance(error, IDEMPOTENT_RETRYABLE) or time.monotonic() >= self._until:
                    self._notifier.emit(
                        NotificationKind.ERROR, f"signal stream failed: {error}", error
                    )
                    self._signals.fail(error)
                    return
                attempt += 1
                delay = self._config.retry.delay(attempt)  # backoff even for a renewal
                if isinstance(error, DeadlineExceededError):
                    _log.debug(
                        "the signal stream reached its deadline; renewing in %.2f s",
                        delay,
                        extra=self._log_fields,
                    )
                else:
                    self._notifier.emit(
                        NotificationKind.STREAM_RECONNECTING,
                        f"attempt {attempt}: {error}; reconnecting in {delay:.2f} s",
                        error,
                    )
                if self._stop.wait(delay):
                    return
            stream = self._link.watch(self._left(), with_context=False)

    def _connect(self, opened: Iterator[Signal]) -> Iterator[Signal]:
        """Read the signal stream until its first message arrives; return the rest of it.

        ``opened`` is the first attempt's stream; a failed attempt is retried on a new stream
        like an idempotent call, until the connect timeout. The first message's context and
        signal are delivered before this returns.
        """
        timeouts = self._config.timeouts
        attempts = 0

        def attempt(left: float) -> tuple[Signal, Iterator[Signal]]:
            nonlocal attempts
            attempts += 1
            stream = opened if attempts == 1 else self._link.watch(self._left(), with_context=True)
            first = next(stream, None)
            if first is None:  # stopped, or the platform ended the stream at once
                raise InvalidArgumentError(
                    "WatchStage",
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "the signal stream ended before it sent the stage context",
                )
            return first, stream

        try:
            first, stream = call_with_retry(
                attempt,
                policy=self._config.retry,
                deadline=time.monotonic() + timeouts.connect.total_seconds(),
                stop=self._interrupted,
                on_retry=self._notifier.retry_reporter("WatchStage"),
                retry_on=IDEMPOTENT_RETRYABLE,
            )
        except IDEMPOTENT_RETRYABLE as error:
            if self._interrupted.is_set():
                raise
            gave_up = type(error)(
                error.method,
                error.code,
                f"the platform at {self._config.target} did not answer within "
                f"{timeouts.connect} ({attempts} attempts); last error: {error.details}",
            )
            # Keep gRPC's own error as the cause, as every error mapped from gRPC does.
            raise gave_up from error.__cause__ or error
        self._notifier.emit(NotificationKind.CONNECTED, self._config.target or "standalone")
        self._receive(first)
        return stream

    def _receive(self, received: Signal) -> None:
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug(
                "signal %s: %s", received.kind.value, received.message, extra=self._log_fields
            )
        self._signals.deliver(received)
