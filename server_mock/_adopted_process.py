"""An operator process a previous platform process launched, adopted after a restart.

It is not this process's child any more (it was re-parented when the old platform process
ended), so it cannot be waited for with ``waitpid`` and its exit code cannot be known; a Linux
pidfd (``os.pidfd_open``) still names exactly that process: it becomes readable when the
process ends, and ``signal.pidfd_send_signal`` can never signal another process that got its
pid. The pidfd is opened only after the recorded identity (pid, start time, boot) is checked,
and the identity is checked again once it is open, so a reused pid is never adopted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal

from server_mock._launches import ProcessIdentity, identity_of
from server_mock._operator_process import OperatorSignals, wait_for_pidfd

__all__ = ["AdoptedProcess", "adopt"]

_log = logging.getLogger("server_mock.runner")


class AdoptedProcess(OperatorSignals):
    """An adopted operator process (a :class:`~server_mock._operator_process.ProcessHandle`).

    Args:
        identity: The process, as the launch record names it.
        pidfd: A pidfd of exactly that process.
        sandboxed: Whether it runs its command in a bwrap sandbox.
    """

    def __init__(self, identity: ProcessIdentity, pidfd: int, *, sandboxed: bool) -> None:
        super().__init__(identity.pid, sandboxed=sandboxed)
        self.identity = identity
        self._pidfd: int | None = pidfd

    async def wait(self) -> None:
        """Wait until the process ended; its exit code is unknown (``None``)."""
        if self._pidfd is not None:
            await wait_for_pidfd(self._pidfd)

    def signal_main(self, signum: signal.Signals) -> None:
        """Signal the adopted process through its pidfd (never a process that reused its pid)."""
        if self._pidfd is None:
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, signum)

    def terminate(self) -> None:
        """Ask every process of the operator to end (SIGTERM), if it is still running."""
        if self._alive():
            super().terminate()

    def kill(self) -> None:
        """Kill every process of the operator (SIGKILL), if it is still running."""
        if self._alive():
            super().kill()

    def end_leftovers(self) -> None:
        """Kill what is left of its group and session, unless its pid now names another process.

        The kernel does not reuse a pid while a group or session of that id has members; so
        a pid that names no process means the members found are this operator's, and one that
        names a process with another start time means none of them is left.
        """
        if identity_of(self.pid) in (None, self.identity):
            super().end_leftovers()

    def close(self) -> None:
        """Close the pidfd (the process, if still running, is left alone)."""
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def _alive(self) -> bool:
        """Whether the process has not ended (its pidfd is not readable yet)."""
        if self._pidfd is None:
            return False
        readable, _, _ = select.select([self._pidfd], [], [], 0)
        return not readable


def adopt(identity: ProcessIdentity, *, sandboxed: bool) -> AdoptedProcess | None:
    """Open a pidfd of the process ``identity`` names; ``None`` if that process is gone.

    A process with the same pid and another start time (the pid was reused) is not adopted,
    nor one that has ended and is not reaped yet (a zombie).
    """
    if identity_of(identity.pid, running=True) != identity:
        return None
    try:
        pidfd = os.pidfd_open(identity.pid)
    except ProcessLookupError:
        return None
    except OSError as error:
        _log.warning("pid %d: cannot open a pidfd: %s; not adopted", identity.pid, error)
        return None
    if identity_of(identity.pid, running=True) != identity:  # ended (and reused?) meanwhile
        os.close(pidfd)
        return None
    return AdoptedProcess(identity, pidfd, sandboxed=sandboxed)
