"""Optional OpenTelemetry integration: the stage life-cycle as spans, and traced gRPC calls.

Install the extra first: ``pip install 'clara-stage-driver[otel]'``. This module imports
without OpenTelemetry (the core package never imports it); using it without the extra
raises :class:`TelemetryUnavailableError`, an :class:`ImportError` and a
:class:`~clara.ClaraError`.

:class:`LifecycleTracer` is a notification callback. Each driver it is given to gets one
root span ``clara.stage`` for its whole life-cycle (attributes ``clara.job_id``,
``clara.stage``, ``clara.job_name``, ``clara.outcome``), a child span per callback
(``clara.prepare``, ``clara.execute``, ``clara.cleanup``), and a span event for every
other notification (``connected``, ``inputs_ready``, ``cancelled``...). A failed callback,
an error or a timeout sets the span's status to ERROR (with the exception recorded where
there is one); the root span's status follows the stage's outcome. Spans are timed by the
notifications' own timestamps, so a slow notification thread does not skew them::

    import clara
    from clara.telemetry import LifecycleTracer, instrument_grpc_client

    instrument_grpc_client()  # optional: a client span per stage API call
    driver = clara.Driver(execute=execute, notify=LifecycleTracer())
    driver.start()

Spans go to the global tracer provider unless one is given (``tracer_provider=``);
:func:`traced_channel` traces one channel with a given provider.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import grpc

from clara import __version__
from clara._channels import retire_channels
from clara._exceptions import ClaraError, ContextUnavailableError
from clara._notifications import Notification, NotificationKind

if TYPE_CHECKING:
    from clara._driver import Driver

__all__ = [
    "UNTRACED_METHODS",
    "LifecycleTracer",
    "TelemetryUnavailableError",
    "instrument_grpc_client",
    "traced_channel",
    "uninstrument_grpc_client",
]

INSTALL_HINT = "pip install 'clara-stage-driver[otel]'"
ROOT_SPAN = "clara.stage"
CALLBACKS = ("prepare", "execute", "cleanup")
UNTRACED_METHODS = ("WatchStage",)
"""gRPC methods :func:`instrument_grpc_client` leaves untraced (long-lived, cancelled streams)."""
_STARTED = {NotificationKind[f"{name.upper()}_STARTED"]: name for name in CALLBACKS}
_FINISHED = {NotificationKind[f"{name.upper()}_FINISHED"]: name for name in CALLBACKS}


class TelemetryUnavailableError(ClaraError, ImportError):
    """OpenTelemetry is not installed; the message says which module and how to install it."""


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise TelemetryUnavailableError(
            f"clara.telemetry needs {module} ({error}); install the extra: {INSTALL_HINT}"
        ) from error


def _nanoseconds(notification: Notification) -> int:
    return int(notification.time.timestamp() * 1_000_000_000)


@dataclass(slots=True)
class _Spans:
    """The open spans of one driver's life-cycle."""

    root: Any
    child: Any = None
    child_name: str = ""
    ended: bool = False


class LifecycleTracer:
    """A notification callback that turns drivers' life-cycles into OpenTelemetry spans.

    One instance may serve any number of drivers (each gets its own spans). Give it as the
    driver's ``notify`` callback; to keep a callback of your own, pass it as ``notify``
    here and it is called after the spans are updated.

    Args:
        tracer_provider: The provider to get the tracer from (default: the global one).
        notify: Another notification callback to call for every notification.

    Raises:
        TelemetryUnavailableError: OpenTelemetry is not installed.
    """

    def __init__(
        self,
        tracer_provider: Any = None,
        *,
        notify: Callable[[Driver[Any], Notification], None] | None = None,
    ) -> None:
        self._trace = _require("opentelemetry.trace")
        self._tracer = self._trace.get_tracer("clara", __version__, tracer_provider=tracer_provider)
        self._notify = notify
        self._lock = threading.Lock()
        self._spans: dict[int, _Spans] = {}

    def __call__(self, driver: Driver[Any], notification: Notification) -> None:
        """Update ``driver``'s spans for ``notification``, then call the chained callback."""
        self._record(driver, notification)
        if self._notify is not None:
            self._notify(driver, notification)

    # -- the spans --------------------------------------------------------------------------

    def _record(self, driver: Driver[Any], notification: Notification) -> None:
        kind = notification.kind
        spans = self._spans_of(driver, notification)
        if spans.ended:
            return
        at = _nanoseconds(notification)
        if kind is NotificationKind.STARTED:
            return
        if kind in _STARTED:
            self._end_child(spans, at)
            spans.child_name = _STARTED[kind]
            spans.child = self._tracer.start_span(
                f"clara.{spans.child_name}",
                context=self._trace.set_span_in_context(spans.root),
                attributes=self._base_attributes(driver),
                start_time=at,
            )
        elif kind in _FINISHED and spans.child is not None:
            name = _FINISHED[kind]
            returned = notification.message.removeprefix(f"{name} returned ")
            spans.child.set_attribute("clara.returned", returned)
            if returned != "True":
                self._fail(spans.child, notification)
            self._end_child(spans, at)
        elif kind is NotificationKind.COMPLETED:
            self._complete(driver, spans, notification, at)
        else:
            self._event(driver, spans, notification, at)

    def _spans_of(self, driver: Driver[Any], notification: Notification) -> _Spans:
        with self._lock:
            spans = self._spans.get(id(driver))
            if spans is None:
                root = self._tracer.start_span(
                    ROOT_SPAN,
                    attributes=self._base_attributes(driver),
                    start_time=_nanoseconds(notification),
                )
                spans = self._spans[id(driver)] = _Spans(root)
            return spans

    @staticmethod
    def _base_attributes(driver: Driver[Any]) -> dict[str, str]:
        return {"clara.job_id": str(driver.job_id), "clara.stage": driver.stage_name}

    def _event(
        self, driver: Driver[Any], spans: _Spans, notification: Notification, at: int
    ) -> None:
        kind = notification.kind
        target = spans.child if spans.child is not None else spans.root
        if kind is NotificationKind.CONTEXT_RECEIVED:
            with contextlib.suppress(ContextUnavailableError):  # the context came first
                spans.root.set_attribute("clara.job_name", driver.job_name)
        if kind is NotificationKind.ERROR and notification.error is not None:
            target.record_exception(
                notification.error, attributes={"clara.message": notification.message}, timestamp=at
            )
        else:
            target.add_event(kind.value, {"clara.message": notification.message}, timestamp=at)
        if kind in (NotificationKind.ERROR, NotificationKind.TIMED_OUT):
            self._fail(target, notification)
        if kind in (NotificationKind.TIMED_OUT, NotificationKind.CANCELLED):
            self._end_child(spans, at)

    def _complete(
        self, driver: Driver[Any], spans: _Spans, notification: Notification, at: int
    ) -> None:
        self._end_child(spans, at)
        outcome, _, message = notification.message.partition(": ")
        root = spans.root
        root.set_attribute("clara.outcome", outcome)
        root.add_event(
            NotificationKind.COMPLETED.value, {"clara.message": notification.message}, timestamp=at
        )
        status = self._trace.Status
        if outcome == "succeeded":
            root.set_status(status(self._trace.StatusCode.OK))
        else:
            root.set_status(status(self._trace.StatusCode.ERROR, f"{outcome}: {message}"))
        root.end(end_time=at)
        spans.ended = True
        with self._lock:
            self._spans.pop(id(driver), None)

    def _fail(self, span: Any, notification: Notification) -> None:
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, notification.message))

    @staticmethod
    def _end_child(spans: _Spans, at: int) -> None:
        if spans.child is not None:
            spans.child.end(end_time=at)
            spans.child = None
            spans.child_name = ""


def _untraced_filter() -> Any:
    filters = _require("opentelemetry.instrumentation.grpc.filters")
    untraced = filters.any_of(*(filters.method_name(name) for name in UNTRACED_METHODS))
    return filters.negate(untraced)


def instrument_grpc_client() -> Any:
    """Trace every gRPC client call of this process (a client span per RPC).

    This enables OpenTelemetry's ``GrpcInstrumentorClient``, which wraps the channels that
    ``grpc.insecure_channel`` and ``grpc.secure_channel`` open from now on: call it before
    starting drivers (drivers started later open a new channel rather than reuse one of the
    process's shared channels). Calling it again does nothing. Its spans go to the global tracer
    provider (``opentelemetry.trace.set_tracer_provider``); for another provider, give the
    driver a :func:`traced_channel`.

    The stage's signal stream (``WatchStage``, see :data:`UNTRACED_METHODS`) is left out:
    the instrumentor turns a response stream into a plain generator, which the driver could
    then no longer cancel when the stage ends.

    Returns:
        The instrumentor (``.uninstrument()`` undoes it; so does
        :func:`uninstrument_grpc_client`).

    Raises:
        TelemetryUnavailableError: ``opentelemetry-instrumentation-grpc`` is not installed.
    """
    module = _require("opentelemetry.instrumentation.grpc")
    instrumentor = module.GrpcInstrumentorClient(filter_=_untraced_filter())
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()
        retire_channels()
    return instrumentor


def traced_channel(channel: grpc.Channel, tracer_provider: Any = None) -> grpc.Channel:
    """Wrap ``channel`` so each call on it is a client span (for ``Driver(channel=...)``).

    The same interceptor as :func:`instrument_grpc_client`, for one channel and with the
    given tracer provider. The driver never closes a channel it is given: close ``channel``
    when the driver completed.

    Args:
        channel: A channel to the stage service.
        tracer_provider: The provider of the spans (default: the global one).

    Raises:
        TelemetryUnavailableError: ``opentelemetry-instrumentation-grpc`` is not installed.
    """
    module = _require("opentelemetry.instrumentation.grpc")
    interceptor = module.client_interceptor(
        tracer_provider=tracer_provider, filter_=_untraced_filter()
    )
    grpcext = _require("opentelemetry.instrumentation.grpc.grpcext")
    traced: grpc.Channel = grpcext.intercept_channel(channel, interceptor)
    return traced


def uninstrument_grpc_client() -> None:
    """Undo :func:`instrument_grpc_client`: drivers started later open untraced channels.

    Channels in use keep their tracing until their drivers end.

    Raises:
        TelemetryUnavailableError: ``opentelemetry-instrumentation-grpc`` is not installed.
    """
    module = _require("opentelemetry.instrumentation.grpc")
    instrumentor = module.GrpcInstrumentorClient()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
        retire_channels()
