"""What the Clara pipeline definition language defines: versions, keys, types.

Each key table maps a key to the ``api-version`` that introduced it, so the parser can say
when a definition uses a key its declared version does not have. The sources of every
entry are listed in ``docs/pipeline-definitions.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, TypeAlias

__all__ = [
    "ARRAY_ELEMENT_TYPES",
    "CONNECTIONS_KEYS",
    "CONNECTION_FILE_KEYS",
    "CONNECTION_HTTP_KEYS",
    "CONTAINER_KEYS",
    "INPUT_KEYS",
    "MODEL_KEYS",
    "OPERATOR_KEYS",
    "ORCHESTRATORS",
    "OUTPUT_KEYS",
    "REQUESTS_KEYS",
    "SERVICE_KEYS",
    "SHARED_MEMORY_TYPES",
    "SUPPORTED_API_VERSIONS",
    "TOP_LEVEL_KEYS",
    "TYPED_API_VERSION",
    "Version",
    "parse_version",
    "version_text",
]

Version: TypeAlias = tuple[int, int, int]
"""An ``api-version`` as numbers, e.g. ``(0, 4, 0)``."""

SUPPORTED_API_VERSIONS: Final = ("0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0")
"""The ``api-version`` values this parser accepts, oldest first."""

_V030: Final[Version] = (0, 3, 0)
TYPED_API_VERSION: Final[Version] = (0, 5, 0)
"""The version that added ``type``, ``element-type`` and ``shape`` to inputs and outputs."""
_V060: Final[Version] = (0, 6, 0)

# The keys each object of the language defines, with the api-version that introduced each.
TOP_LEVEL_KEYS: Final[Mapping[str, Version]] = {
    "api-version": _V030,
    "name": _V030,
    "description": _V030,
    "parameters": _V030,
    "operators": _V030,
    "orchestrator": _V030,
    "pull-secrets": _V030,
}
OPERATOR_KEYS: Final[Mapping[str, Version]] = {
    "api-version": _V030,
    "name": _V030,
    "description": _V030,
    "parameters": _V030,
    "container": _V030,
    "input": _V030,
    "output": _V030,
    "variables": _V030,
    "requests": _V030,
    "services": _V030,
    "timeout": _V030,
    "models": _V060,
}
"""The keys an operator may have (``timeout`` is this mock's), with their first version."""
CONTAINER_KEYS: Final[Mapping[str, Version]] = {"image": _V030, "tag": _V030, "command": _V030}
_TYPE_KEYS: Final[Mapping[str, Version]] = {
    "type": TYPED_API_VERSION,
    "element-type": TYPED_API_VERSION,
    "shape": TYPED_API_VERSION,
}
INPUT_KEYS: Final[Mapping[str, Version]] = {
    "from": _V030,
    "name": _V030,
    "path": _V030,
    **_TYPE_KEYS,
}
OUTPUT_KEYS: Final[Mapping[str, Version]] = {"name": _V030, "path": _V030, **_TYPE_KEYS}
REQUESTS_KEYS: Final[Mapping[str, Version]] = {"cpu": _V030, "gpu": _V030, "memory": _V030}
MODEL_KEYS: Final[Mapping[str, Version]] = {"name": _V030}
SERVICE_KEYS: Final[Mapping[str, Version]] = {
    "api-version": _V030,
    "name": _V030,
    "description": _V030,
    "container": _V030,
    "connections": _V030,
    "requests": _V030,
    "variables": _V030,
    "import": _V030,
}
CONNECTIONS_KEYS: Final[Mapping[str, Version]] = {"http": _V030, "file": _V030}
CONNECTION_HTTP_KEYS: Final[Mapping[str, Version]] = {"name": _V030, "port": _V030}
CONNECTION_FILE_KEYS: Final[Mapping[str, Version]] = {"name": _V030, "path": _V030}

ORCHESTRATORS: Final = ("Clara", "Argo")
"""The orchestration engines a pipeline may name, as the docs spell them."""

_PRIMITIVE_PAIRS: Final = (
    ("u8", "uint8"),
    ("u16", "uint16"),
    ("u32", "uint32"),
    ("u64", "uint64"),
    ("i8", "int8"),
    ("i16", "int16"),
    ("i32", "int32"),
    ("i64", "int64"),
    ("f16", "float16"),
    ("f32", "float32"),
    ("f64", "float64"),
)
ARRAY_ELEMENT_TYPES: Final = frozenset(name for pair in _PRIMITIVE_PAIRS for name in pair)
"""The Clara primitives: the element types an ``array`` may have, and types of their own."""

SHARED_MEMORY_TYPES: Final = frozenset({"array", "string"} | ARRAY_ELEMENT_TYPES)
"""The ``type`` values Clara keeps in shared memory ("Fast I/O"); ``stream`` is on disk."""


def parse_version(text: str) -> Version | None:
    """Return ``text`` as a :data:`Version` if it is a supported ``api-version``, else None."""
    if text not in SUPPORTED_API_VERSIONS:
        return None
    major, minor, patch = (int(part) for part in text.split("."))
    return (major, minor, patch)


def version_text(version: Version) -> str:
    """Return ``version`` written as in a definition, e.g. ``"0.5.0"``."""
    return ".".join(str(part) for part in version)
