"""The Jobs service: the life-cycle with in-process drivers, validation, filters, logs."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import grpc
import pytest
from _api import (
    DRIVER_TIMEOUT,
    TWO_STAGES,
    Api,
    assert_refused,
    connect,
    copy_execute,
    create_job,
    download,
    ident,
    job_count,
    job_layout,
    new_payload,
    payload_files,
    pipeline_id,
    run_drivers,
    status,
    trailer,
    upload,
)

import clara
from server_mock import MockPlatform, StageSpec, StageState
from server_mock._definition import PipelineDefinition
from server_mock._errors import ErrorCode
from server_mock._jobs import Job, StageOutcome
from server_mock._platform_api.convert import SECONDS_TO_UNIX_EPOCH
from server_mock._platform_api.limits import LOG_LINES_PER_MESSAGE
from server_mock._proto.nvidia.clara.platform import (
    common_pb2,
    jobs_pb2,
    jobs_pb2_grpc,
    payloads_pb2,
    pipelines_pb2,
    pipelines_pb2_grpc,
)
from server_mock._workspace import JobLayout


def test_job_life_cycle_with_in_process_drivers(api: Api, platform: MockPlatform) -> None:
    pipeline = pipeline_id(api)
    inputs = new_payload(api)
    upload(api, inputs, "scan/image.txt", b"pixels")
    before = time.time()
    created = create_job(
        api,
        pipeline,
        name="life-cycle",
        priority=jobs_pb2.JOB_PRIORITY_HIGHER,
        input_payloads=[inputs],
        metadata={"patient": "anon"},
    )
    job_id = created.job_id
    assert len(job_id.value) == 32 and created.payload_id.value

    pending = status(api, job_id)
    assert (pending.state, pending.status) == (
        jobs_pb2.JOB_STATE_PENDING,
        jobs_pb2.JOB_STATUS_HEALTHY,
    )
    assert pending.priority == jobs_pb2.JOB_PRIORITY_HIGHER
    assert (
        pending.pipeline_id.value == pipeline.value
        and pending.payload_id.value == created.payload_id.value
    )
    assert dict(pending.metadata) == {"patient": "anon"}
    assert not pending.started.value and not pending.stopped.value
    assert before - 1 <= pending.created.value - SECONDS_TO_UNIX_EPOCH <= time.time() + 1
    assert [d.status for d in pending.operator_details] == [
        jobs_pb2.JOB_OPERATOR_STATUS_PENDING
    ] * 2
    assert [(n.name, [d.name for d in n.input_dependencies]) for n in pending.dag] == [
        ("first", []),
        ("second", ["first"]),
    ]

    # Files uploaded into the job's own payload land in its input folder.
    direct = upload(api, created.payload_id, "notes.txt", b"hello")
    assert direct.header.code == 0 and direct.details.name == "input/notes.txt"

    started = api.jobs.Start(jobs_pb2.JobsStartRequest(job_id=job_id))
    assert started.header.code == 0, started.header.messages
    assert (started.state, started.status, started.priority) == (
        jobs_pb2.JOB_STATE_RUNNING,
        jobs_pb2.JOB_STATUS_HEALTHY,
        jobs_pb2.JOB_PRIORITY_HIGHER,
    )
    running = status(api, job_id)
    assert [d.status for d in running.operator_details] == [
        jobs_pb2.JOB_OPERATOR_STATUS_RUNNING,
        jobs_pb2.JOB_OPERATOR_STATUS_PENDING,
    ]

    results = run_drivers(
        platform, job_id.value, {"first": copy_execute(b"+1"), "second": copy_execute(b"+2")}
    )
    assert all(r.succeeded for r in results.values()), results
    platform.wait_for_job(uuid.UUID(job_id.value), DRIVER_TIMEOUT)

    done = status(api, job_id)
    assert (done.state, done.status) == (jobs_pb2.JOB_STATE_STOPPED, jobs_pb2.JOB_STATUS_HEALTHY)
    assert [d.status for d in done.operator_details] == [jobs_pb2.JOB_OPERATOR_STATUS_COMPLETED] * 2
    assert done.created.value <= done.started.value <= done.stopped.value
    assert all(d.stopped.value >= d.started.value > 0 for d in done.operator_details)

    files = payload_files(api, created.payload_id)
    assert files["input/scan/image.txt"] == 6 and files["input/notes.txt"] == 5
    assert download(api, created.payload_id, "operators/second/scan/image.txt")[1] == b"pixels+1+2"
    assert download(api, created.payload_id, "operators/second/notes.txt")[1] == b"hello+1+2"

    [listed] = [
        r.job_details
        for r in api.jobs.List(jobs_pb2.JobsListRequest())
        if r.job_details.job_id.value
    ]
    assert (listed.job_name, listed.state, listed.status) == (
        "life-cycle",
        jobs_pb2.JOB_STATE_STOPPED,
        jobs_pb2.JOB_STATUS_HEALTHY,
    )
    assert listed.payload_id.value == created.payload_id.value and dict(listed.metadata) == {
        "patient": "anon"
    }


def test_job_payload_is_read_only_once_started_and_deletable_once_ended(api: Api) -> None:
    created = create_job(api, pipeline_id(api))
    upload(api, created.payload_id, "a.txt", b"a")
    assert api.jobs.Start(jobs_pb2.JobsStartRequest(job_id=created.job_id)).header.code == 0
    assert_refused(
        upload(api, created.payload_id, "b.txt", b"b").header,
        ErrorCode.PAYLOAD_READ_ONLY,
        "read-only",
    )
    removed = api.payloads.Remove(
        payloads_pb2.PayloadsRemoveRequest(payload_id=created.payload_id, name="input/a.txt")
    )
    assert_refused(removed.header, ErrorCode.PAYLOAD_READ_ONLY)
    deleted, call = api.payloads.Delete.with_call(
        payloads_pb2.PayloadsDeleteRequest(payload_id=created.payload_id)
    )
    assert_refused(deleted.header, ErrorCode.PAYLOAD_IN_USE, "running")
    assert trailer(call) == "FAILED_PRECONDITION"
    assert payload_files(api, created.payload_id) == {"input/a.txt": 1}
    api.jobs.Cancel(jobs_pb2.JobsCancelRequest(job_id=created.job_id))
    assert (
        api.payloads.Delete(
            payloads_pb2.PayloadsDeleteRequest(payload_id=created.payload_id)
        ).header.code
        == 0
    )


@pytest.mark.parametrize(
    ("fields", "code", "fragment"),
    [
        ({"name": ""}, ErrorCode.INVALID_JOB_NAME, "job name ''"),
        ({"name": "has space"}, ErrorCode.INVALID_JOB_NAME, "[A-Za-z0-9_-]"),
        ({"name": "x" * 256}, ErrorCode.INVALID_JOB_NAME, "1-255"),
        ({"priority": 9}, ErrorCode.INVALID_JOB_PRIORITY, "priority 9"),
        (
            {"input_payloads": [ident("bad")]},
            ErrorCode.INVALID_PAYLOAD_ID,
            "input payload id 'bad'",
        ),
        ({"input_payloads": [ident(uuid.uuid4())]}, ErrorCode.PAYLOAD_NOT_FOUND, "not found"),
        ({"metadata": {"": "x"}}, ErrorCode.INVALID_JOB_METADATA, "must not be empty"),
    ],
)
def test_job_create_validation_changes_nothing(
    api: Api, platform: MockPlatform, fields: dict[str, Any], code: ErrorCode, fragment: str
) -> None:
    pipeline = pipeline_id(api)
    counts = job_count(platform)
    request = jobs_pb2.JobsCreateRequest(pipeline_id=pipeline, **{"name": "ok", **fields})
    response = api.jobs.Create(request)
    assert_refused(response.header, code, fragment)
    assert job_count(platform) == counts


def test_job_inputs_must_be_distinct_reusable_payloads(api: Api, platform: MockPlatform) -> None:
    pipeline = pipeline_id(api)
    reusable = new_payload(api)
    twice = api.jobs.Create(
        jobs_pb2.JobsCreateRequest(
            pipeline_id=pipeline, name="j", input_payloads=[reusable, reusable]
        )
    )
    assert_refused(twice.header, ErrorCode.INVALID_JOB_INPUTS, "more than once")
    job_payload = create_job(api, pipeline).payload_id
    counts = job_count(platform)
    owned = api.jobs.Create(
        jobs_pb2.JobsCreateRequest(pipeline_id=pipeline, name="j", input_payloads=[job_payload])
    )
    assert_refused(owned.header, ErrorCode.INVALID_JOB_INPUTS, "only reusable payloads")
    assert job_count(platform) == counts


def test_job_start_refuses_colliding_inputs_and_a_second_start(
    api: Api, platform: MockPlatform
) -> None:
    pipeline = pipeline_id(api)
    one, two = new_payload(api), new_payload(api)
    upload(api, one, "same.txt", b"1")
    upload(api, two, "same.txt", b"2")
    created = create_job(api, pipeline, input_payloads=[one, two])
    response, call = api.jobs.Start.with_call(jobs_pb2.JobsStartRequest(job_id=created.job_id))
    assert_refused(response.header, ErrorCode.INVALID_JOB_INPUTS, "'same.txt'", "collides")
    assert trailer(call) == "INVALID_ARGUMENT"
    assert status(api, created.job_id).state == jobs_pb2.JOB_STATE_PENDING
    assert payload_files(api, created.payload_id) == {}

    api.payloads.Remove(payloads_pb2.PayloadsRemoveRequest(payload_id=two, name="same.txt"))
    assert api.jobs.Start(jobs_pb2.JobsStartRequest(job_id=created.job_id)).header.code == 0
    assert payload_files(api, created.payload_id) == {"input/same.txt": 1}
    again, call = api.jobs.Start.with_call(jobs_pb2.JobsStartRequest(job_id=created.job_id))
    assert_refused(again.header, ErrorCode.JOB_NOT_STARTABLE, "only a created job can be started")
    assert trailer(call) == "FAILED_PRECONDITION"


def test_job_start_variables_reach_the_stages(api: Api, platform: MockPlatform) -> None:
    created = create_job(api, pipeline_id(api))
    named = jobs_pb2.JobsStartRequest.NamedValue
    bad = api.jobs.Start(
        jobs_pb2.JobsStartRequest(job_id=created.job_id, Variables=[named(name="1bad", value="x")])
    )
    assert_refused(bad.header, ErrorCode.INVALID_JOB_VARIABLES, "'1bad'")
    dup = api.jobs.Start(
        jobs_pb2.JobsStartRequest(
            job_id=created.job_id,
            Variables=[named(name="A", value="1"), named(name="A", value="2")],
        )
    )
    assert_refused(dup.header, ErrorCode.INVALID_JOB_VARIABLES, "given twice")
    assert status(api, created.job_id).state == jobs_pb2.JOB_STATE_PENDING
    ok = api.jobs.Start(
        jobs_pb2.JobsStartRequest(
            job_id=created.job_id, Variables=[named(name="MODE", value="fast")]
        )
    )
    assert ok.header.code == 0

    seen: dict[str, str] = {}

    def execute(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        seen.update(driver.context.variables)
        return True

    results = run_drivers(platform, created.job_id.value, {"first": execute})
    assert results["first"].succeeded
    assert seen["MODE"] == "fast"


@pytest.mark.parametrize(
    ("value", "code", "status_name"),
    [
        ("", ErrorCode.INVALID_JOB_ID, "INVALID_ARGUMENT"),
        ("123", ErrorCode.INVALID_JOB_ID, "INVALID_ARGUMENT"),
        (uuid.uuid4().hex, ErrorCode.JOB_NOT_FOUND, "NOT_FOUND"),
    ],
)
def test_job_ids_are_validated(api: Api, value: str, code: ErrorCode, status_name: str) -> None:
    job = ident(value)
    response, call = api.jobs.Status.with_call(jobs_pb2.JobsStatusRequest(job_id=job))
    assert_refused(response.header, code)
    assert trailer(call) == status_name
    assert_refused(api.jobs.Start(jobs_pb2.JobsStartRequest(job_id=job)).header, code)
    assert_refused(api.jobs.Cancel(jobs_pb2.JobsCancelRequest(job_id=job)).header, code)
    assert_refused(
        api.jobs.AddMetadata(
            jobs_pb2.JobsAddMetadataRequest(job_id=job, metadata={"a": "b"})
        ).header,
        code,
    )
    assert_refused(
        api.jobs.RemoveMetadata(jobs_pb2.JobsRemoveMetadataRequest(job_id=job, keys=["a"])).header,
        code,
    )
    with pytest.raises(grpc.RpcError) as logs:
        list(api.jobs.ReadLogs(jobs_pb2.JobsReadLogsRequest(job_id=job, operator_name="first")))
    assert logs.value.code().name == status_name  # type: ignore[attr-defined]


def test_job_cancel(api: Api, platform: MockPlatform) -> None:
    created = create_job(api, pipeline_id(api))
    api.jobs.Start(jobs_pb2.JobsStartRequest(job_id=created.job_id))
    too_long = api.jobs.Cancel(jobs_pb2.JobsCancelRequest(job_id=created.job_id, reason="r" * 5000))
    assert_refused(too_long.header, ErrorCode.INVALID_JOB_REQUEST, "reason")
    assert status(api, created.job_id).state == jobs_pb2.JOB_STATE_RUNNING

    cancelled = api.jobs.Cancel(
        jobs_pb2.JobsCancelRequest(job_id=created.job_id, reason="operator asked")
    )
    assert cancelled.header.code == 0
    assert cancelled.job_id.value == created.job_id.value
    assert (cancelled.job_state, cancelled.job_status) == (
        jobs_pb2.JOB_STATE_STOPPED,
        jobs_pb2.JOB_STATUS_CANCELED,
    )
    after = status(api, created.job_id)
    assert (after.state, after.status) == (jobs_pb2.JOB_STATE_STOPPED, jobs_pb2.JOB_STATUS_CANCELED)
    assert "operator asked" in after.messages
    assert [d.status for d in after.operator_details] == [jobs_pb2.JOB_OPERATOR_STATUS_FAULTED] * 2
    assert after.stopped.value > 0
    # Cancelling again, or starting, changes nothing.
    again = api.jobs.Cancel(jobs_pb2.JobsCancelRequest(job_id=created.job_id))
    assert again.header.code == 0 and again.job_status == jobs_pb2.JOB_STATUS_CANCELED
    assert_refused(
        api.jobs.Start(jobs_pb2.JobsStartRequest(job_id=created.job_id)).header,
        ErrorCode.JOB_NOT_STARTABLE,
    )


def test_cancel_of_a_completed_job_keeps_it_healthy(api: Api, platform: MockPlatform) -> None:
    created = create_job(api, pipeline_id(api))
    api.jobs.Start(jobs_pb2.JobsStartRequest(job_id=created.job_id))
    job_id = uuid.UUID(created.job_id.value)
    for stage in ("first", "second"):
        platform.call(
            lambda s=stage: platform.jobs.get(job_id).complete_stage(
                s, "r-" + s, StageOutcome.SUCCEEDED, "ok"
            )
        )
    response = api.jobs.Cancel(jobs_pb2.JobsCancelRequest(job_id=created.job_id))
    assert response.header.code == 0
    assert (response.job_state, response.job_status) == (
        jobs_pb2.JOB_STATE_STOPPED,
        jobs_pb2.JOB_STATUS_HEALTHY,
    )


def test_failed_stage_faults_the_job_and_its_dependants(api: Api, platform: MockPlatform) -> None:
    created = create_job(api, pipeline_id(api))
    api.jobs.Start(jobs_pb2.JobsStartRequest(job_id=created.job_id))
    results = run_drivers(platform, created.job_id.value, {"first": lambda driver, payload: False})
    assert not results["first"].succeeded
    platform.wait_for_job(uuid.UUID(created.job_id.value), DRIVER_TIMEOUT)
    failed = status(api, created.job_id)
    assert (failed.state, failed.status) == (
        jobs_pb2.JOB_STATE_STOPPED,
        jobs_pb2.JOB_STATUS_FAULTED,
    )
    assert [d.status for d in failed.operator_details] == [jobs_pb2.JOB_OPERATOR_STATUS_FAULTED] * 2
    assert failed.messages and "first: failed" in failed.messages[0]


def test_job_list_filters(api: Api, platform: MockPlatform) -> None:
    first, second = pipeline_id(api), pipeline_id(api)
    pending = create_job(api, first, name="pending").job_id
    running = create_job(api, first, name="running").job_id
    api.jobs.Start(jobs_pb2.JobsStartRequest(job_id=running))
    cancelled = create_job(api, second, name="cancelled").job_id
    api.jobs.Cancel(jobs_pb2.JobsCancelRequest(job_id=cancelled))
    stage_only = platform.create_job([StageSpec("only")], name="stage-only")

    def names(**filter_fields: Any) -> list[str]:
        request = jobs_pb2.JobsListRequest(
            filter=jobs_pb2.JobsListRequest.JobFilter(**filter_fields)
        )
        responses = list(api.jobs.List(request))
        assert all(r.header.code == 0 for r in responses)
        return sorted(r.job_details.job_name for r in responses if r.job_details.job_id.value)

    assert names() == ["cancelled", "pending", "running", "stage-only"]
    assert names(has_state=[jobs_pb2.JOB_STATE_PENDING]) == ["pending"]
    assert names(has_state=[jobs_pb2.JOB_STATE_RUNNING, jobs_pb2.JOB_STATE_STOPPED]) == [
        "cancelled",
        "running",
        "stage-only",
    ]
    assert names(has_status=[jobs_pb2.JOB_STATUS_CANCELED]) == ["cancelled"]
    assert names(pipeline_id=[first]) == ["pending", "running"]
    assert names(pipeline_id=[second], has_state=[jobs_pb2.JOB_STATE_STOPPED]) == ["cancelled"]
    now = int(time.time()) + SECONDS_TO_UNIX_EPOCH
    assert names(completed_before=common_pb2.Timestamp(value=now + 60)) == ["cancelled"]
    assert names(completed_before=common_pb2.Timestamp(value=now - 3600)) == []
    assert names(created_after=common_pb2.Timestamp(value=now + 60)) == []
    assert len(names(created_after=common_pb2.Timestamp(value=now - 3600))) == 4

    [bad] = list(
        api.jobs.List(
            jobs_pb2.JobsListRequest(filter=jobs_pb2.JobsListRequest.JobFilter(has_state=[7]))
        )
    )
    assert_refused(bad.header, ErrorCode.INVALID_JOB_FILTER, "has_state")
    [bad] = list(
        api.jobs.List(
            jobs_pb2.JobsListRequest(
                filter=jobs_pb2.JobsListRequest.JobFilter(pipeline_id=[ident("x")])
            )
        )
    )
    assert_refused(bad.header, ErrorCode.INVALID_PIPELINE_ID)

    listing = {
        r.job_details.job_name: r.job_details for r in api.jobs.List(jobs_pb2.JobsListRequest())
    }
    assert (
        listing["stage-only"].job_id.value == stage_only.hex
        and not listing["stage-only"].payload_id.value
    )
    assert (
        listing["pending"].pipeline_id.value == first.value and listing["pending"].payload_id.value
    )
    assert pending.value in {d.job_id.value for d in listing.values()}
    assert not status(api, ident(stage_only)).payload_id.value


def test_read_logs(api: Api, platform: MockPlatform) -> None:
    created = create_job(api, pipeline_id(api))
    request = jobs_pb2.JobsReadLogsRequest(job_id=created.job_id, operator_name="first")
    [empty] = list(api.jobs.ReadLogs(request))
    assert empty.header.code == 0 and list(empty.logs) == [] and empty.operator_name == "first"

    lines = [f"line {i} ünïcode" for i in range(LOG_LINES_PER_MESSAGE * 2 + 10)]
    log_path = job_layout(platform, created.job_id.value).log_path("first")
    log_path.write_bytes(("\n".join(lines) + "\r\nno newline at end").encode() + b"\xff")
    responses = list(api.jobs.ReadLogs(request))
    assert len(responses) == 3
    assert all(r.header.code == 0 and r.job_id.value == created.job_id.value for r in responses)
    received = [line for r in responses for line in r.logs]
    # CRLF endings are stripped like LF; undecodable bytes are replaced.
    assert received == [*lines, "no newline at end\ufffd"]

    with pytest.raises(grpc.RpcError) as unknown:
        list(
            api.jobs.ReadLogs(
                jobs_pb2.JobsReadLogsRequest(job_id=created.job_id, operator_name="ghost")
            )
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert "no operator 'ghost'" in unknown.value.details()  # type: ignore[attr-defined]
    trailing = dict(unknown.value.trailing_metadata())  # type: ignore[attr-defined]
    assert trailing["clara-status-code"] == "NOT_FOUND"


def test_job_metadata(api: Api, platform: MockPlatform) -> None:
    created = create_job(api, pipeline_id(api), metadata={"a": "1"})
    added = api.jobs.AddMetadata(
        jobs_pb2.JobsAddMetadataRequest(job_id=created.job_id, metadata={"b": "2"})
    )
    assert added.header.code == 0 and dict(added.metadata) == {"a": "1", "b": "2"}
    removed = api.jobs.RemoveMetadata(
        jobs_pb2.JobsRemoveMetadataRequest(job_id=created.job_id, keys=["a"])
    )
    assert dict(removed.metadata) == {"b": "2"}
    too_big = api.jobs.AddMetadata(
        jobs_pb2.JobsAddMetadataRequest(job_id=created.job_id, metadata={"v": "x" * 70_000})
    )
    assert_refused(too_big.header, ErrorCode.INVALID_JOB_METADATA)
    assert dict(status(api, created.job_id).metadata) == {"b": "2"}
    stage_only = platform.create_job([StageSpec("only")])
    refused = api.jobs.AddMetadata(
        jobs_pb2.JobsAddMetadataRequest(job_id=ident(stage_only), metadata={"a": "b"})
    )
    assert_refused(
        refused.header, ErrorCode.INVALID_JOB_REQUEST, "not created through the Jobs API"
    )


class FailingLauncher:
    async def start(self, job: Job, definition: PipelineDefinition, layout: JobLayout) -> None:
        job.start()
        raise OSError("no such image: example/first")


def test_a_launch_failure_fails_the_job() -> None:
    with MockPlatform(launcher=FailingLauncher()) as platform:
        channel = grpc.insecure_channel(platform.address)
        try:
            jobs = jobs_pb2_grpc.JobsStub(channel)
            pipelines = pipelines_pb2_grpc.PipelinesStub(channel)
            created_pipeline = pipelines.Create(
                iter(
                    [
                        pipelines_pb2.PipelinesCreateRequest(
                            definition=pipelines_pb2.PipelineDefinitionFile(content=TWO_STAGES)
                        )
                    ]
                )
            )
            job = jobs.Create(
                jobs_pb2.JobsCreateRequest(pipeline_id=created_pipeline.pipeline_id, name="doomed")
            )
            started, call = jobs.Start.with_call(jobs_pb2.JobsStartRequest(job_id=job.job_id))
            assert_refused(started.header, ErrorCode.JOB_LAUNCH_FAILED, "no such image")
            assert trailer(call) == "INTERNAL"
            after = jobs.Status(jobs_pb2.JobsStatusRequest(job_id=job.job_id))
            assert (after.state, after.status) == (
                jobs_pb2.JOB_STATE_STOPPED,
                jobs_pb2.JOB_STATUS_FAULTED,
            )
        finally:
            channel.close()


def test_stage_states_map_onto_operator_statuses(api: Api, platform: MockPlatform) -> None:
    job_id = platform.create_job([StageSpec("a"), StageSpec("b"), StageSpec("c")], name="mapped")
    platform.call(
        lambda: platform.jobs.get(job_id).complete_stage("a", "r1", StageOutcome.SUCCEEDED, "")
    )
    platform.fail_stage(job_id, "b", StageState.TIMED_OUT, "too slow")
    report = status(api, ident(job_id))
    assert [d.status for d in report.operator_details] == [
        jobs_pb2.JOB_OPERATOR_STATUS_COMPLETED,
        jobs_pb2.JOB_OPERATOR_STATUS_FAULTED,
        jobs_pb2.JOB_OPERATOR_STATUS_RUNNING,
    ]
    assert report.state == jobs_pb2.JOB_STATE_RUNNING
    assert any("b: timed_out" in m and "too slow" in m for m in report.messages)


class GatedLauncher:
    """Starts the job only when the test releases it, to observe a start in progress."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release: asyncio.Event | None = None

    async def start(self, job: Job, definition: PipelineDefinition, layout: JobLayout) -> None:
        self.release = asyncio.Event()
        self.entered.set()
        await self.release.wait()
        job.start()


def test_a_job_being_started_cannot_be_started_again_nor_changed() -> None:
    launcher = GatedLauncher()
    with MockPlatform(launcher=launcher) as platform, connect(platform) as api:
        created = create_job(api, pipeline_id(api))
        first = api.jobs.Start.future(jobs_pb2.JobsStartRequest(job_id=created.job_id))
        assert launcher.entered.wait(DRIVER_TIMEOUT)
        second = api.jobs.Start(jobs_pb2.JobsStartRequest(job_id=created.job_id))
        assert_refused(second.header, ErrorCode.JOB_NOT_STARTABLE, "being started")
        late = upload(api, created.payload_id, "late.txt", b"late")
        assert_refused(late.header, ErrorCode.PAYLOAD_READ_ONLY)
        release = launcher.release
        assert release is not None
        platform.call(release.set)
        assert first.result(DRIVER_TIMEOUT).header.code == 0
        assert status(api, created.job_id).state == jobs_pb2.JOB_STATE_RUNNING
        assert payload_files(api, created.payload_id) == {}
