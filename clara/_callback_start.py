"""Handing a callback to the pool, and starting execute the moment the inputs are ready.

This is the operator's latency path (inputs ready -> execute running): the watcher thread that
delivers INPUTS_READY submits execute itself, so the path has one thread hop, not two.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

from clara._stage_link import Signal, SignalKind

__all__ = ["StartOnInputsReady", "StartedCallback", "settle"]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class StartedCallback:
    """A callback handed to the pool: its future, when, and one that completes once it begins.

    Only execute's start is tracked (``began``): that is the latency the platform waits on.
    """

    future: futures.Future[Any]
    at: float
    began: futures.Future[None] | None = None

    @staticmethod
    def submit(
        executor: futures.Executor,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
        *,
        track_start: bool = False,
    ) -> StartedCallback:
        """Submit ``callback(*args)``; with ``track_start``, ``began`` completes as it begins."""
        if not track_start:
            return StartedCallback(executor.submit(callback, *args), time.monotonic())
        began: futures.Future[None] = futures.Future()

        def run() -> Any:
            began.set_result(None)
            return callback(*args)

        return StartedCallback(executor.submit(run), time.monotonic(), began)


class StartOnInputsReady:
    """Starts execute from the thread that delivers INPUTS_READY, before waking anyone else.

    The watcher delivers the signal by completing ``decided``; this trigger, armed before the
    life-cycle waits, runs in that same call and hands execute to the pool at once, and
    ``settled`` completes only once execute has begun (or at once for any other signal), so
    the life-cycle wakes after the operator's work started, not before it: the inputs-ready
    path has one thread hop, not two. The life-cycle disarms the trigger when it stops
    waiting; whichever comes first wins, so execute starts at most once.
    """

    def __init__(
        self, start: Callable[[], StartedCallback], decided: futures.Future[Signal]
    ) -> None:
        self._start = start
        self._lock = threading.Lock()
        self._armed = True
        self._started: StartedCallback | None = None
        self.settled: futures.Future[None] = futures.Future()
        decided.add_done_callback(self._fire)  # runs now if the inputs are already ready

    def disarm(self) -> StartedCallback | None:
        """Stop the trigger; return the started callback if it fired first."""
        with self._lock:
            self._armed = False
            return self._started

    def _fire(self, decided: futures.Future[Signal]) -> None:
        if decided.exception() is None and decided.result().kind is SignalKind.INPUTS_READY:
            with self._lock:
                if self._armed:
                    self._armed = False
                    self._started = self._start()
            if self._started is not None:
                if self._started.began is not None:
                    self._started.began.add_done_callback(self._settle)
                self._started.future.add_done_callback(self._settle)  # cancelled unbegun
                return
        self._settle(decided)

    def _settle(self, _: futures.Future[Any]) -> None:
        settle(self.settled, None)


def settle(future: futures.Future[_T], value: _T) -> None:
    """Complete ``future`` unless another writer already did."""
    with contextlib.suppress(futures.InvalidStateError):
        future.set_result(value)
