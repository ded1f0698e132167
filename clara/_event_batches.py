"""Progress events of one stage: queued, and sent in batches with one call in flight at most.

Events are best effort: nothing here ever raises into the life-cycle or blocks it for long.
The gRPC stage link (:mod:`clara._grpc_link`) owns one :class:`EventBatches`; like the link, this
module loads protobuf and is imported only when a driver connects.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from clara._proto.nvidia.clara.platform.stage.v1 import stage_service_pb2 as pb
from clara._proto.nvidia.clara.platform.stage.v1 import stage_service_pb2_grpc as pb_grpc
from clara._stage_link import EventKind
from clara.contract import MAX_EVENTS_PER_BATCH  # a life-cycle queues about ten

__all__ = [
    "EVENT_FLUSH_TIMEOUT",
    "EVENT_TIMEOUT",
    "MAX_EVENTS_PER_BATCH",
    "MAX_EVENT_MESSAGE",
    "EventBatches",
]

_log = logging.getLogger("clara")

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


class EventBatches:
    """A link's progress events: queued, and sent in batches with one call in flight at most.

    Events are best-effort: nothing here ever raises into the life-cycle or blocks it. A
    batch that fails goes back to the front of the queue (the platform de-duplicates events
    by kind, message and time), to be sent at the next flush or with the completion report.
    """

    def __init__(
        self,
        stub: Callable[[], pb_grpc.StageServiceStub],
        ref: pb.StageRef,
        metadata: tuple[tuple[str, str], ...] | None,
    ) -> None:
        self._stub = stub  # the link's current stub: its channel may be retired and replaced
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
            future = self._stub().ReportStageEvents.future(
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
