"""Template placeholders: ``${{ name }}`` in a definition, filled from arguments or defaults.

As the Template page describes: a document declares its parameters (with defaults) under
``parameters``; each placeholder takes the job's argument of that name, else the default;
an argument that names no parameter is refused. An operator may declare ``parameters`` of
its own, which fill the placeholders inside it (the pipeline's fill the rest).

Placeholders are replaced in the parsed YAML nodes, never in the raw text, so a value can
not inject YAML structure. A placeholder that is a whole plain (unquoted) scalar is read
again as YAML would read the value written there (``timeout: ${{ t }}`` with ``t=60`` is
the number 60); a quoted one stays a string.

The same pass over the nodes keeps the fields the language defines as text as the text
written, whatever YAML would make of it: ``variables`` values (``VERSION: 1.10`` gives
``"1.10"``, not ``"1.1"``) and a container's ``image``, ``tag`` and ``command`` words (the
Operators page's own example has ``tag: 18.04``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Final, NoReturn, TypeAlias

import yaml

from clara.contract import NAME_PATTERN, NAME_RULE
from server_mock._definition._errors import PipelineDefinitionError, format_location
from server_mock._definition._yaml import MAX_DEFINITION_BYTES

__all__ = ["Resolution", "resolve_placeholders"]

_PLACEHOLDER: Final = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)
_OPEN: Final = "${{"
_NULL_TAG: Final = "tag:yaml.org,2002:null"
_STR_TAG: Final = "tag:yaml.org,2002:str"

_Path: TypeAlias = tuple[str | int, ...]
_Parameters: TypeAlias = dict[str, tuple[str, str | None]]
"""Folded name -> (name as declared, default; ``None`` when the default is not a scalar)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Resolution:
    """A document with its placeholders filled in.

    Attributes:
        root: The resolved document (fresh nodes; aliases are expanded).
        parameters: Every declared parameter (as declared) with its default, for those
            whose default is a scalar.
        warnings: What was accepted but cannot be used (a non-scalar default).
    """

    root: yaml.Node | None
    parameters: dict[str, str]
    warnings: list[str]


def resolve_placeholders(root: yaml.Node | None, arguments: Mapping[str, str]) -> Resolution:
    """Fill every ``${{ name }}`` of the document from ``arguments``, else the defaults.

    Args:
        root: The document, as composed by :func:`server_mock._definition._yaml.compose_yaml`
            (so already within the node and depth limits).
        arguments: The job's named values; names compare case-insensitively.

    Returns:
        The resolved document.

    Raises:
        PipelineDefinitionError: An argument names no parameter; a placeholder is malformed,
            unclosed, or names no parameter; a parameter is declared twice or badly named;
            the filled-in values would exceed the definition size limit.
    """
    if not isinstance(root, yaml.MappingNode):
        return Resolution(root, {}, [])
    return _Resolver(root, arguments).run()


class _Resolver:
    def __init__(self, root: yaml.MappingNode, arguments: Mapping[str, str]) -> None:
        self._root = root
        self._arguments: dict[str, str] = {}
        self._spelled: dict[str, str] = {}
        for name, value in arguments.items():
            if name.lower() in self._arguments:
                raise PipelineDefinitionError(
                    f"argument {name!r} is given twice (names are case-insensitive)"
                )
            if "\0" in value:
                raise PipelineDefinitionError(f"argument {name!r} contains a NUL character")
            self._arguments[name.lower()] = value
            self._spelled[name.lower()] = name
        self._budget = MAX_DEFINITION_BYTES
        self._warnings: list[str] = []
        self._loader = yaml.SafeLoader("")
        self._operator_names: dict[int, str | None] = {}
        self._operator_parameters: dict[int, _Parameters] = {}
        self._parameters: _Parameters = {}

    def run(self) -> Resolution:
        try:
            self._parameters = self._read_parameters(_child(self._root, "parameters"), ())
            operators = _child(self._root, "operators")
            if isinstance(operators, yaml.SequenceNode):
                for index, node in enumerate(operators.value):
                    if isinstance(node, yaml.MappingNode):
                        self._operator_names[index] = _operator_name(node)
                        self._operator_parameters[index] = self._read_parameters(
                            _child(node, "parameters"), ("operators", index)
                        )
            self._check_arguments()
            root = self._copy(self._root, ())
        finally:
            self._loader.dispose()
        declared = {spelled: default for spelled, default in self._parameters.values()}
        for parameters in self._operator_parameters.values():
            for spelled, default in parameters.values():
                declared.setdefault(spelled, default)
        usable = {name: value for name, value in declared.items() if value is not None}
        return Resolution(root, usable, self._warnings)

    def _check_arguments(self) -> None:
        declared = set(self._parameters)
        for parameters in self._operator_parameters.values():
            declared.update(parameters)
        unknown = sorted(name for name in self._arguments if name not in declared)
        if unknown:
            names = ", ".join(sorted(spelled for spelled, _ in self._all_parameters())) or "none"
            raise PipelineDefinitionError(
                f"argument {self._spelled[unknown[0]]!r} matches no parameter of the definition "
                f"(its parameters: {names}); the Template page makes such arguments illegal",
                None,
                "parameters",
            )

    def _all_parameters(self) -> list[tuple[str, str | None]]:
        found = list(self._parameters.values())
        for parameters in self._operator_parameters.values():
            found.extend(parameters.values())
        return found

    def _read_parameters(self, node: yaml.Node | None, at: _Path) -> _Parameters:
        parameters: _Parameters = {}
        if not isinstance(node, yaml.MappingNode):
            return parameters  # absent, null, or a wrong type the parser reports
        for key, value in node.value:
            where = (*at, "parameters", key.value if isinstance(key, yaml.ScalarNode) else "?")
            if not isinstance(key, yaml.ScalarNode) or not NAME_PATTERN.match(key.value):
                shown = key.value if isinstance(key, yaml.ScalarNode) else "a collection"
                self._fail(f"invalid parameter name {shown!r}: use {NAME_RULE}", where)
            if key.value.lower() in parameters:
                self._fail(
                    f"parameter {key.value!r} is declared twice (names are case-insensitive)",
                    where,
                )
            default: str | None
            if isinstance(value, yaml.ScalarNode):
                default = "" if value.tag == _NULL_TAG else value.value
            else:
                default = None
                operator, field = self._locate(where)
                self._warnings.append(
                    format_location(
                        "the default is not a scalar (parameters are expected to be strings); "
                        "a placeholder naming this parameter needs an argument",
                        operator,
                        field,
                    )
                )
            parameters[key.value.lower()] = (key.value, default)
        return parameters

    def _copy(self, node: yaml.Node, path: _Path) -> yaml.Node:
        if isinstance(node, yaml.ScalarNode):
            filled = self._fill(node, path)
            if _is_text_field(path) and (filled is not node or filled.tag != _NULL_TAG):
                # A text field holds the text as written (tag: 18.04 stays "18.04"), and a
                # filled-in placeholder the argument's text, whatever it looks like.
                return yaml.ScalarNode(
                    _STR_TAG, filled.value, node.start_mark, node.end_mark, style=node.style
                )
            return filled
        if isinstance(node, yaml.SequenceNode):
            items = [self._copy(item, (*path, index)) for index, item in enumerate(node.value)]
            return yaml.SequenceNode(
                node.tag, items, node.start_mark, node.end_mark, flow_style=node.flow_style
            )
        if isinstance(node, yaml.MappingNode):
            declares = path == () or (len(path) == 2 and path[0] == "operators")
            pairs: list[tuple[yaml.Node, yaml.Node]] = []
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                if declares and name == "parameters":  # defaults are not templates
                    pairs.append((key, value))
                    continue
                copied = self._fill(key, path) if isinstance(key, yaml.ScalarNode) else key
                pairs.append((copied, self._copy(value, (*path, name))))
            return yaml.MappingNode(
                node.tag, pairs, node.start_mark, node.end_mark, flow_style=node.flow_style
            )
        return node

    def _fill(self, node: yaml.ScalarNode, path: _Path) -> yaml.ScalarNode:
        text: str = node.value
        if _OPEN not in text:
            return node
        pieces: list[str] = []
        position = 0
        for match in _PLACEHOLDER.finditer(text):
            name = match.group(1).strip()
            if not NAME_PATTERN.match(name):
                self._fail(
                    f"malformed template placeholder {match.group(0)!r}: write "
                    f"${{{{ name }}}} with a name of {NAME_RULE}",
                    path,
                )
            pieces.append(text[position : match.start()])
            value = self._value_of(name, path)
            self._budget -= len(value)
            if self._budget < 0:
                self._fail(
                    "the filled-in placeholders make the definition larger than the limit "
                    f"of {MAX_DEFINITION_BYTES} bytes",
                    path,
                )
            pieces.append(value)
            position = match.end()
        rest = text[position:]
        if _OPEN in rest:
            self._fail(f"unclosed template placeholder in {rest!r} (missing '}}}}')", path)
        filled = "".join(pieces) + rest
        tag = node.tag
        if node.style is None and tag == self._implicit_tag(text):
            tag = self._implicit_tag(filled)
        return yaml.ScalarNode(tag, filled, node.start_mark, node.end_mark, style=node.style)

    def _implicit_tag(self, text: str) -> str:
        """The tag YAML gives ``text`` written as a plain scalar (``"60"`` is an int)."""
        tag: str = self._loader.resolve(  # type: ignore[no-untyped-call]
            yaml.ScalarNode, text, (True, False)
        )
        return tag

    def _value_of(self, name: str, path: _Path) -> str:
        folded = name.lower()
        if folded in self._arguments:
            return self._arguments[folded]
        scopes = []
        if len(path) >= 2 and path[0] == "operators" and isinstance(path[1], int):
            scopes.append(self._operator_parameters.get(path[1], {}))
        scopes.append(self._parameters)
        for scope in scopes:
            if folded in scope:
                spelled, default = scope[folded]
                if default is None:
                    self._fail(
                        f"placeholder ${{{{ {name} }}}} needs an argument: the default of "
                        f"parameter {spelled!r} is not a scalar",
                        path,
                    )
                return default
        self._fail(
            f"placeholder ${{{{ {name} }}}} names no parameter: declare it under 'parameters' "
            "(with its default) or pass it as an argument",
            path,
        )

    def _fail(self, detail: str, path: _Path) -> NoReturn:
        operator, field = self._locate(path)
        raise PipelineDefinitionError(detail, operator, field)

    def _locate(self, path: _Path) -> tuple[str | None, str | None]:
        if len(path) >= 2 and path[0] == "operators" and isinstance(path[1], int):
            operator = self._operator_names.get(path[1])
            if operator is not None:
                return operator, _field(path[2:])
        return None, _field(path)


def _is_text_field(path: _Path) -> bool:
    """Whether ``path`` is a field the language defines as text, whatever YAML reads there.

    Those are the values of ``variables`` (environment variables are text) and a container's
    ``image``, ``tag`` and ``command`` words, of operators and of their services.
    """
    if len(path) < 4 or path[0] != "operators":
        return False
    rest = path[2:]
    if rest[0] == "services" and len(rest) >= 3:
        rest = rest[2:]
    if len(rest) == 2 and rest[0] == "variables":
        return True
    if rest[0] != "container":
        return False
    return (len(rest) == 2 and rest[1] in ("image", "tag")) or (
        len(rest) == 3 and rest[1] == "command" and isinstance(rest[2], int)
    )


def _field(path: _Path) -> str | None:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


def _child(mapping: yaml.MappingNode, key: str) -> yaml.Node | None:
    found = None
    for name, value in mapping.value:  # the last wins, as when YAML builds the mapping
        if isinstance(name, yaml.ScalarNode) and name.value == key:
            found = value
    return found


def _operator_name(node: yaml.MappingNode) -> str | None:
    name = _child(node, "name")
    if isinstance(name, yaml.ScalarNode) and NAME_PATTERN.match(name.value):
        return str(name.value)
    return None
