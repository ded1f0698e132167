"""The stage API over real gRPC against the mock platform: validation, idempotency, streams."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clara.stage_api import stage_service_pb2 as pb
from clara.stage_api import stage_service_pb2_grpc as pb_grpc
from server_mock import InputRef, MockPlatform, StageSpec, StageState

WAIT = 20.0
T0 = 1_700_000_000  # a driver's clock, in seconds since the epoch


@pytest.fixture
def stub(clara_platform: MockPlatform) -> Iterator[pb_grpc.StageServiceStub]:
    with grpc.insecure_channel(clara_platform.address) as channel:
        yield pb_grpc.StageServiceStub(channel)


def ref(job_id: uuid.UUID | str, stage: str) -> pb.StageRef:
    return pb.StageRef(job_id=str(job_id), stage_name=stage)


def complete(
    stub: pb_grpc.StageServiceStub,
    job_id: uuid.UUID,
    stage: str,
    report_id: str,
    outcome: pb.StageOutcome.ValueType = pb.STAGE_OUTCOME_SUCCEEDED,
) -> pb.CompleteStageResponse:
    return stub.CompleteStage(
        pb.CompleteStageRequest(stage=ref(job_id, stage), report_id=report_id, outcome=outcome),
        timeout=WAIT,
    )


def test_complete_is_idempotent_on_report_id(
    clara_platform: MockPlatform, stub: pb_grpc.StageServiceStub
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    first = complete(stub, job_id, "only", "report-1")
    retry = complete(stub, job_id, "only", "report-1")
    other = complete(stub, job_id, "only", "report-2", pb.STAGE_OUTCOME_FAILED)
    assert (first.state, first.applied) == (pb.STAGE_STATE_SUCCEEDED, True)
    assert (retry.state, retry.applied) == (pb.STAGE_STATE_SUCCEEDED, True)
    assert (other.state, other.applied) == (pb.STAGE_STATE_SUCCEEDED, False)
    assert clara_platform.job(job_id).stages["only"].reports_applied == 1


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (
            pb.CompleteStageRequest(stage=ref("xyz", "s"), report_id="r", outcome=1),
            "INVALID_ARGUMENT",
            "stage.job_id",
        ),
        (
            pb.CompleteStageRequest(stage=ref(uuid.uuid4(), "bad name"), report_id="r", outcome=1),
            "INVALID_ARGUMENT",
            "stage.stage_name",
        ),
        (
            pb.CompleteStageRequest(stage=ref(uuid.uuid4(), "s"), report_id="", outcome=1),
            "INVALID_ARGUMENT",
            "report_id",
        ),
        (
            pb.CompleteStageRequest(stage=ref(uuid.uuid4(), "s"), report_id="x" * 129, outcome=1),
            "INVALID_ARGUMENT",
            "report_id",
        ),
        (
            pb.CompleteStageRequest(stage=ref(uuid.uuid4(), "s"), report_id="r", outcome=0),
            "INVALID_ARGUMENT",
            "outcome",
        ),
        (
            pb.CompleteStageRequest(stage=ref(uuid.uuid4(), "s"), report_id="r", outcome=99),
            "INVALID_ARGUMENT",
            "outcome",
        ),
        (
            pb.CompleteStageRequest(stage=ref(uuid.uuid4(), "s"), report_id="r", outcome=1),
            "NOT_FOUND",
            "no job",
        ),
    ],
)
def test_bad_reports_are_rejected_naming_the_field(
    stub: pb_grpc.StageServiceStub, request_: pb.CompleteStageRequest, code: str, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.CompleteStage(request_, timeout=WAIT)
    assert raised.value.code().name == code
    assert field in raised.value.details()


def test_unknown_stage_of_known_job_is_not_found(
    clara_platform: MockPlatform, stub: pb_grpc.StageServiceStub
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetStageContext(pb.GetStageContextRequest(stage=ref(job_id, "other")), timeout=WAIT)
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    assert "'other'" in raised.value.details()
    assert clara_platform.job(job_id).stages["only"].state is StageState.READY


def test_watch_is_level_triggered_and_ends_at_a_terminal_state(
    clara_platform: MockPlatform, stub: pb_grpc.StageServiceStub
) -> None:
    job_id = clara_platform.create_job(
        [StageSpec("up"), StageSpec("down", inputs=(InputRef("/x", "up"),))]
    )
    stream = stub.WatchStage(pb.WatchStageRequest(stage=ref(job_id, "down")), timeout=WAIT)
    first = next(stream)
    assert first.signal == pb.STAGE_SIGNAL_WAITING
    complete(stub, job_id, "up", "r-up")
    assert next(stream).signal == pb.STAGE_SIGNAL_INPUTS_READY
    # A watcher that (re)connects now learns the current signal at once: nothing is lost.
    late = stub.WatchStage(pb.WatchStageRequest(stage=ref(job_id, "down")), timeout=WAIT)
    assert next(late).signal == pb.STAGE_SIGNAL_INPUTS_READY
    complete(stub, job_id, "down", "r-down")
    rest = list(stream)
    assert [m.signal for m in rest] == [pb.STAGE_SIGNAL_COMPLETED]
    assert rest[0].state == pb.STAGE_STATE_SUCCEEDED
    assert [m.signal for m in late] == [pb.STAGE_SIGNAL_COMPLETED]


def test_watch_pushes_cancellation_and_upstream_failure(
    clara_platform: MockPlatform, stub: pb_grpc.StageServiceStub
) -> None:
    job_id = clara_platform.create_job(
        [StageSpec("up"), StageSpec("down", inputs=(InputRef("/x", "up"),)), StageSpec("solo")]
    )
    down = stub.WatchStage(pb.WatchStageRequest(stage=ref(job_id, "down")), timeout=WAIT)
    solo = stub.WatchStage(pb.WatchStageRequest(stage=ref(job_id, "solo")), timeout=WAIT)
    assert next(down).signal == pb.STAGE_SIGNAL_WAITING
    assert next(solo).signal == pb.STAGE_SIGNAL_INPUTS_READY
    complete(stub, job_id, "up", "r", pb.STAGE_OUTCOME_FAILED)
    failed = list(down)
    assert [m.signal for m in failed] == [pb.STAGE_SIGNAL_UPSTREAM_FAILED]
    assert "upstream stage up failed" in failed[0].message
    clara_platform.cancel_job(job_id, "stop it")
    cancelled = list(solo)
    assert [m.signal for m in cancelled] == [pb.STAGE_SIGNAL_JOB_CANCELLED]
    assert cancelled[0].message == "stop it"


def test_events_are_recorded_and_validated(
    clara_platform: MockPlatform, stub: pb_grpc.StageServiceStub
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    stub.ReportStageEvent(
        pb.ReportStageEventRequest(
            stage=ref(job_id, "only"), kind=pb.STAGE_EVENT_KIND_EXECUTE_STARTED, message="go"
        ),
        timeout=WAIT,
    )
    assert clara_platform.job(job_id).stages["only"].events == ("execute_started",)
    with pytest.raises(grpc.RpcError) as raised:
        stub.ReportStageEvent(
            pb.ReportStageEventRequest(stage=ref(job_id, "only"), kind=0), timeout=WAIT
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "kind" in raised.value.details()
    assert clara_platform.job(job_id).stages["only"].events == ("execute_started",)


def event(
    kind: pb.StageEventKind.ValueType, at: int | None = None, message: str = ""
) -> pb.StageEvent:
    """An event; ``at`` is the driver's time in seconds after ``T0`` (unset when None)."""
    time = None if at is None else timestamp_pb2.Timestamp(seconds=T0 + at)
    return pb.StageEvent(kind=kind, message=message, time=time)


def report_events(
    stub: pb_grpc.StageServiceStub, job_id: uuid.UUID, stage: str, *events: pb.StageEvent
) -> None:
    stub.ReportStageEvents(
        pb.ReportStageEventsRequest(stage=ref(job_id, stage), events=events), timeout=WAIT
    )


def test_a_batch_of_events_is_recorded_in_order_with_one_change(
    clara_platform: MockPlatform, stub: pb_grpc.StageServiceStub
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    version = clara_platform.call(lambda: clara_platform.jobs.get(job_id).version)
    report_events(
        stub,
        job_id,
        "only",
        event(pb.STAGE_EVENT_KIND_CONTEXT_RECEIVED),
        event(pb.STAGE_EVENT_KIND_PREPARE_STARTED),
        event(pb.STAGE_EVENT_KIND_PREPARE_FINISHED, message="x" * 5000),
    )
    assert clara_platform.job(job_id).stages["only"].events == (
        "context_received",
        "prepare_started",
        "prepare_finished",
    )
    job = clara_platform.call(lambda: clara_platform.jobs.get(job_id))
    assert job.version == version + 1  # watchers wake once per batch, not once per event
    assert len(job.stages["only"].events[-1].message) == 4096


def test_events_are_kept_in_driver_time_order_across_batches(
    clara_platform: MockPlatform, stub: pb_grpc.StageServiceStub
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    report_events(
        stub,
        job_id,
        "only",
        event(pb.STAGE_EVENT_KIND_INPUTS_READY, at=2),
        event(pb.STAGE_EVENT_KIND_CONTEXT_RECEIVED, at=0),
        event(pb.STAGE_EVENT_KIND_PREPARE_STARTED, at=1),
    )
    complete_with_events = pb.CompleteStageRequest(
        stage=ref(job_id, "only"),
        report_id="r-1",
        outcome=pb.STAGE_OUTCOME_SUCCEEDED,
        events=[event(pb.STAGE_EVENT_KIND_CLEANUP_FINISHED, at=6)],
    )
    stub.CompleteStage(complete_with_events, timeout=WAIT)
    # A batch that was still in flight when the stage completed arrives last.
    report_events(
        stub,
        job_id,
        "only",
        event(pb.STAGE_EVENT_KIND_EXECUTE_STARTED, at=3),
        event(pb.STAGE_EVENT_KIND_EXECUTE_FINISHED, at=4),
    )
    assert clara_platform.job(job_id).stages["only"].events == (
        "context_received",
        "prepare_started",
        "inputs_ready",
        "execute_started",
        "execute_finished",
        "cleanup_finished",
    )


def test_an_event_received_twice_is_recorded_once(
    clara_platform: MockPlatform, stub: pb_grpc.StageServiceStub
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    sent_twice = event(pb.STAGE_EVENT_KIND_EXECUTE_STARTED, at=3)
    report_events(stub, job_id, "only", sent_twice)  # its answer "never came": sent again
    report_events(stub, job_id, "only", sent_twice)
    complete_with_events = pb.CompleteStageRequest(
        stage=ref(job_id, "only"),
        report_id="r-1",
        outcome=pb.STAGE_OUTCOME_SUCCEEDED,
        events=[sent_twice, event(pb.STAGE_EVENT_KIND_EXECUTE_FINISHED, at=4)],
    )
    stub.CompleteStage(complete_with_events, timeout=WAIT)
    assert clara_platform.job(job_id).stages["only"].events == (
        "execute_started",
        "execute_finished",
    )


@pytest.mark.parametrize(
    ("bad", "details"),
    [
        (event(pb.STAGE_EVENT_KIND_UNSPECIFIED, at=3), "events[3].kind: 0 is not a valid"),
        (
            event(pb.StageEventKind.ValueType(42), at=3),
            "events[3].kind: 42 is not a valid event kind",
        ),
        (
            pb.StageEvent(
                kind=pb.STAGE_EVENT_KIND_ERROR, time=timestamp_pb2.Timestamp(seconds=T0, nanos=-1)
            ),
            f"events[3].time: seconds={T0} nanos=-1 is not a valid timestamp",
        ),
    ],
)
def test_a_batch_with_a_bad_event_is_rejected_and_nothing_of_it_is_recorded(
    clara_platform: MockPlatform,
    stub: pb_grpc.StageServiceStub,
    bad: pb.StageEvent,
    details: str,
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    good = [event(pb.STAGE_EVENT_KIND_CONTEXT_RECEIVED, at=i) for i in range(3)]
    with pytest.raises(grpc.RpcError) as raised:
        report_events(stub, job_id, "only", *good, bad, event(pb.STAGE_EVENT_KIND_ERROR, at=4))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details in raised.value.details()
    assert clara_platform.job(job_id).stages["only"].events == ()


@pytest.mark.parametrize("count", [0, 257])
def test_a_batch_of_0_or_more_than_256_events_is_rejected(
    clara_platform: MockPlatform, stub: pb_grpc.StageServiceStub, count: int
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    events = [event(pb.STAGE_EVENT_KIND_ERROR, at=i) for i in range(count)]
    with pytest.raises(grpc.RpcError) as raised:
        report_events(stub, job_id, "only", *events)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"events: {count} events; expected 1-256" in raised.value.details()
    assert clara_platform.job(job_id).stages["only"].events == ()


def test_a_stage_keeps_its_newest_256_events(
    clara_platform: MockPlatform, stub: pb_grpc.StageServiceStub
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    report_events(
        stub, job_id, "only", *[event(pb.STAGE_EVENT_KIND_ERROR, at=i) for i in range(256)]
    )
    report_events(
        stub,
        job_id,
        "only",
        event(pb.STAGE_EVENT_KIND_CONTEXT_RECEIVED, at=-1),  # older than all: trimmed at once
        event(pb.STAGE_EVENT_KIND_CLEANUP_FINISHED, at=300),
    )
    events = clara_platform.job(job_id).stages["only"].events
    assert len(events) == 256
    assert events[-1] == "cleanup_finished" and "context_received" not in events


def complete_with(
    stub: pb_grpc.StageServiceStub,
    job_id: uuid.UUID,
    report_id: str,
    *events: pb.StageEvent,
    outcome: pb.StageOutcome.ValueType = pb.STAGE_OUTCOME_SUCCEEDED,
) -> pb.CompleteStageResponse:
    return stub.CompleteStage(
        pb.CompleteStageRequest(
            stage=ref(job_id, "only"), report_id=report_id, outcome=outcome, events=events
        ),
        timeout=WAIT,
    )


def test_complete_stage_records_its_events_once_per_report(
    clara_platform: MockPlatform, stub: pb_grpc.StageServiceStub
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    report_events(stub, job_id, "only", event(pb.STAGE_EVENT_KIND_EXECUTE_STARTED, at=0))
    last = [
        event(pb.STAGE_EVENT_KIND_EXECUTE_FINISHED, at=1),
        event(pb.STAGE_EVENT_KIND_CLEANUP_STARTED, at=2),
        event(pb.STAGE_EVENT_KIND_CLEANUP_FINISHED, at=2),
    ]
    first = complete_with(stub, job_id, "r-1", *last)
    retry = complete_with(stub, job_id, "r-1", *last)
    assert (first.state, first.applied) == (retry.state, retry.applied)
    assert first.applied
    stage = clara_platform.job(job_id).stages["only"]
    assert stage.state is StageState.SUCCEEDED
    assert stage.events == (
        "execute_started",
        "execute_finished",
        "cleanup_started",
        "cleanup_finished",
    )


def test_a_retried_report_records_its_events_without_a_time_once_too(
    clara_platform: MockPlatform, stub: pb_grpc.StageServiceStub
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    untimed = event(pb.STAGE_EVENT_KIND_CLEANUP_FINISHED)
    assert not untimed.HasField("time")
    for _ in range(2):  # the same report, retried: applied once, its events recorded once
        assert complete_with(stub, job_id, "r-1", untimed).applied
    for _ in range(2):  # a later report that does not apply, retried
        assert not complete_with(
            stub, job_id, "r-2", event(pb.STAGE_EVENT_KIND_ERROR), outcome=pb.STAGE_OUTCOME_FAILED
        ).applied
    assert clara_platform.job(job_id).stages["only"].events == ("cleanup_finished", "error")


def test_a_report_that_does_not_apply_still_records_its_events(
    clara_platform: MockPlatform, stub: pb_grpc.StageServiceStub
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    complete_with(stub, job_id, "r-1", event(pb.STAGE_EVENT_KIND_EXECUTE_FINISHED, at=1))
    late = complete_with(
        stub,
        job_id,
        "r-2",
        event(pb.STAGE_EVENT_KIND_ERROR, at=2, message="late"),
        outcome=pb.STAGE_OUTCOME_FAILED,
    )
    assert not late.applied
    stage = clara_platform.job(job_id).stages["only"]
    assert (stage.state, stage.events) == (StageState.SUCCEEDED, ("execute_finished", "error"))


@pytest.mark.parametrize(
    ("events", "details"),
    [
        ([event(pb.STAGE_EVENT_KIND_ERROR), event(pb.STAGE_EVENT_KIND_UNSPECIFIED)], "events[1]"),
        ([event(pb.STAGE_EVENT_KIND_ERROR)] * 257, "events: 257 events; expected 0-256"),
    ],
)
def test_complete_stage_with_a_bad_event_is_rejected_and_does_not_complete(
    clara_platform: MockPlatform,
    stub: pb_grpc.StageServiceStub,
    events: list[pb.StageEvent],
    details: str,
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    with pytest.raises(grpc.RpcError) as raised:
        complete_with(stub, job_id, "r-1", *events)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details in raised.value.details()
    stage = clara_platform.job(job_id).stages["only"]
    assert (stage.state, stage.reports_applied, stage.events) == (StageState.READY, 0, ())
    # The same report, fixed, still applies: the rejected one left no trace.
    assert complete_with(stub, job_id, "r-1").applied


def test_health_and_reflection_are_served(clara_platform: MockPlatform) -> None:

    with grpc.insecure_channel(clara_platform.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(
            health_pb2.HealthCheckRequest(service="nvidia.clara.platform.stage.v1.StageService"),
            timeout=WAIT,
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=WAIT
        )
        names = {s.name for s in next(responses).list_services_response.service}
        assert "nvidia.clara.platform.stage.v1.StageService" in names


def test_outcome_rules_hold_over_the_stage_api(
    clara_platform: MockPlatform, stub: pb_grpc.StageServiceStub
) -> None:
    stages = [StageSpec("up"), StageSpec("down", inputs=(InputRef("/x", from_stage="up"),))]
    created = clara_platform.create_job(stages, start=False)
    with pytest.raises(grpc.RpcError) as not_started:
        complete(stub, created, "up", "r1", pb.STAGE_OUTCOME_FAILED)
    assert not_started.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert "has not started" in not_started.value.details()  # type: ignore[attr-defined]
    assert clara_platform.job(created).stages["up"].state is StageState.WAITING

    running = clara_platform.create_job(stages)
    with pytest.raises(grpc.RpcError) as early:
        complete(stub, running, "down", "r1")
    assert early.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert "outcome: stage 'down' cannot succeed" in early.value.details()  # type: ignore[attr-defined]
    down = clara_platform.job(running).stages["down"]
    assert (down.state, down.reports_applied) == (StageState.WAITING, 0)
    # The same report id is not burnt by the refusal: it applies once the inputs are ready.
    assert complete(stub, running, "up", "r0").applied
    assert complete(stub, running, "down", "r1").state == pb.STAGE_STATE_SUCCEEDED
