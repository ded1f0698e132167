"""Parse and validate Clara pipeline definitions (Clara Deploy SDK api-version 0.3.0 / 0.4.0).

A pipeline definition is a YAML document naming the pipeline and listing its operators: each
operator runs one container, reads inputs (the job's input payload or another operator's
outputs) and writes outputs. :func:`parse_pipeline_definition` turns the text into an immutable
:class:`PipelineDefinition` or raises :class:`PipelineDefinitionError` naming the offending
operator and field.

Example:
    >>> definition = parse_pipeline_definition('''
    ... api-version: 0.4.0
    ... name: demo
    ... operators:
    ... - name: a
    ...   container: {image: example/a}
    ...   output: [{path: /out}]
    ... - name: b
    ...   container: {image: example/b}
    ...   input: [{from: a, path: /in}]
    ... ''')
    >>> definition.topological_order()
    ('a', 'b')
"""

from __future__ import annotations

import dataclasses
import datetime
import heapq
import math
import posixpath
import shlex
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final, TypeAlias, TypeVar

import yaml

from clara.contract import DEFAULT_STAGE_TIMEOUT, MAX_STAGE_TIMEOUT, NAME_PATTERN

__all__ = [
    "DEFAULT_STAGE_TIMEOUT",
    "MAX_DEFINITION_BYTES",
    "MAX_DOCUMENT_DEPTH",
    "MAX_DOCUMENT_NODES",
    "MAX_STAGE_TIMEOUT",
    "NAME_PATTERN",
    "OPERATOR_KEYS",
    "SUPPORTED_API_VERSIONS",
    "ContainerSpec",
    "FrozenMapping",
    "FrozenValue",
    "InputSpec",
    "OperatorSpec",
    "OutputSpec",
    "PipelineDefinition",
    "PipelineDefinitionError",
    "parse_pipeline_definition",
]

MAX_DEFINITION_BYTES: Final = 1_048_576
"""Largest accepted definition, in bytes (UTF-8 for ``str`` input); checked before parsing."""

MAX_DOCUMENT_NODES: Final = 100_000
"""Most YAML nodes a definition may expand to once aliases are resolved (YAML-bomb guard)."""

MAX_DOCUMENT_DEPTH: Final = 64
"""Deepest nesting of YAML collections a definition may have (also rejects recursive aliases)."""

SUPPORTED_API_VERSIONS: Final = ("0.3.0", "0.4.0")
"""The ``api-version`` values this parser accepts."""

OPERATOR_KEYS: Final = frozenset(
    {
        "name",
        "description",
        "container",
        "input",
        "output",
        "variables",
        "requests",
        "models",
        "services",
        "timeout",
    }
)
"""Keys an operator entry may contain; any other key is rejected."""

_TOP_LEVEL_KEYS: Final = frozenset(
    {"api-version", "name", "description", "parameters", "operators"}
)
_CONTAINER_KEYS: Final = frozenset({"image", "tag", "command"})
_INPUT_KEYS: Final = frozenset({"from", "name", "path"})
_OUTPUT_KEYS: Final = frozenset({"name", "path"})
_MAX_ECHO: Final = 60

_K = TypeVar("_K")
_V = TypeVar("_V")


class FrozenMapping(Mapping[_K, _V]):
    """An immutable, hashable mapping that keeps insertion order.

    Equality follows :class:`~collections.abc.Mapping` (equal to any mapping with the same
    items, including a plain ``dict``); hashing requires hashable values.

    Args:
        items: The initial content, as a mapping or an iterable of key/value pairs.
    """

    __slots__ = ("_data", "_hash")

    def __init__(self, items: Mapping[_K, _V] | Iterable[tuple[_K, _V]] = ()) -> None:
        self._data: dict[_K, _V] = dict(items)
        self._hash: int | None = None

    def __getitem__(self, key: _K) -> _V:
        return self._data[key]

    def __iter__(self) -> Iterator[_K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __repr__(self) -> str:
        return f"FrozenMapping({self._data!r})"


FrozenValue: TypeAlias = (
    "bool | int | float | str | bytes | datetime.date | tuple[FrozenValue, ...]"
    " | frozenset[FrozenValue] | FrozenMapping[FrozenValue, FrozenValue] | None"
)
"""An immutable YAML value: scalars, tuples (lists), frozensets (sets), FrozenMappings (maps)."""

_EMPTY_VARIABLES: Final[FrozenMapping[str, str]] = FrozenMapping()
_EMPTY_REQUESTS: Final[FrozenMapping[str, FrozenValue]] = FrozenMapping()


class PipelineDefinitionError(ValueError):
    """A pipeline definition is malformed or inconsistent.

    ``str(error)`` names the operator and field when known, e.g.
    ``operator 'segment', field 'input[1].from': unknown operator 'lod-volume'``.

    Args:
        detail: What is wrong, without the operator/field prefix.
        operator: The offending operator's name; ``None`` for pipeline-level problems and for
            operators whose name is itself invalid.
        field: The offending field's path, relative to the operator when ``operator`` is set
            (``input[1].from``, ``container.image``), else from the document root
            (``api-version``, ``operators[2].name``); ``None`` for document-level problems.

    Attributes:
        detail: What is wrong, without the operator/field prefix.
        operator: The offending operator's name, or ``None``.
        field: The offending field's path, or ``None``.
    """

    def __init__(self, detail: str, operator: str | None = None, field: str | None = None) -> None:
        self.detail = detail
        self.operator = operator
        self.field = field
        super().__init__(_format_error(detail, operator, field))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.detail, self.operator, self.field))


def _format_error(detail: str, operator: str | None, field: str | None) -> str:
    where = []
    if operator is not None:
        where.append(f"operator {operator!r}")
    if field is not None:
        where.append(f"field {field!r}")
    return f"{', '.join(where)}: {detail}" if where else detail


@dataclasses.dataclass(frozen=True, slots=True)
class ContainerSpec:
    """The container an operator runs.

    Attributes:
        image: The image name, e.g. ``clara-examples/segment``.
        tag: The image tag.
        command: The command line to run; empty to use the image's entry point.
    """

    image: str
    tag: str = "latest"
    command: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class InputSpec:
    """One input of an operator.

    Attributes:
        path: Where the input is mounted in the container (absolute POSIX path).
        from_operator: The upstream operator providing the input; ``None`` for the job's input
            payload.
        name: The upstream output's name; ``None`` for the upstream's unnamed output (or the
            payload). Also the input entry's name as the stage sees it.
    """

    path: str
    from_operator: str | None = None
    name: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class OutputSpec:
    """One output of an operator.

    Attributes:
        path: Where the output is mounted in the container (absolute POSIX path).
        name: The output's name; ``None`` for the operator's single unnamed output.
    """

    path: str
    name: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class OperatorSpec:
    """One operator (stage) of a pipeline.

    Mapping and list arguments are frozen on construction, so instances are hashable.

    Attributes:
        name: The operator's name, unique (case-insensitively) within the pipeline.
        description: Free text; ``""`` when absent.
        container: The container to run.
        inputs: The inputs, in definition order.
        outputs: The outputs, in definition order.
        variables: Environment variables for the container (values converted to strings).
        timeout: The operator's own timeout; ``None`` for :data:`DEFAULT_STAGE_TIMEOUT`.
        requests: The ``requests`` mapping (hardware requirements), kept verbatim but frozen.
        models: The ``models`` list, kept verbatim but frozen.
        services: The ``services`` list, kept verbatim but frozen.
    """

    name: str
    description: str
    container: ContainerSpec
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    variables: Mapping[str, str] = _EMPTY_VARIABLES
    timeout: datetime.timedelta | None = None
    requests: Mapping[str, FrozenValue] = _EMPTY_REQUESTS
    models: tuple[FrozenValue, ...] = ()
    services: tuple[FrozenValue, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        if not isinstance(self.variables, FrozenMapping):
            object.__setattr__(self, "variables", FrozenMapping(self.variables))
        object.__setattr__(self, "requests", _freeze(self.requests))
        object.__setattr__(self, "models", _freeze(self.models))
        object.__setattr__(self, "services", _freeze(self.services))

    @property
    def upstream(self) -> frozenset[str]:
        """The operators this operator takes input from."""
        return frozenset(i.from_operator for i in self.inputs if i.from_operator is not None)

    @property
    def effective_timeout(self) -> datetime.timedelta:
        """The operator's timeout, or :data:`DEFAULT_STAGE_TIMEOUT` when it sets none."""
        return DEFAULT_STAGE_TIMEOUT if self.timeout is None else self.timeout

    def variables_dict(self) -> dict[str, str]:
        """Return a new, mutable copy of :attr:`variables` (e.g. to build an environment)."""
        return dict(self.variables)


@dataclasses.dataclass(frozen=True, slots=True)
class PipelineDefinition:
    """A parsed, validated pipeline definition.

    Attributes:
        api_version: The definition's ``api-version``, one of :data:`SUPPORTED_API_VERSIONS`.
        name: The pipeline's name.
        operators: The operators, in definition order.
        description: Free text; ``""`` when absent.
    """

    api_version: str
    name: str
    operators: tuple[OperatorSpec, ...]
    description: str = ""

    def operator(self, name: str) -> OperatorSpec:
        """Return the operator called ``name`` (exact, case-sensitive match).

        Raises:
            KeyError: No operator has that name.
        """
        for spec in self.operators:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def downstream(self, name: str) -> tuple[str, ...]:
        """Return the operators taking input from ``name``, in definition order.

        Raises:
            KeyError: No operator has that name.
        """
        self.operator(name)
        return tuple(spec.name for spec in self.operators if name in spec.upstream)

    def topological_order(self) -> tuple[str, ...]:
        """Return every operator's name, each after all of its upstream operators.

        Kahn's algorithm; when several operators are ready, the earliest-defined goes first,
        so the order is deterministic and independent operators keep definition order.
        References to unknown operators are ignored (the parser rejects them).

        Raises:
            PipelineDefinitionError: The operators' dependencies form a cycle (only possible
                for instances not built by :func:`parse_pipeline_definition`).
        """
        order = _kahn(self.operators)
        if len(order) != len(self.operators):
            raise _cycle_error(self.operators, order)
        return tuple(self.operators[i].name for i in order)


def parse_pipeline_definition(text: str | bytes) -> PipelineDefinition:
    """Parse and validate a Clara pipeline definition.

    Args:
        text: The YAML document; ``bytes`` may be UTF-8 or UTF-16 (with BOM).

    Returns:
        The validated definition.

    Raises:
        PipelineDefinitionError: The text is too large, is not valid YAML, or is not a valid
            pipeline definition. The error's ``operator`` and ``field`` locate the problem.
        TypeError: ``text`` is neither ``str`` nor ``bytes``.
    """
    document = _load_yaml(text)
    if not isinstance(document, dict):
        raise PipelineDefinitionError(
            f"the definition must be a YAML mapping, got {_type_name(document)}"
        )
    _check_keys(document, _TOP_LEVEL_KEYS, None, "")
    api_version = _parse_api_version(document)
    name = _parse_name(document, "name", None, "name", "pipeline name")
    description = _parse_description(document, None, "description")
    parameters = document.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise PipelineDefinitionError(
            f"must be a mapping, got {_type_name(parameters)}", None, "parameters"
        )
    operators = _parse_operators(document)
    _check_references(operators)
    order = _kahn(operators)
    if len(order) != len(operators):
        raise _cycle_error(operators, order)
    return PipelineDefinition(api_version, name, operators, description)


# --- document level -------------------------------------------------------------------------


def _load_yaml(text: str | bytes) -> object:
    if isinstance(text, str):
        # Every character is at least one UTF-8 byte: skip encoding huge strings.
        size = len(text) if len(text) > MAX_DEFINITION_BYTES else _utf8_size(text)
    elif isinstance(text, bytes):
        size = len(text)
    else:
        raise TypeError(f"expected str or bytes, got {type(text).__name__}")
    if size > MAX_DEFINITION_BYTES:
        raise PipelineDefinitionError(
            f"the definition is larger than the limit of {MAX_DEFINITION_BYTES} bytes"
        )
    try:
        document: object = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "; ".join(part for part in (exc.context, exc.problem) if part) or str(exc)
        raise PipelineDefinitionError(f"malformed YAML{where}: {what}") from exc
    except yaml.YAMLError as exc:  # e.g. ReaderError: undecodable bytes, control characters
        raise PipelineDefinitionError(f"malformed YAML: {exc}") from exc
    except RecursionError as exc:
        raise PipelineDefinitionError("malformed YAML: collections are nested too deeply") from exc
    except Exception as exc:
        # SafeConstructor lets some bad explicitly-tagged scalars escape as ValueError,
        # KeyError or AttributeError (``!!int x``, ``!!bool x``, ``!!timestamp x``).
        raise PipelineDefinitionError(
            f"malformed YAML: cannot construct a value ({type(exc).__name__}: {exc})"
        ) from exc
    _check_document_size(document)
    return document


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _check_document_size(document: object) -> None:
    """Reject documents that expand to too many nodes or nest too deeply.

    ``safe_load`` shares aliased nodes, so a "billion laughs" document loads cheaply but any
    traversal of it is exponential; recursive aliases make it infinite. Walk it once, bounded.
    """
    stack: list[tuple[object, int]] = [(document, 1)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_DOCUMENT_NODES:
            raise PipelineDefinitionError(
                f"the definition expands to more than {MAX_DOCUMENT_NODES} YAML nodes"
                " (aliases are counted each time they are used)"
            )
        if depth > MAX_DOCUMENT_DEPTH:
            raise PipelineDefinitionError(
                f"the definition nests collections more than {MAX_DOCUMENT_DEPTH} deep"
                " (or uses a recursive alias)"
            )
        if isinstance(value, dict):
            for key, item in value.items():
                stack.append((key, depth + 1))
                stack.append((item, depth + 1))
        elif isinstance(value, list | tuple | set | frozenset):
            stack.extend((item, depth + 1) for item in value)


def _parse_api_version(document: dict[Any, Any]) -> str:
    if "api-version" not in document:
        raise PipelineDefinitionError("missing required key 'api-version'", None, "api-version")
    value = document["api-version"]
    if not isinstance(value, str) or value not in SUPPORTED_API_VERSIONS:
        supported = ", ".join(SUPPORTED_API_VERSIONS)
        hint = " (write it as a quoted string)" if isinstance(value, int | float) else ""
        raise PipelineDefinitionError(
            f"unsupported api-version {_echo(value)}{hint}; supported: {supported}",
            None,
            "api-version",
        )
    return value


def _parse_operators(document: dict[Any, Any]) -> tuple[OperatorSpec, ...]:
    if "operators" not in document:
        raise PipelineDefinitionError("missing required key 'operators'", None, "operators")
    raw = document["operators"]
    if not isinstance(raw, list):
        raise PipelineDefinitionError(
            f"must be a list of operators, got {_type_name(raw)}", None, "operators"
        )
    if not raw:
        raise PipelineDefinitionError("the pipeline defines no operators", None, "operators")
    seen: dict[str, tuple[int, str]] = {}
    operators = []
    for index, entry in enumerate(raw):
        operators.append(_parse_operator(entry, index, seen))
    return tuple(operators)


def _check_references(operators: tuple[OperatorSpec, ...]) -> None:
    by_name = {spec.name: spec for spec in operators}
    by_folded = {spec.name.lower(): spec.name for spec in operators}
    for spec in operators:
        for index, entry in enumerate(spec.inputs):
            source = entry.from_operator
            if source is None:
                continue
            field = f"input[{index}]"
            if source == spec.name:
                raise PipelineDefinitionError(
                    "an operator cannot take input from itself", spec.name, f"{field}.from"
                )
            upstream = by_name.get(source)
            if upstream is None:
                similar = by_folded.get(source.lower())
                hint = f" (did you mean {similar!r}?)" if similar is not None else ""
                raise PipelineDefinitionError(
                    f"unknown operator {_echo(source)}{hint}", spec.name, f"{field}.from"
                )
            declared = [output.name for output in upstream.outputs]
            if entry.name not in declared:
                listed = ", ".join("(unnamed)" if n is None else repr(n) for n in declared)
                outputs = f"its outputs: {listed}" if listed else "it declares no outputs"
                wanted = "unnamed output" if entry.name is None else f"output {entry.name!r}"
                raise PipelineDefinitionError(
                    f"operator {source!r} declares no {wanted} ({outputs})",
                    spec.name,
                    f"{field}.name",
                )


def _kahn(operators: tuple[OperatorSpec, ...]) -> list[int]:
    """Return the topological order as operator indices (short of all of them on a cycle)."""
    index_of = {spec.name: i for i, spec in enumerate(operators)}
    indegree = [0] * len(operators)
    children: list[list[int]] = [[] for _ in operators]
    for i, spec in enumerate(operators):
        for parent in spec.upstream:
            j = index_of.get(parent)
            if j is not None and j != i:
                indegree[i] += 1
                children[j].append(i)
            elif j == i:
                indegree[i] += 1  # self-loop: never ready
    ready = [i for i, degree in enumerate(indegree) if degree == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for child in children[i]:
            indegree[child] -= 1
            if indegree[child] == 0:
                heapq.heappush(ready, child)
    return order


def _cycle_error(operators: tuple[OperatorSpec, ...], order: list[int]) -> PipelineDefinitionError:
    """Build the error for a dependency cycle among the operators Kahn could not order."""
    done = set(order)
    index_of = {spec.name: i for i, spec in enumerate(operators)}
    remaining = {i for i in range(len(operators)) if i not in done}

    def parents(i: int) -> list[int]:
        found = {index_of[p] for p in operators[i].upstream if p in index_of}
        return sorted(found & remaining)

    # Every remaining operator has a remaining parent: walk parents until one repeats.
    walk = [min(remaining)]
    position = {walk[0]: 0}
    while True:
        nxt = parents(walk[-1])[0]
        if nxt in position:
            loop = walk[position[nxt] :]
            break
        position[nxt] = len(walk)
        walk.append(nxt)
    loop.reverse()  # now in data-flow order: each operator feeds the next one
    start = loop.index(min(loop))
    loop = loop[start:] + loop[:start]
    path = " -> ".join(operators[i].name for i in [*loop, loop[0]])
    first = operators[loop[0]]
    closing = operators[loop[-1]].name
    field = next(
        f"input[{k}].from" for k, entry in enumerate(first.inputs) if entry.from_operator == closing
    )
    return PipelineDefinitionError(f"dependency cycle: {path}", first.name, field)


# --- operator level -------------------------------------------------------------------------


def _parse_operator(raw: object, index: int, seen: dict[str, tuple[int, str]]) -> OperatorSpec:
    where = f"operators[{index}]"
    if not isinstance(raw, dict):
        raise PipelineDefinitionError(
            f"an operator must be a mapping, got {_type_name(raw)}", None, where
        )
    name = _parse_name(raw, "name", None, f"{where}.name", "operator name")
    folded = name.lower()
    if folded in seen:
        other_index, other = seen[folded]
        raise PipelineDefinitionError(
            f"duplicate operator name: operators[{other_index}] is already named {other!r}"
            " (names are case-insensitive)",
            name,
            "name",
        )
    seen[folded] = (index, name)
    _check_keys(raw, OPERATOR_KEYS, name, "")
    description = _parse_description(raw, name, "description")
    container = _parse_container(raw, name)
    inputs = _parse_inputs(raw, name)
    outputs = _parse_outputs(raw, name)
    _check_mount_paths(name, inputs, outputs)
    return OperatorSpec(
        name=name,
        description=description,
        container=container,
        inputs=inputs,
        outputs=outputs,
        variables=_parse_variables(raw, name),
        timeout=_parse_timeout(raw, name),
        requests=_parse_requests(raw, name),
        models=_parse_list_verbatim(raw, name, "models"),
        services=_parse_list_verbatim(raw, name, "services"),
    )


def _parse_container(raw: dict[Any, Any], operator: str) -> ContainerSpec:
    if "container" not in raw:
        raise PipelineDefinitionError("missing required key 'container'", operator, "container")
    container = raw["container"]
    if not isinstance(container, dict):
        raise PipelineDefinitionError(
            f"must be a mapping, got {_type_name(container)}", operator, "container"
        )
    _check_keys(container, _CONTAINER_KEYS, operator, "container")
    if "image" not in container:
        raise PipelineDefinitionError("missing required key 'image'", operator, "container.image")
    image = _image_word(container["image"], operator, "container.image")
    tag = "latest"
    raw_tag = container.get("tag")
    if raw_tag is not None:
        if isinstance(raw_tag, float | bool) or not isinstance(raw_tag, str | int):
            raise PipelineDefinitionError(
                f"must be a string, got {_type_name(raw_tag)} {_echo(raw_tag)}"
                ' (quote numeric tags, e.g. tag: "0.1")',
                operator,
                "container.tag",
            )
        tag = _image_word(str(raw_tag), operator, "container.tag")
    return ContainerSpec(image, tag, _parse_command(container.get("command"), operator))


def _image_word(value: object, operator: str, field: str) -> str:
    if not isinstance(value, str):
        raise PipelineDefinitionError(f"must be a string, got {_type_name(value)}", operator, field)
    if not value.strip():
        raise PipelineDefinitionError("must not be empty", operator, field)
    if any(c.isspace() for c in value):
        raise PipelineDefinitionError(
            f"must not contain whitespace: {_echo(value)}", operator, field
        )
    return value


def _parse_command(value: object, operator: str) -> tuple[str, ...]:
    field = "container.command"
    if value is None:
        return ()
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise PipelineDefinitionError(
                f"cannot split the command line: {exc}", operator, field
            ) from exc
    if not isinstance(value, list):
        raise PipelineDefinitionError(
            f"must be a list of strings or a command line, got {_type_name(value)}",
            operator,
            field,
        )
    for index, word in enumerate(value):
        if not isinstance(word, str):
            raise PipelineDefinitionError(
                f"must be a string, got {_type_name(word)} {_echo(word)}",
                operator,
                f"{field}[{index}]",
            )
    return tuple(value)


def _parse_inputs(raw: dict[Any, Any], operator: str) -> tuple[InputSpec, ...]:
    entries = _entries(raw, operator, "input")
    inputs: list[InputSpec] = []
    names: dict[str | None, int] = {}
    for index, entry in enumerate(entries):
        field = f"input[{index}]"
        _check_entry(entry, _INPUT_KEYS, operator, field)
        path = _parse_path(entry, operator, field)
        source = entry.get("from")
        if source is not None and (not isinstance(source, str) or not source):
            raise PipelineDefinitionError(
                f"must be an operator name, got {_type_name(source)} {_echo(source)}",
                operator,
                f"{field}.from",
            )
        name = _parse_entry_name(entry, operator, field)
        _check_entry_name_unique(names, name, index, operator, "input")
        inputs.append(InputSpec(path, source, name))
    return tuple(inputs)


def _parse_outputs(raw: dict[Any, Any], operator: str) -> tuple[OutputSpec, ...]:
    entries = _entries(raw, operator, "output")
    outputs: list[OutputSpec] = []
    names: dict[str | None, int] = {}
    for index, entry in enumerate(entries):
        field = f"output[{index}]"
        _check_entry(entry, _OUTPUT_KEYS, operator, field)
        path = _parse_path(entry, operator, field)
        name = _parse_entry_name(entry, operator, field)
        _check_entry_name_unique(names, name, index, operator, "output")
        outputs.append(OutputSpec(path, name))
    return tuple(outputs)


def _entries(raw: dict[Any, Any], operator: str, key: str) -> list[Any]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise PipelineDefinitionError(
            f"must be a list of {key}s, got {_type_name(value)}", operator, key
        )
    return value


def _check_entry(entry: object, allowed: frozenset[str], operator: str, field: str) -> None:
    if not isinstance(entry, dict):
        raise PipelineDefinitionError(
            f"must be a mapping, got {_type_name(entry)}", operator, field
        )
    _check_keys(entry, allowed, operator, field)


def _parse_entry_name(entry: dict[Any, Any], operator: str, field: str) -> str | None:
    name = entry.get("name")
    if name is None:
        return None
    return _check_name(name, operator, f"{field}.name", "name")


def _check_entry_name_unique(
    names: dict[str | None, int], name: str | None, index: int, operator: str, kind: str
) -> None:
    if name in names:
        other = f"{kind}[{names[name]}]"
        detail = (
            f"more than one unnamed {kind} ({other} is unnamed too); name all but one"
            if name is None
            else f"duplicate {kind} name {name!r} (also used by {other})"
        )
        raise PipelineDefinitionError(detail, operator, f"{kind}[{index}].name")
    names[name] = index


def _parse_path(entry: dict[Any, Any], operator: str, field: str) -> str:
    field = f"{field}.path"
    if "path" not in entry or entry["path"] is None:
        raise PipelineDefinitionError("missing required key 'path'", operator, field)
    path = entry["path"]
    if not isinstance(path, str):
        raise PipelineDefinitionError(f"must be a string, got {_type_name(path)}", operator, field)
    if not path.startswith("/"):
        raise PipelineDefinitionError(
            f"must be an absolute path, got {_echo(path)}", operator, field
        )
    if ".." in path.split("/"):
        raise PipelineDefinitionError(
            f"must not contain '..' components, got {_echo(path)}", operator, field
        )
    if "\0" in path:
        raise PipelineDefinitionError("must not contain NUL characters", operator, field)
    return path


def _check_mount_paths(
    operator: str, inputs: tuple[InputSpec, ...], outputs: tuple[OutputSpec, ...]
) -> None:
    used: dict[str, str] = {}
    mounts = [(f"input[{i}]", e.path) for i, e in enumerate(inputs)]
    mounts += [(f"output[{i}]", e.path) for i, e in enumerate(outputs)]
    for field, path in mounts:
        normalized = posixpath.normpath(path)
        if normalized in used:
            raise PipelineDefinitionError(
                f"path {_echo(path)} is already mounted by {used[normalized]}",
                operator,
                f"{field}.path",
            )
        used[normalized] = field


def _parse_variables(raw: dict[Any, Any], operator: str) -> FrozenMapping[str, str]:
    value = raw.get("variables")
    if value is None:
        return _EMPTY_VARIABLES
    if not isinstance(value, dict):
        raise PipelineDefinitionError(
            f"must be a mapping of names to values, got {_type_name(value)}",
            operator,
            "variables",
        )
    variables: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            hint = (
                " (YAML reads unquoted yes/no/on/off as booleans)" if isinstance(key, bool) else ""
            )
            raise PipelineDefinitionError(
                f"invalid variable name {_echo(key)}: must be a non-empty string"
                f" without '=' or NUL{hint}",
                operator,
                f"variables.{key}",
            )
        variables[key] = _variable_value(item, operator, f"variables.{key}")
    return FrozenMapping(variables)


def _variable_value(value: object, operator: str, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.date):  # includes datetime.datetime
        return value.isoformat()
    if isinstance(value, str | int | float):
        return str(value)
    raise PipelineDefinitionError(
        f"must be a scalar (string, number or boolean), got {_type_name(value)}",
        operator,
        field,
    )


def _parse_timeout(raw: dict[Any, Any], operator: str) -> datetime.timedelta | None:
    value = raw.get("timeout")
    if value is None:
        return None
    limit = int(MAX_STAGE_TIMEOUT.total_seconds())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PipelineDefinitionError(
            f"must be a number of seconds, got {_type_name(value)} {_echo(value)}",
            operator,
            "timeout",
        )
    if (isinstance(value, float) and math.isnan(value)) or value <= 0:
        raise PipelineDefinitionError(
            f"must be a positive number of seconds, got {_echo(value)}", operator, "timeout"
        )
    if value > limit:
        raise PipelineDefinitionError(
            f"must be at most {limit} seconds, got {_echo(value)}", operator, "timeout"
        )
    timeout = datetime.timedelta(seconds=value)
    if not timeout:  # rounds to zero microseconds
        raise PipelineDefinitionError(
            f"must be a positive number of seconds, got {_echo(value)}", operator, "timeout"
        )
    return timeout


def _parse_requests(raw: dict[Any, Any], operator: str) -> FrozenMapping[str, FrozenValue]:
    value = raw.get("requests")
    if value is None:
        return _EMPTY_REQUESTS
    if not isinstance(value, dict):
        raise PipelineDefinitionError(
            f"must be a mapping, got {_type_name(value)}", operator, "requests"
        )
    for key in value:
        if not isinstance(key, str):
            raise PipelineDefinitionError(
                f"keys must be strings, got {_type_name(key)} {_echo(key)}",
                operator,
                f"requests.{key}",
            )
    return FrozenMapping((key, _freeze(item)) for key, item in value.items())


def _parse_list_verbatim(raw: dict[Any, Any], operator: str, key: str) -> tuple[FrozenValue, ...]:
    value = raw.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise PipelineDefinitionError(f"must be a list, got {_type_name(value)}", operator, key)
    return tuple(_freeze(item) for item in value)


# --- helpers --------------------------------------------------------------------------------


def _parse_name(
    mapping: dict[Any, Any], key: str, operator: str | None, field: str, what: str
) -> str:
    if key not in mapping:
        raise PipelineDefinitionError(f"missing required key {key!r}", operator, field)
    return _check_name(mapping[key], operator, field, what)


def _check_name(value: object, operator: str | None, field: str, what: str) -> str:
    if not isinstance(value, str):
        raise PipelineDefinitionError(
            f"{what} must be a string, got {_type_name(value)} {_echo(value)}", operator, field
        )
    if not NAME_PATTERN.match(value):
        raise PipelineDefinitionError(
            f"invalid {what} {_echo(value)}: use 1-255 letters, digits, '_' or '-'",
            operator,
            field,
        )
    return value


def _parse_description(mapping: dict[Any, Any], operator: str | None, field: str) -> str:
    value = mapping.get("description")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PipelineDefinitionError(f"must be a string, got {_type_name(value)}", operator, field)
    return value


def _check_keys(
    mapping: dict[Any, Any], allowed: frozenset[str], operator: str | None, prefix: str
) -> None:
    unknown = [key for key in mapping if not isinstance(key, str) or key not in allowed]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        names = ", ".join(_echo(key) for key in unknown)
        raise PipelineDefinitionError(
            f"unknown key{plural} {names} (allowed: {', '.join(sorted(allowed))})",
            operator,
            f"{prefix}.{unknown[0]}" if prefix else str(unknown[0]),
        )


def _freeze(value: object) -> Any:
    """Return an immutable, hashable copy of a YAML value (see :data:`FrozenValue`)."""
    if isinstance(value, Mapping):
        return FrozenMapping((_freeze(k), _freeze(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    if isinstance(value, set | frozenset):
        return frozenset(_freeze(item) for item in value)
    return value


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _echo(value: object) -> str:
    """Return ``repr(value)``, shortened so error messages stay readable."""
    text = repr(value)
    return text if len(text) <= _MAX_ECHO else f"{text[: _MAX_ECHO - 3]}..."
