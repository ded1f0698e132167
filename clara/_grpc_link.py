"""The stage API over gRPC: the edge where protobuf becomes Python.

The driver above it sees only :class:`~clara.StageContext`, :class:`~clara._stage_link.Signal`
and plain values, and only ``clara`` errors. It is imported when a driver opens its link, not
by ``import clara``, so that importing the library does not load the protobuf runtime.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from types import MappingProxyType
from typing import Any

import grpc

from clara._channels import CHANNEL_OPTIONS, ChannelLease, lease_channel
from clara._config import DriverConfig
from clara._context import StageContext
from clara._event_batches import EVENT_FLUSH_TIMEOUT, EventBatches
from clara._exceptions import (
    DriverStateError,
    InvalidArgumentError,
    PlatformError,
    from_grpc_error,
)
from clara._payload import PayloadEntry
from clara._proto.nvidia.clara.platform.stage.v1 import stage_service_pb2 as pb
from clara._proto.nvidia.clara.platform.stage.v1 import stage_service_pb2_grpc as pb_grpc
from clara._result import StageOutcome
from clara._stage_link import EventKind, Signal, SignalKind
from clara._tls import STAGE_TOKEN_METADATA

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


class GrpcStageLink:
    """The stage API over a gRPC channel.

    Without a channel given, the link leases the process's shared channel to the target
    (see :mod:`clara._channels`). A call that fails with UNAVAILABLE, or a unary call past
    its deadline (DEADLINE_EXCEEDED: the connection may have died silently), retires that
    channel: it is leased to nobody else and closed once its users are done, and this link
    leases a fresh one (a new connection) for its next call. A channel given to the link is
    the application's: it is never closed, and every call stays on it (gRPC reconnects it
    once its keepalive has closed a dead connection).

    Args:
        config: The driver's settings (target, job, stage).
        channel: A channel to use instead of opening one; the link never closes a channel it
            was given.
    """

    def __init__(self, config: DriverConfig, channel: grpc.Channel | None = None) -> None:
        self._config = config
        self._lease: ChannelLease | None = None
        if channel is None:
            self._lease = self._lease_channel()
            channel = self._lease.channel
        # The stage token rides on every call; it is never logged (see clara._tls).
        self._metadata: tuple[tuple[str, str], ...] | None = (
            ((STAGE_TOKEN_METADATA, f"Bearer {config.stage_token}"),)
            if config.stage_token
            else None
        )
        self._stub: pb_grpc.StageServiceStub | None = pb_grpc.StageServiceStub(channel)
        self._ref = pb.StageRef(job_id=str(config.job_id), stage_name=config.stage_name)
        self._job_id = config.job_id
        self._lock = threading.Lock()
        self._watch_call: grpc.RpcContext | None = None
        self._stopped = False
        self._closed = False
        self._events = EventBatches(self._events_stub, self._ref, self._metadata)

    def watch(self, timeout: float, *, with_context: bool) -> Iterator[Signal]:
        """Open WatchStage now; the signals end quietly after :meth:`stop_watching`.

        With ``with_context``, the first message must carry the stage's context, checked
        against this link's job; the first signal yielded carries it.
        """
        with self._lock:
            if self._stopped:
                return iter(())
        stub = self._current_stub()
        try:
            call = stub.WatchStage(
                pb.WatchStageRequest(stage=self._ref, include_context=with_context),
                timeout=timeout,
                metadata=self._metadata,
            )
        except ValueError as error:
            raise _closed_channel("WatchStage", error) from error
        with self._lock:
            if self._stopped:
                call.cancel()
                return iter(())
            self._watch_call = call
        return self._signals(call, stub, with_context=with_context)

    def _signals(
        self, call: Any, stub: pb_grpc.StageServiceStub, *, with_context: bool
    ) -> Iterator[Signal]:
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
            # A stream's deadline is the watcher's bound, not a sign of a dead connection.
            raise self._failed("WatchStage", error, stub, retire_on_deadline=False) from error
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
        stub = self._current_stub()
        try:
            response = stub.CompleteStage(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise self._failed("CompleteStage", error, stub) from error
        except ValueError as error:
            raise _closed_channel("CompleteStage", error) from error
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
        with self._lock:
            self._closed = True
            lease = self._lease
        if lease is not None:
            lease.release()

    def _current_stub(self) -> pb_grpc.StageServiceStub:
        """The stub for the next call; after a retirement, on a freshly leased channel.

        Raises:
            DriverStateError: The link is closed (a late call; nothing is leased for it).
        """
        with self._lock:
            if self._stub is None:
                if self._closed:
                    raise DriverStateError("the stage link is closed")
                self._lease = self._lease_channel()
                self._stub = pb_grpc.StageServiceStub(self._lease.channel)
            return self._stub

    def _events_stub(self) -> pb_grpc.StageServiceStub:
        """The stub for a batch of progress events: never a reason to lease a channel.

        Raises:
            DriverStateError: The channel was retired and no call has leased a new one yet;
                the batch stays queued for the next call that carries events.
        """
        with self._lock:
            if self._stub is None:
                raise DriverStateError("no channel: the last one was retired")
            return self._stub

    def _lease_channel(self) -> ChannelLease:
        config = self._config
        return lease_channel((config.target, config.tls), lambda: open_channel(config))

    def _failed(
        self,
        method: str,
        error: grpc.RpcError,
        stub: pb_grpc.StageServiceStub,
        *,
        retire_on_deadline: bool = True,
    ) -> Exception:
        code = error.code()
        if code is grpc.StatusCode.UNAVAILABLE or (
            retire_on_deadline and code is grpc.StatusCode.DEADLINE_EXCEEDED
        ):
            self._retire(stub)
        return from_grpc_error(method, error)

    def _retire(self, failed: pb_grpc.StageServiceStub) -> None:
        """Stop using the shared channel ``failed`` was made on; the next call leases anew.

        A channel in reconnect backoff, or on a connection that stopped carrying bytes, must
        delay neither this link's next attempt nor the next driver. Calls of other drivers
        still on it fail or finish on their own; the channel closes when its last user is done.
        """
        with self._lock:
            old = self._lease
            if old is None or failed is not self._stub:
                return  # a given channel, or already retired by another call
            old.discard()
            self._lease, self._stub = None, None  # the next call leases a fresh channel
        _log.debug(
            "retired a failed channel to %s; the next call connects afresh", self._config.target
        )
        old.release()


def _closed_channel(method: str, error: ValueError) -> PlatformError:
    """The error for a call on a closed channel (gRPC raises ValueError): final, a clara one."""
    return PlatformError(
        method,
        grpc.StatusCode.CANCELLED,
        f"the channel to the platform is closed (was a channel given to the driver closed "
        f"while it ran?): {error}",
    )


def open_channel(config: DriverConfig) -> grpc.Channel:
    """Open the channel to ``config.target``: TLS when the settings carry certificates."""
    if config.tls is None:
        return grpc.insecure_channel(config.target, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(
        config.target,
        config.tls.credentials(),
        options=(*CHANNEL_OPTIONS, *config.tls.channel_options()),
    )


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
            PayloadEntry(e.name, e.path, e.from_stage, e.from_output, e.declared_path)
            for e in message.inputs
        ),
        outputs=tuple(
            PayloadEntry(e.name, e.path, declared_path=e.declared_path) for e in message.outputs
        ),
        variables=MappingProxyType(dict(message.variables)),
    )
