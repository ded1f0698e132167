"""An operator for the reliability tests: a real ``clara.Driver`` in its own process.

Settings come from the environment (the platform's variables, plus these):

* ``RELIABILITY_MODE``: what execute does: ``succeed`` (default), ``fail``, ``hang`` (never
  returns), ``go`` (waits for a ``go`` command on the control channel, then succeeds),
  ``go-fail`` (waits for ``go``, then fails).
* ``RELIABILITY_CLEANUP``: ``succeed`` (default) or ``hang``.
* ``RELIABILITY_CLEANUP_MARKER``: a file cleanup writes (``cleaned up``) before it returns.
* ``RELIABILITY_CONTROL``: ``host:port`` of the test's control channel (optional).
* ``RELIABILITY_GRACE``: the driver's grace period in seconds (default 2).
* ``RELIABILITY_REPORT``: the driver's report budget in seconds (default 60).

Every event is written as one JSON line to stdout, and to the control channel when there is
one: ``hello`` (with the pid), each notification kind, ``execute``, ``cleanup``, ``result``
(with the outcome) and ``exit``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
from datetime import timedelta
from typing import Any

import clara

STAGE = os.environ.get("NVIDIA_CLARA_STAGENAME", "stage")
MODE = os.environ.get("RELIABILITY_MODE", "succeed")
CLEANUP = os.environ.get("RELIABILITY_CLEANUP", "succeed")
CLEANUP_MARKER = os.environ.get("RELIABILITY_CLEANUP_MARKER", "")
GRACE = float(os.environ.get("RELIABILITY_GRACE", "2"))
REPORT = float(os.environ.get("RELIABILITY_REPORT", "60"))

_lock = threading.Lock()
_go = threading.Event()
_never = threading.Event()
_channel: list[socket.socket] = []  # the control connection, when there is one


def send(event: str, **fields: Any) -> None:
    line = json.dumps({"stage": STAGE, "event": event, **fields}) + "\n"
    with _lock:
        sys.stdout.write(line)
        sys.stdout.flush()
        for control in _channel:
            with contextlib.suppress(OSError):
                control.sendall(line.encode())


def listen(control: socket.socket) -> None:
    with control.makefile("r", encoding="utf-8") as commands:
        for line in commands:
            if json.loads(line).get("command") == "go":
                _go.set()


def execute(driver: clara.Driver[None], payload: clara.Payload) -> bool:
    send("execute")
    if MODE == "hang":
        _never.wait()
    if MODE in ("go", "go-fail"):
        while not _go.wait(0.05):
            if driver.cancel_requested:
                return False
    return MODE not in ("fail", "go-fail")


def cleanup(driver: clara.Driver[None]) -> bool:
    send("cleanup")
    if CLEANUP == "hang":
        _never.wait()
    if CLEANUP_MARKER:
        with open(CLEANUP_MARKER, "w", encoding="utf-8") as marker:
            marker.write("cleaned up")
    return True


def notify(driver: clara.Driver[None], notification: clara.Notification) -> None:
    send(notification.kind.value, message=notification.message)


def main() -> int:
    address = os.environ.get("RELIABILITY_CONTROL")
    if address:
        host, port = address.rsplit(":", 1)
        control = socket.create_connection((host, int(port)), timeout=10)
        control.settimeout(None)
        _channel.append(control)
        threading.Thread(target=listen, args=(control,), daemon=True).start()
    send("hello", pid=os.getpid())
    driver = clara.Driver(
        execute=execute,
        cleanup=cleanup,
        notify=notify,
        timeouts=clara.DriverTimeouts(
            grace=timedelta(seconds=GRACE),
            connect=timedelta(seconds=60),
            report=timedelta(seconds=REPORT),
        ),
        retry=clara.RetryConfig(initial=0.05, maximum=0.5),
    )
    driver.start()
    result = driver.wait_for_completion()
    send("result", outcome=result.outcome.value, reported=result.reported, message=result.message)
    send("exit")
    return 0 if result.succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
