"""The Clara service, and reflection and health listing every Platform API service."""

from __future__ import annotations

import time

import grpc
import pytest
from _api import Api, assert_refused, connect, trailer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server_mock import MockPlatform
from server_mock._errors import ErrorCode
from server_mock._platform_api.clara import UTILIZATION_INTERVAL
from server_mock._proto.nvidia.clara.platform import clara_pb2

WAIT = 30.0


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


def test_utilization_without_watch_sends_one_sample_without_gpus(api: Api) -> None:
    responses = list(api.clara.Utilization(clara_pb2.ClaraUtilizationRequest(watch=False)))
    assert len(responses) == 1
    assert responses[0].header.code == 0
    assert not responses[0].gpu_metrics


def test_utilization_with_watch_streams_until_the_caller_cancels(api: Api) -> None:
    stream = api.clara.Utilization(clara_pb2.ClaraUtilizationRequest(watch=True), timeout=WAIT)
    started = time.monotonic()
    samples = [next(stream) for _ in range(3)]
    # One now, then one per interval: the stream neither ends nor floods.
    assert time.monotonic() - started >= 2 * UTILIZATION_INTERVAL * 0.9
    assert all(s.header.code == 0 and not s.gpu_metrics for s in samples)
    stream.cancel()
    with pytest.raises(grpc.RpcError) as ended:
        next(stream)
    assert ended.value.code() == grpc.StatusCode.CANCELLED  # type: ignore[attr-defined]


def test_stopping_the_platform_ends_a_watched_stream_at_once() -> None:
    platform = MockPlatform()
    platform.start()
    try:
        with connect(platform) as api:
            stream = api.clara.Utilization(
                clara_pb2.ClaraUtilizationRequest(watch=True), timeout=WAIT
            )
            next(stream)
            started = time.monotonic()
            platform.stop(grace=WAIT)
            assert list(stream) == []  # ended by the server, normally: no error
            assert time.monotonic() - started < WAIT / 2  # not after the grace period
    finally:
        platform.stop()


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
