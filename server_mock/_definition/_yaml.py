"""Load a definition's YAML text safely, within a size, a node and a depth limit.

The size is checked before parsing; the node and depth limits after, because ``safe_load``
shares aliased nodes: a "billion laughs" document loads cheaply but expands without bound
when walked.
"""

from __future__ import annotations

from typing import Final

import yaml

from server_mock._definition._errors import PipelineDefinitionError

__all__ = ["MAX_DEFINITION_BYTES", "MAX_DOCUMENT_DEPTH", "MAX_DOCUMENT_NODES", "load_yaml"]

MAX_DEFINITION_BYTES: Final = 1_048_576
"""Largest accepted definition, in bytes (UTF-8 for ``str`` input); checked before parsing."""

MAX_DOCUMENT_NODES: Final = 100_000
"""Most YAML nodes a definition may expand to once aliases are resolved (YAML-bomb guard)."""

MAX_DOCUMENT_DEPTH: Final = 64
"""Deepest nesting of YAML collections a definition may have (also rejects recursive aliases)."""


def load_yaml(text: str | bytes) -> object:
    """Parse ``text`` as one YAML document, within the size, node and depth limits.

    Args:
        text: The YAML document; ``bytes`` may be UTF-8 or UTF-16 (with BOM).

    Returns:
        The document as plain Python data (``dict``, ``list``, scalars).

    Raises:
        PipelineDefinitionError: Too large, malformed, or expanding past the limits.
        TypeError: ``text`` is neither ``str`` nor ``bytes``.
    """
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
