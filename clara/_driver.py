"""The pipeline stage driver: runs an operator's life-cycle against the platform.

The whole life-cycle is :meth:`Driver._run_lifecycle`, read top to bottom:

    CREATED --start()--> CONNECTING --context--> PREPARING --> WAITING_FOR_INPUTS
        --inputs ready--> EXECUTING --> CLEANING_UP --> REPORTING --> COMPLETED

Any failure, cancellation or timeout skips ahead to CLEANING_UP: cleanup runs on every path
once ``start()`` was called, and the outcome is reported exactly once (one report id, retried
until acknowledged or the report deadline passes).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType
from typing import Any, Generic, TypeVar

import grpc

from clara._config import DriverConfig, DriverTimeouts, resolve_config
from clara._context import StageContext
from clara._exceptions import (
    ClaraError,
    ConfigurationError,
    ContextUnavailableError,
    DeadlineExceededError,
    DriverStateError,
    InvalidArgumentError,
    PlatformError,
    WaitTimeoutError,
)
from clara._notifications import Notification, NotificationKind
from clara._payload import Payload
from clara._result import StageOutcome, StageResult
from clara._retry import IDEMPOTENT_RETRYABLE, RetryConfig, call_with_retry
from clara._stage_link import (
    EventKind,
    Signal,
    SignalKind,
    StageLink,
    StandaloneStageLink,
)
from clara._threads import DaemonExecutor, run_in_thread, wait_for_any
from clara._tls import TlsConfig

__all__ = ["Driver", "DriverState"]

_log = logging.getLogger("clara")

AppData = TypeVar("AppData")
_T = TypeVar("_T")
PrepareCallback = Callable[["Driver[Any]"], bool]
ExecuteCallback = Callable[["Driver[Any]", Payload], bool]
CleanupCallback = Callable[["Driver[Any]"], bool]
NotifyCallback = Callable[["Driver[Any]", Notification], None]

_DEFAULT_WORKERS = 4
_ERROR_LEVELS = {
    NotificationKind.ERROR: logging.ERROR,
    NotificationKind.TIMED_OUT: logging.WARNING,
    NotificationKind.CANCELLED: logging.WARNING,
    NotificationKind.CONNECT_RETRY: logging.WARNING,
    NotificationKind.STREAM_RECONNECTING: logging.WARNING,
}


class DriverState(enum.Enum):
    """Where the driver is in its life-cycle."""

    CREATED = "created"
    CONNECTING = "connecting"
    PREPARING = "preparing"
    WAITING_FOR_INPUTS = "waiting_for_inputs"
    EXECUTING = "executing"
    CLEANING_UP = "cleaning_up"
    REPORTING = "reporting"
    COMPLETED = "completed"


class _CallEnd(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True, slots=True)
class _CallResult:
    end: _CallEnd
    message: str = ""
    error: BaseException | None = None


class _Signals:
    """What the signal stream has said so far, as futures the orchestrator can wait on.

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

    def deliver(self, signal: Signal) -> None:
        if signal.context is not None:
            _settle(self.context, signal.context)
        if signal.kind is SignalKind.WAITING:
            return
        _settle(self.decided, signal)
        if signal.kind is not SignalKind.INPUTS_READY:
            _settle(self.cancelled, signal)

    def cancel_locally(self, reason: str) -> bool:
        """Stop the stage as a platform cancel would; False if it was cancelled before."""
        if self.local is not None:
            return False
        self.local = Signal(SignalKind.JOB_CANCELLED, reason)
        self.deliver(self.local)
        return True

    def fail_connect(self, error: BaseException) -> None:
        with contextlib.suppress(futures.InvalidStateError):
            self.context.set_exception(error)

    def fail(self, error: BaseException) -> None:
        with contextlib.suppress(futures.InvalidStateError):
            self.decided.set_exception(error)


@dataclass(frozen=True, slots=True)
class _Started:
    """A callback handed to the pool: its future, when, and one that completes once it begins.

    Only execute's start is tracked (``began``): that is the latency the platform waits on.
    """

    future: futures.Future[Any]
    at: float
    began: futures.Future[None] | None = None

    @staticmethod
    def submit(
        executor: futures.Executor,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
        *,
        track_start: bool = False,
    ) -> _Started:
        if not track_start:
            return _Started(executor.submit(callback, *args), time.monotonic())
        began: futures.Future[None] = futures.Future()

        def run() -> Any:
            began.set_result(None)
            return callback(*args)

        return _Started(executor.submit(run), time.monotonic(), began)


class _StartOnInputsReady:
    """Starts execute from the thread that delivers INPUTS_READY, before waking anyone else.

    The watcher delivers the signal by completing ``decided``; this trigger, armed before the
    life-cycle waits, runs in that same call and hands execute to the pool at once, and
    ``settled`` completes only once execute has begun (or at once for any other signal), so
    the life-cycle wakes after the operator's work started, not before it: the inputs-ready
    path has one thread hop, not two. The life-cycle disarms the trigger when it stops
    waiting; whichever comes first wins, so execute starts at most once.
    """

    def __init__(self, start: Callable[[], _Started], decided: futures.Future[Signal]) -> None:
        self._start = start
        self._lock = threading.Lock()
        self._armed = True
        self._started: _Started | None = None
        self.settled: futures.Future[None] = futures.Future()
        decided.add_done_callback(self._fire)  # runs now if the inputs are already ready

    def disarm(self) -> _Started | None:
        """Stop the trigger; return the started callback if it fired first."""
        with self._lock:
            self._armed = False
            return self._started

    def _fire(self, decided: futures.Future[Signal]) -> None:
        if decided.exception() is None and decided.result().kind is SignalKind.INPUTS_READY:
            with self._lock:
                if self._armed:
                    self._armed = False
                    self._started = self._start()
            if self._started is not None:
                if self._started.began is not None:
                    self._started.began.add_done_callback(self._settle)
                self._started.future.add_done_callback(self._settle)  # cancelled unbegun
                return
        self._settle(decided)

    def _settle(self, _: futures.Future[Any]) -> None:
        _settle(self.settled, None)


def _settle(future: futures.Future[_T], value: _T) -> None:
    """Complete ``future`` unless another writer already did."""
    with contextlib.suppress(futures.InvalidStateError):
        future.set_result(value)


class Driver(Generic[AppData]):
    """Runs one pipeline stage's life-cycle: prepare, wait for inputs, execute, cleanup.

    Each callback is optional and returns ``True`` on success or ``False`` on failure; a
    callback that raises, returns anything but a bool, or runs past its deadline fails the
    stage with a message naming the callback. Callbacks run on the driver's thread pool (one
    it creates and shuts down, or the ``executor`` given, which it never shuts down);
    notifications are delivered in order on a thread of the driver's own. The driver's own
    threads are daemon threads: a callback that never returns is abandoned at its deadline
    and does not keep the process alive.

    SIGTERM: when ``start()`` is called from the main thread and SIGTERM still has its default
    disposition, the driver handles it until the life-cycle ends: the stage is cancelled as if
    the platform had cancelled it (execute is skipped or interrupted, cleanup runs, CANCELLED
    is reported) and ``wait_for_completion()`` returns. A second SIGTERM, or one after the
    life-cycle ended, terminates the process as the default disposition would. Pass
    ``handle_sigterm=False`` to leave signals alone.

    Settings come from the arguments first, then from the environment the platform sets
    (``NVIDIA_CLARA_STAGE_SERVICE``, ``NVIDIA_CLARA_JOBID``, ``NVIDIA_CLARA_STAGENAME``,
    ``NVIDIA_CLARA_NOSYNCLOCK``; see ``clara.ENVIRONMENT_VARIABLES``).

    ``job_id`` and ``stage_name`` are known from construction. ``job_name``,
    ``stage_timeout`` and ``context`` are known once the platform sent the stage context
    (before ``prepare`` runs); reading them earlier raises :class:`ContextUnavailableError`
    rather than blocking.

    Thread-safety: properties, ``start()`` and ``wait_for_completion()`` may be called from
    any thread; ``start()`` succeeds exactly once.

    Args:
        prepare: ``prepare(driver) -> bool``, called before the inputs are ready.
        execute: ``execute(driver, payload) -> bool``, called once the inputs are ready.
        cleanup: ``cleanup(driver) -> bool``, called last on every path.
        notify: ``notify(driver, notification)``, called for every life-cycle event.
        app_data: Any object, returned by :attr:`app_data` for the callbacks' use.
        target: The stage service's address (``host:port``).
        job_id: The job's id.
        stage_name: The stage's name.
        standalone: Run without the platform (default: ``NVIDIA_CLARA_NOSYNCLOCK``).
        timeouts: How long each step may wait.
        retry: The backoff policy for transient platform failures.
        executor: The pool to run callbacks on; the driver does not shut it down.
        channel: A gRPC channel to the stage service; the driver does not close it. Open it
            with :data:`clara.CHANNEL_OPTIONS`. Without one, the driver leases the process's
            shared channel to ``target`` (drivers in one process reuse one connection; it is
            closed a few seconds after the last of them ends).
        handle_sigterm: Cancel the stage locally on SIGTERM (see above; default True).
        tls: TLS (or mutual TLS) settings for the channel (default: ``NVIDIA_CLARA_TLS_*``;
            none of them set means plaintext).
        stage_token: The stage's secret token (default: ``NVIDIA_CLARA_STAGE_TOKEN``), sent
            with every call; never logged.
        environ: The environment to read settings from (default: ``os.environ``).

    Raises:
        ConfigurationError: A setting is missing or malformed; the message names it.
    """

    def __init__(
        self,
        prepare: PrepareCallback | None = None,
        execute: ExecuteCallback | None = None,
        cleanup: CleanupCallback | None = None,
        notify: NotifyCallback | None = None,
        app_data: AppData | None = None,
        *,
        target: str | None = None,
        job_id: uuid.UUID | str | None = None,
        stage_name: str | None = None,
        standalone: bool | None = None,
        timeouts: DriverTimeouts | None = None,
        retry: RetryConfig | None = None,
        executor: futures.Executor | None = None,
        channel: grpc.Channel | None = None,
        environ: Mapping[str, str] | None = None,
        tls: TlsConfig | None = None,
        stage_token: str | None = None,
        handle_sigterm: bool = True,
    ) -> None:
        for name, callback in (
            ("prepare", prepare),
            ("execute", execute),
            ("cleanup", cleanup),
            ("notify", notify),
        ):
            if callback is not None and not callable(callback):
                raise ConfigurationError(name, callback, "must be callable or None")
        self._prepare = prepare
        self._execute = execute
        self._cleanup = cleanup
        self._notify = notify
        self._app_data = app_data
        self._config: DriverConfig = resolve_config(
            target=target,
            job_id=job_id,
            stage_name=stage_name,
            standalone=standalone,
            timeouts=timeouts,
            retry=retry,
            environ=environ,
            tls=tls,
            stage_token=stage_token,
        )
        self._given_executor = executor
        self._given_channel = channel
        self._lock = threading.Lock()
        self._state = DriverState.CREATED
        self._context: StageContext | None = None
        self._result: StageResult | None = None
        self._done = threading.Event()
        self._stop = threading.Event()
        self._signals = _Signals()
        self._watch_until = 0.0  # the watcher's bound (monotonic), final once connected
        self._interrupted = threading.Event()  # set by a local cancellation (SIGTERM)
        self._handle_sigterm = handle_sigterm
        self._sigterm_handler: Callable[[int, FrameType | None], None] | None = None
        # Notifications are delivered in order on one thread of the driver's own, so a slow
        # notification callback never stalls the life-cycle. Threads start on first use.
        self._notifier = DaemonExecutor(1, "clara-notify")
        self._log_fields = {"job_id": str(self._config.job_id), "stage": self._config.stage_name}

    # -- public surface -------------------------------------------------------------------

    @property
    def app_data(self) -> AppData | None:
        """The application data given to the constructor."""
        return self._app_data

    @property
    def job_id(self) -> uuid.UUID:
        """The job's id (known from construction)."""
        return self._config.job_id

    @property
    def stage_name(self) -> str:
        """The stage's name (known from construction)."""
        return self._config.stage_name

    @property
    def context(self) -> StageContext:
        """The stage context sent by the platform.

        Raises:
            ContextUnavailableError: The context has not been received yet.
        """
        context = self._context
        if context is None:
            raise ContextUnavailableError(
                "the stage context is not known yet: it arrives after start(), before prepare "
                "runs; read it from a callback or after wait_for_completion()"
            )
        return context

    @property
    def job_name(self) -> str:
        """The job's name (from the stage context; see :attr:`context`)."""
        return self.context.job_name

    @property
    def stage_timeout(self) -> timedelta:
        """How long execute may run (from the stage context; see :attr:`context`)."""
        return self.context.stage_timeout

    @property
    def state(self) -> DriverState:
        """Where the driver is in its life-cycle."""
        return self._state

    @property
    def cancel_requested(self) -> bool:
        """True once the stage is cancelled (platform or SIGTERM): a callback should return."""
        return self._signals.cancelled.done()

    def start(self) -> None:
        """Begin the life-cycle on the driver's own threads and return at once.

        Raises:
            DriverStateError: ``start()`` was already called.
        """
        with self._lock:
            if self._state is not DriverState.CREATED:
                raise DriverStateError(
                    f"start() was already called (driver is {self._state.value}); "
                    "a driver runs one life-cycle"
                )
            self._state = DriverState.CONNECTING
        self._install_sigterm_handler()
        # Interpreter exit waits for the life-cycle, as for a non-daemon thread: returning from
        # main must not leave the stage unreported.
        run_in_thread(self._run_lifecycle, f"clara-driver-{self.stage_name}", hold_exit=True)

    def wait_for_completion(self, timeout: float | timedelta | None = None) -> StageResult:
        """Block until the life-cycle ends and return how the stage ended.

        The life-cycle itself is bounded (connect, inputs, stage and report timeouts plus
        grace periods), so waiting without a timeout does not hang forever. After completion
        this returns at once.

        Args:
            timeout: Stop waiting after this long (seconds or a timedelta).

        Returns:
            The stage's result; failures are results too, not exceptions.

        Raises:
            DriverStateError: ``start()`` has not been called.
            WaitTimeoutError: ``timeout`` passed before the life-cycle ended.
        """
        if self._state is DriverState.CREATED:
            raise DriverStateError("wait_for_completion() called before start()")
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        if not self._done.wait(seconds):
            raise WaitTimeoutError(
                f"stage {self.stage_name} still {self._state.value} after {timeout} "
                "(wait_for_completion timeout)"
            )
        assert self._result is not None  # set before _done
        self._restore_sigterm_handler()
        return self._result

    # -- SIGTERM ----------------------------------------------------------------------------

    def _install_sigterm_handler(self) -> None:
        """Handle SIGTERM while the life-cycle runs, if asked to and nobody else does."""
        if not self._handle_sigterm or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # the application (or another driver) handles it: leave it alone
        handler = self._on_sigterm
        signal.signal(signal.SIGTERM, handler)
        self._sigterm_handler = handler

    def _restore_sigterm_handler(self) -> None:
        """Put the default disposition back (only the main thread can, once done)."""
        handler = self._sigterm_handler
        if handler is None or threading.current_thread() is not threading.main_thread():
            return
        self._sigterm_handler = None
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        # Runs on the main thread between two bytecodes: only set futures and events here.
        if self._done.is_set() or not self._cancel_locally(
            f"the operator process received {signal.Signals(signum).name}"
        ):
            # The life-cycle is over, or this is the second signal: terminate as by default.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def _cancel_locally(self, reason: str) -> bool:
        """Cancel the stage from inside the process, along the platform-cancel path."""
        if not self._signals.cancel_locally(reason):
            return False
        self._interrupted.set()
        return True

    # -- the life-cycle, top to bottom ----------------------------------------------------

    def _run_lifecycle(self) -> None:
        timeouts = self._config.timeouts
        owned_pool = None
        executor = self._given_executor
        if executor is None:
            owned_pool = DaemonExecutor(_DEFAULT_WORKERS, f"clara-callback-{self.stage_name}")
            executor = owned_pool
        self._emit(NotificationKind.STARTED, f"stage {self.stage_name} of job {self.job_id}")
        link = self._open_link()
        # The signal stream's first message brings the context: one round trip says who the
        # stage is and whether it may run. Until the stage timeout is known, the watcher is
        # bounded by the connect and inputs timeouts (see _watch).
        self._watch_until = (
            time.monotonic()
            + (timeouts.connect + timeouts.inputs + 2 * timeouts.grace).total_seconds()
        )
        # Opened here, before the watcher's thread starts, so the round trip overlaps its start.
        stream = link.watch(self._watch_left(), with_context=True)
        watcher = run_in_thread(lambda: self._watch(link, stream), "clara-watch")
        result: StageResult
        try:
            self._context = self._await_context()
            self._watch_until = (
                time.monotonic()
                + (
                    timeouts.inputs + self._context.stage_timeout + 2 * timeouts.grace
                ).total_seconds()
            )
            self._emit(
                NotificationKind.CONTEXT_RECEIVED,
                f"job {self.job_name!r}, stage timeout {self.stage_timeout}",
            )
            link.report_event(EventKind.CONTEXT_RECEIVED, "")
            result = self._prepare_and_execute(executor, link)
        except ClaraError as error:
            if self._context is None and self._signals.local is not None:
                result = self._cancelled(self._signals.local)  # SIGTERM while connecting
            else:
                result = StageResult(StageOutcome.FAILED, f"platform: {error}", error)
                self._emit(NotificationKind.ERROR, result.message, error)
        except Exception as error:  # a defect of the driver: still clean up and report
            _log.exception("driver failed unexpectedly", extra=self._log_fields)
            result = StageResult(StageOutcome.FAILED, f"driver error: {error!r}", error)
            self._emit(NotificationKind.ERROR, result.message, error)

        # Nothing the stream says can change the outcome now (cleanup is never interrupted):
        # let the watcher wind down while cleanup runs and the report is in flight.
        self._stop.set()
        link.stop_watching()
        self._set_state(DriverState.CLEANING_UP)
        result = self._run_cleanup(executor, link, result)
        if self._config.standalone:
            _log.info(
                "standalone: outcome %s not reported", result.outcome.value, extra=self._log_fields
            )
        elif self._context is not None:
            self._set_state(DriverState.REPORTING)
            result = self._report(link, result)
        else:
            _log.error(
                "outcome %s not reported: the platform was never reached",
                result.outcome.value,
                extra=self._log_fields,
            )

        link.close()
        watcher.join(timeouts.grace.total_seconds())
        if owned_pool is not None:
            owned_pool.shutdown(wait=False, cancel_futures=True)
        self._result = result
        self._set_state(DriverState.COMPLETED)
        self._emit(NotificationKind.COMPLETED, f"{result.outcome.value}: {result.message}")
        if self._notify is not None:
            # Deliver queued notifications before waiters wake, but never wait on a stuck one.
            drained = self._notifier.submit(lambda: None)
            wait_for_any([drained], timeouts.grace.total_seconds())
        self._notifier.shutdown(wait=False)
        self._done.set()

    def _prepare_and_execute(self, executor: futures.Executor, link: StageLink) -> StageResult:
        timeouts = self._config.timeouts
        inputs_deadline = time.monotonic() + timeouts.inputs.total_seconds()
        if self._prepare is not None:
            self._set_state(DriverState.PREPARING)
            call = self._call(executor, link, "prepare", self._prepare, (self,), inputs_deadline)
            if call.end is not _CallEnd.SUCCEEDED:
                return self._result_of("prepare", call, timeouts.inputs)

        self._set_state(DriverState.WAITING_FOR_INPUTS)
        self._emit(NotificationKind.WAITING_FOR_INPUTS, "waiting for upstream stages")
        if self._execute is not None and isinstance(executor, DaemonExecutor):
            executor.prestart()  # so that execute need not wait for a thread to start
        context = self.context
        payload = Payload(context.inputs, context.outputs)
        trigger = None
        if self._execute is not None:
            trigger = _StartOnInputsReady(
                lambda: self._begin_execute(executor, (self, payload)), self._signals.decided
            )
        awaited = trigger.settled if trigger is not None else self._signals.decided
        self._wait_for_first(link, [awaited], inputs_deadline)
        started = trigger.disarm() if trigger is not None else None
        try:
            signal = self._signals.decided.result(timeout=0)
        except futures.TimeoutError:
            message = f"inputs not ready within {timeouts.inputs}"
            self._emit(NotificationKind.ERROR, message)
            return StageResult(StageOutcome.FAILED, message)
        except ClaraError as error:
            return StageResult(StageOutcome.FAILED, f"lost the signal stream: {error}", error)
        if signal.kind is not SignalKind.INPUTS_READY:
            return self._cancelled(signal)
        self._emit(NotificationKind.INPUTS_READY, signal.message or "every upstream stage done")
        link.report_event(EventKind.INPUTS_READY, "")

        if self._execute is None:
            return StageResult(StageOutcome.SUCCEEDED, "no execute callback")
        if started is None:  # the signal came after the trigger was disarmed: start it here
            started = self._begin_execute(executor, (self, payload))
        execute_deadline = started.at + context.stage_timeout.total_seconds()
        call = self._call(
            executor, link, "execute", self._execute, (self, payload), execute_deadline, started
        )
        if call.end is _CallEnd.SUCCEEDED:
            return StageResult(StageOutcome.SUCCEEDED, "all callbacks succeeded")
        return self._result_of("execute", call, context.stage_timeout)

    def _run_cleanup(
        self, executor: futures.Executor, link: StageLink, result: StageResult
    ) -> StageResult:
        if self._cleanup is None:
            return result
        deadline = time.monotonic() + self._config.timeouts.grace.total_seconds()
        call = self._call(executor, link, "cleanup", self._cleanup, (self,), deadline)
        if call.end is _CallEnd.SUCCEEDED:
            return result
        if result.succeeded:
            return StageResult(StageOutcome.FAILED, call.message, call.error)
        return StageResult(
            result.outcome, f"{result.message}; cleanup also failed: {call.message}", result.error
        )

    def _report(self, link: StageLink, result: StageResult) -> StageResult:
        report_id = uuid.uuid4().hex
        timeouts = self._config.timeouts
        # A process asked to stop (SIGTERM) still reports, but only within the grace period.
        budget = timeouts.grace if self._interrupted.is_set() else timeouts.report
        deadline = time.monotonic() + budget.total_seconds()
        rpc_timeout = timeouts.rpc.total_seconds()
        try:
            # The one retry mechanism of CompleteStage (the channel has no gRPC retry policy):
            # the same report id on every attempt, so the platform applies it at most once.
            state, applied = call_with_retry(
                lambda left: link.complete(
                    report_id, result.outcome, result.message, min(left, rpc_timeout)
                ),
                policy=self._config.retry,
                deadline=deadline,
                stop=threading.Event(),  # reporting is never abandoned early
                on_retry=self._on_retry("CompleteStage"),
                retry_on=IDEMPOTENT_RETRYABLE,
            )
        except PlatformError as error:
            message = f"could not report outcome {result.outcome.value}: {error}"
            self._emit(NotificationKind.ERROR, message, error)
            return StageResult(result.outcome, result.message, result.error or error)
        if applied:
            self._emit(NotificationKind.OUTCOME_REPORTED, f"{result.outcome.value} -> {state}")
        else:
            self._emit(
                NotificationKind.OUTCOME_REPORTED,
                f"{result.outcome.value} acknowledged, but the stage was already {state}",
            )
        return StageResult(result.outcome, result.message, result.error, reported=True)

    # -- steps ----------------------------------------------------------------------------

    def _open_link(self) -> StageLink:
        if self._config.standalone:
            return StandaloneStageLink(self._config)
        # Imported here, not at module level: `import clara` should not load protobuf.
        from clara._grpc_link import GrpcStageLink  # noqa: PLC0415

        return GrpcStageLink(self._config, self._given_channel)

    def _await_context(self) -> StageContext:
        """Wait for the watcher to connect and return the stage context.

        Raises:
            PlatformError: Connecting failed (the watcher's error), the platform sent no
                context within the connect timeout, or the stage was cancelled locally
                (SIGTERM) first.
        """
        timeouts = self._config.timeouts
        wait_for_any(
            [self._signals.context, self._signals.cancelled],
            (timeouts.connect + timeouts.grace).total_seconds(),
        )
        if self._signals.context.done():
            return self._signals.context.result()
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

    def _watch_left(self) -> float:
        return max(self._watch_until - time.monotonic(), 0.001)

    def _watch(self, link: StageLink, opened: Iterator[Signal]) -> None:
        """Connect, then feed the signal stream into ``self._signals`` until stopped.

        A stream that breaks is reopened (without the context) while the stage may still
        change; a stream whose deadline passes while the stage still runs is renewed the same
        way, quietly (the first one's deadline was set before the stage timeout was known).
        """
        try:
            stream = self._connect(link, opened)
        except ClaraError as error:
            self._signals.fail_connect(error)  # the life-cycle reports it
            return
        config = self._config
        attempt = 0
        while True:
            try:
                for signal in stream:
                    attempt = 0
                    self._receive(signal)
                _log.debug("signal stream ended", extra=self._log_fields)
                return
            except PlatformError as error:
                if self._stop.is_set():
                    return
                transient = error.code in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
                if not transient or time.monotonic() >= self._watch_until:
                    self._emit(NotificationKind.ERROR, f"signal stream failed: {error}", error)
                    self._signals.fail(error)
                    return
                attempt += 1
                delay = config.retry.delay(attempt)  # backoff even for a renewal: never a spin
                if error.code is grpc.StatusCode.DEADLINE_EXCEEDED:
                    _log.debug(
                        "the signal stream reached its deadline; renewing in %.2f s",
                        delay,
                        extra=self._log_fields,
                    )
                else:
                    self._emit(
                        NotificationKind.STREAM_RECONNECTING,
                        f"attempt {attempt}: {error}; reconnecting in {delay:.2f} s",
                        error,
                    )
                if self._stop.wait(delay):
                    return
            stream = link.watch(self._watch_left(), with_context=False)

    def _connect(self, link: StageLink, opened: Iterator[Signal]) -> Iterator[Signal]:
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
            stream = opened if attempts == 1 else link.watch(self._watch_left(), with_context=True)
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
                on_retry=self._on_retry("WatchStage"),
                retry_on=IDEMPOTENT_RETRYABLE,
            )
        except IDEMPOTENT_RETRYABLE as error:
            if self._interrupted.is_set():
                raise
            raise type(error)(
                error.method,
                error.code,
                f"the platform at {self._config.target} did not answer within "
                f"{timeouts.connect} ({attempts} attempts); last error: {error.details}",
            ) from error
        self._emit(NotificationKind.CONNECTED, self._config.target or "standalone")
        self._receive(first)
        return stream

    def _receive(self, signal: Signal) -> None:
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("signal %s: %s", signal.kind.value, signal.message, extra=self._log_fields)
        self._signals.deliver(signal)

    def _call(  # noqa: PLR0917 - private; every argument is needed on each call
        self,
        executor: futures.Executor,
        link: StageLink,
        name: str,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
        deadline: float,
        started: _Started | None = None,
    ) -> _CallResult:
        """Run one callback on the pool until it returns, its deadline passes, or a cancel.

        ``started`` is the callback already submitted (execute, by the inputs-ready trigger).
        Cleanup is never interrupted by cancellation: it is what runs after one; the other
        callbacks are not even started once the stage is cancelled.
        """
        if name != "cleanup" and self._signals.cancelled.done():
            return _CallResult(_CallEnd.INTERRUPTED, self._signals.cancelled.result().message)
        if started is None:
            started = _Started.submit(executor, callback, args)
        future = started.future
        waited: list[futures.Future[Any]] = [future]
        if name != "cleanup":
            waited.append(self._signals.cancelled)
        if started.began is not None:
            # Let execute begin before telling observers: the operator's work should not wait
            # for the driver's bookkeeping (this is on the inputs-ready latency path).
            wait_for_any([started.began, *waited], deadline - time.monotonic())
        self._emit(NotificationKind[f"{name.upper()}_STARTED"], name)
        link.report_event(EventKind[f"{name.upper()}_STARTED"], "")
        self._wait_for_first(link, waited, deadline)
        if not future.done():
            if self._signals.cancelled.done() and name != "cleanup":
                signal = self._signals.cancelled.result()
                return _CallResult(_CallEnd.INTERRUPTED, signal.message)
            future.cancel()
            message = f"{name} did not return before its deadline"
            self._emit(
                NotificationKind.TIMED_OUT if name == "execute" else NotificationKind.ERROR, message
            )
            return _CallResult(_CallEnd.TIMED_OUT, message)
        error = future.exception()
        if error is not None:
            message = f"{name} raised {type(error).__name__}: {error}"
            self._emit(NotificationKind.ERROR, message, error)
            link.report_event(EventKind.ERROR, message)
            return _CallResult(_CallEnd.FAILED, message, error)
        value = future.result()
        self._emit(NotificationKind[f"{name.upper()}_FINISHED"], f"{name} returned {value!r}")
        link.report_event(EventKind[f"{name.upper()}_FINISHED"], repr(value))
        if value is True:
            return _CallResult(_CallEnd.SUCCEEDED)
        if value is False:
            return _CallResult(_CallEnd.FAILED, f"{name} returned False")
        return _CallResult(_CallEnd.FAILED, f"{name} returned {value!r}; expected True or False")

    def _begin_execute(self, executor: futures.Executor, args: tuple[Any, ...]) -> _Started:
        assert self._execute is not None
        self._set_state(DriverState.EXECUTING)
        return _Started.submit(executor, self._execute, args, track_start=True)

    def _wait_for_first(
        self, link: StageLink, waited: list[futures.Future[Any]], deadline: float
    ) -> None:
        """Wait until one of ``waited`` is done or ``deadline`` passes.

        Progress events linger: a step that ends within ``progress_linger`` costs no call, and
        its events go out with the next batch or with the outcome report. A step that takes
        longer sends what is queued then, so the platform shows it while it runs.
        """
        linger = self._config.timeouts.progress_linger.total_seconds()
        if wait_for_any(waited, min(linger, deadline - time.monotonic())):
            return
        link.flush_events()
        wait_for_any(waited, deadline - time.monotonic())

    def _result_of(self, name: str, call: _CallResult, limit: timedelta) -> StageResult:
        if call.end is _CallEnd.INTERRUPTED:
            return self._cancelled(self._signals.cancelled.result())
        if call.end is _CallEnd.TIMED_OUT:
            outcome = StageOutcome.TIMED_OUT if name == "execute" else StageOutcome.FAILED
            return StageResult(outcome, f"{name} did not finish within {limit}")
        return StageResult(StageOutcome.FAILED, call.message, call.error)

    def _cancelled(self, signal: Signal) -> StageResult:
        if signal is self._signals.local:
            self._emit(NotificationKind.CANCELLED, signal.message)
            return StageResult(StageOutcome.CANCELLED, signal.message)
        reason = {
            SignalKind.JOB_CANCELLED: "the job was cancelled",
            SignalKind.UPSTREAM_FAILED: "an upstream stage did not succeed",
            SignalKind.COMPLETED: "the platform already completed the stage",
        }.get(signal.kind, signal.kind.value)
        message = f"{reason}: {signal.message}" if signal.message else reason
        self._emit(NotificationKind.CANCELLED, message)
        return StageResult(StageOutcome.CANCELLED, message)

    # -- plumbing -------------------------------------------------------------------------

    def _set_state(self, state: DriverState) -> None:
        with self._lock:
            self._state = state
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("state -> %s", state.value, extra=self._log_fields)

    def _on_retry(self, method: str) -> Callable[[int, PlatformError, float], None]:
        def on_retry(attempt: int, error: PlatformError, delay: float) -> None:
            self._emit(
                NotificationKind.CONNECT_RETRY,
                f"{method} attempt {attempt} failed ({error.code.name}); retrying in {delay:.2f} s",
                error,
            )

        return on_retry

    def _emit(
        self, kind: NotificationKind, message: str, error: BaseException | None = None
    ) -> None:
        """Log the event on the ``clara`` logger and hand it to the notification callback."""
        level = _ERROR_LEVELS.get(kind, logging.INFO)
        if _log.isEnabledFor(level):
            _log.log(
                level,
                "%s: %s",
                kind.value,
                message,
                extra={**self._log_fields, "event": kind.value},
                exc_info=error if kind is NotificationKind.ERROR and error is not None else None,
            )
        if self._notify is None:
            return
        notification = Notification(kind, message, error)
        try:
            self._notifier.submit(self._deliver, notification)
        except RuntimeError:  # already shut down (a late watcher message): log, don't drop
            _log.warning(
                "notification %s after completion: %s", kind.value, message, extra=self._log_fields
            )

    def _deliver(self, notification: Notification) -> None:
        assert self._notify is not None
        try:
            self._notify(self, notification)
        except Exception:
            _log.exception(
                "notification callback raised on %s",
                notification.kind.value,
                extra=self._log_fields,
            )
