"""The parsed, immutable form of a pipeline definition: operators, their containers and I/O.

Everything here is frozen and hashable, so a definition can be shared between threads and
used as a dictionary key. :func:`server_mock._definition.parse_pipeline_definition` builds
these; tests and the platform may also build them directly.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final, TypeAlias, TypeVar

from clara.contract import DEFAULT_STAGE_TIMEOUT
from server_mock._definition._graph import cycle_error, kahn

__all__ = [
    "ContainerSpec",
    "FrozenMapping",
    "FrozenValue",
    "InputSpec",
    "OperatorSpec",
    "OutputSpec",
    "PipelineDefinition",
    "freeze",
]

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


def freeze(value: object) -> Any:
    """Return an immutable, hashable copy of a YAML value (see :data:`FrozenValue`)."""
    if isinstance(value, Mapping):
        return FrozenMapping((freeze(k), freeze(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return tuple(freeze(item) for item in value)
    if isinstance(value, set | frozenset):
        return frozenset(freeze(item) for item in value)
    return value


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
        object.__setattr__(self, "requests", freeze(self.requests))
        object.__setattr__(self, "models", freeze(self.models))
        object.__setattr__(self, "services", freeze(self.services))

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
        order = kahn(self.operators)
        if len(order) != len(self.operators):
            raise cycle_error(self.operators, order)
        return tuple(self.operators[i].name for i in order)
