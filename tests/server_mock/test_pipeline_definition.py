"""Tests for the Clara pipeline definition parser and validator."""

from __future__ import annotations

import datetime
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

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

EXAMPLE = """\
api-version: 0.4.0
name: volume-segmentation
parameters: {}
operators:
- name: load-volume
  description: optional text
  container:
    image: clara-examples/load-volume
    tag: "0.1"
    command: ["python", "operators/load_volume.py"]
  variables:
    THRESHOLD: "100"
  input:
  - path: /input
  output:
  - path: /output
  - name: stats
    path: /stats
  timeout: 120
- name: segment
  container: {image: clara-examples/segment, tag: "0.1"}
  input:
  - from: load-volume
    path: /input
  - from: load-volume
    name: stats
    path: /stats
  output:
  - path: /output
"""


def base() -> dict[str, Any]:
    """A fresh, valid definition as plain data (two operators, like EXAMPLE)."""
    return yaml.safe_load(EXAMPLE)  # type: ignore[no-any-return]


def dump(document: object) -> str:
    return yaml.safe_dump(document, sort_keys=False)


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


DIAMOND = """\
api-version: 0.4.0
name: diamond
operators:
- name: join
  container: {image: ex/join}
  input:
  - {from: right, path: /right}
  - {from: left, name: result, path: /left}
  output: [{path: /out}]
- name: right
  container: {image: ex/right}
  input: [{from: source, path: /in}]
  output: [{path: /out}]
- name: left
  container: {image: ex/left}
  input: [{from: source, path: /in}]
  output: [{name: result, path: /out}]
- name: source
  container: {image: ex/source}
  input: [{path: /in}]
  output: [{path: /out}]
- name: lonely
  container: {image: ex/lonely}
"""


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


# --- property tests -------------------------------------------------------------------------


def check_invariants(definition: PipelineDefinition) -> None:
    names = [spec.name for spec in definition.operators]
    assert names
    assert len({name.lower() for name in names}) == len(names)
    assert all(NAME_PATTERN.match(name) for name in [definition.name, *names])
    order = definition.topological_order()
    assert sorted(order) == sorted(names)
    position = {name: i for i, name in enumerate(order)}
    for spec in definition.operators:
        assert spec.name not in spec.upstream
        for parent in spec.upstream:
            assert position[parent] < position[spec.name]
            assert spec.name in definition.downstream(parent)
        for entry in spec.inputs:
            assert entry.path.startswith("/")
            if entry.from_operator is not None:
                upstream = definition.operator(entry.from_operator)
                assert upstream.name == entry.from_operator
                assert definition.upstream_output(entry) in upstream.outputs
                assert entry.name in (None, entry.from_output)
        folded = {None if e.name is None else e.name.lower() for e in spec.outputs}
        assert len(folded) == len(spec.outputs)
        if spec.timeout is not None:
            assert datetime.timedelta(0) < spec.timeout <= MAX_STAGE_TIMEOUT
        assert all(isinstance(v, str) for v in spec.variables.values())
    hash(definition)


def parse_or_reject(text: str | bytes) -> None:
    try:
        definition = parse_pipeline_definition(text)
    except PipelineDefinitionError as error:
        assert str(error)
        event("rejected")
    else:
        check_invariants(definition)
        event("accepted")


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

YAMLISH = st.text(alphabet=st.sampled_from(list(":-[]{},&*!|>'\"#%@?`~$ \n\t/.abcxyz019")))


@FUZZ
@given(st.one_of(st.text(), st.binary(), YAMLISH, YAMLISH.map(str.encode)))
def test_fuzz_random_text(text: str | bytes) -> None:
    parse_or_reject(text)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["load-volume", "segment", "stats", "/input", "/x/../y", "0.4.0", ""]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["name", "path", "from", "image", "x"]), inner, max_size=3),
    ),
    max_leaves=6,
)


def all_paths(node: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = []
    if isinstance(node, dict):
        for key, value in node.items():
            paths.append((*prefix, key))
            paths.extend(all_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            paths.append((*prefix, index))
            paths.extend(all_paths(value, (*prefix, index)))
    return paths


def resolve(document: Any, path: tuple[Any, ...]) -> tuple[Any, Any]:
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    return parent, path[-1]


def diamond() -> dict[str, Any]:
    return yaml.safe_load(DIAMOND)  # type: ignore[no-any-return]


OPTIONAL_KEYS = {"description", "variables", "timeout", "parameters", "tag", "command", "models"}


def mutate_once(document: dict[str, Any], data: st.DataObject) -> None:
    """Apply one random mutation; some usually keep the definition valid, most break it."""
    names = [o["name"] for o in base()["operators"] + diamond()["operators"]]
    paths = all_paths(document)
    operators = document.get("operators")
    kind = data.draw(
        st.sampled_from(
            ["drop", "drop-optional", "swap", "rename-from", "add-edge", "rename", "reorder"]
        )
    )
    if kind == "drop" and paths:
        parent, key = resolve(document, data.draw(st.sampled_from(paths)))
        del parent[key]
    elif kind == "drop-optional":
        optional = [
            p
            for p in paths
            if p[-1] in OPTIONAL_KEYS or (len(p) >= 2 and p[-2] in ("input", "output"))
        ]
        if optional:
            parent, key = resolve(document, data.draw(st.sampled_from(optional)))
            del parent[key]
    elif kind == "swap" and paths:
        parent, key = resolve(document, data.draw(st.sampled_from(paths)))
        parent[key] = data.draw(VALUES)
    elif kind == "rename-from":
        froms = [p for p in paths if p[-1] == "from"]
        if froms:
            parent, key = resolve(document, data.draw(st.sampled_from(froms)))
            choices = [*names, "nope", names[0].upper()]
            parent[key] = data.draw(st.sampled_from(choices) | st.text(max_size=8))
    elif kind == "add-edge" and isinstance(operators, list) and operators:
        target = data.draw(st.sampled_from(operators))
        source = data.draw(st.sampled_from(operators))
        if isinstance(target, dict) and isinstance(source, dict):
            outputs = source.get("output")
            declared = (
                [o.get("name") for o in outputs if isinstance(o, dict)]
                if isinstance(outputs, list)
                else []
            )
            name = data.draw(st.sampled_from([*declared, None, "stats", "result"]))
            inputs = target.get("input")
            if not isinstance(inputs, list):
                inputs = target["input"] = []
            entry = {"from": source.get("name"), "path": f"/edge{len(inputs)}"}
            if name is not None:
                entry["name"] = name
            inputs.append(entry)
    elif kind == "rename":
        renames = [p for p in paths if len(p) == 3 and p[0] == "operators" and p[2] == "name"]
        if renames:
            parent, key = resolve(document, data.draw(st.sampled_from(renames)))
            choices = [n.upper() for n in names]
            parent[key] = data.draw(st.sampled_from(choices) | st.text(max_size=8))
    elif kind == "reorder" and isinstance(operators, list):
        document["operators"] = data.draw(st.permutations(operators))


@FUZZ
@given(st.data())
def test_fuzz_mutated_definitions(data: st.DataObject) -> None:
    document = data.draw(st.sampled_from([base, diamond]))()
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        mutate_once(document, data)
    text = dump(document)
    parse_or_reject(text.encode() if data.draw(st.booleans()) else text)


def test_unmutated_fuzz_seeds_are_valid() -> None:
    check_invariants(parse_pipeline_definition(dump(base())))
    check_invariants(parse_pipeline_definition(dump(diamond())))
