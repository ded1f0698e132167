"""The legacy Clara Platform protos must stay wire-compatible with the published client.

The published ``nvidia-clara-client`` sdist ships protoc-generated ``*_pb2.py`` modules that embed
each .proto file's serialized ``FileDescriptorProto``. Those bytes are read straight from the
tarball (the modules themselves need an old protobuf runtime, so they are never imported) and
compared, element by element, with the descriptors of our generated code. Comments and options
may differ; everything that shapes the wire format or the RPC surface may not.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from pathlib import PurePosixPath

import pytest
from google.protobuf import descriptor_pb2

CLIENT = "nvidia-clara-client"
CLIENT_VERSION = "0.8.1.7"
PACKAGE = "nvidia.clara.platform"
PROTO_DIR = "nvidia/clara/platform"
OUR_MODULES = f"server_mock._proto.{PACKAGE}"
LEGACY_FILES = ["clara", "common", "jobs", "models", "payloads", "pipelines"]

_TYPE = descriptor_pb2.FieldDescriptorProto.Type.Name
_LABEL = descriptor_pb2.FieldDescriptorProto.Label.Name


def _serialized_descriptor(source: str) -> bytes | None:
    """Return the FileDescriptorProto bytes embedded in a protoc-generated module, if any."""
    for node in ast.walk(ast.parse(source)):
        value: ast.expr | None = None
        if isinstance(node, ast.keyword) and node.arg == "serialized_pb":
            value = node.value  # old style: FileDescriptor(serialized_pb=_b('...'))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
            and node.args
        ):
            value = node.args[0]  # new style: pool.AddSerializedFile(b'...')
        if isinstance(value, ast.Call) and value.args:  # unwrap _b('...')
            value = value.args[0]
        if isinstance(value, ast.Constant):
            if isinstance(value.value, bytes):
                return value.value
            if isinstance(value.value, str):
                return value.value.encode("latin-1")
    return None


@pytest.fixture(scope="session")
def published(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """The published client's descriptors, keyed by .proto path (downloaded, never installed)."""
    dest = tmp_path_factory.mktemp("published-client")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        CLIENT,
        "--disable-pip-version-check",
        f"{CLIENT}=={CLIENT_VERSION}",
        "-d",
        str(dest),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"could not download {CLIENT}=={CLIENT_VERSION} (needs access to PyPI)\n"
            f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
        )
    tarballs = sorted(dest.glob("*.tar.gz"))
    if len(tarballs) != 1:
        pytest.fail(
            f"expected one sdist in {dest}, found: {sorted(p.name for p in dest.iterdir())}"
        )
    descriptors: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    with tarfile.open(tarballs[0]) as tar:
        for member in tar.getmembers():
            path = PurePosixPath(member.name)
            if not member.isfile() or not path.name.endswith("_pb2.py"):
                continue
            if path.parent.parts[-2:] != ("nvidia_clara", "grpc"):
                continue
            extracted = tar.extractfile(member)
            assert extracted is not None
            raw = _serialized_descriptor(extracted.read().decode("utf-8"))
            if raw is None:
                pytest.fail(f"no serialized FileDescriptorProto found in {member.name}")
            fdp = descriptor_pb2.FileDescriptorProto.FromString(raw)
            descriptors[fdp.name] = fdp
    if not descriptors:
        pytest.fail(f"no *_pb2.py modules under nvidia_clara/grpc/ in {tarballs[0].name}")
    return descriptors


def _ours(stem: str) -> descriptor_pb2.FileDescriptorProto:
    module = importlib.import_module(f"{OUR_MODULES}.{stem}_pb2")
    fdp = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(fdp)
    return fdp


def _compare_names(
    where: str, kind: str, expected: Iterable[str], actual: Iterable[str]
) -> tuple[list[str], list[str]]:
    exp, act = list(expected), list(actual)
    diffs = [f"{where}: {kind} {n!r} is missing" for n in exp if n not in act]
    diffs += [f"{where}: {kind} {n!r} is not in the published client" for n in act if n not in exp]
    return diffs, [n for n in exp if n in act]


def _field_shape(
    msg: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto
) -> dict[str, object]:
    oneof = msg.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
    return {
        "number": field.number,
        "type": _TYPE(field.type),
        "label": _LABEL(field.label),
        "type_name": field.type_name,
        "oneof": oneof,
        "proto3_optional": field.proto3_optional,
    }


def _compare_enum(
    where: str, exp: descriptor_pb2.EnumDescriptorProto, act: descriptor_pb2.EnumDescriptorProto
) -> list[str]:
    exp_values = {v.name: v.number for v in exp.value}
    act_values = {v.name: v.number for v in act.value}
    diffs, common = _compare_names(where, "enum value", exp_values, act_values)
    for name in common:
        if exp_values[name] != act_values[name]:
            diffs.append(
                f"{where}.{name}: number is {act_values[name]}, published {exp_values[name]}"
            )
    return diffs


def _compare_enums(
    where: str,
    expected: Iterable[descriptor_pb2.EnumDescriptorProto],
    actual: Iterable[descriptor_pb2.EnumDescriptorProto],
) -> list[str]:
    exp = {e.name: e for e in expected}
    act = {e.name: e for e in actual}
    diffs, common = _compare_names(where, "enum", exp, act)
    for name in common:
        diffs += _compare_enum(f"enum {where}.{name}", exp[name], act[name])
    return diffs


def _compare_message(
    where: str, exp: descriptor_pb2.DescriptorProto, act: descriptor_pb2.DescriptorProto
) -> list[str]:
    diffs: list[str] = []
    if exp.options.map_entry != act.options.map_entry:
        diffs.append(
            f"message {where}: map_entry is {act.options.map_entry}, "
            f"published {exp.options.map_entry}"
        )
    exp_fields = {f.name: f for f in exp.field}
    act_fields = {f.name: f for f in act.field}
    found, common = _compare_names(f"message {where}", "field", exp_fields, act_fields)
    diffs += found
    for name in common:
        want = _field_shape(exp, exp_fields[name])
        got = _field_shape(act, act_fields[name])
        for key in want:
            if want[key] != got[key]:
                diffs.append(
                    f"field {where}.{name}: {key} is {got[key]!r}, published {want[key]!r}"
                )
    diffs += _compare_enums(where, exp.enum_type, act.enum_type)
    diffs += _compare_messages(where, exp.nested_type, act.nested_type)
    return diffs


def _compare_messages(
    where: str,
    expected: Iterable[descriptor_pb2.DescriptorProto],
    actual: Iterable[descriptor_pb2.DescriptorProto],
) -> list[str]:
    exp = {m.name: m for m in expected}
    act = {m.name: m for m in actual}
    diffs, common = _compare_names(where, "message", exp, act)
    for name in common:
        diffs += _compare_message(f"{where}.{name}", exp[name], act[name])
    return diffs


def _compare_services(
    where: str,
    expected: Iterable[descriptor_pb2.ServiceDescriptorProto],
    actual: Iterable[descriptor_pb2.ServiceDescriptorProto],
) -> list[str]:
    exp = {s.name: s for s in expected}
    act = {s.name: s for s in actual}
    diffs, common = _compare_names(where, "service", exp, act)
    for name in common:
        svc = f"{where}.{name}"
        exp_methods = {m.name: m for m in exp[name].method}
        act_methods = {m.name: m for m in act[name].method}
        found, shared = _compare_names(f"service {svc}", "rpc", exp_methods, act_methods)
        diffs += found
        for method in shared:
            want, got = exp_methods[method], act_methods[method]
            for key in ("input_type", "output_type", "client_streaming", "server_streaming"):
                if getattr(want, key) != getattr(got, key):
                    diffs.append(
                        f"rpc {svc}.{method}: {key} is {getattr(got, key)!r}, "
                        f"published {getattr(want, key)!r}"
                    )
    return diffs


def wire_differences(
    expected: descriptor_pb2.FileDescriptorProto, actual: descriptor_pb2.FileDescriptorProto
) -> list[str]:
    """Every difference that matters on the wire, each naming the element that differs."""
    diffs = [
        f"{expected.name}: {key} is {getattr(actual, key)!r}, published {getattr(expected, key)!r}"
        for key in ("name", "package", "syntax")
        if getattr(expected, key) != getattr(actual, key)
    ]
    diffs += _compare_enums(expected.package, expected.enum_type, actual.enum_type)
    diffs += _compare_messages(expected.package, expected.message_type, actual.message_type)
    diffs += _compare_services(expected.package, expected.service, actual.service)
    return diffs


def test_every_published_platform_file_is_covered(
    published: dict[str, descriptor_pb2.FileDescriptorProto],
) -> None:
    """Each published file of package nvidia.clara.platform has a counterpart checked below."""
    in_package = sorted(name for name, fdp in published.items() if fdp.package == PACKAGE)
    assert in_package == sorted(f"{PROTO_DIR}/{stem}.proto" for stem in LEGACY_FILES)


@pytest.mark.parametrize("stem", LEGACY_FILES)
def test_matches_published_client(
    stem: str, published: dict[str, descriptor_pb2.FileDescriptorProto]
) -> None:
    proto = f"{PROTO_DIR}/{stem}.proto"
    assert proto in published, f"{CLIENT} {CLIENT_VERSION} has no {proto}"
    diffs = wire_differences(published[proto], _ours(stem))
    assert not diffs, f"{proto} differs from {CLIENT} {CLIENT_VERSION}:\n" + "\n".join(diffs)


def test_comparison_detects_differences(
    published: dict[str, descriptor_pb2.FileDescriptorProto],
) -> None:
    """Guard against a comparison that silently passes: tampered copies must be reported."""
    expected = published[f"{PROTO_DIR}/jobs.proto"]
    tampered = descriptor_pb2.FileDescriptorProto()
    tampered.CopyFrom(expected)
    start = next(m for m in tampered.message_type if m.name == "JobsStartRequest")
    next(f for f in start.field if f.name == "Variables").number = 4
    named = next(m for m in start.nested_type if m.name == "NamedValue")
    named.field[0].type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
    state = next(e for e in tampered.enum_type if e.name == "JobState")
    state.value[1].number = 9
    logs = next(m for m in tampered.service[0].method if m.name == "ReadLogs")
    logs.server_streaming = False
    diffs = wire_differences(expected, tampered)
    assert diffs == [
        "enum nvidia.clara.platform.JobState.JOB_STATE_PENDING: number is 9, published 1",
        "field nvidia.clara.platform.JobsStartRequest.Variables: number is 4, published 3",
        "field nvidia.clara.platform.JobsStartRequest.NamedValue.name: type is 'TYPE_BYTES', "
        "published 'TYPE_STRING'",
        "rpc nvidia.clara.platform.Jobs.ReadLogs: server_streaming is False, published True",
    ]


def test_published_descriptor_extraction() -> None:
    """Both protoc output styles are understood by the extractor."""
    fdp = descriptor_pb2.FileDescriptorProto(name="x.proto", package="p")
    raw = fdp.SerializeToString()
    old = f"D = _descriptor.FileDescriptor(name='x', serialized_pb=_b({raw.decode('latin-1')!r}))"
    new = f"D = _descriptor_pool.Default().AddSerializedFile({raw!r})"
    assert _serialized_descriptor(old) == raw
    assert _serialized_descriptor(new) == raw
