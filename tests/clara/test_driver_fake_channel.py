"""The driver's state machine against grpcio-testing's fake channel: the test plays the server.

Each test takes the driver's RPCs one by one, in the order the contract requires, and answers
them; an RPC the driver makes out of order would leave a take_* call waiting (bounded by the
fake channel's own timeouts in our waits) and fail the test.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import grpc
import grpc_testing
import pytest
from google.protobuf import duration_pb2

import clara
from clara.stage_api import stage_service_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["StageService"]
WATCH = SERVICE.methods_by_name["WatchStage"]
COMPLETE = SERVICE.methods_by_name["CompleteStage"]
WAIT = 20.0
JOB_ID = uuid.UUID("6f1c1a2e-0d43-4b59-9c3a-0a3f5b0f7d21")


@pytest.fixture
def channel() -> grpc_testing.Channel:
    return grpc_testing.channel([SERVICE], grpc_testing.strict_real_time())


@pytest.fixture
def started() -> Iterator[list[clara.Driver[Any]]]:
    drivers: list[clara.Driver[Any]] = []
    yield drivers
    for driver in drivers:
        driver.wait_for_completion(WAIT)


def stage_context(timeout: timedelta = timedelta(seconds=30)) -> pb.StageContext:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timeout)
    return pb.StageContext(
        job_id=str(JOB_ID),
        job_name="fake-job",
        stage_name="stage",
        timeout=duration,
        inputs=[pb.InputEntry(name="", path="/in", from_stage="up")],
        outputs=[pb.OutputEntry(name="", path="/out")],
    )


def new_driver(
    channel: grpc.Channel, started: list[clara.Driver[Any]], **kwargs: Any
) -> clara.Driver[Any]:
    driver = clara.Driver(
        channel=channel,
        target="fake:1",
        job_id=JOB_ID,
        stage_name="stage",
        retry=clara.RetryConfig(initial=0.01, maximum=0.02),
        **kwargs,
    )
    started.append(driver)
    return driver


def serve_watch(
    channel: grpc_testing.Channel,
    signal: pb.StageSignal.ValueType,
    context: pb.StageContext | None = None,
    message: str = "",
) -> grpc_testing.UnaryStreamChannelRpc:
    """Take the driver's first WatchStage and answer with the stage context and ``signal``."""
    _, request, watch = channel.take_unary_stream(WATCH)
    assert request.stage == pb.StageRef(job_id=str(JOB_ID), stage_name="stage")
    assert request.include_context
    watch.send_response(
        pb.WatchStageResponse(signal=signal, message=message, context=context or stage_context())
    )
    return watch


def acknowledge(
    rpc: grpc_testing.UnaryUnaryChannelRpc,
    state: pb.StageState.ValueType,
    *,
    applied: bool = True,
) -> None:
    """Answer the driver's CompleteStage with ``state``."""
    rpc.terminate(
        pb.CompleteStageResponse(state=state, applied=applied), (), grpc.StatusCode.OK, ""
    )


def test_happy_path_order_and_single_report(
    channel: grpc_testing.Channel, started: list[clara.Driver[Any]]
) -> None:
    calls: list[str] = []
    prepared = threading.Event()

    def prepare(driver: clara.Driver[Any]) -> bool:
        calls.append("prepare")
        prepared.set()
        return True

    def execute(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        calls.append(f"execute {payload.input().path} -> {payload.output().path}")
        # A platform from before declared_path (this context sets none) gives "".
        assert payload.input().declared_path == payload.output().declared_path == ""
        return True

    driver = new_driver(
        channel,
        started,
        prepare=prepare,
        execute=execute,
        cleanup=lambda d: calls.append("cleanup") is None,
    )
    driver.start()
    watch = serve_watch(channel, pb.STAGE_SIGNAL_WAITING)
    assert prepared.wait(WAIT)
    assert calls == ["prepare"]  # execute waits for the inputs-ready signal
    watch.send_response(pb.WatchStageResponse(signal=pb.STAGE_SIGNAL_INPUTS_READY))

    _, report, rpc = channel.take_unary_unary(COMPLETE)
    assert calls == ["prepare", "execute /in -> /out", "cleanup"]
    assert report.outcome == pb.STAGE_OUTCOME_SUCCEEDED
    assert report.report_id
    acknowledge(rpc, pb.STAGE_STATE_SUCCEEDED)
    result = driver.wait_for_completion(WAIT)
    assert result.succeeded and result.reported
    watch.terminate((), grpc.StatusCode.OK, "")


def test_transient_report_failure_is_retried_with_the_same_report_id(
    channel: grpc_testing.Channel, started: list[clara.Driver[Any]]
) -> None:
    driver = new_driver(channel, started, execute=lambda d, p: False)
    driver.start()
    watch = serve_watch(channel, pb.STAGE_SIGNAL_INPUTS_READY)

    report_ids = []
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK):
        _, report, rpc = channel.take_unary_unary(COMPLETE)
        assert report.outcome == pb.STAGE_OUTCOME_FAILED
        assert report.message == "execute returned False"
        report_ids.append(report.report_id)
        rpc.terminate(
            pb.CompleteStageResponse(state=pb.STAGE_STATE_FAILED, applied=True),
            (),
            code,
            "flaky" if code is not grpc.StatusCode.OK else "",
        )
    assert len(set(report_ids)) == 1
    result = driver.wait_for_completion(WAIT)
    assert result.outcome is clara.StageOutcome.FAILED and result.reported
    watch.terminate((), grpc.StatusCode.OK, "")


def test_permanent_report_error_is_not_retried(
    channel: grpc_testing.Channel, started: list[clara.Driver[Any]]
) -> None:
    notes: list[clara.Notification] = []
    driver = new_driver(
        channel, started, execute=lambda d, p: True, notify=lambda d, n: notes.append(n)
    )
    driver.start()
    watch = serve_watch(channel, pb.STAGE_SIGNAL_INPUTS_READY)
    _, _, rpc = channel.take_unary_unary(COMPLETE)
    rpc.terminate(pb.CompleteStageResponse(), (), grpc.StatusCode.PERMISSION_DENIED, "not yours")
    result = driver.wait_for_completion(WAIT)
    assert result.succeeded and not result.reported
    assert isinstance(result.error, clara.PermissionDeniedError)
    assert isinstance(result.error.__cause__, grpc.RpcError)
    assert any(n.kind is clara.NotificationKind.ERROR and "not yours" in n.message for n in notes)
    watch.terminate((), grpc.StatusCode.OK, "")


def test_broken_stream_reconnects_and_does_not_lose_the_signal(
    channel: grpc_testing.Channel, started: list[clara.Driver[Any]]
) -> None:
    executed = threading.Event()
    waiting = threading.Event()
    notes: list[clara.Notification] = []

    def notify(driver: clara.Driver[Any], note: clara.Notification) -> None:
        notes.append(note)
        if note.kind is clara.NotificationKind.WAITING_FOR_INPUTS:
            waiting.set()

    driver = new_driver(
        channel, started, execute=lambda d, p: executed.set() is None, notify=notify
    )
    driver.start()
    first = serve_watch(channel, pb.STAGE_SIGNAL_WAITING)
    assert waiting.wait(WAIT)  # the first message (with the context) was read
    first.terminate((), grpc.StatusCode.UNAVAILABLE, "connection reset")
    # The platform became ready during the gap: the new stream's first message says so, and
    # the driver, which has its context, does not ask for it again.
    _, reopened, second = channel.take_unary_stream(WATCH)
    assert not reopened.include_context
    second.send_response(pb.WatchStageResponse(signal=pb.STAGE_SIGNAL_INPUTS_READY))
    _, _, rpc = channel.take_unary_unary(COMPLETE)
    assert executed.is_set()
    acknowledge(rpc, pb.STAGE_STATE_SUCCEEDED)
    assert driver.wait_for_completion(WAIT).succeeded
    assert clara.NotificationKind.STREAM_RECONNECTING in [n.kind for n in notes]
    second.terminate((), grpc.StatusCode.OK, "")


def test_upstream_failure_signal_cancels_without_executing(
    channel: grpc_testing.Channel, started: list[clara.Driver[Any]]
) -> None:
    executed: list[bool] = []
    driver = new_driver(channel, started, execute=lambda d, p: executed.append(True) is None)
    driver.start()
    watch = serve_watch(
        channel, pb.STAGE_SIGNAL_UPSTREAM_FAILED, message="upstream stage up failed"
    )
    _, report, rpc = channel.take_unary_unary(COMPLETE)
    assert report.outcome == pb.STAGE_OUTCOME_CANCELLED
    assert "upstream stage up failed" in report.message
    acknowledge(rpc, pb.STAGE_STATE_CANCELLED, applied=False)
    result = driver.wait_for_completion(WAIT)
    assert result.outcome is clara.StageOutcome.CANCELLED
    assert executed == []
    watch.terminate((), grpc.StatusCode.OK, "")


@pytest.mark.parametrize(
    ("context", "message"),
    [
        (pb.StageContext(job_id="nope", stage_name="stage"), "malformed job_id 'nope'"),
        (pb.StageContext(job_id=str(uuid.uuid4()), stage_name="stage"), "context of job"),
        (pb.StageContext(job_id=str(JOB_ID), stage_name="stage"), "no positive stage timeout"),
    ],
)
def test_malformed_context_from_the_platform_fails_clearly(
    channel: grpc_testing.Channel,
    started: list[clara.Driver[Any]],
    context: pb.StageContext,
    message: str,
) -> None:
    cleaned: list[bool] = []
    driver = new_driver(channel, started, cleanup=lambda d: cleaned.append(True) is None)
    driver.start()
    watch = serve_watch(channel, pb.STAGE_SIGNAL_INPUTS_READY, context)
    result = driver.wait_for_completion(WAIT)
    assert result.outcome is clara.StageOutcome.FAILED
    assert isinstance(result.error, clara.InvalidArgumentError)
    assert message in result.message
    assert not result.reported  # the stage's identity is not known: nothing to report to
    assert cleaned == [True]
    watch.terminate((), grpc.StatusCode.OK, "")


def test_a_platform_that_sends_no_context_on_the_stream_fails_clearly(
    channel: grpc_testing.Channel, started: list[clara.Driver[Any]]
) -> None:
    executed: list[bool] = []
    driver = new_driver(channel, started, execute=lambda d, p: executed.append(True) is None)
    driver.start()
    # A stage service that predates WatchStageRequest.include_context ignores it.
    _, _, watch = channel.take_unary_stream(WATCH)
    watch.send_response(pb.WatchStageResponse(signal=pb.STAGE_SIGNAL_INPUTS_READY))
    result = driver.wait_for_completion(WAIT)
    assert result.outcome is clara.StageOutcome.FAILED
    assert isinstance(result.error, clara.InvalidArgumentError)
    assert "no stage context in the first message" in result.message
    assert executed == []
    watch.terminate((), grpc.StatusCode.OK, "")


def test_a_stream_that_fails_before_the_context_is_retried_as_connecting(
    channel: grpc_testing.Channel, started: list[clara.Driver[Any]]
) -> None:
    notes: list[clara.Notification] = []
    driver = new_driver(
        channel, started, execute=lambda d, p: True, notify=lambda d, n: notes.append(n)
    )
    driver.start()
    _, _, refused = channel.take_unary_stream(WATCH)
    refused.terminate((), grpc.StatusCode.UNAVAILABLE, "not yet")
    watch = serve_watch(channel, pb.STAGE_SIGNAL_INPUTS_READY)  # asks for the context again
    _, report, rpc = channel.take_unary_unary(COMPLETE)
    assert report.outcome == pb.STAGE_OUTCOME_SUCCEEDED
    acknowledge(rpc, pb.STAGE_STATE_SUCCEEDED)
    assert driver.wait_for_completion(WAIT).reported
    kinds = [n.kind for n in notes]
    assert kinds.index(clara.NotificationKind.CONNECT_RETRY) < kinds.index(
        clara.NotificationKind.CONNECTED
    )
    assert clara.NotificationKind.STREAM_RECONNECTING not in kinds
    retry = next(n for n in notes if n.kind is clara.NotificationKind.CONNECT_RETRY)
    assert retry.message.startswith("WatchStage attempt 1 failed (UNAVAILABLE)")
    watch.terminate((), grpc.StatusCode.OK, "")


def test_a_stream_past_its_deadline_is_renewed_without_alarm(
    channel: grpc_testing.Channel, started: list[clara.Driver[Any]]
) -> None:
    waiting = threading.Event()
    notes: list[clara.Notification] = []

    def notify(driver: clara.Driver[Any], note: clara.Notification) -> None:
        notes.append(note)
        if note.kind is clara.NotificationKind.WAITING_FOR_INPUTS:
            waiting.set()

    driver = new_driver(channel, started, execute=lambda d, p: True, notify=notify)
    driver.start()
    first = serve_watch(channel, pb.STAGE_SIGNAL_WAITING)
    assert waiting.wait(WAIT)
    # The first stream was opened before the stage timeout was known; its deadline passes.
    first.terminate((), grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
    _, renewed, second = channel.take_unary_stream(WATCH)
    assert not renewed.include_context
    second.send_response(pb.WatchStageResponse(signal=pb.STAGE_SIGNAL_INPUTS_READY))
    _, _, rpc = channel.take_unary_unary(COMPLETE)
    acknowledge(rpc, pb.STAGE_STATE_SUCCEEDED)
    assert driver.wait_for_completion(WAIT).succeeded
    kinds = [n.kind for n in notes]
    assert clara.NotificationKind.STREAM_RECONNECTING not in kinds
    assert clara.NotificationKind.ERROR not in kinds
    second.terminate((), grpc.StatusCode.OK, "")


def test_a_platform_that_never_sends_the_context_fails_the_stage_at_the_connect_timeout(
    channel: grpc_testing.Channel, started: list[clara.Driver[Any]]
) -> None:
    cleaned: list[bool] = []
    driver = new_driver(
        channel,
        started,
        cleanup=lambda d: cleaned.append(True) is None,
        timeouts=clara.DriverTimeouts(connect=timedelta(seconds=0.3), grace=timedelta(seconds=0.2)),
    )
    driver.start()
    _, _, watch = channel.take_unary_stream(WATCH)  # accepted, never answered
    result = driver.wait_for_completion(WAIT)
    assert result.outcome is clara.StageOutcome.FAILED
    assert isinstance(result.error, clara.DeadlineExceededError)
    assert "fake:1 sent no stage context within 0:00:00.300000" in result.message
    assert not result.reported
    assert cleaned == [True]
    watch.cancelled()  # returns once the driver has cancelled the stream


def test_the_declared_paths_of_the_context_reach_the_payload(
    channel: grpc_testing.Channel, started: list[clara.Driver[Any]]
) -> None:
    seen: list[clara.Payload] = []
    driver = new_driver(channel, started, execute=lambda d, p: seen.append(p) is None)
    driver.start()
    context = stage_context()
    context.inputs[0].declared_path = "/input/segmentation"
    context.outputs[0].declared_path = "/output"
    watch = serve_watch(channel, pb.STAGE_SIGNAL_INPUTS_READY, context)
    _, _, rpc = channel.take_unary_unary(COMPLETE)
    acknowledge(rpc, pb.STAGE_STATE_SUCCEEDED)
    assert driver.wait_for_completion(WAIT).succeeded
    (payload,) = seen
    assert payload.input() == clara.PayloadEntry("", "/in", "up", "", "/input/segmentation")
    assert payload.output() == clara.PayloadEntry("", "/out", declared_path="/output")
    watch.terminate((), grpc.StatusCode.OK, "")
