"""Property-based fuzzing of every RPC the mock serves, over a real channel.

Each RPC of the stage API and of the Clara Platform API (Clara, Pipelines, Jobs, Payloads,
Models) gets random requests built from its descriptor (with known ids, stage names and
tokens mixed in so requests reach past the first check) and raw, byte-mutated encodings of
them. Every call must end with a status that is not ``UNKNOWN`` and carries no traceback, the
server must stay healthy, refused creates must create nothing, and the jobs' state must stay
consistent (every terminal job has only terminal stages, a ready stage has its upstream
stages succeeded, ...).
"""

from __future__ import annotations

import io
import logging
import os
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clara.stage_api import stage_service_pb2 as stage_pb
from server_mock import InputRef, JobState, MockPlatform, StageSpec, StageState
from server_mock._models import CatalogKind
from server_mock._proto.nvidia.clara.platform import (
    clara_pb2,
    jobs_pb2,
    models_pb2,
    models_pb2_grpc,
    payloads_pb2,
    payloads_pb2_grpc,
    pipelines_pb2,
    pipelines_pb2_grpc,
)

CALL_TIMEOUT = 5.0
DEFINITION = (
    "api-version: 0.4.0\nname: fuzz\noperators:\n"
    "- name: first\n  container: {image: t/first}\n  input: [{path: /input}]\n"
    "  output: [{path: /output}]\n"
    "- name: second\n  container: {image: t/second}\n  input: [{from: first, path: /in}]\n"
)


def _model_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("fuzz-model/config.pbtxt", "name: 'fuzz-model'")
    return buffer.getvalue()


MODEL_ZIP = _model_zip()
SERVICES = [
    stage_pb.DESCRIPTOR.services_by_name["StageService"],
    clara_pb2.DESCRIPTOR.services_by_name["Clara"],
    pipelines_pb2.DESCRIPTOR.services_by_name["Pipelines"],
    jobs_pb2.DESCRIPTOR.services_by_name["Jobs"],
    payloads_pb2.DESCRIPTOR.services_by_name["Payloads"],
    models_pb2.DESCRIPTOR.services_by_name["Models"],
]
# Destructive RPCs last, so the others meet the seeded pipeline, payload and jobs.
DESTRUCTIVE = {
    "Remove",
    "Delete",
    "Cancel",
    "Stop",
    "DeleteModel",
    "DeleteCatalog",
    "DeleteInstance",
}
METHODS = sorted(
    (m for service in SERVICES for m in service.methods), key=lambda m: m.name in DESTRUCTIVE
)
# Enough to cover every RPC, few enough that the file stays well under a minute.
EXAMPLES = {"Models": 10, "Clara": 30}
DEFAULT_EXAMPLES = 100
CREATES = {"Create", "UploadModel", "CreateCatalog", "CreateInstance"}
TRACEBACK_MARKERS = ("Traceback", "Exception calling application", "Unexpected <class", "Error(")


@dataclass
class Known:
    """Ids, names and tokens that exist on the fuzzed platform, to aim requests at."""

    ids: list[str] = field(default_factory=list)
    stage_names: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    stage_refs: list[tuple[uuid.UUID, str]] = field(default_factory=list)


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[tuple[MockPlatform, grpc.Channel, Known]]:
    platform = MockPlatform(require_stage_tokens=True)
    platform.start()
    channel = grpc.insecure_channel(platform.address)
    known = Known()
    try:
        pipelines = pipelines_pb2_grpc.PipelinesStub(channel)
        created = pipelines.Create(
            iter(
                [
                    pipelines_pb2.PipelinesCreateRequest(
                        definition=pipelines_pb2.PipelineDefinitionFile(
                            path="fuzz.yaml", content=DEFINITION
                        )
                    )
                ]
            ),
            timeout=CALL_TIMEOUT,
        )
        models = models_pb2_grpc.ModelsStub(channel)
        model = models.UploadModel(
            iter(
                [
                    models_pb2.ModelsUploadModelRequest(
                        details=models_pb2.ModelDetails(name="fuzz-model"), data=MODEL_ZIP
                    )
                ]
            ),
            timeout=CALL_TIMEOUT,
        )
        catalog = models.CreateCatalog(
            models_pb2.ModelsCreateCatalogRequest(), timeout=CALL_TIMEOUT
        )
        instance = models.CreateInstance(
            models_pb2.ModelsCreateInstanceRequest(), timeout=CALL_TIMEOUT
        )
        payloads = payloads_pb2_grpc.PayloadsStub(channel)
        payload = payloads.Create(payloads_pb2.PayloadsCreateRequest(), timeout=CALL_TIMEOUT)
        payloads.Upload(
            iter(
                [
                    payloads_pb2.PayloadsUploadRequest(
                        payload_id=payload.payload_id,
                        details=payloads_pb2.PayloadFileDetails(name="in/data.txt"),
                        data=b"data",
                    )
                ]
            ),
            timeout=CALL_TIMEOUT,
        )
        record = platform.call(
            lambda: platform.state.create_job(
                uuid.UUID(created.pipeline_id.value), "fuzz-job", input_payload_ids=()
            )
        )
        stage_jobs = [
            platform.create_job(
                [StageSpec("a"), StageSpec("b", inputs=(InputRef("/x", "a"),)), StageSpec("c")]
            ),
            platform.create_job([StageSpec("a")], start=False),
        ]
        ids = [
            uuid.UUID(created.pipeline_id.value),
            uuid.UUID(payload.payload_id.value),
            record.job_id,
            record.payload_id,
            *stage_jobs,
            uuid.UUID(model.details.model_id.value),
            uuid.UUID(catalog.catalog_id.value),
            uuid.UUID(instance.instance_id.value),
        ]
        known.ids = [form for i in ids for form in (i.hex, str(i))]
        known.stage_names = ["a", "b", "c", "first", "second"]
        known.stage_refs = [(j, s) for j in stage_jobs for s in ("a", "b", "c")]
        known.stage_refs += [(record.job_id, "first"), (record.job_id, "second")]
        known.tokens = [platform.stage_token(j, s) for j, s in known.stage_refs[:4]]
        yield platform, channel, known
    finally:
        channel.close()
        platform.stop()


# -- strategies -------------------------------------------------------------------------------


def strings(known: Known) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(known.ids),
        st.sampled_from(known.stage_names),
        st.sampled_from(
            [
                "",
                "..",
                "../../etc/passwd",
                "/etc/passwd",
                "in/data.txt",
                "in/../../x",
                "a\\b",
                "a\x00b",
                "x" * 300,
                "00000000000000000000000000000000",
                DEFINITION,
                DEFINITION.replace("first", "ghost", 1),
                "api-version: 0.4.0\nname: x\noperators: [{name: a}]",
                "\u202e\ufffd\U0001f600",
            ]
        ),
        st.text(max_size=40),
    )


def field_value(fd: FieldDescriptor, known: Known, depth: int) -> st.SearchStrategy[Any]:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(fd.message_type, known, depth + 1)
    if fd.type == FieldDescriptor.TYPE_STRING:
        return strings(known)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if fd.type == FieldDescriptor.TYPE_ENUM:
        values = [v.number for v in fd.enum_type.values]
        return st.one_of(st.sampled_from(values), st.integers(-3, 40))
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, width=32)
    unsigned = fd.type in (
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
    )
    wide = fd.type in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    )
    bits = 64 if wide else 32
    low = 0 if unsigned else -(2 ** (bits - 1))
    high = 2**bits - 1 if unsigned else 2 ** (bits - 1) - 1
    edges = [e for e in (low, high, 0, 1, -1, 62_135_596_800) if low <= e <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def messages(descriptor: Descriptor, known: Known, depth: int = 0) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 3:
        return st.just(cls())
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for fd in descriptor.fields:
        is_map = fd.message_type is not None and fd.message_type.GetOptions().map_entry
        if is_map:
            optional[fd.name] = st.dictionaries(strings(known), strings(known), max_size=3)
        elif fd.is_repeated:
            optional[fd.name] = st.lists(field_value(fd, known, depth), max_size=3)
        else:
            optional[fd.name] = field_value(fd, known, depth)

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for name, value in values.items():
            fd = descriptor.fields_by_name[name]
            target = getattr(message, name)
            if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                target.update(value)
            elif fd.is_repeated:
                if fd.type == FieldDescriptor.TYPE_MESSAGE:
                    target.extend(value)
                else:
                    target.extend(value)
            elif fd.type == FieldDescriptor.TYPE_MESSAGE:
                target.CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=optional).map(build)  # type: ignore[arg-type]


def aimed_stage_request(
    method: MethodDescriptor, known: Known, data: st.DataObject
) -> Message | None:
    """Half the time, a stage API request naming a real stage (so auth and state are hit)."""
    if method.containing_service.name != "StageService" or not data.draw(st.booleans()):
        return None
    tokened = data.draw(st.integers(0, 3)) > 0  # mostly stages the fuzzer has tokens for
    job_id, stage = data.draw(st.sampled_from(known.stage_refs[: 4 if tokened else None]))
    request = data.draw(messages(method.input_type, known))
    request.stage.CopyFrom(stage_pb.StageRef(job_id=str(job_id), stage_name=stage))  # type: ignore[attr-defined]
    if data.draw(st.booleans()):  # and well-formed otherwise, so it can change the stage
        fields = method.input_type.fields_by_name
        if "report_id" in fields:
            request.report_id = data.draw(st.sampled_from(["r-1", "r-2"]))  # type: ignore[attr-defined]
        for name in ("outcome", "kind"):
            if name in fields:
                values = [v.number for v in fields[name].enum_type.values if v.number]
                setattr(request, name, data.draw(st.sampled_from(values)))
    return request


def mutate(encoded: bytes, data: st.DataObject) -> bytes:
    buffer = bytearray(encoded)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "insert", "truncate", "random"]))
        if kind == "flip" and buffer:
            index = data.draw(st.integers(0, len(buffer) - 1))
            buffer[index] ^= data.draw(st.integers(1, 255))
        elif kind == "insert":
            index = data.draw(st.integers(0, len(buffer)))
            buffer[index:index] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "truncate" and buffer:
            del buffer[data.draw(st.integers(0, len(buffer) - 1)) :]
        else:
            buffer = bytearray(data.draw(st.binary(max_size=32)))
    return bytes(buffer)


# -- checks -----------------------------------------------------------------------------------


def counts(platform: MockPlatform) -> dict[str, int]:
    state = platform.state
    return platform.call(
        lambda: {
            "Pipelines": len(state.pipelines.all()),
            "Jobs": len(state.jobs.all()),
            "Payloads": len(state.payloads.all()),
            "Models": len(state.models.all()),
            "Catalogs": len(state.models.catalogs(CatalogKind.CATALOG)),
            "Instances": len(state.models.catalogs(CatalogKind.INSTANCE)),
        }
    )


def check_job_invariants(platform: MockPlatform) -> None:
    def check() -> None:
        for job in platform.jobs.all():
            stages = job.stages.values()
            assert all(isinstance(s.state, StageState) for s in stages)
            if job.state.terminal:
                assert all(s.state.terminal for s in stages), job.job_id
            if job.state is JobState.CREATED:
                assert all(s.state is StageState.WAITING for s in stages), job.job_id
            if job.state is JobState.RUNNING:
                assert not all(s.state.terminal for s in stages), job.job_id
            for stage in stages:
                if stage.state is StageState.SUCCEEDED:
                    assert all(
                        job.stages[u].state is StageState.SUCCEEDED for u in stage.spec.upstream
                    )
                if stage.state is StageState.READY:
                    assert job.state is JobState.RUNNING
                    assert all(
                        job.stages[u].state is StageState.SUCCEEDED for u in stage.spec.upstream
                    )
                assert stage.reports_applied <= 1

    platform.call(check)


def check_status(code: grpc.StatusCode, details: str | None, method: str) -> None:
    assert code is not grpc.StatusCode.UNKNOWN, f"{method}: UNKNOWN {details!r}"
    for marker in TRACEBACK_MARKERS:
        assert marker not in (details or ""), f"{method}: {details!r}"


def invoke(
    channel: grpc.Channel,
    method: MethodDescriptor,
    request: Message | bytes | list[Message | bytes],
    metadata: tuple[tuple[str, str], ...] | None,
) -> tuple[grpc.StatusCode, str | None, Message | None]:
    """Call ``method``; return its status, details and (unary) response."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    output = message_factory.GetMessageClass(method.output_type)

    def serialize(message: Message | bytes) -> bytes:
        return message if isinstance(message, bytes) else message.SerializeToString()

    kinds = {
        (False, False): channel.unary_unary,
        (True, False): channel.stream_unary,
        (False, True): channel.unary_stream,
        (True, True): channel.stream_stream,
    }
    callable_ = kinds[(method.client_streaming, method.server_streaming)](
        path, request_serializer=serialize, response_deserializer=output.FromString
    )
    argument = iter(request) if isinstance(request, list) else request
    try:
        if method.server_streaming:
            call = callable_(argument, timeout=CALL_TIMEOUT, metadata=metadata)
            for index, _ in enumerate(call):
                # A watch on a live stage does not end on its own: one message is enough.
                if index >= 3 or method.name == "WatchStage":
                    call.cancel()
                    break
            return grpc.StatusCode.OK, None, None
        response = callable_(argument, timeout=CALL_TIMEOUT, metadata=metadata)
        return grpc.StatusCode.OK, None, response
    except grpc.RpcError as error:
        if error.code() is grpc.StatusCode.CANCELLED:
            return grpc.StatusCode.OK, None, None
        return error.code(), error.details(), None


def draw_metadata(
    method: MethodDescriptor, request: object, known: Known, data: st.DataObject
) -> tuple[tuple[str, str], ...] | None:
    if method.containing_service.name != "StageService":
        return None
    choice = data.draw(st.sampled_from(["none", "own", "own", "known", "random", "garbage"]))
    if choice == "own" and isinstance(request, Message):
        stage = getattr(request, "stage", None)
        try:
            key = (uuid.UUID(stage.job_id), stage.stage_name) if stage else None
        except ValueError:
            key = None
        if key in known.stage_refs[:4]:
            return (("authorization", f"Bearer {known.tokens[known.stage_refs.index(key)]}"),)
    if choice == "known":
        return (("authorization", f"Bearer {data.draw(st.sampled_from(known.tokens))}"),)
    if choice == "random":
        return (
            ("authorization", f"Bearer {data.draw(st.text(alphabet='abcXYZ09-_', max_size=60))}"),
        )
    if choice == "garbage":
        value = data.draw(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126)))
        return (("authorization", value),)
    return None


# -- the property ----------------------------------------------------------------------------


def fuzz_settings(method: MethodDescriptor) -> settings:
    return settings(
        max_examples=EXAMPLES.get(method.containing_service.name, DEFAULT_EXAMPLES),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )


@pytest.mark.parametrize(
    "method", METHODS, ids=[f"{m.containing_service.name}.{m.name}" for m in METHODS]
)
def test_every_rpc_survives_random_and_mutated_requests(
    method: MethodDescriptor,
    fuzzed: tuple[MockPlatform, grpc.Channel, Known],
    caplog: pytest.LogCaptureFixture,
) -> None:
    platform, channel, known = fuzzed

    @fuzz_settings(method)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        def one() -> Message | bytes:
            request = aimed_stage_request(method, known, data) or data.draw(
                messages(method.input_type, known)
            )
            if method.name == "Utilization":
                # A watched stream runs until the caller ends it (tested on its own); here it
                # would only wait for the deadline.
                request.watch = False  # type: ignore[attr-defined]
            if data.draw(st.integers(0, 4)) == 0:  # one in five: raw mutated bytes
                return mutate(request.SerializeToString(), data)
            return request

        request: Message | bytes | list[Message | bytes]
        if method.client_streaming:
            request = [one() for _ in range(data.draw(st.integers(0, 3)))]
        else:
            request = one()
        metadata = draw_metadata(method, request, known, data)
        before = counts(platform)
        code, details, response = invoke(channel, method, request, metadata)
        check_status(code, details, method.full_name)
        refused = code is not grpc.StatusCode.OK or (
            response is not None
            and "header" in response.DESCRIPTOR.fields_by_name
            and response.header.code < 0  # type: ignore[attr-defined]
        )
        if method.name in CREATES and refused:
            assert counts(platform) == before, f"a refused {method.full_name} created something"
        check_job_invariants(platform)

    run()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_the_fuzzed_platform_ends_healthy_and_consistent(
    fuzzed: tuple[MockPlatform, grpc.Channel, Known],
) -> None:
    platform, channel, _ = fuzzed
    check_job_invariants(platform)
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    if os.environ.get("CLARA_FUZZ_REPORT"):  # a look at how far the requests got
        jobs = platform.call(
            lambda: [
                (j.state.value, {n: s.state.value for n, s in j.stages.items()})
                for j in platform.jobs.all()
            ]
        )
        print(counts(platform), jobs)
