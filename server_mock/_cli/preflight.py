"""What ``clara-mock run`` checks before it starts anything: the files its job will need.

A job whose operator's script is missing would start, then fail one stage after the others
prepared; the run refuses it at once instead, naming the operator and the path. The checks
cover what can be known without running anything: the program (a path, or a name on
``PATH``) and, for a Python interpreter, the script it is given.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from server_mock._cli.common import UsageError
from server_mock._definition import PipelineDefinition
from server_mock._runner import LocalProcessLauncher

__all__ = ["check_operator_commands", "check_output_folder"]

# Python options that take a value as the next argument.
_PYTHON_OPTIONS_WITH_VALUE = frozenset({"-W", "-X", "--check-hash-based-pycs"})


def check_output_folder(output: Path) -> None:
    """Refuse an ``--output`` that is not a folder and cannot become one.

    Raises:
        UsageError: It is a file, or a file is in the way (the message names the path).
    """
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output}: is a file, not a folder")
    for parent in output.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--output {output}: {parent} is a file, not a folder")
            break


def check_operator_commands(
    definition: PipelineDefinition, launcher: LocalProcessLauncher, command_dir: Path
) -> None:
    """Refuse a pipeline whose operators cannot start: no command, or a missing program/script.

    Raises:
        UsageError: The first operator that cannot start, with the path that is missing.
    """
    for operator in definition.operators:
        try:
            command = launcher.command_for(operator)
        except ValueError as error:
            raise UsageError(str(error)) from None
        where = f"(command: {shlex.join(command)}, run in {command_dir})"
        root = launcher.image_root_of(operator)
        if root is not None:
            where = f"(command: {shlex.join(command)}, in the image root {root})"

        def located(name: str, root: Path | None = root) -> Path:
            if not Path(name).is_absolute():
                return command_dir / name
            return Path(name) if root is None else root / Path(name).relative_to("/")

        program = command[0]
        if os.sep in program:
            path = located(program)
            if not path.is_file():
                raise UsageError(f"operator {operator.name!r}: no program {path} {where}")
            if not os.access(path, os.X_OK):
                raise UsageError(f"operator {operator.name!r}: {path} is not executable {where}")
        elif root is None and shutil.which(program) is None:
            raise UsageError(f"operator {operator.name!r}: no program {program!r} on PATH {where}")
        script = _python_script(command)
        if script is not None:
            path = located(script)
            if not path.is_file():
                raise UsageError(f"operator {operator.name!r}: no script {path} {where}")


def _python_script(command: list[str]) -> str | None:
    """The script a Python command runs, or None (not Python, ``-m``, ``-c``, or none given)."""
    if Path(command[0]) != Path(sys.executable) and not Path(command[0]).name.startswith("python"):
        return None
    arguments = iter(command[1:])
    for argument in arguments:
        if argument in ("-m", "-c", "-"):
            return None
        if argument in _PYTHON_OPTIONS_WITH_VALUE:
            next(arguments, None)
            continue
        if argument.startswith("-"):
            continue
        return argument
    return None
