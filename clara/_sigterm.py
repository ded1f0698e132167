"""SIGTERM while a life-cycle runs: cancel the stage locally instead of dying mid-callback.

The platform stops an operator with SIGTERM (and SIGKILL after a grace period). A driver that
handles it cancels its stage as if the platform had: execute is skipped or interrupted, cleanup
runs, CANCELLED is reported within the grace period, and ``wait_for_completion()`` returns. A
second SIGTERM, or one after the life-cycle ended, terminates the process as the default
disposition would.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["SigtermHandler"]


class SigtermHandler:
    """Turns SIGTERM into a local cancellation while one life-cycle runs.

    Args:
        cancel: Called with the reason on SIGTERM (on the main thread, between two bytecodes:
            it may only set futures and events); returns False when there is nothing to
            cancel any more (the life-cycle ended, or it was cancelled already), and the
            process then terminates as by default.
    """

    def __init__(self, cancel: Callable[[str], bool]) -> None:
        self._cancel = cancel
        self._installed: Callable[[int, FrameType | None], None] | None = None

    def install(self) -> None:
        """Handle SIGTERM from now on, if called on the main thread and nobody else does."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # the application (or another driver) handles it: leave it alone
        handler = self._on_sigterm
        signal.signal(signal.SIGTERM, handler)
        self._installed = handler

    def restore(self) -> None:
        """Put the default disposition back (only the main thread can, and only ours)."""
        handler = self._installed
        if handler is None or threading.current_thread() is not threading.main_thread():
            return
        self._installed = None
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if not self._cancel(f"the operator process received {signal.Signals(signum).name}"):
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
