"""Which commands of a submitted definition the process runner may run on the host.

Whoever can call Jobs.Start chooses the ``command`` of every container, so outside the sandbox
the mock runs a definition's command only when it runs a file of the command folder (the
``--operators-dir`` of ``serve``, the pipeline's folder for ``run``), which the person running
the mock put there:

* ``python FILE [ARGS]`` (interpreter options without an argument, such as ``-u``, may come
  first), or ``PATH [ARGS]`` where PATH names a file (``./op.sh``, ``bin/op``, or absolute);
* the file resolves (symlinks followed) inside the command folder.

Everything else is refused: a program found on ``PATH`` (``touch``, ``sh``), ``python -c`` or
``python -m``, a file outside the folder. Commands from the operator map are the mock
operator's own and always run; ``--allow-definition-commands`` lifts the rule.

The definition's (and Jobs.Start's) ``variables`` could change what even an allowed command
runs (``PYTHONPATH`` pointing at an uploaded payload shadows ``clara``; ``LD_PRELOAD``,
``BASH_ENV``, ``PATH``): outside the sandbox, variables that choose code are refused as well.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn

__all__ = ["DefinitionCommandRefused", "check_definition_command", "check_definition_variables"]

# Variables that choose which code a process loads or runs.
_CODE_VARIABLES = frozenset(
    {
        "PATH",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONUSERBASE",
        "PYTHONEXECUTABLE",
        "PYTHONPLATLIBDIR",
        "BASH_ENV",
    }
)
# Interpreter options that take no argument and run no code of their own.
_PLAIN_PYTHON_OPTIONS = frozenset({"-u", "-B", "-O", "-OO", "-E", "-s", "-S", "-I", "-b", "-q"})


class DefinitionCommandRefused(ValueError):
    """A definition's command would run code that is not in the command folder."""


def check_definition_command(
    operator: str, command: Sequence[str], command_dir: Path, python_names: frozenset[str]
) -> None:
    """Refuse ``command`` unless it runs a file inside ``command_dir``.

    Args:
        operator: The operator's name, for the message.
        command: The container's command, as the definition gives it.
        command_dir: The folder the command runs in.
        python_names: Program names that mean the mock's interpreter.

    Raises:
        DefinitionCommandRefused: The command runs anything else; the message says why and
            what to do.
    """
    program = command[0]
    if program in python_names:
        arguments = list(command[1:])
        while arguments and arguments[0] in _PLAIN_PYTHON_OPTIONS:
            arguments.pop(0)
        if not arguments or arguments[0].startswith("-"):
            _refuse(operator, command, "it runs Python code that is not a file (-c, -m, stdin)")
        target = arguments[0]
    elif "/" not in program:
        _refuse(operator, command, f"it runs {program!r} from PATH")
    else:
        target = program
    resolved = Path(os.path.realpath(command_dir / target))
    folder = Path(os.path.realpath(command_dir))
    if not resolved.is_relative_to(folder) or not resolved.is_file():
        _refuse(operator, command, f"{target!r} is not a file in the command folder {folder}")


def check_definition_variables(operator: str, names: Iterable[str]) -> None:
    """Refuse variables that choose which code runs (``PYTHONPATH``, ``LD_PRELOAD``, ...).

    Raises:
        DefinitionCommandRefused: One of ``names`` is such a variable; the message names it.
    """
    chosen = sorted(n for n in names if n in _CODE_VARIABLES or n.startswith("LD_"))
    if chosen:
        raise DefinitionCommandRefused(
            f"operator {operator!r}: the process runner does not let a definition or a job "
            f"set {', '.join(chosen)}, which choose the code its command runs; run operators "
            "in the sandbox (--runner sandbox, needs bwrap) or pass --allow-definition-commands "
            "to trust every definition"
        )


def _refuse(operator: str, command: Sequence[str], reason: str) -> NoReturn:
    shown = " ".join(command)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    raise DefinitionCommandRefused(
        f"operator {operator!r}: the process runner does not run the definition's command "
        f"{shown!r}: {reason}. Commands of a submitted definition run on the host only when "
        "they run a file of the operators folder; run operators in the sandbox (--runner "
        "sandbox, needs bwrap), map the image with --operator-map, or pass "
        "--allow-definition-commands to trust every definition"
    )
