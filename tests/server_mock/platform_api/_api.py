"""Helpers of the Platform API tests: stubs on one channel, and short forms of common calls."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

import clara
from server_mock import MockPlatform
from server_mock._errors import ErrorCode
from server_mock._proto.nvidia.clara.platform import (
    clara_pb2_grpc,
    common_pb2,
    jobs_pb2,
    jobs_pb2_grpc,
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


@contextlib.contextmanager
def connect(platform: MockPlatform) -> Iterator[Api]:
    """Stubs of every Platform API service on one channel to ``platform``."""
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
    assert all(r.header.code == 0 for r in responses), responses[0].header.messages
    assert all(r.file.name for r in responses), "a message without a file"
    return {r.file.name: r.file.size for r in responses}


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
