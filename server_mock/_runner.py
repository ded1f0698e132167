"""Runs a job's operators as local processes: the mock's stand-in for the cluster's containers.

Mapping from an operator's container to a local command, first match wins:

1. an operator map (``--operator-map FILE``: YAML ``"image:tag": [argv...]`` or
   ``"image": [argv...]``);
2. the container's own ``command``, run in the command folder (for ``clara-mock run``, the
   pipeline file's folder); a leading ``python``/``python3`` means the interpreter running
   the mock, so operators share its environment.

Every operator of a job is launched when the job starts (as on the platform, ``prepare`` runs
while upstream stages are still working). Each process gets the environment a Clara cluster
gives an operator, built by :func:`server_mock._operator_env.operator_environment`. Its stdout
and stderr go to the job's ``logs/<operator>.log`` (served by Jobs.ReadLogs).

The platform side of the life-cycle is enforced here: a process that exits without its
stage having reported an outcome fails the stage, unless its driver left the outcome in its
outbox (:mod:`server_mock._outbox`), which is then applied; a stage still running ``timeout_grace``
after its timeout (counted from inputs ready) is timed out and its process stopped; a
process still alive ``exit_grace`` after its stage ended (cancelled, failed upstream) is
sent SIGTERM, then SIGKILL after ``kill_grace``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from server_mock._jobs import Job, Stage, StageState
from server_mock._operator_env import operator_environment
from server_mock._outbox import apply_outbox
from server_mock._pipeline_definition import OperatorSpec, PipelineDefinition
from server_mock._workspace import JobLayout

__all__ = ["LocalProcessLauncher", "OperatorMapError", "RunnerTimeouts", "load_operator_map"]

_log = logging.getLogger("server_mock.runner")

_PYTHON_NAMES = frozenset({"python", "python3", f"python3.{sys.version_info.minor}"})


class OperatorMapError(ValueError):
    """An operator map file is malformed; the message names the file and entry."""


@dataclass(frozen=True, slots=True)
class RunnerTimeouts:
    """The grace periods the launcher gives operator processes, in seconds.

    Attributes:
        timeout_grace: Past the stage timeout, how long the driver has to report TIMED_OUT
            itself before the platform times the stage out and stops the process.
        exit_grace: After the stage ended, how long the process has to exit on its own.
        kill_grace: After SIGTERM, how long before SIGKILL.
    """

    timeout_grace: float = 20.0
    exit_grace: float = 30.0
    kill_grace: float = 15.0


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


class LocalProcessLauncher:
    """Launches each operator of a job as a local process and supervises it.

    The launcher needs its platform's address (known once the platform serves) and stage
    tokens, and the platform takes its launcher when it is constructed: give
    ``platform_address=None``, construct the platform with this launcher, then :meth:`attach`
    the platform's address and token issuer before it starts a job.

    Args:
        platform_address: Returns the stage service's ``host:port`` for the drivers; ``None``
            until :meth:`attach` gives it.
        command_dir: The working folder of operator commands.
        operator_map: ``image[:tag]`` to argv, overriding containers' commands.
        timeouts: Grace periods (see :class:`RunnerTimeouts`).
        extra_env: Added to every operator's environment (after the mock's own variables
            and before the operator's ``variables``), e.g. the ``NVIDIA_CLARA_TLS_*`` files.
        stage_token: Returns the secret token of (job id, stage name), handed to the
            operator as ``NVIDIA_CLARA_STAGE_TOKEN`` (e.g. ``platform.stage_tokens.issue``).
    """

    def __init__(
        self,
        platform_address: Callable[[], str] | None,
        command_dir: Path,
        *,
        operator_map: Mapping[str, list[str]] | None = None,
        timeouts: RunnerTimeouts | None = None,
        extra_env: Mapping[str, str] | None = None,
        stage_token: Callable[[uuid.UUID, str], str] | None = None,
    ) -> None:
        self._stage_token = stage_token
        self._platform_address = platform_address
        self._command_dir = command_dir
        self._operator_map = dict(operator_map or {})
        self._timeouts = timeouts or RunnerTimeouts()
        self._extra_env = dict(extra_env or {})
        self._tasks: set[asyncio.Task[None]] = set()
        self.exit_codes: dict[tuple[str, str], int] = {}

    def attach(
        self,
        platform_address: Callable[[], str],
        stage_token: Callable[[uuid.UUID, str], str] | None = None,
    ) -> None:
        """Give the launcher its platform's address and token issuer, once the platform exists.

        Args:
            platform_address: Returns the stage service's ``host:port`` for the drivers.
            stage_token: Returns the secret token of (job id, stage name), e.g.
                ``platform.stage_tokens.issue``.
        """
        self._platform_address = platform_address
        self._stage_token = stage_token

    def command_for(self, operator: OperatorSpec) -> list[str]:
        """The argv that runs ``operator`` locally.

        Raises:
            ValueError: Neither the operator map nor the container gives a command.
        """
        container = operator.container
        command = self._operator_map.get(f"{container.image}:{container.tag}")
        command = command or self._operator_map.get(container.image)
        if command is None:
            command = list(container.command)
        if not command:
            raise ValueError(
                f"operator {operator.name!r}: no local command for container "
                f"{container.image}:{container.tag}; give the container a `command` or map the "
                "image in an operator map"
            )
        if command[0] in _PYTHON_NAMES:
            command = [sys.executable, *command[1:]]
        return command

    def environment_for(
        self, job: Job, operator: OperatorSpec, layout: JobLayout
    ) -> dict[str, str]:
        """The environment of ``operator``'s process (see :mod:`server_mock._operator_env`)."""
        if self._platform_address is None:
            raise RuntimeError("the launcher is not attached to a platform; call attach() first")
        return operator_environment(
            job,
            job.stage(operator.name).spec,
            logs_dir=layout.logs_dir,
            publishing_dir=layout.publishing_dir(operator.name),
            outbox_dir=layout.outbox_dir(operator.name),
            stage_service=self._platform_address(),
            inherited=os.environ,
            extra=self._extra_env,
            stage_token=(
                None if self._stage_token is None else self._stage_token(job.job_id, operator.name)
            ),
        )

    async def start(self, job: Job, definition: PipelineDefinition, layout: JobLayout) -> None:
        """Start the job and launch one process per operator; return once all are launched.

        Raises:
            ValueError: An operator has no local command (checked before anything starts).
            OSError: A process could not be started; already started ones are stopped by
                their supervisors when the job fails.
        """
        commands = {op.name: self.command_for(op) for op in definition.operators}
        layout.logs_dir.mkdir(parents=True, exist_ok=True)
        job.start()
        for operator in definition.operators:
            log_path = layout.log_path(operator.name)
            with log_path.open("ab") as log:
                process = await asyncio.create_subprocess_exec(
                    *commands[operator.name],
                    cwd=self._command_dir,
                    env=self.environment_for(job, operator, layout),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,  # a signal to the mock must not hit operators
                )
            _log.info(
                "job %s: launched %s (pid %d): %s",
                job.job_id,
                operator.name,
                process.pid,
                shlex.join(commands[operator.name]),
            )
            task = asyncio.create_task(
                self._supervise(
                    job,
                    job.stage(operator.name),
                    process,
                    log_path,
                    layout.outbox_dir(operator.name),
                ),
                name=f"supervise-{operator.name}",
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until every launched process has exited; return False on timeout."""
        tasks = list(self._tasks)
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending

    async def stop_all(self) -> None:
        """Stop supervising (the supervisors kill their processes on the way out)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _supervise(
        self,
        job: Job,
        stage: Stage,
        process: asyncio.subprocess.Process,
        log_path: Path,
        outbox_dir: Path,
    ) -> None:
        loop = asyncio.get_running_loop()
        name = stage.spec.name
        exited = asyncio.ensure_future(process.wait())
        # Deadlines on the loop's clock: when the running stage times out (armed once, when
        # its inputs become ready) and when the process must be gone (armed once it ended).
        timeout_at: float | None = None
        stop_at: float | None = None
        signals_sent = 0
        try:
            while not exited.done():
                changed = stage.changed()
                now = loop.time()
                if stage.state is StageState.READY and timeout_at is None:
                    timeout_at = now + stage.spec.timeout.total_seconds()
                    timeout_at += self._timeouts.timeout_grace
                if stage.state.terminal and stop_at is None:
                    stop_at = now + self._timeouts.exit_grace
                if stage.state is StageState.READY and timeout_at is not None and now >= timeout_at:
                    job.fail_stage(
                        name,
                        StageState.TIMED_OUT,
                        f"ran past its timeout of {stage.spec.timeout}; process stopped",
                    )
                    _log.warning("job %s: %s timed out; stopping it", job.job_id, name)
                    stop_at = now
                if stop_at is not None and now >= stop_at:
                    signals_sent += 1
                    _signal(process, "terminate" if signals_sent == 1 else "kill")
                    stop_at = now + self._timeouts.kill_grace
                pending = [t for t in (timeout_at, stop_at) if t is not None and t > now]
                deadline = min(pending, default=now + 3600)
                waiter = asyncio.ensure_future(changed.wait())
                await asyncio.wait(
                    {exited, waiter}, timeout=deadline - now, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
        except asyncio.CancelledError:
            _signal(process, "kill")
            with contextlib.suppress(asyncio.CancelledError, ProcessLookupError):
                await asyncio.wait_for(asyncio.shield(exited), 10)
            raise
        code = exited.result()
        self.exit_codes[(str(job.job_id), name)] = code
        _log.info("job %s: %s exited with code %d", job.job_id, name, code)
        # An outcome the driver wrote to its outbox but could not report over gRPC.
        outbox = apply_outbox(job, name, outbox_dir) if not stage.state.terminal else None
        if outbox is not None and not outbox.applied:
            reason = f"signal {-code}" if code < 0 else f"code {code}"
            job.fail_stage(
                name,
                StageState.FAILED,
                f"operator process exited with {reason} before reporting an outcome"
                f"{outbox.note} (see {log_path})",
            )


def _signal(process: asyncio.subprocess.Process, how: str) -> None:
    with contextlib.suppress(ProcessLookupError):
        if how == "terminate":
            process.terminate()
        else:
            process.kill()
