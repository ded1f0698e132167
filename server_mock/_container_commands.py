"""Which local command runs a container, operator's or service's, and in which image root.

First match wins:

1. an operator map (``--operator-map FILE``: YAML ``"image:tag": [argv...]`` or
   ``"image": [argv...]``, read by :func:`load_operator_map`);
2. the container's own ``command``, run in the command folder; a leading ``python``/
   ``python3`` means the interpreter running the mock, so the process shares its
   environment (not inside an image root, whose own Python runs it).

An image root (``--operator-rootfs``) is an unpacked image, by ``image:tag`` or ``image``.
The launcher's operators and its services (:mod:`server_mock._services`) both ask here.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from server_mock._definition import ContainerSpec

__all__ = ["PYTHON_NAMES", "ContainerCommands", "OperatorMapError", "load_operator_map"]

PYTHON_NAMES = frozenset({"python", "python3", f"python3.{sys.version_info.minor}"})
"""Program names that mean the mock's own interpreter."""


class OperatorMapError(ValueError):
    """An operator map file is malformed; the message names the file and entry."""


def load_operator_map(path: Path) -> dict[str, list[str]]:
    """Read an operator map file: YAML mapping ``image[:tag]`` to an argv list or a string.

    Raises:
        OperatorMapError: Unreadable file, not a mapping, or an entry that is not a command.
    """
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise OperatorMapError(f"operator map {path}: {error}") from None
    if not isinstance(document, dict):
        raise OperatorMapError(f"operator map {path}: expected a mapping of image to command")
    commands: dict[str, list[str]] = {}
    for image, entry in document.items():
        command = shlex.split(entry) if isinstance(entry, str) else entry
        if (
            not isinstance(image, str)
            or not isinstance(command, list)
            or not command
            or not all(isinstance(part, str) and part for part in command)
        ):
            raise OperatorMapError(
                f"operator map {path}, entry {image!r}: expected a non-empty command "
                "(a string or a list of strings)"
            )
        commands[image] = command
    return commands


class ContainerCommands:
    """The local command and image root of containers (immutable once made).

    Args:
        operator_map: ``image[:tag]`` to argv, overriding containers' commands.
        rootfs: ``image[:tag]`` to the folder of an unpacked image.
    """

    def __init__(self, operator_map: Mapping[str, list[str]], rootfs: Mapping[str, Path]) -> None:
        self._operator_map = dict(operator_map)
        self._rootfs = dict(rootfs)

    def command_of(self, container: ContainerSpec) -> tuple[list[str], bool]:
        """The container's argv (empty: none), and whether it comes from the definition."""
        command = self._operator_map.get(f"{container.image}:{container.tag}")
        command = command or self._operator_map.get(container.image)
        from_definition = command is None
        if command is None:
            command = list(container.command)
        if command and command[0] in PYTHON_NAMES and self.image_root_of(container) is None:
            command = [sys.executable, *command[1:]]
        return command, from_definition

    def image_root_of(self, container: ContainerSpec) -> Path | None:
        """The unpacked image root the container runs in, if any."""
        rootfs = self._rootfs
        return rootfs.get(f"{container.image}:{container.tag}") or rootfs.get(container.image)
