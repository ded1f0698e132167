"""Every method the platform serves, health and reflection included, refuses undecodable bytes.

A request that is not a valid protobuf message must end with INVALID_ARGUMENT, never UNKNOWN
with a logged traceback. The list of services comes from the server's own reflection service,
so a service added later is covered without editing this test.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import server_mock._proto.nvidia.clara.platform.clara_pb2
import server_mock._proto.nvidia.clara.platform.jobs_pb2
import server_mock._proto.nvidia.clara.platform.models_pb2
import server_mock._proto.nvidia.clara.platform.payloads_pb2
import server_mock._proto.nvidia.clara.platform.pipelines_pb2  # noqa: F401
from clara.stage_api import stage_service_pb2  # noqa: F401 - registers the descriptor
from server_mock import MockPlatform

CALL_TIMEOUT = 10.0
# A length-delimited field 1 that announces five bytes and carries two: no message type can
# decode it (truncated), whatever its fields.
CORRUPT = b"\x0a\x05ab"


@pytest.fixture(scope="module")
def platform() -> Iterator[MockPlatform]:
    with MockPlatform() as running:
        yield running


def _served_methods(channel: grpc.Channel) -> list[tuple[str, bool, bool]]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (answer,) = list(stub.ServerReflectionInfo(iter([request]), timeout=CALL_TIMEOUT))
    pool = descriptor_pool.Default()
    methods = []
    for service in answer.list_services_response.service:
        descriptor = pool.FindServiceByName(service.name)
        for method in descriptor.methods:
            methods.append(
                (
                    f"/{descriptor.full_name}/{method.name}",
                    method.client_streaming,
                    method.server_streaming,
                )
            )
    return methods


def _call(channel: grpc.Channel, path: str, client_streaming: bool, server_streaming: bool):
    if client_streaming and server_streaming:
        responses = channel.stream_stream(path)(iter([CORRUPT]), timeout=CALL_TIMEOUT)
        return list(responses)
    if client_streaming:
        return channel.stream_unary(path)(iter([CORRUPT]), timeout=CALL_TIMEOUT)
    if server_streaming:
        return list(channel.unary_stream(path)(CORRUPT, timeout=CALL_TIMEOUT))
    return channel.unary_unary(path)(CORRUPT, timeout=CALL_TIMEOUT)


def test_every_served_method_refuses_undecodable_bytes_with_invalid_argument(
    platform: MockPlatform, caplog: pytest.LogCaptureFixture
) -> None:
    with grpc.insecure_channel(platform.address) as channel:
        methods = _served_methods(channel)
        names = {path.split("/")[1] for path, _, _ in methods}
        assert {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
        assert "/grpc.health.v1.Health/List" in {path for path, _, _ in methods}
        answers = {}
        for path, client_streaming, server_streaming in methods:
            try:
                _call(channel, path, client_streaming, server_streaming)
                answers[path] = "OK"
            except grpc.RpcError as error:
                answers[path] = error.code().name
    assert {path: code for path, code in answers.items() if code != "INVALID_ARGUMENT"} == {}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


def test_health_list_answers_the_served_statuses(platform: MockPlatform) -> None:
    with grpc.insecure_channel(platform.address) as channel:
        listed = health_pb2_grpc.HealthStub(channel).List(
            health_pb2.HealthListRequest(), timeout=CALL_TIMEOUT
        )
    assert listed.statuses[""].status == health_pb2.HealthCheckResponse.SERVING
    assert (
        listed.statuses["nvidia.clara.platform.Jobs"].status
        == health_pb2.HealthCheckResponse.SERVING
    )
