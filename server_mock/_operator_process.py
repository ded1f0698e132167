"""A launched operator's processes: waiting for them, stopping them, leaving none behind.

The supervisor (:mod:`server_mock._supervisor`) works on one small interface,
:class:`ProcessHandle`, which two kinds of process implement: an operator this platform
process spawned (:class:`OperatorProcess`, its child) and one a previous platform process
spawned and this one adopted after a restart (:class:`server_mock._adopted_process.AdoptedProcess`).
Both are watched through a Linux pidfd (``os.pidfd_open``, readable once the process ended);
only a child's exit code can be known. The process is spawned with :class:`subprocess.Popen`,
not an asyncio subprocess: asyncio's transport kills its child when it is closed or collected,
and a platform with a state file leaves its operators running when it stops.

How an operator is stopped (shared by both kinds, :class:`OperatorSignals`):

* a plain process (the process runner) starts a new session, so it leads its own process
  group. Stopping it signals the whole group (``killpg``), and when its main process ends,
  whatever is left of its group and session is killed. A process that detaches with
  ``setsid`` leaves both and cannot be found again: only the sandbox catches it.
* a sandboxed process is bwrap (possibly under a keeper ``sh``). Its PID namespace ends with
  its first process, so nothing is left to clean up. Stopping it gracefully signals every
  process inside the namespace (found through ``/proc/<pid>/task/<tid>/children``); killing
  it kills the namespace's PID 1, which takes everything inside with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

__all__ = [
    "OperatorProcess",
    "OperatorSignals",
    "ProcessHandle",
    "start_operator_process",
    "stat_fields",
    "wait_for_pidfd",
]

# A sandboxed command killed by signal N makes bwrap exit with 128 + N, as a shell does.
_SIGNAL_EXIT_BASE = 128


class ProcessHandle(Protocol):
    """An operator's process as its supervisor sees it."""

    @property
    def pid(self) -> int:
        """The main process's id (on the host)."""

    async def wait(self) -> int | None:
        """Wait until the main process ended; its exit code (negative: a signal), if known."""

    def terminate(self) -> None:
        """Ask every process of the operator to end (SIGTERM)."""

    def kill(self) -> None:
        """Kill every process of the operator (SIGKILL)."""

    def end_leftovers(self) -> None:
        """After the main process ended: kill what is left of it."""

    def close(self) -> None:
        """Release what watching it holds (its pidfd); the process itself is left alone."""


async def wait_for_pidfd(pidfd: int) -> None:
    """Return once the process of ``pidfd`` has ended (the pidfd becomes readable)."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await ended
    finally:
        loop.remove_reader(pidfd)


class OperatorSignals:
    """Stops an operator's processes, given its main process's pid (shared by both kinds).

    Args:
        pid: The main process (the command itself, or bwrap, or the sandbox's keeper).
        sandboxed: Whether it runs the command in a bwrap sandbox.
    """

    def __init__(self, pid: int, *, sandboxed: bool) -> None:
        self._pid = pid
        self.sandboxed = sandboxed

    @property
    def pid(self) -> int:
        """The main process's id (on the host)."""
        return self._pid

    def signal_main(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the main process only (a no-op once it is gone)."""
        _signal_pid(self._pid, signum)

    def terminate(self) -> None:
        """Ask every process of the operator to end (SIGTERM)."""
        if not self.sandboxed:
            self.signal_main(signal.SIGTERM)
            _signal_group(self._pid, signal.SIGTERM)
            return
        init = _namespace_init(self._pid)
        inside = [] if init is None else list(_descendants(init))
        if not inside:  # not started yet, or already gone: nothing can take a signal nicely
            self.kill()
            return
        for pid in inside:
            _signal_pid(pid, signal.SIGTERM)

    def kill(self) -> None:
        """Kill every process of the operator (SIGKILL)."""
        if not self.sandboxed:
            self.signal_main(signal.SIGKILL)
            _signal_group(self._pid, signal.SIGKILL)
            _kill_session(self._pid)
            return
        init = _namespace_init(self._pid)
        if init is not None:
            _signal_pid(init, signal.SIGKILL)  # ends the PID namespace and all inside it
        self.signal_main(signal.SIGKILL)

    def end_leftovers(self) -> None:
        """After the main process ended: kill what is left of its group and session."""
        if not self.sandboxed:
            _signal_group(self._pid, signal.SIGKILL)
            _kill_session(self._pid)


class OperatorProcess(OperatorSignals):
    """An operator this platform process spawned (its child), watched through a pidfd.

    Args:
        process: The spawned process (the command itself, or bwrap, or its keeper).
        sandboxed: Whether ``process`` runs the command in a bwrap sandbox.
    """

    def __init__(self, process: subprocess.Popen[bytes], *, sandboxed: bool) -> None:
        super().__init__(process.pid, sandboxed=sandboxed)
        self.process = process
        self._pidfd: int | None = os.pidfd_open(process.pid)

    async def wait(self) -> int:
        """Wait for the main process; return its exit code, negative for a signal.

        For a sandbox, bwrap's ``128 + N`` for a command killed by signal N is reported as
        ``-N``, like a plain process's.
        """
        if self._pidfd is not None:
            await wait_for_pidfd(self._pidfd)
        code = self.process.wait()  # it has ended: reaping it does not block
        if self.sandboxed and _SIGNAL_EXIT_BASE < code <= _SIGNAL_EXIT_BASE + 64:
            return _SIGNAL_EXIT_BASE - code
        return code

    def close(self) -> None:
        """Close the pidfd (the process, if still running, is left alone)."""
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def start_operator_process(
    argv: Sequence[str], *, cwd: Path, env: dict[str, str], log: BinaryIO, sandboxed: bool
) -> OperatorProcess:
    """Start an operator with its output going to ``log``.

    Raises:
        OSError: The program could not be started.
    """
    process = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group and session: a signal to the mock spares it
    )
    try:
        return OperatorProcess(process, sandboxed=sandboxed)
    except OSError:
        process.kill()
        process.wait()
        raise


def _signal_pid(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (members that moved to another group)."""
    for pid in _session_members(sid):
        _signal_pid(pid, signal.SIGKILL)


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after the command's name, or ``None`` if it is gone.

    They start with the state, the parent, the group and the session; the name (in
    parentheses, and free to contain them) is skipped.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _session_members(sid: int) -> list[int]:
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = stat_fields(int(entry.name))  # None: gone meanwhile
        if fields is not None and len(fields) > 3 and int(fields[3]) == sid:
            members.append(int(entry.name))
    return members


def _children(pid: int) -> list[int]:
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as listing:
                children += [int(child) for child in listing.read().split()]
        except OSError:
            continue
    return children


def _descendants(pid: int) -> Iterator[int]:
    pending = _children(pid)
    while pending:
        child = pending.pop()
        yield child
        pending += _children(child)


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _namespace_init(pid: int) -> int | None:
    """The first process below ``pid`` in another PID namespace: the sandbox's PID 1."""
    own = _pid_namespace(pid)
    if own is None:
        return None
    for child in _descendants(pid):
        namespace = _pid_namespace(child)
        if namespace is not None and namespace != own:
            return child
    return None
