"""The driver's threads: daemon threads reused across life-cycles, and a pool built on them.

Every driver needs a few threads (its life-cycle, its signal watcher, the workers that run
callbacks and notifications). Starting a thread is a hand-shake: ``Thread.start()`` returns
only once the new thread runs, about 0.1 ms on a small VM, several times per life-cycle. A
process that runs many drivers (a test farm, the mock platform's in-process stages) would
pay it again and again, so a thread whose task ended parks here for :data:`IDLE_SECONDS` and
takes the next task instead of a new thread starting. A process running one driver starts
its threads as before; parked threads are daemons and never keep a process alive.

A task may hold the process open instead (``hold_exit=True``, the life-cycle: a stage must not
go unreported because the main thread returned): interpreter exit then waits for it, as it
would for a non-daemon thread. The task bounds its own run time.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import Any, ParamSpec, TypeVar

__all__ = [
    "IDLE_SECONDS",
    "DaemonExecutor",
    "ThreadTask",
    "run_in_thread",
    "running_tasks",
    "wait_for_any",
]

_log = logging.getLogger("clara")
_P = ParamSpec("_P")
_T = TypeVar("_T")

IDLE_SECONDS = 30.0  # how long a thread whose task ended waits for another before ending
_IDLE_NAME = "clara-idle"


class ThreadTask:
    """A task handed to :func:`run_in_thread`: wait for its end with :meth:`join`."""

    __slots__ = ("_running", "hold_exit", "name", "target")

    def __init__(self, target: Callable[[], object], name: str, *, hold_exit: bool) -> None:
        self.target = target
        self.name = name
        self.hold_exit = hold_exit
        # Held from creation until the task ends: a plain lock is the cheapest latch there is.
        self._running = threading.Lock()
        self._running.acquire()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the task returned; False if ``timeout`` passed first."""
        if not self._running.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            return False
        self._running.release()
        return True

    @property
    def ended(self) -> bool:
        """True once the task returned (or raised)."""
        return not self._running.locked()

    def run(self) -> None:
        """Run the target on this thread, named after the task; never raises."""
        thread = threading.current_thread()
        thread.name = self.name  # log records and stack dumps name the task, not the cache
        try:
            self.target()
        except BaseException:  # a task must not take its thread, or the cache, down with it
            _log.exception("unexpected error in thread task %s", self.name)
        finally:
            thread.name = _IDLE_NAME
            self.target = _nothing  # drop the task's references while the thread is parked

    def end(self) -> None:
        """Mark the task ended: :meth:`join` returns from now on."""
        self._running.release()


def _nothing() -> None:
    return None


class _ThreadCache:
    """Parked daemon threads and the tasks handed to them.

    ``_idle`` counts parked threads not yet promised a task: :meth:`run` promises one by
    decrementing it before queueing the task, so a queued task always has a thread coming.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: queue.SimpleQueue[ThreadTask] = queue.SimpleQueue()
        self._idle = 0
        self._running: set[ThreadTask] = set()
        self._exit_hook_installed = False

    def run(self, task: ThreadTask) -> None:
        with self._lock:
            self._running.add(task)
            if task.hold_exit and not self._exit_hook_installed:
                atexit.register(self.wait_for_held_tasks)
                self._exit_hook_installed = True
            if self._idle:
                self._idle -= 1
                self._tasks.put(task)
                return
        try:
            threading.Thread(target=self._serve, args=(task,), name=task.name, daemon=True).start()
        except BaseException:
            with self._lock:
                self._running.discard(task)
            task.end()
            raise

    def running(self) -> list[ThreadTask]:
        with self._lock:
            return list(self._running)

    def wait_for_held_tasks(self) -> None:
        """At interpreter exit: wait for the tasks that hold the process open.

        Each such task (a driver's life-cycle) is bounded by its own deadlines, as the
        non-daemon thread it replaces was; exit waits for it the same way.
        """
        while True:
            with self._lock:
                task = next((task for task in self._running if task.hold_exit), None)
            if task is None:
                return
            _log.info("interpreter exit waits for %s to end", task.name)
            task.join()
            with self._lock:
                self._running.discard(task)

    def _serve(self, task: ThreadTask) -> None:
        while True:
            task.run()
            with self._lock:
                self._running.discard(task)
                self._idle += 1
            # Counted idle before the task is seen to end: whoever joined it and hands out the
            # next task finds this thread available.
            task.end()
            del task  # nothing of the last task stays reachable from a parked thread
            next_task = self._next_task()
            if next_task is None:
                return
            task = next_task

    def _next_task(self) -> ThreadTask | None:
        while True:
            try:
                return self._tasks.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle:  # nobody promised this thread a task: end it
                        self._idle -= 1
                        return None
                # A task was promised to a parked thread just now: it is in the queue.

    def reset_after_fork(self) -> None:
        # The child has none of the parent's threads: forget them, and the parent's tasks.
        self._lock = threading.Lock()
        self._tasks = queue.SimpleQueue()
        self._idle = 0
        self._running = set()


_cache = _ThreadCache()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_cache.reset_after_fork)


def run_in_thread(
    target: Callable[[], object], name: str, *, hold_exit: bool = False
) -> ThreadTask:
    """Run ``target()`` on a parked daemon thread, or on a new one if none is parked.

    The thread carries ``name`` while the task runs. With ``hold_exit``, interpreter exit
    waits for the task to end (as for a non-daemon thread). An exception that escapes
    ``target`` is logged on the ``clara`` logger.
    """
    task = ThreadTask(target, name, hold_exit=hold_exit)
    _cache.run(task)
    return task


def running_tasks() -> list[ThreadTask]:
    """The tasks running now (for tests and diagnostics: join them to let a process settle)."""
    return _cache.running()


class DaemonExecutor(futures.Executor):
    """A small thread pool whose workers are daemon threads (from :func:`run_in_thread`).

    ``concurrent.futures.ThreadPoolExecutor`` joins its (non-daemon) workers at interpreter
    exit, so one callback that never returns would keep the operator process alive forever.
    The driver runs callbacks and notifications here instead: a hung callback is abandoned
    once its deadline passes, and the process can still exit. Workers start on demand (up to
    ``max_workers``) and leave the pool after :meth:`shutdown`, once their current call
    returns.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self._max_workers = max_workers
        self._name = name
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[futures.Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._idle = 0  # workers waiting for a call (under _lock)
        self._workers = 0
        self._shutdown = False

    def submit(
        self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> futures.Future[_T]:
        """Schedule ``fn(*args, **kwargs)``; raise ``RuntimeError`` after :meth:`shutdown`."""
        future: futures.Future[_T] = futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._queue.put((future, lambda: fn(*args, **kwargs)))
            if self._idle:
                self._idle -= 1
            elif self._workers < self._max_workers:
                self._start_worker_locked()
        return future

    def prestart(self) -> None:
        """Start one worker now, if none runs yet, so the first call need not wait for it."""
        with self._lock:
            if self._shutdown or self._workers:
                return
            self._start_worker_locked()
            self._idle += 1  # the new worker counts as idle until it takes a call

    def _start_worker_locked(self) -> None:
        self._workers += 1
        run_in_thread(self._work, f"{self._name}_{self._workers - 1}")

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting calls; workers leave once the queue is drained.

        ``wait`` is ignored: a hung call must never block the caller.
        """
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            for _ in range(self._workers):
                self._queue.put(None)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, call = item
            if future.set_running_or_notify_cancel():
                try:
                    result = call()
                except BaseException as error:
                    future.set_exception(error)
                else:
                    future.set_result(result)
                del future, call, item  # drop references before waiting again
            with self._lock:
                self._idle += 1


def wait_for_any(waited: Iterable[futures.Future[Any]], timeout: float) -> bool:
    """Wait until one of ``waited`` is done or ``timeout`` seconds pass; True if one is done.

    ``concurrent.futures.wait(..., FIRST_COMPLETED)`` does the same, but installs and removes a
    waiter (a Python-level Event) on every future each time; the driver waits several times
    per callback. Here a future already done returns at once, and otherwise each future's
    done-callback wakes the wait through a C-level queue. The callbacks stay on the futures
    (a concurrent future cannot drop one); one that fires late wakes nobody.
    """
    pending = list(waited)
    if any(future.done() for future in pending):
        return True
    if timeout <= 0:
        return False
    wakeup: queue.SimpleQueue[None] = queue.SimpleQueue()

    def wake(_: futures.Future[Any]) -> None:
        wakeup.put(None)

    for future in pending:
        future.add_done_callback(wake)
    try:
        wakeup.get(timeout=timeout)
    except queue.Empty:
        return False
    return True
