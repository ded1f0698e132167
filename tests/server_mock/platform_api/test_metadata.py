"""Metadata through every service that has it: the documented limits and case-insensitive keys.

Each refusal names the object and the field, and leaves the stored metadata as it was.
"""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from _api import Api, assert_refused, create_job, new_payload, pipeline_id, trailer

from server_mock import MockPlatform
from server_mock._errors import ErrorCode
from server_mock._platform_api.limits import (
    MAX_METADATA_BYTES,
    MAX_METADATA_KEY_BYTES,
    MAX_METADATA_VALUE_BYTES,
)
from server_mock._proto.nvidia.clara.platform import (
    common_pb2,
    jobs_pb2,
    models_pb2,
    payloads_pb2,
    pipelines_pb2,
)


@dataclass
class Owner:
    """One object with metadata, and the calls that edit and read it."""

    name: str
    code: ErrorCode
    ident: common_pb2.Identifier
    add: Callable[[dict[str, str]], Any]
    remove: Callable[[list[str]], Any]
    current: Callable[[], dict[str, str]]


def zipped(**files: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


def upload_model(api: Api, name: str = "seg", **metadata: str) -> common_pb2.Identifier:
    response = api.models.UploadModel(
        iter(
            [
                models_pb2.ModelsUploadModelRequest(
                    details=models_pb2.ModelDetails(name=name, metadata=metadata),
                    data=zipped(**{"config.pbtxt": "name: 'seg'"}),
                )
            ]
        )
    )
    assert response.header.code == 0, response.header.messages
    return response.details.model_id


def pipeline_owner(api: Api, platform: MockPlatform) -> Owner:
    ident = pipeline_id(api)

    def current() -> dict[str, str]:
        record = platform.call(lambda: platform.state.pipelines.get(uuid.UUID(ident.value)))
        return dict(record.metadata)

    return Owner(
        "pipeline",
        ErrorCode.INVALID_PIPELINE_METADATA,
        ident,
        lambda m: api.pipelines.AddMetadata.with_call(
            pipelines_pb2.PipelinesAddMetadataRequest(pipeline_id=ident, metadata=m)
        ),
        lambda k: api.pipelines.RemoveMetadata.with_call(
            pipelines_pb2.PipelinesRemoveMetadataRequest(pipeline_id=ident, keys=k)
        ),
        current,
    )


def job_owner(api: Api, platform: MockPlatform) -> Owner:
    ident = create_job(api, pipeline_id(api)).job_id

    def current() -> dict[str, str]:
        return dict(
            platform.call(lambda: platform.state.job_records[uuid.UUID(ident.value)]).metadata
        )

    return Owner(
        "job",
        ErrorCode.INVALID_JOB_METADATA,
        ident,
        lambda m: api.jobs.AddMetadata.with_call(
            jobs_pb2.JobsAddMetadataRequest(job_id=ident, metadata=m)
        ),
        lambda k: api.jobs.RemoveMetadata.with_call(
            jobs_pb2.JobsRemoveMetadataRequest(job_id=ident, keys=k)
        ),
        current,
    )


def payload_owner(api: Api, platform: MockPlatform) -> Owner:
    ident = new_payload(api)

    def current() -> dict[str, str]:
        record = platform.call(lambda: platform.state.payloads.get(uuid.UUID(ident.value)))
        return dict(record.metadata)

    return Owner(
        "payload",
        ErrorCode.INVALID_PAYLOAD_METADATA,
        ident,
        lambda m: api.payloads.AddMetadata.with_call(
            payloads_pb2.PayloadsAddMetadataRequest(payload_id=ident, metadata=m)
        ),
        lambda k: api.payloads.RemoveMetadata.with_call(
            payloads_pb2.PayloadsRemoveMetadataRequest(payload_id=ident, keys=k)
        ),
        current,
    )


def model_owner(api: Api, platform: MockPlatform) -> Owner:
    ident = upload_model(api)

    def current() -> dict[str, str]:
        record = platform.call(lambda: platform.state.models.get(uuid.UUID(ident.value)))
        return dict(record.metadata)

    return Owner(
        "model",
        ErrorCode.INVALID_MODEL_METADATA,
        ident,
        lambda m: api.models.AddMetadata.with_call(
            models_pb2.ModelsAddMetadataRequest(model_id=ident, metadata=m)
        ),
        lambda k: api.models.RemoveMetadata.with_call(
            models_pb2.ModelsRemoveMetadataRequest(model_id=ident, keys=k)
        ),
        current,
    )


OWNERS = {
    "pipeline": pipeline_owner,
    "job": job_owner,
    "payload": payload_owner,
    "model": model_owner,
}


@pytest.fixture(params=sorted(OWNERS))
def owner(request: pytest.FixtureRequest, api: Api, platform: MockPlatform) -> Owner:
    made: Owner = OWNERS[request.param](api, platform)
    response, _ = made.add({"Team": "radiology"})
    assert response.header.code == 0, response.header.messages
    return made


def refused(owner: Owner, call: tuple[Any, Any], field: str, *fragments: str) -> None:
    response, rpc = call
    assert_refused(response.header, owner.code, f"{owner.name} ", f"field {field}", *fragments)
    assert owner.ident.value in "\n".join(response.header.messages)
    assert trailer(rpc) == "INVALID_ARGUMENT"
    assert owner.current() == {"Team": "radiology"}  # nothing stored


def test_keys_up_to_128_bytes_and_values_up_to_256_bytes(owner: Owner) -> None:
    key = "é" * (MAX_METADATA_KEY_BYTES // 2)  # two bytes each in UTF-8
    value = "v" * MAX_METADATA_VALUE_BYTES
    response, _ = owner.add({key: value})
    assert response.header.code == 0 and dict(response.metadata)[key] == value
    response, _ = owner.remove([key])
    assert response.header.code == 0
    refused(owner, owner.add({key + "x": "v"}), "metadata", "longer than 128 bytes")
    refused(owner, owner.add({"k": value + "v"}), "metadata", "longer than 256 bytes")
    refused(owner, owner.add({"": "v"}), "metadata", "must not be empty")
    refused(owner, owner.add({"a\nb": "v"}), "metadata", "control characters")
    refused(owner, owner.remove([""]), "keys", "must not be empty")


def test_keys_are_unique_case_insensitively(owner: Owner) -> None:
    refused(owner, owner.add({"TEAM": "other"}), "metadata", "'TEAM' already exists", "'Team'")
    refused(owner, owner.add({"site": "a", "SITE": "b"}), "metadata", "are the same key")
    response, _ = owner.remove(["team", "absent"])
    assert response.header.code == 0 and dict(response.metadata) == {}
    assert owner.current() == {}


def test_the_whole_metadata_is_at_most_4_mib(owner: Owner) -> None:
    entry = MAX_METADATA_KEY_BYTES + MAX_METADATA_VALUE_BYTES
    per_call = 2000
    calls = 0
    while True:
        batch = {
            f"{calls:04}-{i:05}".ljust(MAX_METADATA_KEY_BYTES, "k"): "v" * MAX_METADATA_VALUE_BYTES
            for i in range(per_call)
        }
        before = owner.current()
        response, _ = owner.add(batch)
        if response.header.code != 0:
            break
        calls += 1
    assert (calls + 1) * per_call * entry > MAX_METADATA_BYTES >= calls * per_call * entry
    assert_refused(response.header, owner.code, f"limit of {MAX_METADATA_BYTES} bytes")
    assert owner.current() == before


def test_a_job_payload_has_no_metadata(api: Api, platform: MockPlatform) -> None:
    created = create_job(api, pipeline_id(api))
    response = api.payloads.AddMetadata(
        payloads_pb2.PayloadsAddMetadataRequest(payload_id=created.payload_id, metadata={"a": "b"})
    )
    assert_refused(
        response.header,
        ErrorCode.INVALID_PAYLOAD_METADATA,
        f"payload {created.payload_id.value}, field metadata",
        "only reusable payloads have metadata",
    )
    record = platform.call(lambda: platform.state.payloads.get(uuid.UUID(created.payload_id.value)))
    assert record.metadata == {}


@pytest.mark.parametrize("service", ["pipeline", "job", "payload", "model"])
def test_create_refuses_keys_that_differ_only_in_case(
    api: Api, platform: MockPlatform, service: str
) -> None:
    twins = {"Site": "a", "site": "b"}
    if service == "pipeline":
        response = api.pipelines.Create(
            iter(
                [
                    pipelines_pb2.PipelinesCreateRequest(
                        definition=pipelines_pb2.PipelineDefinitionFile(
                            content="api-version: 0.4.0\nname: p\noperators:\n"
                            "- name: a\n  container: {image: x}\n"
                        ),
                        metadata=twins,
                    )
                ]
            )
        )
        code, count = ErrorCode.INVALID_PIPELINE_METADATA, platform.state.pipelines.all
    elif service == "job":
        response = api.jobs.Create(
            jobs_pb2.JobsCreateRequest(pipeline_id=pipeline_id(api), name="j", metadata=twins)
        )
        code, count = ErrorCode.INVALID_JOB_METADATA, platform.state.jobs.all
    elif service == "payload":
        response = api.payloads.Create(payloads_pb2.PayloadsCreateRequest(metadata=twins))
        code, count = ErrorCode.INVALID_PAYLOAD_METADATA, platform.state.payloads.all
    else:
        response = api.models.UploadModel(
            iter(
                [
                    models_pb2.ModelsUploadModelRequest(
                        details=models_pb2.ModelDetails(name="m", metadata=twins),
                        data=zipped(a="a"),
                    )
                ]
            )
        )
        code, count = ErrorCode.INVALID_MODEL_METADATA, platform.state.models.all
    assert_refused(response.header, code, "the new ", "field metadata", "are the same key")
    assert platform.call(count) == []
