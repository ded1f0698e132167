"""SIGINT and SIGTERM as one exception, so that ``run`` stops the same way for both.

Ctrl-C (SIGINT) and ``kill``/``timeout`` (SIGTERM) both raise :class:`Interrupted` in the main
thread, once: the command then cancels its job and stops its operators. A signal arriving
while it does so does not interrupt that clean-up (which is bounded); it is only noted.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

__all__ = ["InterruptHandler", "Interrupted"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived.

    A ``BaseException``, as ``KeyboardInterrupt`` is, so ``except Exception`` does not catch it.

    Attributes:
        signum: The signal's number.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def name(self) -> str:
        """The signal's name, e.g. ``SIGTERM``."""
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The conventional exit code of a process ended by this signal (128 + number)."""
        return 128 + self.signum


class InterruptHandler:
    """Raises :class:`Interrupted` on the first SIGINT or SIGTERM, inside the ``with`` block.

    Outside the main thread (where Python cannot install handlers) it does nothing.

    Args:
        prog: Names the command in the notice printed for later signals.
    """

    def __init__(self, prog: str) -> None:
        self._prog = prog
        self._armed = True
        self._previous: dict[int, signal.Handlers | object] = {}

    def __enter__(self) -> InterruptHandler:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in _SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]  # what signal() returned
        self._previous = {}

    def hold(self) -> None:
        """From now on a signal no longer raises (the clean-up in progress must finish)."""
        self._armed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._armed:
            self._armed = False
            raise Interrupted(signum)
        name = signal.Signals(signum).name
        # os.write, not print: a handler may run in the middle of a print to the same stream.
        os.write(2, f"{self._prog}: {name} received; still stopping the operators\n".encode())
