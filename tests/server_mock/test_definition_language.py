"""The pipeline definition language as Clara defines it: the keys real definitions use,
api-versions 0.3.0 to 0.7.0, typed inputs and outputs, names that fold case, and warnings
(not refusals) for keys the language does not define.

The definitions here are written for these tests in the shape of NVIDIA's published ones.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from server_mock._definition import (
    SUPPORTED_API_VERSIONS,
    ContainerSpec,
    HttpConnection,
    InputSpec,
    ModelSpec,
    OutputSpec,
    PipelineDefinition,
    PipelineDefinitionError,
    ResourceRequests,
    ServiceSpec,
    _language,
    parse_pipeline_definition,
)

# A lung pipeline in the style of NVIDIA's own files: pull-secrets, orchestrator, requests,
# a model list (in a 0.4.0 file, as NVIDIA's files have them), a deprecated service with an
# http connection, numeric variables, and a fan-in of two single-output operators whose
# inputs name no output.
LUNG = """\
api-version: 0.4.0
name: lung-ct
pull-secrets:
  - ngc-clara
orchestrator: Clara
operators:
- name: dicom-reader
  description: Converts DICOM series into MHD volumes.
  container:
    image: example/dicom-reader
    tag: "0.7.0"
  input:
  - path: /input
  output:
  - path: /output
- name: lung-segmentation
  container:
    image: example/lung-seg
    tag: latest
  requests:
    gpu: 1
  variables:
    THRESHOLD: 0.35
    SLICES: 128
    VERSION: 1.10
    VERBOSE: yes
    SEED: 007
  models:
  - name: segmentation_lung_v2
  input:
  - from: dicom-reader
    path: /input
  output:
  - path: /output
  services:
  - name: triton
    container:
      image: nvcr.io/nvidia/tritonserver
      tag: 20.07-py3
      command: ["tritonserver", "--model-store=$(NVIDIA_CLARA_SERVICE_DATA_PATH)/models"]
    requests:
      gpu: 1
    connections:
      http:
      - name: NVIDIA_CLARA_TRTISURI
        port: 8000
- name: dicom-writer
  container:
    image: example/dicom-writer
  input:
  - from: lung-segmentation
    path: /input
  - from: dicom-reader
    path: /dicom
  output:
  - path: /output
"""


def load(text: str) -> dict[str, Any]:
    return yaml.safe_load(text)  # type: ignore[no-any-return]


def dump(document: object) -> str:
    return yaml.safe_dump(document, sort_keys=False)


def expect_error(text: str, operator: str | None, field: str, fragment: str) -> None:
    with pytest.raises(PipelineDefinitionError) as info:
        parse_pipeline_definition(text)
    error = info.value
    assert (error.operator, error.field) == (operator, field), str(error)
    assert fragment in str(error)
    if operator is not None:
        assert str(error).startswith(f"operator {operator!r}, field {field!r}: ")


# --- a real-shaped definition ----------------------------------------------------------------


def test_nvidia_style_definition_is_accepted_into_typed_fields() -> None:
    definition = parse_pipeline_definition(LUNG)

    assert definition.pull_secrets == ("ngc-clara",)
    assert definition.orchestrator == "Clara"
    assert definition.topological_order() == ("dicom-reader", "lung-segmentation", "dicom-writer")
    segmentation = definition.operator("lung-segmentation")
    assert segmentation.requests == ResourceRequests(gpu=1)
    # Variables are environment text: each keeps the scalar as written.
    assert segmentation.variables == {
        "THRESHOLD": "0.35",
        "SLICES": "128",
        "VERSION": "1.10",
        "VERBOSE": "yes",
        "SEED": "007",
    }
    assert segmentation.models == (ModelSpec("segmentation_lung_v2"),)
    assert segmentation.services == (
        ServiceSpec(
            name="triton",
            container=ContainerSpec(
                "nvcr.io/nvidia/tritonserver",
                "20.07-py3",
                ("tritonserver", "--model-store=$(NVIDIA_CLARA_SERVICE_DATA_PATH)/models"),
            ),
            http_connections=(HttpConnection("NVIDIA_CLARA_TRTISURI", 8000),),
            requests=ResourceRequests(gpu=1),
        ),
    )
    assert definition.unsupported_for_start() == []
    # models is defined from api-version 0.6.0: read, with a warning naming operator and key.
    assert definition.warnings == (
        "operator 'lung-segmentation', field 'models': 'models' is defined from api-version "
        "0.6.0, but this definition declares 0.4.0; read anyway",
    )


def test_fan_in_of_single_output_operators_reads_each_only_output() -> None:
    writer = parse_pipeline_definition(LUNG).operator("dicom-writer")

    assert writer.inputs == (
        InputSpec("/input", "lung-segmentation", None, None),
        InputSpec("/dicom", "dicom-reader", None, None),
    )
    assert writer.upstream == {"lung-segmentation", "dicom-reader"}


def test_from_without_name_reads_a_named_only_output() -> None:
    document = load(LUNG)
    document["operators"][1]["output"] = [{"name": "segmentation", "path": "/output"}]
    definition = parse_pipeline_definition(dump(document))

    entry = definition.operator("dicom-writer").inputs[0]
    assert entry == InputSpec("/input", "lung-segmentation", None, "segmentation")
    assert definition.upstream_output(entry) == OutputSpec("/output", "segmentation")


def test_references_fold_case_and_keep_the_declared_spelling() -> None:
    document = load(LUNG)
    document["operators"][1]["output"] = [{"name": "Segmentation", "path": "/output"}]
    document["operators"][2]["input"][0] = {
        "from": "LUNG-Segmentation",
        "name": "SEGMENTATION",
        "path": "/input",
    }
    entry = parse_pipeline_definition(dump(document)).operator("dicom-writer").inputs[0]

    assert entry == InputSpec("/input", "lung-segmentation", "Segmentation", "Segmentation")


def test_every_supported_api_version_parses_and_newer_ones_are_refused() -> None:
    assert SUPPORTED_API_VERSIONS == ("0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0")
    for version in ("0.3.0", "0.4.0"):
        assert parse_pipeline_definition(LUNG.replace("0.4.0", version, 1)).api_version == version
    for version in ("0.6.0", "0.7.0"):
        text = TYPED.replace("api-version: 0.5.0", f"api-version: {version}")
        definition = parse_pipeline_definition(text)
        assert definition.api_version == version
        assert not any("'models'" in w for w in definition.warnings)
    expect_error(LUNG.replace("0.4.0", "0.8.0", 1), None, "api-version", "supported: 0.3.0")


# --- warnings ---------------------------------------------------------------------------------


def test_unknown_keys_are_warned_about_logged_and_never_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    document = load(LUNG)
    document["pipeline-timeout"] = 60
    reader = document["operators"][0]
    reader["restart"] = "never"
    reader["container"]["args"] = ["--verbose"]
    reader["input"][0]["mode"] = "ro"
    service = document["operators"][1]["services"][0]
    service["replicas"] = 2
    service["connections"]["http"][0]["protocol"] = "tcp"
    document["operators"][1]["requests"]["gpus"] = 2

    with caplog.at_level(logging.WARNING, logger="server_mock.definition"):
        definition = parse_pipeline_definition(dump(document))

    unknown = [w for w in definition.warnings if "unknown key" in w]
    located = [w.split(": unknown key")[0] for w in unknown]
    assert located == [
        "field 'pipeline-timeout'",
        "operator 'dicom-reader', field 'restart'",
        "operator 'dicom-reader', field 'container.args'",
        "operator 'dicom-reader', field 'input[0].mode'",
        "operator 'lung-segmentation', field 'requests.gpus'",
        "operator 'lung-segmentation', field 'services[0].replicas'",
        "operator 'lung-segmentation', field 'services[0].connections.http[0].protocol'",
    ]
    assert all("does not define it here" in w and w.endswith("; ignored") for w in unknown)
    logged = [r.getMessage() for r in caplog.records if r.name == "server_mock.definition"]
    assert logged == [f"pipeline 'lung-ct': {w}" for w in definition.warnings]
    assert definition.operator("dicom-reader").container.command == ()


def test_one_unnamed_output_among_several_is_a_warning_in_untyped_versions() -> None:
    document = load(LUNG)
    document["operators"][0]["output"].append({"name": "meta", "path": "/meta"})
    definition = parse_pipeline_definition(dump(document))

    assert any(
        w.startswith("operator 'dicom-reader', field 'output[0].name': an operator with several")
        for w in definition.warnings
    )
    # The unnamed output is still what a `from` without a name reads.
    entry = definition.operator("lung-segmentation").inputs[0]
    assert definition.upstream_output(entry) == OutputSpec("/output")


# --- typed inputs and outputs (api-version 0.5.0+) ----------------------------------------------

TYPED = """\
api-version: 0.5.0
name: typed
orchestrator: Clara
operators:
- name: reader
  container: {image: example/reader}
  input:
  - {name: dicom, path: /input, type: stream, element-type: dicom}
  output:
  - {name: volume, path: /output, type: stream, element-type: mhd}
  - {name: tensor, type: array, element-type: float32, shape: [1, -1, 512, 512]}
  - {name: label, type: string}
  - {name: score, type: f32}
- name: infer
  container: {image: example/infer}
  models:
  - name: liver
  input:
  - {from: reader, name: volume, path: /in, type: stream, element-type: mhd}
  - {from: reader, name: tensor, type: array, element-type: float32, shape: [1, -1, 512, 512]}
  output:
  - {name: mask, path: /out, type: stream, element-type: mhd}
"""


def test_typed_entries_are_parsed_and_shared_memory_is_refused_at_start_only() -> None:
    definition = parse_pipeline_definition(TYPED)

    reader = definition.operator("reader")
    assert reader.outputs == (
        OutputSpec("/output", "volume", "stream", "mhd"),
        OutputSpec("", "tensor", "array", "float32", (1, -1, 512, 512)),
        OutputSpec("", "label", "string"),
        OutputSpec("", "score", "f32"),
    )
    assert [o.shared_memory for o in reader.outputs] == [False, True, True, True]
    assert definition.operator("infer").inputs[1].shared_memory
    assert definition.warnings == (
        "operator 'infer', field 'models': 'models' is defined from api-version 0.6.0, but "
        "this definition declares 0.5.0; read anyway",
    )
    problems = definition.unsupported_for_start()
    assert [p.split(": ")[0] for p in problems] == [
        "operator 'reader', field 'output[1].type'",
        "operator 'reader', field 'output[2].type'",
        "operator 'reader', field 'output[3].type'",
        "operator 'infer', field 'input[1].type'",
    ]
    assert all("the mock serves disk payloads only" in p for p in problems)


def test_disk_only_typed_definition_is_runnable() -> None:
    document = load(TYPED)
    document["operators"][0]["output"] = document["operators"][0]["output"][:1]
    document["operators"][1]["input"] = document["operators"][1]["input"][:1]
    assert parse_pipeline_definition(dump(document)).unsupported_for_start() == []


def test_type_keys_in_an_untyped_version_are_read_with_a_warning() -> None:
    document = load(LUNG)
    document["operators"][0]["output"][0].update({"type": "stream", "element-type": "mhd"})
    definition = parse_pipeline_definition(dump(document))

    assert definition.operator("dicom-reader").outputs[0] == OutputSpec(
        "/output", None, "stream", "mhd"
    )
    assert (
        "operator 'dicom-reader', field 'output[0].type': 'type' is defined from api-version "
        "0.5.0, but this definition declares 0.4.0; read anyway"
    ) in definition.warnings


def _typed(path: tuple[Any, ...], value: object) -> str:
    document = load(TYPED)
    target: Any = document
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return dump(document)


_DELETE = object()
R_OUT = ("operators", 0, "output")
I_IN = ("operators", 1, "input")

TYPED_CASES: list[tuple[str, str, str | None, str, str]] = [
    ("missing type", _typed((*R_OUT, 0, "type"), _DELETE), "reader", "output[0].type", "'type'"),
    (
        "missing output name",
        _typed((*R_OUT, 2, "name"), _DELETE),
        "reader",
        "output[2].name",
        "outputs are named in api-version 0.5.0",
    ),
    (
        "unknown type",
        _typed((*R_OUT, 3, "type"), "complex64"),
        "reader",
        "output[3].type",
        "unknown",
    ),
    (
        "stream without element-type",
        _typed((*R_OUT, 0, "element-type"), _DELETE),
        "reader",
        "output[0].element-type",
        "type 'stream' needs one",
    ),
    (
        "element-type on a string",
        _typed((*R_OUT, 2, "element-type"), "uint8"),
        "reader",
        "output[2].element-type",
        "must be omitted for type 'string'",
    ),
    (
        "array of a non-primitive",
        _typed((*R_OUT, 1, "element-type"), "voxel"),
        "reader",
        "output[1].element-type",
        "Clara primitive",
    ),
    (
        "array without shape",
        _typed((*R_OUT, 1, "shape"), _DELETE),
        "reader",
        "output[1].shape",
        "needs one",
    ),
    (
        "bad dimension",
        _typed((*R_OUT, 1, "shape"), [1, 0]),
        "reader",
        "output[1].shape[1]",
        "-1 (dynamic)",
    ),
    (
        "shape on a stream",
        _typed((*R_OUT, 0, "shape"), [1]),
        "reader",
        "output[0].shape",
        "must be omitted",
    ),
    (
        "path on an array",
        _typed((*R_OUT, 1, "path"), "/tensor"),
        "reader",
        "output[1].path",
        "shared memory is not mounted",
    ),
    (
        "stream without path",
        _typed((*R_OUT, 0, "path"), _DELETE),
        "reader",
        "output[0].path",
        "missing required key 'path'",
    ),
    (
        "payload input in shared memory",
        _typed(("operators", 0, "input", 0), {"name": "x", "type": "u8"}),
        "reader",
        "input[0].type",
        "the job's input payload, which is on disk",
    ),
    (
        "type mismatch with upstream",
        _typed((*I_IN, 0, "element-type"), "nifti"),
        "infer",
        "input[0].element-type",
        "(reader:volume is 'mhd')",
    ),
    (
        "Argo for a typed pipeline",
        _typed(("orchestrator",), "Argo"),
        None,
        "orchestrator",
        "only on the Clara orchestrator",
    ),
]


@pytest.mark.parametrize(
    ("text", "operator", "field", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in TYPED_CASES],
)
def test_typed_refusals_name_operator_and_field(
    text: str, operator: str | None, field: str, fragment: str
) -> None:
    expect_error(text, operator, field, fragment)


# --- top level, requests, models, services -----------------------------------------------------


def _lung(path: tuple[Any, ...], value: object) -> str:
    document = load(LUNG)
    target: Any = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return dump(document)


SEG = ("operators", 1)
SERVICE = (*SEG, "services", 0)

LUNG_CASES: list[tuple[str, str, str | None, str, str]] = [
    ("orchestrator", _lung(("orchestrator",), "Kubeflow"), None, "orchestrator", "Clara or Argo"),
    ("pull-secrets str", _lung(("pull-secrets",), "ngc"), None, "pull-secrets", "list of secret"),
    ("pull-secret int", _lung(("pull-secrets",), [5]), None, "pull-secrets[0]", "got integer"),
    (
        "gpu string",
        _lung((*SEG, "requests", "gpu"), "1"),
        "lung-segmentation",
        "requests.gpu",
        "whole",
    ),
    (
        "cpu zero",
        _lung((*SEG, "requests", "cpu"), 0),
        "lung-segmentation",
        "requests.cpu",
        "at least 1",
    ),
    (
        "memory fraction",
        _lung((*SEG, "requests", "memory"), 1.5),
        "lung-segmentation",
        "requests.memory",
        "whole number",
    ),
    ("model str", _lung((*SEG, "models", 0), "liver"), "lung-segmentation", "models[0]", "mapping"),
    (
        "model without name",
        _lung((*SEG, "models", 0), {"version": 2}),
        "lung-segmentation",
        "models[0].name",
        "missing required key 'name'",
    ),
    (
        "model listed twice",
        _lung((*SEG, "models"), [{"name": "liver"}, {"name": "LIVER"}]),
        "lung-segmentation",
        "models[1].name",
        "duplicate model name 'LIVER'",
    ),
    (
        "service without container",
        _lung(SERVICE, {"name": "triton"}),
        "lung-segmentation",
        "services[0].container",
        "missing required key 'container'",
    ),
    (
        "service port below 1024",
        _lung((*SERVICE, "connections", "http", 0, "port"), 80),
        "lung-segmentation",
        "services[0].connections.http[0].port",
        "from 1024 to 65535",
    ),
    (
        "connection without name",
        _lung((*SERVICE, "connections", "http", 0), {"port": 8000}),
        "lung-segmentation",
        "services[0].connections.http[0].name",
        "missing required key 'name'",
    ),
    (
        "connections list",
        _lung((*SERVICE, "connections"), [8000]),
        "lung-segmentation",
        "services[0].connections",
        "must be a mapping",
    ),
    (
        "service variable list",
        _lung((*SERVICE, "variables"), {"A": [1]}),
        "lung-segmentation",
        "services[0].variables.A",
        "scalar",
    ),
]


@pytest.mark.parametrize(
    ("text", "operator", "field", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in LUNG_CASES],
)
def test_refusals_name_operator_and_field(
    text: str, operator: str | None, field: str, fragment: str
) -> None:
    expect_error(text, operator, field, fragment)


def test_two_services_cannot_export_the_same_variable() -> None:
    document = load(LUNG)
    services = document["operators"][1]["services"]
    services.append({**services[0], "name": "triton-2"})
    expect_error(
        dump(document),
        "lung-segmentation",
        "services[1].connections.http[0].name",
        "already exported by service 'triton'",
    )


def test_orchestrator_is_matched_case_insensitively() -> None:
    definition = parse_pipeline_definition(_lung(("orchestrator",), "argo"))
    assert definition.orchestrator == "Argo"
    assert parse_pipeline_definition(_lung(("orchestrator",), None)).orchestrator is None


def test_imported_service_is_accepted_and_refused_at_start() -> None:
    definition = parse_pipeline_definition(
        _lung(SERVICE, {"name": "triton", "import": "services/triton.yaml"})
    )
    service = definition.operator("lung-segmentation").services[0]
    assert service == ServiceSpec("triton", None, imported_from="services/triton.yaml")
    assert definition.unsupported_for_start() == [
        "operator 'lung-segmentation', field 'services[0].import': service 'triton' is imported "
        "from 'services/triton.yaml'; the mock cannot load imported documents: declare the "
        "service's container in the operator"
    ]


def test_file_connections_and_all_requests_are_parsed() -> None:
    document = load(LUNG)
    service = document["operators"][1]["services"][0]
    service["connections"]["file"] = [{"name": "MODEL_STORE", "path": "/models"}]
    document["operators"][1]["requests"] = {"cpu": 4, "gpu": 2, "memory": 16384}
    spec = parse_pipeline_definition(dump(document)).operator("lung-segmentation")

    assert spec.requests == ResourceRequests(cpu=4, gpu=2, memory=16384)
    assert [(c.name, c.path) for c in spec.services[0].file_connections] == [
        ("MODEL_STORE", "/models")
    ]


def test_definitions_are_hashable_and_equal_when_parsed_twice() -> None:
    first = parse_pipeline_definition(LUNG)
    second = parse_pipeline_definition(LUNG.encode())
    assert first == second
    assert isinstance(first, PipelineDefinition)
    assert {first, second} == {first}


def test_text_fields_keep_numeric_looking_scalars_as_written() -> None:
    # As in the Operators page's example (`tag: 18.04`): a tag, image or command word that
    # YAML would read as a number is the text written, not a number refused or rounded.
    text = """\
api-version: 0.3.0
name: numbers
operators:
- name: wait
  container:
    image: example/busybox
    tag: 1.30
    command: [sleep, 10, 0x1F]
  services:
  - name: helper
    container: {image: example/helper, tag: 20.10}
"""
    spec = parse_pipeline_definition(text).operator("wait")
    assert spec.container == ContainerSpec("example/busybox", "1.30", ("sleep", "10", "0x1F"))
    assert spec.services[0].container == ContainerSpec("example/helper", "20.10")


def test_the_docs_page_covers_every_key_and_version() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "pipeline-definitions.md").read_text()
    for version in SUPPORTED_API_VERSIONS:
        assert f"| {version}" in page or f", {version}" in page, version
    tables = [
        _language.TOP_LEVEL_KEYS,
        _language.OPERATOR_KEYS,
        _language.CONTAINER_KEYS,
        _language.INPUT_KEYS,
        _language.OUTPUT_KEYS,
        _language.REQUESTS_KEYS,
        _language.SERVICE_KEYS,
        _language.CONNECTIONS_KEYS,
    ]
    for table in tables:
        for key in table:
            assert f"`{key}`" in page, key
