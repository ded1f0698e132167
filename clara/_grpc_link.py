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

from clara._config import DriverConfig
from clara._context import StageContext
from clara._exceptions import InvalidArgumentError, from_grpc_error
from clara._payload import PayloadEntry
from clara._proto.nvidia.clara.platform.stage.v1 import stage_service_pb2 as pb
from clara._proto.nvidia.clara.platform.stage.v1 import stage_service_pb2_grpc as pb_grpc
from clara._result import StageOutcome
from clara._stage_link import EventKind, Signal, SignalKind
from clara._tls import STAGE_TOKEN_METADATA

__all__ = ["CHANNEL_OPTIONS", "GrpcStageLink", "open_channel"]

_log = logging.getLogger("clara")

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Keepalive lets a long wait for inputs notice a dead peer instead of hanging.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.primary_user_agent", "clara-stage-driver"),
]


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
EVENT_TIMEOUT = 10.0
EVENT_FLUSH_TIMEOUT = 2.0


class GrpcStageLink:
    """The stage API over a gRPC channel.

    Args:
        config: The driver's settings (target, job, stage).
        channel: A channel to use instead of opening one; the link never closes a channel it
            was given.
    """

    def __init__(self, config: DriverConfig, channel: grpc.Channel | None = None) -> None:
        self._owns_channel = channel is None
        self._channel = channel or open_channel(config)
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
        self._pending_events: set[grpc.Future[Any]] = set()
        self._stopped = False

    def fetch_context(self, timeout: float) -> StageContext:
        """Call GetStageContext and convert the answer."""
        try:
            response = self._stub.GetStageContext(
                pb.GetStageContextRequest(stage=self._ref), timeout=timeout, metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise from_grpc_error("GetStageContext", error) from None
        return _context_from_proto(response.context, self._job_id)

    def watch(self, timeout: float) -> Iterator[Signal]:
        """Open WatchStage and yield signals; ends quietly after :meth:`stop_watching`."""
        call = self._stub.WatchStage(
            pb.WatchStageRequest(stage=self._ref), timeout=timeout, metadata=self._metadata
        )
        with self._lock:
            if self._stopped:
                call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped
                return
            self._watch_call = call
        try:
            for response in call:
                yield Signal(_SIGNALS.get(response.signal, SignalKind.WAITING), response.message)
        except grpc.RpcError as error:
            with self._lock:
                stopped = self._stopped
            if stopped and error.code() is grpc.StatusCode.CANCELLED:
                return
            raise from_grpc_error("WatchStage", error) from None
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
        """Call CompleteStage; the same ``report_id`` is reused on every retry."""
        request = pb.CompleteStageRequest(
            stage=self._ref, report_id=report_id, outcome=_OUTCOMES[outcome], message=message
        )
        try:
            response = self._stub.CompleteStage(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_grpc_error("CompleteStage", error) from None
        state = pb.StageState.Name(response.state).removeprefix("STAGE_STATE_").lower()
        return state, response.applied

    def report_event(self, kind: EventKind, message: str) -> None:
        """Send ReportStageEvent without blocking; a failure is logged at debug level."""
        stamp = timestamp_pb2.Timestamp()
        stamp.GetCurrentTime()
        request = pb.ReportStageEventRequest(
            stage=self._ref,
            kind=pb.StageEventKind.Value(f"STAGE_EVENT_KIND_{kind.name}"),
            message=message[:MAX_EVENT_MESSAGE],
            time=stamp,
        )
        # Progress events are best-effort: whatever goes wrong sending one must never disturb
        # the life-cycle (a closed channel, a channel that lacks callbacks), so it is logged.
        try:
            future = self._stub.ReportStageEvent.future(
                request, timeout=EVENT_TIMEOUT, metadata=self._metadata
            )
            with self._lock:
                self._pending_events.add(future)
            future.add_done_callback(self._event_done)
        except Exception as error:
            _log.debug("progress event %s not sent: %r", kind.name, error)

    def _event_done(self, future: grpc.Future[Any]) -> None:
        with self._lock:
            self._pending_events.discard(future)
        _log_event_failure(future)

    def _flush_events(self, timeout: float) -> None:
        """Give events still in flight up to ``timeout`` seconds before the channel closes."""
        deadline = time.monotonic() + timeout
        with self._lock:
            pending = list(self._pending_events)
        for future in pending:
            try:
                future.result(timeout=max(deadline - time.monotonic(), 0))
            except Exception as error:
                _log.debug("progress event not delivered before close: %r", error)

    def close(self) -> None:
        """Stop watching and close the channel if the link opened it."""
        self.stop_watching()
        self._flush_events(EVENT_FLUSH_TIMEOUT)
        if self._owns_channel:
            self._channel.close()


def open_channel(config: DriverConfig) -> grpc.Channel:
    """Open the channel to ``config.target``: TLS when the settings carry certificates."""
    if config.tls is None:
        return grpc.insecure_channel(config.target, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(
        config.target,
        config.tls.credentials(),
        options=[*CHANNEL_OPTIONS, *config.tls.channel_options()],
    )


def _log_event_failure(future: grpc.Future[Any]) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:
        _log.debug("progress event not delivered: %s", error)


def _context_from_proto(message: pb.StageContext, expected_job_id: uuid.UUID) -> StageContext:
    try:
        job_id = uuid.UUID(message.job_id)
    except ValueError:
        raise InvalidArgumentError(
            "GetStageContext",
            grpc.StatusCode.INVALID_ARGUMENT,
            f"platform sent a malformed job_id {message.job_id!r}",
        ) from None
    if job_id != expected_job_id:
        raise InvalidArgumentError(
            "GetStageContext",
            grpc.StatusCode.INVALID_ARGUMENT,
            f"platform sent the context of job {job_id}, not {expected_job_id}",
        )
    timeout = message.timeout.ToTimedelta() if message.HasField("timeout") else None
    if timeout is None or timeout <= timedelta(0):
        raise InvalidArgumentError(
            "GetStageContext",
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
