"""The stage API over gRPC: the edge where protobuf becomes Python.

The driver above it sees only :class:`~clara.StageContext`, :class:`~clara._stage_link.Signal`
and plain values, and only ``clara`` errors. It is imported when a driver opens its link, not
by ``import clara``, so that importing the library does not load the protobuf runtime.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from types import MappingProxyType
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from clara._channels import CHANNEL_OPTIONS, ChannelLease, lease_channel
from clara._config import DriverConfig
from clara._context import StageContext
from clara._exceptions import InvalidArgumentError, from_grpc_error
from clara._payload import PayloadEntry
from clara._proto.nvidia.clara.platform.stage.v1 import stage_service_pb2 as pb
from clara._proto.nvidia.clara.platform.stage.v1 import stage_service_pb2_grpc as pb_grpc
from clara._result import StageOutcome
from clara._stage_link import EventKind, Signal, SignalKind
from clara._tls import STAGE_TOKEN_METADATA
from clara.contract import MAX_EVENTS_PER_BATCH  # a life-cycle queues about ten

__all__ = ["CHANNEL_OPTIONS", "GrpcStageLink", "open_channel"]

_log = logging.getLogger("clara")


_SIGNALS = {
    pb.STAGE_SIGNAL_WAITING: SignalKind.WAITING,
    pb.STAGE_SIGNAL_INPUTS_READY: SignalKind.INPUTS_READY,
    pb.STAGE_SIGNAL_JOB_CANCELLED: SignalKind.JOB_CANCELLED,
    pb.STAGE_SIGNAL_UPSTREAM_FAILED: SignalKind.UPSTREAM_FAILED,
    pb.STAGE_SIGNAL_COMPLETED: SignalKind.COMPLETED,
}
_OUTCOMES = {
    StageOutcome.SUCCEEDED: pb.STAGE_OUTCOME_SUCCEEDED,
    StageOutcome.FAILED: pb.STAGE_OUTCOME_FAILED,
    StageOutcome.CANCELLED: pb.STAGE_OUTCOME_CANCELLED,
    StageOutcome.TIMED_OUT: pb.STAGE_OUTCOME_TIMED_OUT,
}
MAX_EVENT_MESSAGE = 4096
_EVENT_KINDS = {
    kind: pb.StageEventKind.Value(f"STAGE_EVENT_KIND_{kind.name}") for kind in EventKind
}
# A queued progress event: its kind (the StageEventKind value), message and time (ns).
_QueuedEvent = tuple["pb.StageEventKind.ValueType", str, int]
EVENT_TIMEOUT = 10.0
EVENT_FLUSH_TIMEOUT = 2.0
# A batch the platform refused as such is not sent again: it would be refused again.
_NOT_RETRIED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.NOT_FOUND,
    }
)


class GrpcStageLink:
    """The stage API over a gRPC channel.

    Without a channel given, the link leases the process's shared channel to the target
    (see :mod:`clara._channels`); a link that saw the platform UNAVAILABLE has its channel
    closed at the end instead of kept for the next driver, which then connects afresh.

    Args:
        config: The driver's settings (target, job, stage).
        channel: A channel to use instead of opening one; the link never closes a channel it
            was given.
    """

    def __init__(self, config: DriverConfig, channel: grpc.Channel | None = None) -> None:
        self._lease: ChannelLease | None = None
        if channel is None:
            self._lease = lease_channel((config.target, config.tls), lambda: open_channel(config))
            channel = self._lease.channel
        self._channel = channel
        # The stage token rides on every call; it is never logged (see clara._tls).
        self._metadata: tuple[tuple[str, str], ...] | None = (
            ((STAGE_TOKEN_METADATA, f"Bearer {config.stage_token}"),)
            if config.stage_token
            else None
        )
        self._stub = pb_grpc.StageServiceStub(self._channel)
        self._ref = pb.StageRef(job_id=str(config.job_id), stage_name=config.stage_name)
        self._job_id = config.job_id
        self._lock = threading.Lock()
        self._watch_call: grpc.RpcContext | None = None
        self._stopped = False
        self._events = _EventBatches(self._stub, self._ref, self._metadata)

    def watch(self, timeout: float, *, with_context: bool) -> Iterator[Signal]:
        """Open WatchStage now; the signals end quietly after :meth:`stop_watching`.

        With ``with_context``, the first message must carry the stage's context, checked
        against this link's job; the first signal yielded carries it.
        """
        call = self._stub.WatchStage(
            pb.WatchStageRequest(stage=self._ref, include_context=with_context),
            timeout=timeout,
            metadata=self._metadata,
        )
        with self._lock:
            if self._stopped:
                call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped
                return iter(())
            self._watch_call = call
        return self._signals(call, with_context=with_context)

    def _signals(self, call: Any, *, with_context: bool) -> Iterator[Signal]:
        try:
            context_due = with_context
            for response in call:
                context = None
                if context_due:
                    context_due = False
                    if not response.HasField("context"):
                        raise InvalidArgumentError(
                            "WatchStage",
                            grpc.StatusCode.INVALID_ARGUMENT,
                            "the platform sent no stage context in the first message "
                            "(a stage service without WatchStageRequest.include_context?)",
                        )
                    context = _context_from_proto(response.context, self._job_id)
                kind = _SIGNALS.get(response.signal, SignalKind.WAITING)
                yield Signal(kind, response.message, context)
        except grpc.RpcError as error:
            with self._lock:
                stopped = self._stopped
            if stopped and error.code() is grpc.StatusCode.CANCELLED:
                return
            raise self._failed("WatchStage", error) from None
        finally:
            with self._lock:
                self._watch_call = None

    def stop_watching(self) -> None:
        """Cancel the open WatchStage stream, if any, and refuse new ones."""
        with self._lock:
            self._stopped = True
            call = self._watch_call
        if call is not None:
            call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped

    def complete(
        self, report_id: str, outcome: StageOutcome, message: str, timeout: float
    ) -> tuple[str, bool]:
        """Call CompleteStage with the events not sent yet; retries reuse ``report_id``.

        A retry of the same report carries the same events, which the platform records once.
        """
        request = pb.CompleteStageRequest(
            stage=self._ref,
            report_id=report_id,
            outcome=_OUTCOMES[outcome],
            message=message,
            events=self._events.take_for_report(report_id),
        )
        try:
            response = self._stub.CompleteStage(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise self._failed("CompleteStage", error) from None
        state = pb.StageState.Name(response.state).removeprefix("STAGE_STATE_").lower()
        return state, response.applied

    def report_event(self, kind: EventKind, message: str) -> None:
        """Queue a progress event, stamped now; see :meth:`flush_events`."""
        self._events.add(kind, message)

    def flush_events(self) -> None:
        """Send the queued events in one ReportStageEvents call, without blocking.

        While a batch is in flight, what is queued follows as soon as it returns, so at most
        one call per link is in flight and a short life-cycle sends few calls.
        """
        self._events.flush()

    def close(self) -> None:
        """Stop watching, give queued events a moment, and end the channel lease, if any."""
        self.stop_watching()
        self._events.close(EVENT_FLUSH_TIMEOUT)
        if self._lease is not None:
            self._lease.release()

    def _failed(self, method: str, error: grpc.RpcError) -> Exception:
        if error.code() is grpc.StatusCode.UNAVAILABLE and self._lease is not None:
            self._lease.discard()  # a channel in reconnect backoff must not delay the next driver
        return from_grpc_error(method, error)


class _EventBatches:
    """A link's progress events: queued, and sent in batches with one call in flight at most.

    Events are best-effort: nothing here ever raises into the life-cycle or blocks it. A
    batch that fails goes back to the front of the queue (the platform de-duplicates events
    by kind, message and time), to be sent at the next flush or with the completion report.
    """

    def __init__(
        self,
        stub: pb_grpc.StageServiceStub,
        ref: pb.StageRef,
        metadata: tuple[tuple[str, str], ...] | None,
    ) -> None:
        self._stub = stub
        self._ref = ref
        self._metadata = metadata
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when a batch ends
        self._queue: list[_QueuedEvent] = []
        self._in_flight: list[_QueuedEvent] | None = None  # the batch whose call is pending
        self._in_report = False  # the pending batch went with the report too (see below)
        self._flush_requested = False  # flush() was called while a batch was in flight
        self._batches_supported = True  # False once the platform says UNIMPLEMENTED
        self._report: tuple[str, list[pb.StageEvent]] | None = None
        self._closed = False
        self._dropped = 0

    def add(self, kind: EventKind, message: str) -> None:
        # Kept as plain values; messages are built once, when a call carries them.
        event = (_EVENT_KINDS[kind], message[:MAX_EVENT_MESSAGE], time.time_ns())
        with self._lock:
            if len(self._queue) >= MAX_EVENTS_PER_BATCH:
                self._dropped += 1
                return
            self._queue.append(event)

    def flush(self) -> None:
        with self._lock:
            self._flush_requested = True
            batch = self._take_batch_locked()
        if batch:
            self._send(batch)

    def take_for_report(self, report_id: str) -> list[pb.StageEvent]:
        """The events to send with report ``report_id``: the same list on every retry.

        A batch still in flight may yet fail and be requeued: it is given up to
        ``EVENT_FLUSH_TIMEOUT`` to end first, so that its events are neither lost nor sent
        twice. One that takes longer goes with the report as well; the platform records an
        event it receives twice (same kind, message and time) once.
        """
        with self._lock:
            if self._report is None or self._report[0] != report_id:
                ended = self._idle.wait_for(lambda: self._in_flight is None, EVENT_FLUSH_TIMEOUT)
                events = self._queue  # read after the wait: a refused batch is back in it
                if not ended:
                    assert self._in_flight is not None
                    events = [*self._in_flight, *events]
                    self._in_report = True
                    self._trim_locked(events)
                self._report = (report_id, _to_proto(events))
                self._queue = []
            return self._report[1]

    def close(self, timeout: float) -> None:
        """Send what is queued and wait up to ``timeout`` seconds for the calls to end."""
        self.flush()
        with self._lock:
            sent = self._idle.wait_for(lambda: self._in_flight is None, timeout)
            self._closed = True
            left, dropped = len(self._queue), self._dropped
        if not sent or left or dropped:
            _log.debug(
                "progress events not delivered at close: %d queued, %d dropped, a batch %s",
                left,
                dropped,
                "still in flight" if not sent else "not in flight",
            )

    def _trim_locked(self, events: list[_QueuedEvent]) -> None:
        """Drop the oldest of ``events`` beyond what one call may carry.

        CompleteStage is such a call too: better lose the oldest events than have the outcome
        report refused.
        """
        overflow = len(events) - MAX_EVENTS_PER_BATCH
        if overflow > 0:
            del events[:overflow]
            self._dropped += overflow

    def _take_batch_locked(self) -> list[_QueuedEvent] | None:
        if (
            self._in_flight is not None
            or self._closed
            or not self._batches_supported
            or not self._queue
        ):
            return None
        batch, self._queue = self._queue, []
        self._in_flight = batch
        self._flush_requested = False
        return batch

    def _send(self, batch: list[_QueuedEvent]) -> None:
        request = pb.ReportStageEventsRequest(stage=self._ref, events=_to_proto(batch))
        try:
            future = self._stub.ReportStageEvents.future(
                request, timeout=EVENT_TIMEOUT, metadata=self._metadata
            )
        except Exception as error:  # e.g. the channel closed under us: never disturb the caller
            self._batch_ended(batch, error)
            return
        try:
            future.add_done_callback(lambda done: self._batch_ended(batch, _failure_of(done)))
        except NotImplementedError:  # a channel that cannot call back (grpc_testing's)
            _log.debug("progress events sent without waiting for the answer")
            self._batch_ended(batch, None)

    def _batch_ended(self, batch: list[_QueuedEvent], error: BaseException | None) -> None:
        """Runs on gRPC's callback thread: requeue a failed batch, send what followed it."""
        follow_up = None
        with self._lock:
            self._in_flight = None
            if error is not None and self._in_report:
                _log.debug("%d progress event(s) went with the outcome report", len(batch))
            elif error is not None:
                _log.debug("%d progress event(s) not delivered yet: %r", len(batch), error)
                if isinstance(error, grpc.Call) and error.code() in _NOT_RETRIED:
                    self._dropped += len(batch)
                else:
                    self._queue[:0] = batch
                    self._trim_locked(self._queue)
                    if (
                        isinstance(error, grpc.Call)
                        and error.code() is grpc.StatusCode.UNIMPLEMENTED
                    ):
                        _log.info(
                            "the platform does not implement ReportStageEvents: progress "
                            "events will go with the completion report"
                        )
                        self._batches_supported = False
            elif self._flush_requested:
                follow_up = self._take_batch_locked()
            self._idle.notify_all()
        if follow_up:
            self._send(follow_up)


def open_channel(config: DriverConfig) -> grpc.Channel:
    """Open the channel to ``config.target``: TLS when the settings carry certificates."""
    if config.tls is None:
        return grpc.insecure_channel(config.target, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(
        config.target,
        config.tls.credentials(),
        options=(*CHANNEL_OPTIONS, *config.tls.channel_options()),
    )


def _to_proto(events: list[_QueuedEvent]) -> list[pb.StageEvent]:
    return [
        pb.StageEvent(
            kind=kind,
            message=message,
            time=timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000),
        )
        for kind, message, ns in events
    ]


def _failure_of(future: grpc.Future[Any]) -> BaseException | None:
    if future.cancelled():
        return grpc.FutureCancelledError()
    return future.exception()


def _context_from_proto(message: pb.StageContext, expected_job_id: uuid.UUID) -> StageContext:
    try:
        job_id = uuid.UUID(message.job_id)
    except ValueError:
        raise InvalidArgumentError(
            "WatchStage",
            grpc.StatusCode.INVALID_ARGUMENT,
            f"platform sent a malformed job_id {message.job_id!r}",
        ) from None
    if job_id != expected_job_id:
        raise InvalidArgumentError(
            "WatchStage",
            grpc.StatusCode.INVALID_ARGUMENT,
            f"platform sent the context of job {job_id}, not {expected_job_id}",
        )
    timeout = message.timeout.ToTimedelta() if message.HasField("timeout") else None
    if timeout is None or timeout <= timedelta(0):
        raise InvalidArgumentError(
            "WatchStage",
            grpc.StatusCode.INVALID_ARGUMENT,
            f"platform sent no positive stage timeout ({timeout})",
        )
    return StageContext(
        job_id=job_id,
        job_name=message.job_name,
        pipeline_id=message.pipeline_id,
        stage_name=message.stage_name,
        stage_timeout=timeout,
        inputs=tuple(
            PayloadEntry(e.name, e.path, e.from_stage, e.from_output) for e in message.inputs
        ),
        outputs=tuple(PayloadEntry(e.name, e.path) for e in message.outputs),
        variables=MappingProxyType(dict(message.variables)),
    )
