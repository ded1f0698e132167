"""The runner flags of ``clara-mock serve`` and ``run``: sandbox or process, and what may run.

``--runner sandbox|process`` (default: the sandbox where bwrap works),
``--allow-definition-commands`` (the process runner runs any command a definition gives) and
``--operator-rootfs IMAGE[:TAG]=DIR`` (run that image's operators in an unpacked image root)
and ``--service-data DIR`` (the services' common volume). :func:`runner_options` turns them
into :class:`~server_mock._runner.LocalProcessLauncher` keyword arguments;
:func:`service_data_folder` gives the common volume to ``attach``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["RunnerUsageError", "add_runner_flags", "runner_options", "service_data_folder"]

_STATE_SUFFIXES = ("", "-wal", "-shm", "-journal", ".workspace")


class RunnerUsageError(ValueError):
    """A runner flag is wrong or cannot be honoured here; the message starts with the flag."""


def add_runner_flags(parser: argparse.ArgumentParser) -> None:
    """Add the runner flags (``--runner``, ``--operator-rootfs``, ``--service-data``, ...)."""
    parser.add_argument(
        "--runner",
        choices=("sandbox", "process"),
        help="run operators in a bubblewrap sandbox (the default where bwrap works) or as "
        "plain processes; see docs/security.md",
    )
    parser.add_argument(
        "--allow-definition-commands",
        action="store_true",
        help="let the process runner run any command a definition gives, not only files of "
        "the operators folder (whoever can start a job can then run code as you)",
    )
    parser.add_argument(
        "--operator-rootfs",
        action="append",
        default=[],
        type=_rootfs_entry,
        metavar="IMAGE[:TAG]=DIR",
        help="run operators of this image inside DIR, an unpacked image root (e.g. from "
        "`docker export`), in the sandbox; repeatable",
    )
    parser.add_argument(
        "--service-data",
        type=_service_data_entry,
        metavar="DIR",
        help="the services' common volume, named by NVIDIA_CLARA_SERVICE_DATA_PATH (read-only "
        "at /clara/common in the sandbox); created if missing (default: WORKSPACE/service-data)",
    )


def _service_data_entry(text: str) -> Path:
    path = Path(text).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: {path} is not a folder")
    return path


def _rootfs_entry(text: str) -> tuple[str, Path]:
    image, sep, folder = text.rpartition("=")
    if not sep or not image or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: expected IMAGE[:TAG]=DIR")
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: {folder} is not a folder")
    return image, path


def runner_options(args: argparse.Namespace) -> dict[str, Any]:
    """The launcher's runner arguments from the parsed flags.

    Without a state file a sandbox ends with the mock; with one (``serve --state``) it outlives
    a crash, so its driver reconnects to the restarted server. The state file and workspace are
    hidden from sandboxes that would otherwise see them (inside ``--operators-dir``).

    Raises:
        RunnerUsageError: ``--runner sandbox`` (or ``--operator-rootfs``) where bwrap does
            not work, or ``--operator-rootfs`` with ``--runner process``.
    """
    # Imported here: the parser (and `clara-mock --help`, and the client commands) must work
    # where the mock's extra is missing, and the runner needs it.
    from server_mock._runner import choose_runner  # noqa: PLC0415
    from server_mock._sandbox import SandboxSettings, SandboxUnavailableError  # noqa: PLC0415

    state: Path | None = getattr(args, "state", None)
    hidden = [Path(f"{state}{suffix}") for suffix in _STATE_SUFFIXES] if state else []
    if args.workspace is not None:
        hidden.append(args.workspace)
    sandbox = SandboxSettings(
        die_with_server=state is None,
        hidden_paths=tuple(hidden),
        rootfs=dict(args.operator_rootfs),
    )
    try:
        runner = choose_runner(args.runner, sandbox)
    except SandboxUnavailableError as error:
        flag = "--runner sandbox" if args.runner == "sandbox" else "--operator-rootfs"
        raise RunnerUsageError(f"{flag}: {error}") from None
    except ValueError as error:
        raise RunnerUsageError(f"--operator-rootfs: {error}") from None
    return {
        "runner": runner,
        "sandbox": sandbox,
        "allow_definition_commands": args.allow_definition_commands,
    }


def service_data_folder(args: argparse.Namespace, workspace: Path) -> Path:
    """The services' common volume: ``--service-data``, or ``service-data`` in ``workspace``."""
    from server_mock._service_data import default_service_data  # noqa: PLC0415 (as above)

    folder: Path | None = args.service_data
    return folder if folder is not None else default_service_data(workspace)
