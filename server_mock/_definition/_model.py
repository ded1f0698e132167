"""The parsed, immutable form of a pipeline definition: operators, their containers and I/O.

Everything here is frozen and hashable, so a definition can be shared between threads and
used as a dictionary key. :func:`server_mock._definition.parse_pipeline_definition` builds
these; tests and the platform may also build them directly.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Final

from clara.contract import DEFAULT_STAGE_TIMEOUT
from server_mock._definition._errors import format_location
from server_mock._definition._frozen import FrozenMapping
from server_mock._definition._graph import cycle_error, kahn
from server_mock._definition._language import SHARED_MEMORY_TYPES

__all__ = [
    "ContainerSpec",
    "FileConnection",
    "HttpConnection",
    "InputSpec",
    "ModelSpec",
    "OperatorSpec",
    "OutputSpec",
    "PipelineDefinition",
    "ResourceRequests",
    "ServiceSpec",
]

_EMPTY: Final[FrozenMapping[str, str]] = FrozenMapping()
_DISK_ONLY: Final = "the mock serves disk payloads only (type 'stream', or no type)"


@dataclasses.dataclass(frozen=True, slots=True)
class ContainerSpec:
    """The container an operator or a service runs.

    Attributes:
        image: The image name, e.g. ``clara-examples/segment``.
        tag: The image tag.
        command: The command line to run; empty to use the image's entry point. May hold
            ``$(VAR)`` references, expanded from the process's environment at launch
            (:func:`server_mock._definition.expand_command`).
    """

    image: str
    tag: str = "latest"
    command: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "command", tuple(self.command))


@dataclasses.dataclass(frozen=True, slots=True)
class InputSpec:
    """One input of an operator.

    Attributes:
        path: Where the input is mounted in the container (absolute POSIX path); ``""`` for
            a shared-memory input (see :attr:`shared_memory`).
        from_operator: The upstream operator providing the input (its declared spelling);
            ``None`` for the job's input payload.
        name: The input's name as written: for a ``from`` input, the upstream output it
            reads (in the upstream's spelling). ``None`` when the definition gives none.
            Also the input entry's name as the stage sees it.
        from_output: The name of the upstream output read; ``None`` for the upstream's
            unnamed output (or the payload). Equal to ``name`` when ``name`` is given; when
            it is not, the upstream operator's only (or unnamed) output.
        type: The Clara type (api-version 0.5.0+): ``stream``, ``array``, ``string`` or a
            primitive; ``None`` when untyped.
        element_type: The ``element-type`` of a ``stream`` or ``array``, else ``None``.
        shape: The ``shape`` of an ``array`` (``-1`` for a dynamic dimension), else ``None``.
    """

    path: str
    from_operator: str | None = None
    name: str | None = None
    from_output: str | None = None
    type: str | None = None
    element_type: str | None = None
    shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.from_operator is not None and self.from_output is None and self.name is not None:
            object.__setattr__(self, "from_output", self.name)

    @property
    def shared_memory(self) -> bool:
        """Whether the input lives in shared memory (Clara's Fast I/O) rather than on disk."""
        return self.type in SHARED_MEMORY_TYPES


@dataclasses.dataclass(frozen=True, slots=True)
class OutputSpec:
    """One output of an operator.

    Attributes:
        path: Where the output is mounted in the container (absolute POSIX path); ``""``
            for a shared-memory output (see :attr:`shared_memory`).
        name: The output's name; ``None`` for the operator's single unnamed output.
        type: The Clara type (api-version 0.5.0+), or ``None`` when untyped.
        element_type: The ``element-type`` of a ``stream`` or ``array``, else ``None``.
        shape: The ``shape`` of an ``array``, else ``None``.
    """

    path: str
    name: str | None = None
    type: str | None = None
    element_type: str | None = None
    shape: tuple[int, ...] | None = None

    @property
    def shared_memory(self) -> bool:
        """Whether the output lives in shared memory (Clara's Fast I/O) rather than on disk."""
        return self.type in SHARED_MEMORY_TYPES


@dataclasses.dataclass(frozen=True, slots=True)
class ResourceRequests:
    """The ``requests`` of an operator or service: its minimum hardware.

    ``None`` means "not requested": the platform's default applies (the docs give 1 or 2
    CPUs, 0 GPUs and 512 or 1024 MB depending on the release; an administrator may change
    them).

    Attributes:
        cpu: Logical CPU cores, at least 1.
        gpu: GPU devices, at least 0.
        memory: System memory in megabytes, at least 1.
    """

    cpu: int | None = None
    gpu: int | None = None
    memory: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ModelSpec:
    """One entry of an operator's ``models``: an inference model the operator needs.

    Attributes:
        name: The model's name in the platform's model repository.
    """

    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class HttpConnection:
    """A network connection a service offers (``connections.http``).

    Attributes:
        name: The environment variable that gives the operator the service's address.
        port: The port the service listens on (1024-65535); ``None`` when not declared.
    """

    name: str
    port: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class FileConnection:
    """A volume a service shares with the operator (``connections.file``).

    Attributes:
        name: The environment variable that gives the operator the volume's path.
        path: The path in the service's container, if declared.
    """

    name: str
    path: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One entry of an operator's ``services`` (deprecated by Clara since 0.7.1).

    Attributes:
        name: The service's name, unique (case-insensitively) within its operator.
        container: The service's container; ``None`` for a service given by ``import``.
        description: Free text; ``""`` when absent.
        http_connections: The ``connections.http`` entries.
        file_connections: The ``connections.file`` entries.
        requests: The service's hardware requests.
        variables: Environment variables for the service's container.
        imported_from: The document named by ``import``, for an imported service.
    """

    name: str
    container: ContainerSpec | None
    description: str = ""
    http_connections: tuple[HttpConnection, ...] = ()
    file_connections: tuple[FileConnection, ...] = ()
    requests: ResourceRequests = ResourceRequests()
    variables: Mapping[str, str] = _EMPTY
    imported_from: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "http_connections", tuple(self.http_connections))
        object.__setattr__(self, "file_connections", tuple(self.file_connections))
        if not isinstance(self.variables, FrozenMapping):
            object.__setattr__(self, "variables", FrozenMapping(self.variables))


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
        requests: The operator's hardware requests.
        models: The inference models the operator needs, in definition order.
        services: The services the operator needs, in definition order.
    """

    name: str
    description: str
    container: ContainerSpec
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    variables: Mapping[str, str] = _EMPTY
    timeout: datetime.timedelta | None = None
    requests: ResourceRequests = ResourceRequests()
    models: tuple[ModelSpec, ...] = ()
    services: tuple[ServiceSpec, ...] = ()

    def __post_init__(self) -> None:
        for field in ("inputs", "outputs", "models", "services"):
            object.__setattr__(self, field, tuple(getattr(self, field)))
        if not isinstance(self.variables, FrozenMapping):
            object.__setattr__(self, "variables", FrozenMapping(self.variables))

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

    Names are compared case-insensitively, as the Clara docs define them.

    Attributes:
        api_version: The definition's ``api-version``, one of ``SUPPORTED_API_VERSIONS``.
        name: The pipeline's name.
        operators: The operators, in definition order.
        description: Free text; ``""`` when absent.
        orchestrator: ``"Clara"`` or ``"Argo"`` as the definition names it; ``None`` when
            it names none. The mock runs every pipeline the same way.
        pull_secrets: The ``pull-secrets`` (names of image pull secrets); the mock pulls no
            images, so they are kept for the record only.
        parameters: The template parameters the definition declares, with their defaults.
        warnings: What the parser accepted but the language does not define (or defines in
            a later ``api-version``), each naming the operator and field.
    """

    api_version: str
    name: str
    operators: tuple[OperatorSpec, ...]
    description: str = ""
    orchestrator: str | None = None
    pull_secrets: tuple[str, ...] = ()
    parameters: Mapping[str, str] = _EMPTY
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "operators", tuple(self.operators))
        object.__setattr__(self, "pull_secrets", tuple(self.pull_secrets))
        object.__setattr__(self, "warnings", tuple(self.warnings))
        if not isinstance(self.parameters, FrozenMapping):
            object.__setattr__(self, "parameters", FrozenMapping(self.parameters))

    def operator(self, name: str) -> OperatorSpec:
        """Return the operator called ``name`` (compared case-insensitively).

        Raises:
            KeyError: No operator has that name.
        """
        folded = name.lower()
        for spec in self.operators:
            if spec.name.lower() == folded:
                return spec
        raise KeyError(name)

    def downstream(self, name: str) -> tuple[str, ...]:
        """Return the operators taking input from ``name``, in definition order.

        Raises:
            KeyError: No operator has that name.
        """
        own = self.operator(name).name
        return tuple(spec.name for spec in self.operators if own in spec.upstream)

    def upstream_output(self, entry: InputSpec) -> OutputSpec:
        """Return the upstream output a ``from`` input reads.

        Raises:
            KeyError: ``entry`` has no ``from``, or names an operator or output that does
                not exist (the parser rejects those).
        """
        if entry.from_operator is None:
            raise KeyError("the input reads the job's input payload, not an operator")
        upstream = self.operator(entry.from_operator)
        wanted = None if entry.from_output is None else entry.from_output.lower()
        for output in upstream.outputs:
            if (None if output.name is None else output.name.lower()) == wanted:
                return output
        raise KeyError(f"{upstream.name} has no output {entry.from_output!r}")

    def topological_order(self) -> tuple[str, ...]:
        """Return every operator's name, each after all of its upstream operators.

        Kahn's algorithm; when several operators are ready, the earliest-defined goes first,
        so the order is deterministic and independent operators keep definition order.
        References to unknown operators are ignored (the parser rejects them).

        Raises:
            PipelineDefinitionError: The operators' dependencies form a cycle (only possible
                for instances not built by the parser).
        """
        order = kahn(self.operators)
        if len(order) != len(self.operators):
            raise cycle_error(self.operators, order)
        return tuple(self.operators[i].name for i in order)

    def unsupported_for_start(self) -> list[str]:
        """Return why the mock cannot run this definition's jobs; empty when it can.

        The definition is valid Clara (it was accepted at creation); these are the parts
        the mock does not implement: shared-memory inputs and outputs, and services given
        by ``import``. Each message names the operator and the field.
        """
        problems: list[str] = []
        for spec in self.operators:
            entries = [("input", i, e.type, e.shared_memory) for i, e in enumerate(spec.inputs)]
            entries += [("output", i, e.type, e.shared_memory) for i, e in enumerate(spec.outputs)]
            for kind, index, kind_type, shared in entries:
                if shared:
                    problems.append(
                        format_location(
                            f"a {kind} of type {kind_type!r} is shared memory (Clara's Fast "
                            f"I/O); {_DISK_ONLY}",
                            spec.name,
                            f"{kind}[{index}].type",
                        )
                    )
            for index, service in enumerate(spec.services):
                if service.imported_from is not None:
                    problems.append(
                        format_location(
                            f"service {service.name!r} is imported from "
                            f"{service.imported_from!r}; the mock cannot load imported "
                            "documents: declare the service's container in the operator",
                            spec.name,
                            f"services[{index}].import",
                        )
                    )
        return problems
