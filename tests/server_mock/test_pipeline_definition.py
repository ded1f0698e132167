"""Tests for the Clara pipeline definition parser and validator."""

from __future__ import annotations

import datetime
import pickle
from collections.abc import Callable
from typing import Any

import pytest
from _definition_samples import DIAMOND, EXAMPLE, base, dump

from server_mock._definition import (
    DEFAULT_STAGE_TIMEOUT,
    MAX_DEFINITION_BYTES,
    MAX_STAGE_TIMEOUT,
    NAME_PATTERN,
    ContainerSpec,
    FrozenMapping,
    InputSpec,
    ModelSpec,
    OperatorSpec,
    OutputSpec,
    PipelineDefinition,
    PipelineDefinitionError,
    ResourceRequests,
    ServiceSpec,
    parse_pipeline_definition,
)


def op(document: dict[str, Any], index: int) -> dict[str, Any]:
    return document["operators"][index]  # type: ignore[no-any-return]


def expect_error(
    text: str | bytes, operator: str | None, field: str | None, fragment: str
) -> PipelineDefinitionError:
    with pytest.raises(PipelineDefinitionError) as info:
        parse_pipeline_definition(text)
    error = info.value
    message = str(error)
    assert error.operator == operator, message
    assert error.field == field, message
    if operator is not None:
        assert f"operator {operator!r}" in message
    if field is not None:
        assert f"field {field!r}" in message
    assert fragment in message
    return error


# --- valid definitions ----------------------------------------------------------------------


def test_example_round_trip() -> None:
    definition = parse_pipeline_definition(EXAMPLE)

    assert definition.api_version == "0.4.0"
    assert definition.name == "volume-segmentation"
    assert definition.description == ""
    assert [o.name for o in definition.operators] == ["load-volume", "segment"]

    load = definition.operator("load-volume")
    assert load.description == "optional text"
    assert load.container == ContainerSpec(
        "clara-examples/load-volume", "0.1", ("python", "operators/load_volume.py")
    )
    assert load.inputs == (InputSpec("/input", None, None),)
    assert load.outputs == (OutputSpec("/output", None), OutputSpec("/stats", "stats"))
    assert load.variables == {"THRESHOLD": "100"}
    assert load.variables_dict() == {"THRESHOLD": "100"}
    assert load.timeout == datetime.timedelta(seconds=120)
    assert load.effective_timeout == datetime.timedelta(seconds=120)
    assert load.upstream == frozenset()

    segment = definition.operator("segment")
    assert segment.description == ""
    assert segment.container == ContainerSpec("clara-examples/segment", "0.1", ())
    assert segment.inputs == (
        InputSpec("/input", "load-volume", None),
        InputSpec("/stats", "load-volume", "stats"),
    )
    assert segment.outputs == (OutputSpec("/output", None),)
    assert segment.variables == {}
    assert segment.timeout is None
    assert segment.effective_timeout == DEFAULT_STAGE_TIMEOUT
    assert segment.upstream == frozenset({"load-volume"})

    assert definition.topological_order() == ("load-volume", "segment")
    assert definition.downstream("load-volume") == ("segment",)
    assert definition.downstream("segment") == ()


def test_parse_is_deterministic_hashable_and_accepts_bytes() -> None:
    first = parse_pipeline_definition(EXAMPLE)
    second = parse_pipeline_definition(EXAMPLE.encode())
    assert first == second
    assert hash(first) == hash(second)
    assert {first, second} == {first}


def test_operator_lookups_fold_case_and_unknown_names_raise_key_error() -> None:
    definition = parse_pipeline_definition(EXAMPLE)
    assert definition.operator("Segment").name == "segment"  # names are not case-sensitive
    assert definition.downstream("LOAD-volume") == ("segment",)
    with pytest.raises(KeyError):
        definition.operator("missing")
    with pytest.raises(KeyError):
        definition.downstream("missing")


def test_diamond_topological_order_and_downstream() -> None:
    definition = parse_pipeline_definition(DIAMOND)
    # Kahn, ties broken by definition order: 'source' (index 3) and 'lonely' (4) are ready
    # first; once 'source' is done, 'right' (1) and 'left' (2) become ready and beat 'lonely'.
    assert definition.topological_order() == ("source", "right", "left", "join", "lonely")
    assert definition.downstream("source") == ("right", "left")
    assert definition.downstream("left") == ("join",)
    assert definition.downstream("join") == ()
    assert definition.operator("join").upstream == frozenset({"left", "right"})


def test_optional_keys_and_conversions() -> None:
    text = """\
api-version: 0.3.0
name: extras
description: the pipeline
parameters: {ANYTHING: [1, 2, {x: y}]}
operators:
- name: only
  container:
    image: ex/only
    tag: 7
    command: python -m 'my module' --flag
  variables:
    INT: 1
    FLOAT: 2.5
    "YES": true
    NO_: false
    EMPTY:
    DAY: 2020-01-02
  requests: {gpu: 1, memory: 8192}
  models: [{name: liver}]
  services:
  - name: trtis
    container: {image: nvcr.io/trtis, tag: latest}
  timeout: 1800
  input: [{path: /in}]
"""
    definition = parse_pipeline_definition(text)
    assert definition.api_version == "0.3.0"
    assert definition.description == "the pipeline"
    spec = definition.operator("only")
    assert spec.container == ContainerSpec("ex/only", "7", ("python", "-m", "my module", "--flag"))
    assert spec.variables_dict() == {
        "INT": "1",
        "FLOAT": "2.5",
        "YES": "true",
        "NO_": "false",
        "EMPTY": "",
        "DAY": "2020-01-02",
    }
    assert spec.requests == ResourceRequests(cpu=None, gpu=1, memory=8192)
    assert spec.models == (ModelSpec("liver"),)
    assert spec.services == (ServiceSpec("trtis", ContainerSpec("nvcr.io/trtis", "latest")),)
    assert spec.timeout == MAX_STAGE_TIMEOUT
    assert spec.outputs == ()
    hash(definition)


def test_defaults_tag_latest_and_float_timeout() -> None:
    text = """\
api-version: 0.4.0
name: p
operators:
- name: a
  container: {image: ex/a}
  timeout: 0.5
"""
    spec = parse_pipeline_definition(text).operator("a")
    assert spec.container == ContainerSpec("ex/a", "latest", ())
    assert spec.timeout == datetime.timedelta(milliseconds=500)


def test_direct_construction_freezes_mappings() -> None:
    spec = OperatorSpec(
        "a",
        "",
        ContainerSpec("img"),
        variables={"A": "1"},
        models=[ModelSpec("m")],  # type: ignore[arg-type]
    )
    assert isinstance(spec.variables, FrozenMapping)
    assert spec.models == (ModelSpec("m"),)
    hash(spec)


def test_directly_built_cycle_is_reported_by_topological_order() -> None:
    a = OperatorSpec("a", "", ContainerSpec("img"), inputs=(InputSpec("/in", "b"),))
    b = OperatorSpec("b", "", ContainerSpec("img"), inputs=(InputSpec("/in", "a"),))
    with pytest.raises(PipelineDefinitionError, match=r"a -> b -> a"):
        PipelineDefinition("0.4.0", "p", (a, b)).topological_order()


def test_error_formatting_and_pickling() -> None:
    assert str(PipelineDefinitionError("boom")) == "boom"
    assert str(PipelineDefinitionError("boom", None, "name")) == "field 'name': boom"
    assert str(PipelineDefinitionError("boom", "a")) == "operator 'a': boom"
    error = PipelineDefinitionError("boom", "a", "input[0].path")
    assert str(error) == "operator 'a', field 'input[0].path': boom"
    assert isinstance(error, ValueError)
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.detail, clone.operator, clone.field, str(clone)) == (
        "boom",
        "a",
        "input[0].path",
        str(error),
    )


def test_name_pattern() -> None:
    assert NAME_PATTERN.match("a")
    assert NAME_PATTERN.match("A_b-9" * 51)
    assert not NAME_PATTERN.match("a" * 256)
    assert not NAME_PATTERN.match("")
    assert not NAME_PATTERN.match("a.b")
    assert not NAME_PATTERN.match("a\n")


# --- document-level errors ------------------------------------------------------------------


def test_rejects_oversized_text_before_parsing() -> None:
    # Valid YAML padded by a comment; would parse fine if it were not too large.
    padding = "#" + "x" * MAX_DEFINITION_BYTES + "\n"
    expect_error(EXAMPLE + padding, None, None, f"limit of {MAX_DEFINITION_BYTES} bytes")
    expect_error((EXAMPLE + padding).encode(), None, None, "limit")
    # Multi-byte characters count as bytes, not characters.
    wide = "#" + "\u00e9" * (MAX_DEFINITION_BYTES // 2) + "\n"
    assert len(EXAMPLE + wide) <= MAX_DEFINITION_BYTES
    expect_error(EXAMPLE + wide, None, None, "limit")


def test_malformed_yaml_reports_line_and_column() -> None:
    error = expect_error("api-version: 0.4.0\nname: [x\n", None, None, "malformed YAML at line 3")
    assert error.operator is None
    expect_error("a: b: c\n", None, None, "line 1, column 5")


@pytest.mark.parametrize(
    "text",
    ["!!int abc", "!!bool maybe", "!!timestamp never", "x: 2020-13-45", "---\na: 1\n---\nb: 2\n"],
)
def test_yaml_construction_errors_are_wrapped(text: str) -> None:
    expect_error(text, None, None, "malformed YAML")


def test_undecodable_bytes() -> None:
    expect_error(b"api-version: \xff\xfe\xfd", None, None, "malformed YAML")


def test_yaml_bomb_is_rejected() -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        refs = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{refs}]")
    bomb = "\n".join(lines) + "\n"
    assert len(bomb) < 1000
    expect_error(bomb, None, None, "more than 100000 YAML nodes")


def test_recursive_alias_and_deep_nesting_are_rejected() -> None:
    expect_error("a: &x [*x]\n", None, None, "recursive alias")
    expect_error("[" * 100 + "]" * 100, None, None, "nests collections")
    expect_error("[" * 20_000 + "]" * 20_000, None, None, "malformed YAML")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "got null"), ("- a\n- b\n", "got list"), ("just text\n", "got string")],
)
def test_top_level_must_be_a_mapping(text: str, fragment: str) -> None:
    expect_error(text, None, None, fragment)


Mutator = Callable[[dict[str, Any]], object]


def _set(path: tuple[Any, ...], value: object) -> Mutator:
    def mutate(document: dict[str, Any]) -> None:
        target: Any = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(path: tuple[Any, ...]) -> Mutator:
    def mutate(document: dict[str, Any]) -> None:
        target: Any = document
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


SEG = ("operators", 1)
LOAD = ("operators", 0)

CASES: list[tuple[str, Mutator, str | None, str | None, str]] = [
    # top level
    ("missing api-version", _delete(("api-version",)), None, "api-version", "missing"),
    ("api-version 0.8.0", _set(("api-version",), "0.8.0"), None, "api-version", "'0.8.0'"),
    ("api-version float", _set(("api-version",), 0.4), None, "api-version", "quoted string"),
    ("missing name", _delete(("name",)), None, "name", "missing required key 'name'"),
    ("bad pipeline name", _set(("name",), "my pipeline"), None, "name", "invalid pipeline name"),
    ("pipeline name int", _set(("name",), 12), None, "name", "must be a string"),
    ("parameters list", _set(("parameters",), [1]), None, "parameters", "must be a mapping"),
    ("missing operators", _delete(("operators",)), None, "operators", "missing"),
    ("operators mapping", _set(("operators",), {"a": 1}), None, "operators", "must be a list"),
    ("no operators", _set(("operators",), []), None, "operators", "no operators"),
    ("operator not mapping", _set(("operators", 1), "segment"), None, "operators[1]", "mapping"),
    # operator names
    ("missing op name", _delete((*SEG, "name")), None, "operators[1].name", "missing"),
    ("bad op name", _set((*SEG, "name"), "seg ment"), None, "operators[1].name", "'seg ment'"),
    ("long op name", _set((*SEG, "name"), "s" * 256), None, "operators[1].name", "1-255"),
    ("op name list", _set((*SEG, "name"), ["x"]), None, "operators[1].name", "got list"),
    ("duplicate name", _set((*SEG, "name"), "Load-Volume"), "Load-Volume", "name", "duplicate"),
    ("description int", _set((*SEG, "description"), 3), "segment", "description", "string"),
    # references and cycles
    (
        "unknown from",
        _set((*SEG, "input", 1, "from"), "lod-volume"),
        "segment",
        "input[1].from",
        "unknown operator 'lod-volume'",
    ),
    (
        "from misspelt",
        _set((*SEG, "input", 0, "from"), "load-volum"),
        "segment",
        "input[0].from",
        "did you mean 'load-volume'",
    ),
    (
        "from itself",
        _set((*SEG, "input", 0, "from"), "segment"),
        "segment",
        "input[0].from",
        "from itself",
    ),
    ("from int", _set((*SEG, "input", 0, "from"), 5), "segment", "input[0].from", "got integer"),
    (
        "undeclared output name",
        _set((*SEG, "input", 1, "name"), "stat"),
        "segment",
        "input[1].name",
        "declares no output 'stat'",
    ),
    (
        "no unnamed upstream output among several",
        _set((*LOAD, "output"), [{"name": "a", "path": "/a"}, {"name": "stats", "path": "/s"}]),
        "segment",
        "input[0].name",
        "operator 'load-volume' has several outputs ('a', 'stats'): name the one to read",
    ),
    (
        "from an operator without outputs",
        _delete((*LOAD, "output")),
        "segment",
        "input[0].from",
        "operator 'load-volume' declares no outputs to read",
    ),
    # entry sets
    (
        "two unnamed outputs",
        _set((*LOAD, "output", 1), {"path": "/other"}),
        "load-volume",
        "output[1].name",
        "more than one unnamed output",
    ),
    (
        "duplicate output names",
        _set((*LOAD, "output", 0), {"name": "stats", "path": "/output"}),
        "load-volume",
        "output[1].name",
        "duplicate output name 'stats'",
    ),
    (
        "duplicate output names differing in case",
        _set((*LOAD, "output", 0), {"name": "Stats", "path": "/output"}),
        "load-volume",
        "output[1].name",
        "duplicate output name 'stats'",
    ),
    ("input not list", _set((*SEG, "input"), {"path": "/x"}), "segment", "input", "list"),
    ("input entry str", _set((*SEG, "input", 0), "/x"), "segment", "input[0]", "mapping"),
    (
        "typed input without element-type",
        _set((*SEG, "input", 0, "type"), "stream"),
        "segment",
        "input[0].element-type",
        "missing required key 'element-type'",
    ),
    (
        "bad output name",
        _set((*LOAD, "output", 1, "name"), "a b"),
        "load-volume",
        "output[1].name",
        "invalid name",
    ),
    # paths
    ("input no path", _delete((*SEG, "input", 1, "path")), "segment", "input[1].path", "missing"),
    (
        "output no path",
        _delete((*SEG, "output", 0, "path")),
        "segment",
        "output[0].path",
        "missing",
    ),
    (
        "relative path",
        _set((*SEG, "input", 0, "path"), "in"),
        "segment",
        "input[0].path",
        "absolute",
    ),
    (
        "dotdot path",
        _set((*SEG, "output", 0, "path"), "/out/../etc"),
        "segment",
        "output[0].path",
        "'..'",
    ),
    ("path int", _set((*SEG, "input", 0, "path"), 1), "segment", "input[0].path", "string"),
    (
        "same mount twice",
        _set((*SEG, "output", 0, "path"), "/input/"),
        "segment",
        "output[0].path",
        "already mounted by input[0]",
    ),
    # variables
    ("variables list", _set((*LOAD, "variables"), ["A=1"]), "load-volume", "variables", "mapping"),
    (
        "nested variable",
        _set((*LOAD, "variables", "NESTED"), {"a": 1}),
        "load-volume",
        "variables.NESTED",
        "scalar",
    ),
    (
        "list variable",
        _set((*LOAD, "variables", "LIST"), [1]),
        "load-volume",
        "variables.LIST",
        "scalar",
    ),
    ("int variable name", _set((*LOAD, "variables", 5), "x"), "load-volume", "variables.5", "name"),
    (
        "bool variable name",
        _set((*LOAD, "variables", True), "x"),
        "load-volume",
        "variables.True",
        "yes/no",
    ),
    # timeout
    ("timeout bool", _set((*LOAD, "timeout"), True), "load-volume", "timeout", "got boolean"),
    ("timeout str", _set((*LOAD, "timeout"), "60"), "load-volume", "timeout", "got string"),
    ("timeout zero", _set((*LOAD, "timeout"), 0), "load-volume", "timeout", "positive"),
    ("timeout negative", _set((*LOAD, "timeout"), -1.5), "load-volume", "timeout", "positive"),
    ("timeout nan", _set((*LOAD, "timeout"), float("nan")), "load-volume", "timeout", "positive"),
    ("timeout tiny", _set((*LOAD, "timeout"), 1e-9), "load-volume", "timeout", "positive"),
    ("timeout too long", _set((*LOAD, "timeout"), 1801), "load-volume", "timeout", "at most 1800"),
    ("timeout inf", _set((*LOAD, "timeout"), float("inf")), "load-volume", "timeout", "at most"),
    # container
    ("no container", _delete((*SEG, "container")), "segment", "container", "missing"),
    ("container str", _set((*SEG, "container"), "ex/seg"), "segment", "container", "mapping"),
    ("no image", _delete((*SEG, "container", "image")), "segment", "container.image", "missing"),
    ("empty image", _set((*SEG, "container", "image"), " "), "segment", "container.image", "empty"),
    (
        "image list",
        _set((*SEG, "container", "image"), ["x"]),
        "segment",
        "container.image",
        "string",
    ),
    (
        "tag list",
        _set((*SEG, "container", "tag"), ["0.1"]),
        "segment",
        "container.tag",
        "must be a string, got list",
    ),
    (
        "command mapping",
        _set((*SEG, "container", "command"), {"a": 1}),
        "segment",
        "container.command",
        "list of strings",
    ),
    (
        "command non-str item",
        _set((*SEG, "container", "command"), ["sleep", [10]]),
        "segment",
        "container.command[1]",
        "got list",
    ),
    (
        "command unbalanced quote",
        _set((*SEG, "container", "command"), "python 'oops"),
        "segment",
        "container.command",
        "cannot split",
    ),
    # requests, models, services
    ("requests list", _set((*SEG, "requests"), [1]), "segment", "requests", "mapping"),
    ("models mapping", _set((*SEG, "models"), {"a": 1}), "segment", "models", "list"),
    ("services str", _set((*SEG, "services"), "x"), "segment", "services", "list"),
]


@pytest.mark.parametrize(
    ("mutate", "operator", "field", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_validation_errors(
    mutate: Mutator, operator: str | None, field: str | None, fragment: str
) -> None:
    document = base()
    mutate(document)
    expect_error(dump(document), operator, field, fragment)


def test_unknown_from_message_matches_documented_format() -> None:
    document = base()
    op(document, 1)["input"][1]["from"] = "lod-volume"
    error = expect_error(dump(document), "segment", "input[1].from", "")
    assert str(error) == (
        "operator 'segment', field 'input[1].from': unknown operator 'lod-volume'"
        " (did you mean 'load-volume'?)"
    )
    assert error.detail == "unknown operator 'lod-volume' (did you mean 'load-volume'?)"
    op(document, 1)["input"][1]["from"] = "xyz"
    error = expect_error(dump(document), "segment", "input[1].from", "")
    assert error.detail == "unknown operator 'xyz'"


def test_cycle_is_reported_with_its_path() -> None:
    text = """\
api-version: 0.4.0
name: loop
operators:
- name: start
  container: {image: ex/start}
  output: [{path: /out}]
- name: c
  container: {image: ex/c}
  input: [{from: b, path: /in}]
  output: [{path: /out}, {name: back, path: /back}]
- name: a
  container: {image: ex/a}
  input: [{from: start, path: /start}, {from: c, name: back, path: /in}]
  output: [{path: /out}]
- name: b
  container: {image: ex/b}
  input: [{from: a, path: /in}]
  output: [{path: /out}]
"""
    # The cycle starts at its earliest-defined operator, 'c', in data-flow order; the field is
    # the input closing the loop.
    expect_error(text, "c", "input[0].from", "dependency cycle: c -> a -> b -> c")


def test_two_node_cycle() -> None:
    document = base()
    op(document, 0)["input"] = [{"from": "segment", "path": "/input"}]
    expect_error(
        dump(document), "load-volume", "input[0].from", "load-volume -> segment -> load-volume"
    )
