"""Size limits at the boundaries: messages, uploads, streamed metadata."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from clara._grpc_link import CHANNEL_OPTIONS
from server_mock import MockPlatform
from server_mock._errors import ErrorCode
from server_mock._platform import SERVER_OPTIONS
from server_mock._platform_api.limits import (
    MAX_METADATA_BYTES,
    MAX_METADATA_KEY_BYTES,
    MAX_METADATA_VALUE_BYTES,
)
from server_mock._proto.nvidia.clara.platform import (
    common_pb2,
    payloads_pb2,
    payloads_pb2_grpc,
    pipelines_pb2,
    pipelines_pb2_grpc,
)

WAIT = 30.0
DEFINITION = "api-version: 0.4.0\nname: p\noperators:\n- name: a\n  container: {image: t/a}\n"


@pytest.fixture
def small_uploads() -> Iterator[MockPlatform]:
    with MockPlatform(max_upload_bytes=100_000) as platform:
        yield platform


def test_both_sides_bound_message_sizes() -> None:
    for options in (dict(CHANNEL_OPTIONS), dict(SERVER_OPTIONS)):
        assert 0 < int(options["grpc.max_receive_message_length"]) <= 16 * 1024 * 1024
        assert 0 < int(options["grpc.max_send_message_length"]) <= 16 * 1024 * 1024


def test_an_oversized_message_is_refused_before_it_reaches_a_servicer(
    clara_platform: MockPlatform,
) -> None:
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(clara_platform.address, options=options) as channel:
        stub = payloads_pb2_grpc.PayloadsStub(channel)
        big = payloads_pb2.PayloadsCreateRequest(metadata={"k": "v" * (5 * 1024 * 1024)})
        with pytest.raises(grpc.RpcError) as raised:
            stub.Create(big, timeout=WAIT)
        assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert clara_platform.call(lambda: len(clara_platform.state.payloads.all())) == 0


def test_an_upload_past_the_size_limit_is_refused_and_leaves_nothing(
    small_uploads: MockPlatform,
) -> None:
    with grpc.insecure_channel(small_uploads.address) as channel:
        stub = payloads_pb2_grpc.PayloadsStub(channel)
        created = stub.Create(payloads_pb2.PayloadsCreateRequest(), timeout=WAIT)
        payload_id = created.payload_id

        def chunks(total: int) -> Iterator[payloads_pb2.PayloadsUploadRequest]:
            for _ in range(total // 65536):
                yield payloads_pb2.PayloadsUploadRequest(
                    payload_id=payload_id,
                    details=payloads_pb2.PayloadFileDetails(name="big.bin"),
                    data=b"x" * 65536,
                )

        refused = stub.Upload(chunks(4 * 65536), timeout=WAIT)
        assert refused.header.code == ErrorCode.INVALID_UPLOAD
        assert "upload limit of 100000 bytes" in refused.header.messages[0]
        assert "big.bin" in refused.header.messages[0]
        accepted = stub.Upload(chunks(65536), timeout=WAIT)
        assert accepted.header.code == 0 and accepted.details.size == 65536
        listed = list(
            stub.Details(payloads_pb2.PayloadsDetailsRequest(payload_id=payload_id), timeout=WAIT)
        )
        assert [m.file.name for m in listed] == ["big.bin"]


def test_streamed_pipeline_metadata_is_bounded_as_it_arrives(
    clara_platform: MockPlatform,
) -> None:
    entry_bytes = MAX_METADATA_KEY_BYTES + MAX_METADATA_VALUE_BYTES
    per_message = 2000  # about 0.75 MB a message, well below the message size limit
    messages = MAX_METADATA_BYTES // (entry_bytes * per_message) + 1

    def requests() -> Iterator[pipelines_pb2.PipelinesCreateRequest]:
        yield pipelines_pb2.PipelinesCreateRequest(
            definition=pipelines_pb2.PipelineDefinitionFile(path="p.yaml", content=DEFINITION)
        )
        for index in range(messages + 5):  # more than the limit allows
            yield pipelines_pb2.PipelinesCreateRequest(
                metadata={
                    f"{index:06}-{entry:06}".ljust(MAX_METADATA_KEY_BYTES, "k"): "v"
                    * MAX_METADATA_VALUE_BYTES
                    for entry in range(per_message)
                }
            )

    with grpc.insecure_channel(clara_platform.address) as channel:
        stub = pipelines_pb2_grpc.PipelinesStub(channel)
        response = stub.Create(requests(), timeout=WAIT)
        assert response.header.code == ErrorCode.INVALID_PIPELINE_METADATA
        assert f"more than the limit of {MAX_METADATA_BYTES} bytes" in response.header.messages[0]
        listed = list(stub.List(pipelines_pb2.PipelinesListRequest(), timeout=WAIT))
        assert [m.details.pipeline_id for m in listed] == [common_pb2.Identifier()]


def test_the_upload_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_upload_bytes"):
        MockPlatform(max_upload_bytes=0)
