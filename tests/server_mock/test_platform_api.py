"""The mock's public Clara Platform API (Clara, Pipelines, Jobs, Payloads, Models), with our stubs.

Stages are completed by in-process ``clara.Driver`` instances or directly on the loop thread;
nothing here sleeps: every wait is on an event or a driver's completion.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import clara
from server_mock import MockPlatform, StageSpec, StageState
from server_mock._errors import ErrorCode
from server_mock._jobs import Job
from server_mock._pipeline_definition import PipelineDefinition
from server_mock._platform_api import (
    LOG_LINES_PER_MESSAGE,
    MAX_DAG_DEPTH,
    MAX_METADATA_ENTRIES,
    SECONDS_TO_UNIX_EPOCH,
)
from server_mock._proto.nvidia.clara.platform import (
    clara_pb2,
    clara_pb2_grpc,
    common_pb2,
    jobs_pb2,
    jobs_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    payloads_pb2,
    payloads_pb2_grpc,
    pipelines_pb2,
    pipelines_pb2_grpc,
)
from server_mock._workspace import JobLayout

CHUNK = 64 * 1024
DRIVER_TIMEOUT = 30

TWO_STAGES = """\
api-version: 0.4.0
name: two-stages
operators:
- name: first
  container: {image: example/first}
  input: [{path: /input}]
  output: [{path: /output}]
- name: second
  container: {image: example/second}
  input: [{from: first, path: /in}]
  output: [{path: /out}]
"""

HEADER = "api-version: 0.4.0\nname: broken\noperators:\n"
BAD_DEFINITIONS = {
    "cycle": (
        HEADER + "- name: a\n  container: {image: x}\n  input: [{from: b, path: /i}]\n"
        "  output: [{path: /o}]\n"
        "- name: b\n  container: {image: x}\n  input: [{from: a, path: /i}]\n"
        "  output: [{path: /o}]\n",
        ["operator 'a'", "field 'input[0].from'", "cycle"],
    ),
    "unknown-from": (
        HEADER + "- name: a\n  container: {image: x}\n  input: [{from: ghost, path: /i}]\n",
        ["operator 'a'", "field 'input[0].from'", "unknown operator 'ghost'"],
    ),
    "duplicate-name": (
        HEADER + "- name: a\n  container: {image: x}\n- name: a\n  container: {image: x}\n",
        ["operator 'a'", "field 'name'", "duplicate operator name"],
    ),
    "malformed-yaml": (
        HEADER + "- name: a\n  container: {image: x\n",
        ["malformed YAML at line 6"],
    ),
}


@dataclass
class Api:
    clara: clara_pb2_grpc.ClaraStub
    pipelines: pipelines_pb2_grpc.PipelinesStub
    jobs: jobs_pb2_grpc.JobsStub
    payloads: payloads_pb2_grpc.PayloadsStub
    models: models_pb2_grpc.ModelsStub
    channel: grpc.Channel


@pytest.fixture
def platform(clara_platform: MockPlatform) -> MockPlatform:
    return clara_platform


@pytest.fixture
def api(platform: MockPlatform) -> Iterator[Api]:
    channel = grpc.insecure_channel(platform.address)
    try:
        yield Api(
            clara=clara_pb2_grpc.ClaraStub(channel),
            pipelines=pipelines_pb2_grpc.PipelinesStub(channel),
            jobs=jobs_pb2_grpc.JobsStub(channel),
            payloads=payloads_pb2_grpc.PayloadsStub(channel),
            models=models_pb2_grpc.ModelsStub(channel),
            channel=channel,
        )
    finally:
        channel.close()


# --- helpers -----------------------------------------------------------------------------


def ident(value: str | uuid.UUID) -> common_pb2.Identifier:
    return common_pb2.Identifier(value=value.hex if isinstance(value, uuid.UUID) else value)


def create_pipeline(
    api: Api, text: str = TWO_STAGES, *, path: str = "pipeline.yaml", **fields: Any
) -> pipelines_pb2.PipelinesCreateResponse:
    request = pipelines_pb2.PipelinesCreateRequest(
        definition=pipelines_pb2.PipelineDefinitionFile(path=path, content=text), **fields
    )
    return api.pipelines.Create(iter([request]))


def pipeline_id(api: Api, text: str = TWO_STAGES) -> common_pb2.Identifier:
    response = create_pipeline(api, text)
    assert response.header.code == 0, response.header.messages
    return response.pipeline_id


def list_pipelines(api: Api) -> list[pipelines_pb2.PipelinesListResponse.PipelineDetails]:
    return [
        r.details
        for r in api.pipelines.List(pipelines_pb2.PipelinesListRequest())
        if r.details.pipeline_id.value
    ]


def new_payload(api: Api, **metadata: str) -> common_pb2.Identifier:
    response = api.payloads.Create(payloads_pb2.PayloadsCreateRequest(metadata=metadata))
    assert response.header.code == 0
    assert response.type == payloads_pb2.PAYLOAD_TYPE_REUSABLE
    return response.payload_id


def upload(
    api: Api, payload: common_pb2.Identifier, name: str, data: bytes, chunk: int = CHUNK
) -> payloads_pb2.PayloadsUploadResponse:
    requests = [
        payloads_pb2.PayloadsUploadRequest(
            payload_id=payload,
            details=payloads_pb2.PayloadFileDetails(name=name, size=len(data[i : i + chunk])),
            data=data[i : i + chunk],
        )
        for i in range(0, max(len(data), 1), chunk)
    ]
    return api.payloads.Upload(iter(requests))


def download(
    api: Api, payload: common_pb2.Identifier, name: str
) -> tuple[list[payloads_pb2.PayloadsDownloadResponse], bytes]:
    messages = list(
        api.payloads.Download(payloads_pb2.PayloadsDownloadRequest(payload_id=payload, name=name))
    )
    return messages, b"".join(m.data for m in messages)


def payload_files(api: Api, payload: common_pb2.Identifier) -> dict[str, int]:
    responses = list(api.payloads.Details(payloads_pb2.PayloadsDetailsRequest(payload_id=payload)))
    assert responses[0].header.code == 0, responses[0].header.messages
    return {r.file.name: r.file.size for r in responses if r.file.name}


def create_job(
    api: Api, pipeline: common_pb2.Identifier, name: str = "job-1", **fields: Any
) -> jobs_pb2.JobsCreateResponse:
    response = api.jobs.Create(
        jobs_pb2.JobsCreateRequest(pipeline_id=pipeline, name=name, **fields)
    )
    assert response.header.code == 0, response.header.messages
    return response


def status(api: Api, job: common_pb2.Identifier) -> jobs_pb2.JobsStatusResponse:
    response = api.jobs.Status(jobs_pb2.JobsStatusRequest(job_id=job))
    assert response.header.code == 0, response.header.messages
    return response


def assert_refused(header: common_pb2.ResponseHeader, code: ErrorCode, *fragments: str) -> None:
    assert header.code == code, (header.code, list(header.messages))
    text = "\n".join(header.messages)
    for fragment in fragments:
        assert fragment in text, text


def trailer(call: grpc.Call) -> str | None:
    return dict(call.trailing_metadata() or ()).get("clara-status-code")  # type: ignore[arg-type]


def job_layout(platform: MockPlatform, job_id: str) -> JobLayout:
    return platform.call(lambda: platform.state.job_records[uuid.UUID(job_id)].layout)


def run_drivers(
    platform: MockPlatform, job_id: str, execute: dict[str, Any]
) -> dict[str, clara.StageResult]:
    """Run one in-process driver per stage (concurrently) and return their results."""
    drivers = {
        name: clara.Driver(execute=fn, target=platform.address, job_id=job_id, stage_name=name)
        for name, fn in execute.items()
    }
    for driver in drivers.values():
        driver.start()
    return {name: d.wait_for_completion(DRIVER_TIMEOUT) for name, d in drivers.items()}


def copy_execute(suffix: bytes) -> Any:
    def execute(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        source = Path(payload.input_entries[0].path)
        target = Path(payload.output_entries[0].path)
        for file in sorted(source.rglob("*")):
            if file.is_file():
                out = target / file.relative_to(source)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(file.read_bytes() + suffix)
        return True

    return execute


def job_count(platform: MockPlatform) -> tuple[int, int]:
    return platform.call(lambda: (len(platform.jobs.all()), len(platform.state.payloads.all())))


# --- Clara, Models, reflection, health ---------------------------------------------------------


def test_version(api: Api) -> None:
    response = api.clara.Version(clara_pb2.ClaraVersionRequest())
    assert response.header.code == 0
    assert (response.version.major, response.version.minor) == (0, 8)
    assert response.version.label == "mock"


def test_stop_is_refused_and_the_platform_keeps_running(api: Api) -> None:
    response, call = api.clara.Stop.with_call(clara_pb2.ClaraStopRequest())
    assert_refused(response.header, ErrorCode.UNSUPPORTED, "does not stop on request")
    assert trailer(call) == "UNIMPLEMENTED"
    assert api.clara.Version(clara_pb2.ClaraVersionRequest()).header.code == 0


@pytest.mark.parametrize("watch", [False, True])
def test_utilization_sends_one_sample_without_gpus(api: Api, watch: bool) -> None:
    responses = list(api.clara.Utilization(clara_pb2.ClaraUtilizationRequest(watch=watch)))
    assert len(responses) == 1
    assert responses[0].header.code == 0
    assert not responses[0].gpu_metrics


def test_models_answer_unimplemented(api: Api) -> None:
    with pytest.raises(grpc.RpcError) as unary:
        api.models.AddMetadata(models_pb2.ModelsAddMetadataRequest())
    assert unary.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
    assert "Models.AddMetadata" in unary.value.details()  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as streaming:
        list(api.models.ListModels(models_pb2.ModelsListModelsRequest()))
    assert streaming.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as upload:
        api.models.UploadModel(iter([models_pb2.ModelsUploadModelRequest()]))
    assert upload.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]


PLATFORM_SERVICES = [
    "nvidia.clara.platform.Clara",
    "nvidia.clara.platform.Pipelines",
    "nvidia.clara.platform.Jobs",
    "nvidia.clara.platform.Payloads",
    "nvidia.clara.platform.Models",
]


def test_reflection_and_health_list_the_platform_services(api: Api) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(api.channel)
    [answer] = list(
        reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
    )
    names = {s.name for s in answer.list_services_response.service}
    assert set(PLATFORM_SERVICES) <= names
    health = health_pb2_grpc.HealthStub(api.channel)
    for service in PLATFORM_SERVICES:
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --- Pipelines -----------------------------------------------------------------------------


def test_pipeline_create_details_list_update_remove(api: Api) -> None:
    created = create_pipeline(api, metadata={"owner": "tests"})
    assert created.header.code == 0
    assert len(created.pipeline_id.value) == 32
    [details] = list(
        api.pipelines.Details(
            pipelines_pb2.PipelinesDetailsRequest(pipeline_id=created.pipeline_id)
        )
    )
    assert details.header.code == 0
    assert details.name == "two-stages"
    assert details.definition.path == "pipeline.yaml"
    assert details.definition.content == TWO_STAGES
    assert dict(details.metadata) == {"owner": "tests"}
    [root] = details.dag
    assert root.name == "first"
    assert [n.name for n in root.next] == ["second"]

    [listed] = list_pipelines(api)
    assert (listed.pipeline_id.value, listed.name) == (created.pipeline_id.value, "two-stages")

    renamed = TWO_STAGES.replace("name: two-stages", "name: renamed")
    update = api.pipelines.Update(
        iter(
            [
                pipelines_pb2.PipelinesUpdateRequest(
                    pipeline_id=created.pipeline_id,
                    definition=pipelines_pb2.PipelineDefinitionFile(
                        path="v2.yaml", content=renamed
                    ),
                )
            ]
        )
    )
    assert update.header.code == 0
    assert [p.name for p in list_pipelines(api)] == ["renamed"]

    removed = api.pipelines.Remove(
        pipelines_pb2.PipelinesRemoveRequest(pipeline_id=created.pipeline_id)
    )
    assert removed.header.code == 0
    assert list_pipelines(api) == []
    [lone] = list(api.pipelines.List(pipelines_pb2.PipelinesListRequest()))
    assert lone.header.code == 0 and not lone.details.pipeline_id.value


def test_pipeline_definition_streamed_in_pieces(api: Api) -> None:
    pieces = [TWO_STAGES[i : i + 25] for i in range(0, len(TWO_STAGES), 25)]
    requests = [
        pipelines_pb2.PipelinesCreateRequest(
            definition=pipelines_pb2.PipelineDefinitionFile(path="p.yaml", content=piece)
        )
        for piece in pieces
    ]
    created = api.pipelines.Create(iter(requests))
    assert created.header.code == 0, created.header.messages
    [details] = list(
        api.pipelines.Details(
            pipelines_pb2.PipelinesDetailsRequest(pipeline_id=created.pipeline_id)
        )
    )
    assert details.definition.content == TWO_STAGES


@pytest.mark.parametrize("case", sorted(BAD_DEFINITIONS))
def test_pipeline_definition_errors_name_operator_and_field_and_store_nothing(
    api: Api, platform: MockPlatform, case: str
) -> None:
    text, fragments = BAD_DEFINITIONS[case]
    response, call = api.pipelines.Create.with_call(
        iter(
            [
                pipelines_pb2.PipelinesCreateRequest(
                    definition=pipelines_pb2.PipelineDefinitionFile(content=text)
                )
            ]
        )
    )
    assert_refused(
        response.header, ErrorCode.INVALID_DEFINITION, "invalid pipeline definition", *fragments
    )
    assert trailer(call) == "INVALID_ARGUMENT"
    assert not response.pipeline_id.value
    assert list_pipelines(api) == []
    assert platform.call(platform.state.pipelines.all) == []


def test_pipeline_create_refuses_several_files_and_empty_streams(api: Api) -> None:
    two_files = [
        pipelines_pb2.PipelinesCreateRequest(
            definition=pipelines_pb2.PipelineDefinitionFile(path=p, content=TWO_STAGES)
        )
        for p in ("a.yaml", "b.yaml")
    ]
    assert_refused(
        api.pipelines.Create(iter(two_files)).header,
        ErrorCode.INVALID_PIPELINE_REQUEST,
        "single-file",
        "'a.yaml'",
    )
    assert_refused(
        api.pipelines.Create(iter([])).header,
        ErrorCode.INVALID_PIPELINE_REQUEST,
        "no pipeline definition",
    )
    assert list_pipelines(api) == []


def test_pipeline_create_with_a_requested_id(api: Api) -> None:
    wanted = uuid.uuid4()
    created = create_pipeline(api, pipeline_id=ident(str(wanted)))  # hyphenated form accepted
    assert created.header.code == 0
    assert created.pipeline_id.value == wanted.hex
    again = create_pipeline(api, pipeline_id=ident(wanted))
    assert_refused(again.header, ErrorCode.PIPELINE_EXISTS, wanted.hex)
    bad = create_pipeline(api, pipeline_id=ident("not-an-id"))
    assert_refused(bad.header, ErrorCode.INVALID_PIPELINE_ID, "'not-an-id'")
    assert len(list_pipelines(api)) == 1


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("", ErrorCode.INVALID_PIPELINE_ID),
        ("xyz", ErrorCode.INVALID_PIPELINE_ID),
        ("{" + uuid.uuid4().hex + "}", ErrorCode.INVALID_PIPELINE_ID),
        (uuid.uuid4().hex + "0", ErrorCode.INVALID_PIPELINE_ID),
        (uuid.uuid4().hex, ErrorCode.PIPELINE_NOT_FOUND),
        (str(uuid.uuid4()), ErrorCode.PIPELINE_NOT_FOUND),
    ],
)
def test_pipeline_ids_are_validated(api: Api, value: str, code: ErrorCode) -> None:
    pipeline = ident(value)
    [details] = list(
        api.pipelines.Details(pipelines_pb2.PipelinesDetailsRequest(pipeline_id=pipeline))
    )
    assert_refused(details.header, code)
    assert_refused(
        api.pipelines.Remove(pipelines_pb2.PipelinesRemoveRequest(pipeline_id=pipeline)).header,
        code,
    )
    add = api.pipelines.AddMetadata(
        pipelines_pb2.PipelinesAddMetadataRequest(pipeline_id=pipeline, metadata={"a": "b"})
    )
    assert_refused(add.header, code)
    job = api.jobs.Create(jobs_pb2.JobsCreateRequest(pipeline_id=pipeline, name="job"))
    assert_refused(job.header, code)


def test_pipeline_update_with_an_invalid_definition_keeps_the_old_one(api: Api) -> None:
    pipeline = pipeline_id(api)
    text, _ = BAD_DEFINITIONS["cycle"]
    update = api.pipelines.Update(
        iter(
            [
                pipelines_pb2.PipelinesUpdateRequest(
                    pipeline_id=pipeline,
                    definition=pipelines_pb2.PipelineDefinitionFile(content=text),
                )
            ]
        )
    )
    assert_refused(update.header, ErrorCode.INVALID_DEFINITION, "cycle")
    [details] = list(
        api.pipelines.Details(pipelines_pb2.PipelinesDetailsRequest(pipeline_id=pipeline))
    )
    assert details.definition.content == TWO_STAGES
    missing_id = api.pipelines.Update(
        iter(
            [
                pipelines_pb2.PipelinesUpdateRequest(
                    definition=pipelines_pb2.PipelineDefinitionFile(content=TWO_STAGES)
                )
            ]
        )
    )
    assert_refused(missing_id.header, ErrorCode.INVALID_PIPELINE_ID, "pipeline id is required")


def test_pipeline_metadata(api: Api) -> None:
    pipeline = pipeline_id(api)
    added = api.pipelines.AddMetadata(
        pipelines_pb2.PipelinesAddMetadataRequest(
            pipeline_id=pipeline, metadata={"a": "1", "b": "2"}
        )
    )
    assert added.header.code == 0 and dict(added.metadata) == {"a": "1", "b": "2"}
    overwritten = api.pipelines.AddMetadata(
        pipelines_pb2.PipelinesAddMetadataRequest(pipeline_id=pipeline, metadata={"a": "3"})
    )
    assert dict(overwritten.metadata) == {"a": "3", "b": "2"}
    removed = api.pipelines.RemoveMetadata(
        pipelines_pb2.PipelinesRemoveMetadataRequest(pipeline_id=pipeline, keys=["b", "absent"])
    )
    assert removed.header.code == 0 and dict(removed.metadata) == {"a": "3"}
    assert dict(list_pipelines(api)[0].metadata) == {"a": "3"}


@pytest.mark.parametrize(
    ("metadata", "fragment"),
    [
        ({"": "x"}, "must not be empty"),
        ({"k" * 256: "x"}, "longer than 255"),
        ({"k\n": "x"}, "control characters"),
        ({"k": "v" * (64 * 1024 + 1)}, "larger than 65536 bytes"),
        ({f"k{i}": "v" for i in range(MAX_METADATA_ENTRIES + 1)}, "more than 256 entries"),
        ({f"k{i}": "v" * 60_000 for i in range(20)}, "larger than 1048576 bytes"),
    ],
    ids=["empty-key", "long-key", "control-key", "big-value", "many-entries", "big-total"],
)
def test_metadata_limits_change_nothing(api: Api, metadata: dict[str, str], fragment: str) -> None:
    pipeline = pipeline_id(api)
    api.pipelines.AddMetadata(
        pipelines_pb2.PipelinesAddMetadataRequest(pipeline_id=pipeline, metadata={"keep": "me"})
    )
    response = api.pipelines.AddMetadata(
        pipelines_pb2.PipelinesAddMetadataRequest(pipeline_id=pipeline, metadata=metadata)
    )
    assert_refused(response.header, ErrorCode.INVALID_PIPELINE_METADATA, fragment)
    assert dict(list_pipelines(api)[0].metadata) == {"keep": "me"}
    payload = api.payloads.Create(payloads_pb2.PayloadsCreateRequest(metadata=metadata))
    assert_refused(payload.header, ErrorCode.INVALID_PAYLOAD_METADATA, fragment)


def test_pipeline_dag_of_a_diamond_and_of_a_long_chain(api: Api) -> None:
    diamond = HEADER.replace("broken", "diamond") + "".join(
        f"- name: {name}\n  container: {{image: x}}\n"
        f"  input: [{inputs}]\n  output: [{{name: {name}, path: /o}}]\n"
        for name, inputs in [
            ("top", "{path: /i}"),
            ("left", "{from: top, name: top, path: /i}"),
            ("right", "{from: top, name: top, path: /i}"),
            ("bottom", "{from: left, name: left, path: /l}, {from: right, name: right, path: /r}"),
        ]
    )
    [details] = list(
        api.pipelines.Details(
            pipelines_pb2.PipelinesDetailsRequest(pipeline_id=pipeline_id(api, diamond))
        )
    )
    [top] = details.dag
    left, right = top.next
    assert (left.name, right.name) == ("left", "right")
    assert [n.name for n in left.next] == ["bottom"] and [n.name for n in right.next] == ["bottom"]
    assert len(left.next[0].next) == 0  # bottom is expanded once only

    length = MAX_DAG_DEPTH * 2 + 5
    chain = HEADER.replace("broken", "chain") + "".join(
        f"- name: op{i}\n  container: {{image: x}}\n"
        + (f"  input: [{{from: op{i - 1}, path: /i}}]\n" if i else "")
        + "  output: [{path: /o}]\n"
        for i in range(length)
    )
    [details] = list(
        api.pipelines.Details(
            pipelines_pb2.PipelinesDetailsRequest(pipeline_id=pipeline_id(api, chain))
        )
    )
    seen: list[str] = []

    def walk(
        nodes: Sequence[pipelines_pb2.PipelinesDetailsResponse.PipelineDagNode], depth: int
    ) -> None:
        for node in nodes:
            assert depth <= MAX_DAG_DEPTH
            seen.append(node.name)
            walk(node.next, depth + 1)

    walk(details.dag, 1)
    assert {f"op{i}" for i in range(length)} <= set(seen)
    assert len(details.dag) == 3  # the root, then the two cut points continue at the top level


# --- Payloads ------------------------------------------------------------------------------


def test_payload_upload_download_round_trip_in_many_chunks(api: Api) -> None:
    payload = new_payload(api, purpose="test")
    data = hashlib.sha256(b"seed").digest() * (5 * CHUNK // 32 + 123)  # 5 chunks and a bit
    uploaded, call = api.payloads.Upload.with_call(
        iter(
            payloads_pb2.PayloadsUploadRequest(
                payload_id=payload,
                details=payloads_pb2.PayloadFileDetails(
                    name="scans/ct.raw", size=len(data[i : i + CHUNK])
                ),
                data=data[i : i + CHUNK],
            )
            for i in range(0, len(data), CHUNK)
        )
    )
    assert uploaded.header.code == 0, uploaded.header.messages
    assert trailer(call) is None
    assert (uploaded.details.name, uploaded.details.size, uploaded.details.mode) == (
        "scans/ct.raw",
        len(data),
        0o644,
    )
    messages, content = download(api, payload, "scans/ct.raw")
    assert content == data
    assert len(messages) == 6
    assert all(len(m.data) <= CHUNK for m in messages)
    assert messages[0].header.code == 0
    assert (messages[0].details.name, messages[0].details.size) == ("scans/ct.raw", len(data))
    # One big chunk (as our own clients may send) works too.
    assert upload(api, payload, "big.bin", data, chunk=len(data)).header.code == 0
    assert download(api, payload, "big.bin")[1] == data
    assert payload_files(api, payload) == {"big.bin": len(data), "scans/ct.raw": len(data)}


def test_empty_file_upload_and_download(api: Api) -> None:
    payload = new_payload(api)
    response = api.payloads.Upload(
        iter(
            [
                payloads_pb2.PayloadsUploadRequest(
                    payload_id=payload, details=payloads_pb2.PayloadFileDetails(name="empty")
                )
            ]
        )
    )
    assert response.header.code == 0 and response.details.size == 0
    messages, content = download(api, payload, "empty")
    assert content == b"" and len(messages) == 1 and messages[0].header.code == 0


def test_payload_details_and_metadata(api: Api) -> None:
    payload = new_payload(api, a="1")
    [lone] = list(api.payloads.Details(payloads_pb2.PayloadsDetailsRequest(payload_id=payload)))
    assert lone.header.code == 0 and not lone.file.name
    assert lone.type == payloads_pb2.PAYLOAD_TYPE_REUSABLE and dict(lone.metadata) == {"a": "1"}
    for name in ("b.txt", "a/c.txt"):
        upload(api, payload, name, name.encode())
    responses = list(api.payloads.Details(payloads_pb2.PayloadsDetailsRequest(payload_id=payload)))
    assert [(r.file.name, r.file.size) for r in responses] == [("a/c.txt", 7), ("b.txt", 5)]
    assert all(r.payload_id.value == payload.value for r in responses)
    added = api.payloads.AddMetadata(
        payloads_pb2.PayloadsAddMetadataRequest(payload_id=payload, metadata={"b": "2"})
    )
    assert added.header.code == 0 and dict(added.metadata) == {"a": "1", "b": "2"}
    removed = api.payloads.RemoveMetadata(
        payloads_pb2.PayloadsRemoveMetadataRequest(payload_id=payload, keys=["a"])
    )
    assert dict(removed.metadata) == {"b": "2"}
    bad = api.payloads.RemoveMetadata(
        payloads_pb2.PayloadsRemoveMetadataRequest(payload_id=payload, keys=[""])
    )
    assert_refused(bad.header, ErrorCode.INVALID_PAYLOAD_METADATA)


BAD_BLOB_NAMES = [
    "",
    "/etc/passwd",
    "../outside",
    "a/../../outside",
    "a/./b",
    "a//b",
    "trailing/",
    "back\\slash",
    "nul\x00byte",
    "new\nline",
    "x" * 256,
]


@pytest.mark.parametrize("name", BAD_BLOB_NAMES)
def test_blob_names_that_escape_or_are_malformed_are_rejected(
    api: Api, platform: MockPlatform, name: str
) -> None:
    payload = new_payload(api)
    upload(api, payload, "kept.txt", b"kept")
    response, call = api.payloads.Upload.with_call(
        iter(
            [
                payloads_pb2.PayloadsUploadRequest(
                    payload_id=payload,
                    details=payloads_pb2.PayloadFileDetails(name=name),
                    data=b"evil",
                )
            ]
        )
    )
    assert_refused(response.header, ErrorCode.INVALID_BLOB_NAME, "invalid blob name")
    assert trailer(call) == "INVALID_ARGUMENT"
    messages, _ = download(api, payload, name)
    assert_refused(messages[0].header, ErrorCode.INVALID_BLOB_NAME)
    removed = api.payloads.Remove(payloads_pb2.PayloadsRemoveRequest(payload_id=payload, name=name))
    assert_refused(removed.header, ErrorCode.INVALID_BLOB_NAME)
    assert payload_files(api, payload) == {"kept.txt": 4}
    workspace = platform.state.workspace
    assert [p for p in workspace.rglob("*") if p.is_file() and p.name != "kept.txt"] == []


def test_symlinks_cannot_lead_outside_the_payload(
    api: Api, platform: MockPlatform, tmp_path: Path
) -> None:
    payload = new_payload(api)
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    root = platform.call(lambda: platform.state.payloads.get(uuid.UUID(payload.value)).root)
    (root / "dir-link").symlink_to(tmp_path, target_is_directory=True)
    (root / "file-link").symlink_to(secret)
    response = upload(api, payload, "dir-link/planted.txt", b"x")
    assert_refused(response.header, ErrorCode.INVALID_BLOB_NAME, "outside the payload")
    assert not (tmp_path / "planted.txt").exists()
    for name in ("file-link", "dir-link/secret.txt"):
        messages, content = download(api, payload, name)
        assert_refused(messages[0].header, ErrorCode.INVALID_BLOB_NAME, "outside the payload")
        assert content == b""
    assert_refused(
        api.payloads.Remove(
            payloads_pb2.PayloadsRemoveRequest(payload_id=payload, name="file-link")
        ).header,
        ErrorCode.INVALID_BLOB_NAME,
    )
    assert secret.read_text() == "secret"
    assert payload_files(api, payload) == {}  # symlinks are not listed


def test_upload_refuses_existing_names_and_inconsistent_streams(
    api: Api, platform: MockPlatform
) -> None:
    payload = new_payload(api)
    assert upload(api, payload, "a.txt", b"first").header.code == 0
    assert_refused(
        upload(api, payload, "a.txt", b"second").header, ErrorCode.FILE_EXISTS, "'a.txt'"
    )
    assert_refused(
        upload(api, payload, "a.txt/b", b"x").header, ErrorCode.INVALID_BLOB_NAME, "is a file"
    )
    assert download(api, payload, "a.txt")[1] == b"first"

    other = new_payload(api)
    mixed = [
        payloads_pb2.PayloadsUploadRequest(
            payload_id=payload, details=payloads_pb2.PayloadFileDetails(name="m"), data=b"1"
        ),
        payloads_pb2.PayloadsUploadRequest(
            payload_id=other, details=payloads_pb2.PayloadFileDetails(name="m"), data=b"2"
        ),
    ]
    assert_refused(
        api.payloads.Upload(iter(mixed)).header, ErrorCode.INVALID_UPLOAD, "different payloads"
    )
    renamed = [
        payloads_pb2.PayloadsUploadRequest(
            payload_id=payload, details=payloads_pb2.PayloadFileDetails(name="m"), data=b"1"
        ),
        payloads_pb2.PayloadsUploadRequest(
            payload_id=payload, details=payloads_pb2.PayloadFileDetails(name="n"), data=b"2"
        ),
    ]
    assert_refused(
        api.payloads.Upload(iter(renamed)).header, ErrorCode.INVALID_UPLOAD, "different files"
    )
    # The published client sends no message for an empty file: accepted, nothing stored.
    nothing = api.payloads.Upload(iter([]))
    assert (nothing.header.code, nothing.details.name) == (0, "")
    assert payload_files(api, payload) == {"a.txt": 5}
    assert list((platform.state.workspace / "payloads" / ".uploads").iterdir()) == []


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("", ErrorCode.INVALID_PAYLOAD_ID),
        ("nope", ErrorCode.INVALID_PAYLOAD_ID),
        (uuid.uuid4().hex, ErrorCode.PAYLOAD_NOT_FOUND),
    ],
)
def test_payload_ids_are_validated(api: Api, value: str, code: ErrorCode) -> None:
    payload = ident(value)
    assert_refused(upload(api, payload, "a", b"x").header, code)
    assert_refused(download(api, payload, "a")[0][0].header, code)
    [details] = list(api.payloads.Details(payloads_pb2.PayloadsDetailsRequest(payload_id=payload)))
    assert_refused(details.header, code)
    assert_refused(
        api.payloads.Delete(payloads_pb2.PayloadsDeleteRequest(payload_id=payload)).header, code
    )
    assert_refused(
        api.payloads.Remove(
            payloads_pb2.PayloadsRemoveRequest(payload_id=payload, name="a")
        ).header,
        code,
    )
    add = api.payloads.AddMetadata(
        payloads_pb2.PayloadsAddMetadataRequest(payload_id=payload, metadata={"a": "b"})
    )
    assert_refused(add.header, code)


def test_remove_file_and_delete_payload(api: Api, platform: MockPlatform) -> None:
    payload = new_payload(api)
    upload(api, payload, "dir/a.txt", b"a")
    upload(api, payload, "b.txt", b"b")
    missing, call = api.payloads.Remove.with_call(
        payloads_pb2.PayloadsRemoveRequest(payload_id=payload, name="nope")
    )
    assert_refused(missing.header, ErrorCode.FILE_NOT_FOUND, "'nope'")
    assert trailer(call) == "NOT_FOUND"
    assert_refused(
        api.payloads.Remove(
            payloads_pb2.PayloadsRemoveRequest(payload_id=payload, name="dir")
        ).header,
        ErrorCode.FILE_NOT_FOUND,
    )
    assert (
        api.payloads.Remove(
            payloads_pb2.PayloadsRemoveRequest(payload_id=payload, name="dir/a.txt")
        ).header.code
        == 0
    )
    assert payload_files(api, payload) == {"b.txt": 1}
    assert_refused(download(api, payload, "dir/a.txt")[0][0].header, ErrorCode.FILE_NOT_FOUND)
    root = platform.call(lambda: platform.state.payloads.get(uuid.UUID(payload.value)).root)
    assert (
        api.payloads.Delete(payloads_pb2.PayloadsDeleteRequest(payload_id=payload)).header.code == 0
    )
    assert not root.exists()
    [details] = list(api.payloads.Details(payloads_pb2.PayloadsDetailsRequest(payload_id=payload)))
    assert_refused(details.header, ErrorCode.PAYLOAD_NOT_FOUND)


# --- Jobs ----------------------------------------------------------------------------------


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
    assert (
        download(api, created.payload_id, "operators/second/out/scan/image.txt")[1] == b"pixels+1+2"
    )
    assert download(api, created.payload_id, "operators/second/out/notes.txt")[1] == b"hello+1+2"

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
            lambda s=stage: platform.jobs.get(job_id).complete_stage(s, "r-" + s, "succeeded", "ok")
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
    platform.call(lambda: platform.jobs.get(job_id).complete_stage("a", "r1", "succeeded", ""))
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
    with MockPlatform(launcher=launcher) as platform:
        channel = grpc.insecure_channel(platform.address)
        try:
            api = Api(
                clara=clara_pb2_grpc.ClaraStub(channel),
                pipelines=pipelines_pb2_grpc.PipelinesStub(channel),
                jobs=jobs_pb2_grpc.JobsStub(channel),
                payloads=payloads_pb2_grpc.PayloadsStub(channel),
                models=models_pb2_grpc.ModelsStub(channel),
                channel=channel,
            )
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
        finally:
            channel.close()
