"""The pipeline stage driver: runs an operator's life-cycle against the platform.

:class:`Driver` is the operator's handle (settings, properties, ``start()``,
``wait_for_completion()``); one run's state lives apart from it in a private
:class:`_Lifecycle`, whose :meth:`_Lifecycle.run` is the whole life-cycle, read top to bottom:

    CREATED --start()--> CONNECTING --context--> PREPARING --> WAITING_FOR_INPUTS
        --inputs ready--> EXECUTING --> CLEANING_UP --> REPORTING --> COMPLETED

Any failure, cancellation or timeout skips ahead to CLEANING_UP: cleanup runs on every path
once ``start()`` was called, and the outcome is reported exactly once (one report id, retried
until acknowledged or the report deadline passes).

Around it, each in a module of its own: the callbacks and their two names
(:mod:`clara._callbacks`), the signal-stream watcher (:mod:`clara._signal_watcher`),
SIGTERM handling (:mod:`clara._sigterm`), notifications and their log records
(:mod:`clara._notifier`), starting execute from the inputs-ready signal
(:mod:`clara._callback_start`), the outcome report and its outbox (:mod:`clara._report`)
and, behind the gRPC link, progress-event batching (:mod:`clara._event_batches`).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

import grpc

from clara._callback_start import StartedCallback, StartOnInputsReady
from clara._callbacks import (
    Callbacks,
    CleanupCallback,
    ExecuteCallback,
    NotifyCallback,
    PrepareCallback,
    one_callback,
)
from clara._config import DriverConfig, DriverTimeouts, resolve_config
from clara._context import StageContext
from clara._exceptions import (
    ClaraError,
    ContextUnavailableError,
    DriverStateError,
    WaitTimeoutError,
)
from clara._notifications import NotificationKind
from clara._notifier import Notifier
from clara._payload import Payload
from clara._report import report_outcome
from clara._result import StageOutcome, StageResult
from clara._retry import RetryConfig
from clara._signal_watcher import SignalWatcher, StageSignals
from clara._sigterm import SigtermHandler
from clara._stage_link import EventKind, Signal, SignalKind, StageLink, StandaloneStageLink
from clara._threads import DaemonExecutor, run_in_thread, wait_for_any
from clara._tls import TlsConfig

__all__ = ["Driver", "DriverState"]

_log = logging.getLogger("clara")

AppData = TypeVar("AppData")
_DEFAULT_WORKERS = 4


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


class Driver(Generic[AppData]):
    """Runs one pipeline stage's life-cycle: prepare, wait for inputs, execute, cleanup.

    Each callback is optional. It succeeds by returning ``None`` (as NVIDIA's operators do,
    returning nothing) or ``True``, and fails the stage by returning ``False`` or raising
    (the message names the exception); any other return value fails the stage with a
    message naming the callback and the value, as does running past its deadline.
    Callbacks run on the driver's thread pool (one it creates and shuts down, or the
    ``executor`` given, which it never shuts down); notifications are delivered in order on
    a thread of the driver's own. The driver's own threads are daemon threads: a callback
    that never returns is abandoned at its deadline and does not keep the process alive.

    The callbacks may also be passed under the names of NVIDIA's Clara Pipeline Driver
    binding: ``prepare_handler``, ``execute_handler``, ``cleanup_handler`` and
    ``notification_handler``; one callback under both of its names is a
    :class:`ConfigurationError`.

    SIGTERM: when ``start()`` is called from the main thread and SIGTERM still has its default
    disposition, the driver handles it until the life-cycle ends: the stage is cancelled as if
    the platform had cancelled it (execute is skipped or interrupted, cleanup runs, CANCELLED
    is reported) and ``wait_for_completion()`` returns. A second SIGTERM, or one after the
    life-cycle ended, terminates the process as the default disposition would. Pass
    ``handle_sigterm=False`` to leave signals alone.

    Settings come from the arguments first, then from the environment the platform sets
    (``NVIDIA_CLARA_STAGE_SERVICE``, ``NVIDIA_CLARA_JOBID``, ``NVIDIA_CLARA_STAGENAME``,
    ``NVIDIA_CLARA_NOSYNCLOCK``, ...; see ``clara.ENVIRONMENT_VARIABLES``).

    ``job_id`` and ``stage_name`` are known from construction, and so are ``job_name`` and
    ``stage_timeout`` when the environment gives them (``NVIDIA_CLARA_JOBNAME``,
    ``NVIDIA_CLARA_TIMEOUT``: the mock platform sets both for every operator). Otherwise
    they, like ``context``, are known once the platform sent the stage context (before
    ``prepare`` runs), and reading them earlier raises :class:`ContextUnavailableError`
    rather than blocking. Once the context arrived, its values are the ones returned (a
    context that disagrees with the environment is logged as a warning).

    Thread-safety: properties, ``start()`` and ``wait_for_completion()`` may be called from
    any thread; ``start()`` succeeds exactly once.

    Args:
        prepare: ``prepare(driver)``, called before the inputs are ready.
        execute: ``execute(driver, payload)``, called once the inputs are ready.
        cleanup: ``cleanup(driver)``, called last on every path.
        notify: ``notify(driver, notification)``, called for every life-cycle event.
        app_data: Any object, returned by :attr:`app_data` for the callbacks' use.
        prepare_handler: ``prepare`` under the binding's name.
        execute_handler: ``execute`` under the binding's name.
        cleanup_handler: ``cleanup`` under the binding's name.
        notification_handler: ``notify`` under the binding's name.
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
        ConfigurationError: A setting is missing or malformed, or a callback is given under
            both of its names; the message names them.
    """

    def __init__(
        self,
        prepare: PrepareCallback | None = None,
        execute: ExecuteCallback | None = None,
        cleanup: CleanupCallback | None = None,
        notify: NotifyCallback | None = None,
        app_data: AppData | None = None,
        *,
        prepare_handler: PrepareCallback | None = None,
        execute_handler: ExecuteCallback | None = None,
        cleanup_handler: CleanupCallback | None = None,
        notification_handler: NotifyCallback | None = None,
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
        callbacks = Callbacks(
            prepare=one_callback("prepare", prepare, prepare_handler),
            execute=one_callback("execute", execute, execute_handler),
            cleanup=one_callback("cleanup", cleanup, cleanup_handler),
            notify=one_callback("notify", notify, notification_handler),
        )
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
        self._run = _Lifecycle(self, callbacks, self._config, executor, channel)
        self._sigterm = SigtermHandler(self._run.cancel_locally) if handle_sigterm else None

    # -- what the operator reads ----------------------------------------------------------

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
        context = self._run.context
        if context is None:
            raise _context_unavailable("the stage context")
        return context

    @property
    def job_name(self) -> str:
        """The job's name: from the stage context, or before it from ``NVIDIA_CLARA_JOBNAME``.

        Raises:
            ContextUnavailableError: Neither the context nor the environment gave it yet.
        """
        context = self._run.context
        if context is not None:
            return context.job_name
        if self._config.job_name is None:
            raise _context_unavailable("the job name")
        return self._config.job_name

    @property
    def stage_timeout(self) -> timedelta:
        """How long execute may run: from the context, or before it from ``NVIDIA_CLARA_TIMEOUT``.

        Raises:
            ContextUnavailableError: Neither the context nor the environment gave it yet.
        """
        context = self._run.context
        if context is not None:
            return context.stage_timeout
        if self._config.stage_timeout is None:
            raise _context_unavailable("the stage timeout")
        return self._config.stage_timeout

    @property
    def state(self) -> DriverState:
        """Where the driver is in its life-cycle."""
        return self._run.state

    @property
    def cancel_requested(self) -> bool:
        """True once the stage is cancelled (platform or SIGTERM): a callback should return."""
        return self._run.signals.cancelled.done()

    # -- what the operator calls ----------------------------------------------------------

    def start(self) -> None:
        """Begin the life-cycle on the driver's own threads and return at once.

        Raises:
            DriverStateError: ``start()`` was already called.
        """
        self._run.begin()
        if self._sigterm is not None:
            self._sigterm.install()
        # Interpreter exit waits for the life-cycle, as for a non-daemon thread: returning from
        # main must not leave the stage unreported.
        run_in_thread(self._run.run, f"clara-driver-{self.stage_name}", hold_exit=True)

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
        if self._run.state is DriverState.CREATED:
            raise DriverStateError("wait_for_completion() called before start()")
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        if not self._run.done.wait(seconds):
            raise WaitTimeoutError(
                f"stage {self.stage_name} still {self._run.state.value} after {timeout} "
                "(wait_for_completion timeout)"
            )
        assert self._run.result is not None  # set before done
        if self._sigterm is not None:
            self._sigterm.restore()
        return self._run.result


def _context_unavailable(what: str) -> ContextUnavailableError:
    return ContextUnavailableError(
        f"{what} is not known yet: it arrives with the stage context after start(), before "
        "prepare runs; read it from a callback or after wait_for_completion()"
    )


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


class _Lifecycle:
    """One run of a stage's life-cycle: its state, and its steps from top to bottom.

    The :class:`Driver` handle reads ``state``, ``context``, ``signals``, ``done`` and
    ``result``; only the life-cycle's own thread writes them (``state`` under ``_lock``,
    ``result`` before ``done`` is set).
    """

    def __init__(
        self,
        driver: Driver[Any],
        callbacks: Callbacks,
        config: DriverConfig,
        executor: futures.Executor | None,
        channel: grpc.Channel | None,
    ) -> None:
        self._driver = driver
        self._callbacks = callbacks
        self._config = config
        self._given_executor = executor
        self._given_channel = channel
        self._log_fields = {"job_id": str(config.job_id), "stage": config.stage_name}
        self._lock = threading.Lock()
        self.state = DriverState.CREATED
        self.context: StageContext | None = None
        self.result: StageResult | None = None
        self.done = threading.Event()
        self.signals = StageSignals()
        self._interrupted = threading.Event()  # set by a local cancellation (SIGTERM)
        self._notifier = Notifier(driver, callbacks.notify, self._log_fields)

    def begin(self) -> None:
        """Leave CREATED, exactly once.

        Raises:
            DriverStateError: The life-cycle was already begun.
        """
        with self._lock:
            if self.state is not DriverState.CREATED:
                raise DriverStateError(
                    f"start() was already called (driver is {self.state.value}); "
                    "a driver runs one life-cycle"
                )
            self.state = DriverState.CONNECTING

    def cancel_locally(self, reason: str) -> bool:
        """Cancel the stage from inside the process, along the platform-cancel path.

        Returns:
            False when there is nothing left to cancel: the life-cycle ended, or it was
            cancelled locally before.
        """
        if self.done.is_set() or not self.signals.cancel_locally(reason):
            return False
        self._interrupted.set()
        return True

    # -- the life-cycle, top to bottom ----------------------------------------------------

    def run(self) -> None:
        """The whole life-cycle, on its own thread; ``done`` is set once it ended."""
        config = self._config
        timeouts = config.timeouts
        owned_pool = None
        executor = self._given_executor
        if executor is None:
            owned_pool = DaemonExecutor(_DEFAULT_WORKERS, f"clara-callback-{config.stage_name}")
            executor = owned_pool
        self._notifier.emit(
            NotificationKind.STARTED, f"stage {config.stage_name} of job {config.job_id}"
        )
        link = self._open_link()
        watcher = SignalWatcher(
            config, link, self.signals, self._notifier, self._interrupted, self._log_fields
        )
        watcher.start()  # the stream's first message brings the context
        result: StageResult
        try:
            context = watcher.wait_for_context()
            self._adopt(context)
            watcher.extend(
                (timeouts.inputs + context.stage_timeout + 2 * timeouts.grace).total_seconds()
            )
            self._notifier.emit(
                NotificationKind.CONTEXT_RECEIVED,
                f"job {context.job_name!r}, stage timeout {context.stage_timeout}",
            )
            link.report_event(EventKind.CONTEXT_RECEIVED, "")
            result = self._prepare_and_execute(executor, link, context)
        except ClaraError as error:
            if self.context is None and self.signals.local is not None:
                result = self._cancelled(self.signals.local)  # SIGTERM while connecting
            else:
                result = StageResult(StageOutcome.FAILED, f"platform: {error}", error)
                self._notifier.emit(NotificationKind.ERROR, result.message, error)
        except Exception as error:  # a defect of the driver: still clean up and report
            _log.exception("driver failed unexpectedly", extra=self._log_fields)
            result = StageResult(StageOutcome.FAILED, f"driver error: {error!r}", error)
            self._notifier.emit(NotificationKind.ERROR, result.message, error)

        # Nothing the stream says can change the outcome now (cleanup is never interrupted):
        # let the watcher wind down while cleanup runs and the report is in flight.
        watcher.stop()
        self._set_state(DriverState.CLEANING_UP)
        result = self._run_cleanup(executor, link, result)
        if config.standalone:
            _log.info(
                "standalone: outcome %s not reported", result.outcome.value, extra=self._log_fields
            )
        elif self.context is not None:
            self._set_state(DriverState.REPORTING)
            result = report_outcome(
                link, result, config, self._interrupted, self._notifier, self._log_fields
            )
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
        self.result = result
        self._set_state(DriverState.COMPLETED)
        self._notifier.emit(NotificationKind.COMPLETED, f"{result.outcome.value}: {result.message}")
        # Deliver queued notifications before waiters wake, but never wait long on a stuck one.
        self._notifier.close(timeouts.grace.total_seconds())
        self.done.set()

    def _prepare_and_execute(
        self, executor: futures.Executor, link: StageLink, context: StageContext
    ) -> StageResult:
        timeouts = self._config.timeouts
        prepare, execute = self._callbacks.prepare, self._callbacks.execute
        inputs_deadline = time.monotonic() + timeouts.inputs.total_seconds()
        if prepare is not None:
            self._set_state(DriverState.PREPARING)
            call = self._call(executor, link, "prepare", prepare, (self._driver,), inputs_deadline)
            if call.end is not _CallEnd.SUCCEEDED:
                return self._result_of("prepare", call, timeouts.inputs)

        self._set_state(DriverState.WAITING_FOR_INPUTS)
        self._notifier.emit(NotificationKind.WAITING_FOR_INPUTS, "waiting for upstream stages")
        if execute is not None and isinstance(executor, DaemonExecutor):
            executor.prestart()  # so that execute need not wait for a thread to start
        args = (self._driver, Payload(context.inputs, context.outputs))
        trigger = None
        if execute is not None:
            trigger = StartOnInputsReady(
                lambda: self._begin_execute(executor, execute, args), self.signals.decided
            )
        awaited = trigger.settled if trigger is not None else self.signals.decided
        self._wait_for_first(link, [awaited], inputs_deadline)
        started = trigger.disarm() if trigger is not None else None
        try:
            decided = self.signals.decided.result(timeout=0)
        except futures.TimeoutError:
            message = f"inputs not ready within {timeouts.inputs}"
            self._notifier.emit(NotificationKind.ERROR, message)
            return StageResult(StageOutcome.FAILED, message)
        except ClaraError as error:
            return StageResult(StageOutcome.FAILED, f"lost the signal stream: {error}", error)
        if decided.kind is not SignalKind.INPUTS_READY:
            return self._cancelled(decided)
        self._notifier.emit(
            NotificationKind.INPUTS_READY, decided.message or "every upstream stage done"
        )
        link.report_event(EventKind.INPUTS_READY, "")

        if execute is None:
            return StageResult(StageOutcome.SUCCEEDED, "no execute callback")
        if started is None:  # the signal came after the trigger was disarmed: start it here
            started = self._begin_execute(executor, execute, args)
        execute_deadline = started.at + context.stage_timeout.total_seconds()
        call = self._call(executor, link, "execute", execute, args, execute_deadline, started)
        if call.end is _CallEnd.SUCCEEDED:
            return StageResult(StageOutcome.SUCCEEDED, "all callbacks succeeded")
        return self._result_of("execute", call, context.stage_timeout)

    def _run_cleanup(
        self, executor: futures.Executor, link: StageLink, result: StageResult
    ) -> StageResult:
        cleanup = self._callbacks.cleanup
        if cleanup is None:
            return result
        deadline = time.monotonic() + self._config.timeouts.grace.total_seconds()
        call = self._call(executor, link, "cleanup", cleanup, (self._driver,), deadline)
        if call.end is _CallEnd.SUCCEEDED:
            return result
        if result.succeeded:
            return StageResult(StageOutcome.FAILED, call.message, call.error)
        return StageResult(
            result.outcome, f"{result.message}; cleanup also failed: {call.message}", result.error
        )

    # -- steps ----------------------------------------------------------------------------

    def _open_link(self) -> StageLink:
        if self._config.standalone:
            return StandaloneStageLink(self._config)
        # Imported here, not at module level: `import clara` should not load protobuf.
        from clara._grpc_link import GrpcStageLink  # noqa: PLC0415

        return GrpcStageLink(self._config, self._given_channel)

    def _adopt(self, context: StageContext) -> None:
        """Take the platform's context; it wins over what the environment said before it."""
        config = self._config
        for what, told, sent in (
            ("job name", config.job_name, context.job_name),
            ("stage timeout", config.stage_timeout, context.stage_timeout),
        ):
            if told is not None and told != sent:
                _log.warning(
                    "the platform's stage context gives the %s %s, the environment gave %s: "
                    "the context wins",
                    what,
                    sent,
                    told,
                    extra=self._log_fields,
                )
        self.context = context

    def _call(  # noqa: PLR0917 - private; every argument is needed on each call
        self,
        executor: futures.Executor,
        link: StageLink,
        name: str,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
        deadline: float,
        started: StartedCallback | None = None,
    ) -> _CallResult:
        """Run one callback on the pool until it returns, its deadline passes, or a cancel.

        ``started`` is the callback already submitted (execute, by the inputs-ready trigger).
        Cleanup is never interrupted by cancellation: it is what runs after one; the other
        callbacks are not even started once the stage is cancelled.
        """
        cancelled = self.signals.cancelled
        if name != "cleanup" and cancelled.done():
            return _CallResult(_CallEnd.INTERRUPTED, cancelled.result().message)
        if started is None:
            started = StartedCallback.submit(executor, callback, args)
        future = started.future
        waited: list[futures.Future[Any]] = [future]
        if name != "cleanup":
            waited.append(cancelled)
        if started.began is not None:
            # Let execute begin before telling observers: the operator's work should not wait
            # for the driver's bookkeeping (this is on the inputs-ready latency path).
            wait_for_any([started.began, *waited], deadline - time.monotonic())
        self._notifier.emit(NotificationKind[f"{name.upper()}_STARTED"], name)
        link.report_event(EventKind[f"{name.upper()}_STARTED"], "")
        self._wait_for_first(link, waited, deadline)
        if not future.done():
            if cancelled.done() and name != "cleanup":
                return _CallResult(_CallEnd.INTERRUPTED, cancelled.result().message)
            future.cancel()
            message = f"{name} did not return before its deadline"
            self._notifier.emit(
                NotificationKind.TIMED_OUT if name == "execute" else NotificationKind.ERROR, message
            )
            return _CallResult(_CallEnd.TIMED_OUT, message)
        call = self._returned(link, name, future)
        if call.end is _CallEnd.FAILED and name != "cleanup" and cancelled.done():
            # It gave up because the stage was cancelled (returning False is how an operator
            # stops early), however late this thread woke up to see which came first.
            return _CallResult(_CallEnd.INTERRUPTED, cancelled.result().message)
        return call

    def _returned(self, link: StageLink, name: str, future: futures.Future[Any]) -> _CallResult:
        """What a callback's return (or raise) means; told to observers and the platform."""
        error = future.exception()
        if error is not None:
            message = f"{name} raised {type(error).__name__}: {error}"
            self._notifier.emit(NotificationKind.ERROR, message, error)
            link.report_event(EventKind.ERROR, message)
            return _CallResult(_CallEnd.FAILED, message, error)
        value = future.result()
        self._notifier.emit(
            NotificationKind[f"{name.upper()}_FINISHED"], f"{name} returned {value!r}"
        )
        link.report_event(EventKind[f"{name.upper()}_FINISHED"], repr(value))
        # None is success: the binding's users return nothing from a callback that worked.
        if value is None or value is True:
            return _CallResult(_CallEnd.SUCCEEDED)
        if value is False:
            return _CallResult(_CallEnd.FAILED, f"{name} returned False")
        return _CallResult(
            _CallEnd.FAILED,
            f"{name} returned {value!r}; expected None or True (success) or False (failure)",
        )

    def _begin_execute(
        self, executor: futures.Executor, execute: ExecuteCallback, args: tuple[Any, ...]
    ) -> StartedCallback:
        self._set_state(DriverState.EXECUTING)
        return StartedCallback.submit(executor, execute, args, track_start=True)

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
            return self._cancelled(self.signals.cancelled.result())
        if call.end is _CallEnd.TIMED_OUT:
            outcome = StageOutcome.TIMED_OUT if name == "execute" else StageOutcome.FAILED
            return StageResult(outcome, f"{name} did not finish within {limit}")
        return StageResult(StageOutcome.FAILED, call.message, call.error)

    def _cancelled(self, cancel: Signal) -> StageResult:
        if cancel is self.signals.local:
            self._notifier.emit(NotificationKind.CANCELLED, cancel.message)
            return StageResult(StageOutcome.CANCELLED, cancel.message)
        reason = {
            SignalKind.JOB_CANCELLED: "the job was cancelled",
            SignalKind.UPSTREAM_FAILED: "an upstream stage did not succeed",
            SignalKind.COMPLETED: "the platform already completed the stage",
        }.get(cancel.kind, cancel.kind.value)
        message = f"{reason}: {cancel.message}" if cancel.message else reason
        self._notifier.emit(NotificationKind.CANCELLED, message)
        return StageResult(StageOutcome.CANCELLED, message)

    def _set_state(self, state: DriverState) -> None:
        with self._lock:
            self.state = state
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("state -> %s", state.value, extra=self._log_fields)
