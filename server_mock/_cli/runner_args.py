"""From the launcher flags (``--operator-map``, ...) to the launcher that runs the operators."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from server_mock._cli.common import UsageError
from server_mock._cli.runner_flags import runner_options
from server_mock._runner import LocalProcessLauncher, OperatorMapError, load_operator_map

__all__ = ["launcher_from_args"]


def _operator_map(args: argparse.Namespace) -> dict[str, list[str]]:
    if args.operator_map is None:
        return {}
    try:
        return load_operator_map(args.operator_map)
    except OperatorMapError as error:
        raise UsageError(f"--operator-map: {error}") from None


def launcher_from_args(
    args: argparse.Namespace, command_dir: Path, extra_env: Mapping[str, str] | None = None
) -> LocalProcessLauncher:
    """The launcher the flags describe, not yet attached to a platform.

    Raises:
        UsageError: The operator map cannot be read (the message names the flag).
        RunnerUsageError: A runner flag cannot be honoured here (see
            :func:`~server_mock._cli.runner_flags.runner_options`).
    """
    return LocalProcessLauncher(
        None,
        command_dir,
        operator_map=_operator_map(args),
        extra_env=extra_env,
        **runner_options(args),
    )
