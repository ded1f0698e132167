"""Load a definition's YAML text safely, within a size, a node and a depth limit.

The size is checked before parsing; the node and depth limits after, because ``safe_load``
shares aliased nodes: a "billion laughs" document loads cheaply but expands without bound
when walked.
"""

from __future__ import annotations

from typing import Final

import yaml

from server_mock._definition._errors import PipelineDefinitionError

__all__ = [
    "MAX_DEFINITION_BYTES",
    "MAX_DOCUMENT_DEPTH",
    "MAX_DOCUMENT_NODES",
    "compose_yaml",
    "construct_yaml",
    "load_yaml",
]

MAX_DEFINITION_BYTES: Final = 1_048_576
"""Largest accepted definition, in bytes (UTF-8 for ``str`` input); checked before parsing."""

MAX_DOCUMENT_NODES: Final = 100_000
"""Most YAML nodes a definition may expand to once aliases are resolved (YAML-bomb guard)."""

MAX_DOCUMENT_DEPTH: Final = 64
"""Deepest nesting of YAML collections a definition may have (also rejects recursive aliases)."""

_PLACEHOLDER_HINT: Final = (
    " (a template placeholder ${{ name }} inside [...] or {...} must be quoted: YAML reads"
    " its braces as structure there)"
)


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
    return construct_yaml(compose_yaml(text))


def compose_yaml(text: str | bytes) -> yaml.Node | None:
    """Parse ``text`` into YAML nodes (not yet Python values), within the limits.

    The nodes keep what the values lose: whether a scalar was quoted, which template
    resolution needs (a placeholder in a plain scalar may become a number, as it would had
    its value been written there).

    Returns:
        The document's root node; ``None`` for an empty document.

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
        root: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "; ".join(part for part in (exc.context, exc.problem) if part) or str(exc)
        hint = _PLACEHOLDER_HINT if _has_placeholder(text) else ""
        raise PipelineDefinitionError(f"malformed YAML{where}: {what}{hint}") from exc
    except yaml.YAMLError as exc:  # e.g. ReaderError: undecodable bytes, control characters
        raise PipelineDefinitionError(f"malformed YAML: {exc}") from exc
    except RecursionError as exc:
        raise PipelineDefinitionError("malformed YAML: collections are nested too deeply") from exc
    if root is not None:
        _check_node_graph(root)
    return root


def construct_yaml(root: yaml.Node | None) -> object:
    """Turn YAML nodes (checked by :func:`compose_yaml`) into plain Python data.

    Raises:
        PipelineDefinitionError: A value cannot be constructed (e.g. ``!!int abc``).
    """
    if root is None:
        return None
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "; ".join(part for part in (exc.context, exc.problem) if part) or str(exc)
        raise PipelineDefinitionError(f"malformed YAML{where}: {what}") from exc
    except Exception as exc:
        # SafeConstructor lets some bad explicitly-tagged scalars escape as ValueError,
        # KeyError or AttributeError (``!!int x``, ``!!bool x``, ``!!timestamp x``).
        raise PipelineDefinitionError(
            f"malformed YAML: cannot construct a value ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        loader.dispose()


def _has_placeholder(text: str | bytes) -> bool:
    return ("${{" in text) if isinstance(text, str) else (b"${{" in text)


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _check_node_graph(root: yaml.Node) -> None:
    """Reject documents that expand to too many nodes or nest too deeply.

    Aliased nodes are shared, so a "billion laughs" document composes cheaply but any
    traversal of it is exponential; recursive aliases make it infinite. Walk it once, bounded.
    """
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
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
        if isinstance(node, yaml.MappingNode):
            for key, item in node.value:
                stack.append((key, depth + 1))
                stack.append((item, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, depth + 1) for item in node.value)
