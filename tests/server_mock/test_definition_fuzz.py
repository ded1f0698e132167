"""Property tests of the pipeline definition parser: random and mutated definitions."""

from __future__ import annotations

import datetime
from typing import Any

import yaml
from _definition_samples import DIAMOND, base, dump
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from server_mock._definition import (
    MAX_STAGE_TIMEOUT,
    NAME_PATTERN,
    PipelineDefinition,
    PipelineDefinitionError,
    parse_pipeline_definition,
)


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
