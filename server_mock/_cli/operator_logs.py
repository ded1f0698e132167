"""The operators' logs of a ``clara-mock run``: kept beside the outputs, and streamed live.

The launcher writes each operator's stdout and stderr to ``logs/<operator>.log`` in the job's
payload, which lives in the run's temporary workspace. :func:`keep_logs` copies them to
``<output>/logs/`` once the operators have exited, on every path (success, failure,
interruption), so a failure's message can point at a file that is still there afterwards.

``--stream-logs`` prints their lines as they come, prefixed with the operator's name (as
``docker compose`` does). The operators write to plain files, for which the standard library has
no change notification, so :class:`LogFollower` reads them as ``tail -f`` does: every
:data:`FOLLOW_INTERVAL` seconds, on a thread of its own, until stopped.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from server_mock._workspace import JobLayout

__all__ = ["FOLLOW_INTERVAL", "LogFollower", "keep_logs"]

FOLLOW_INTERVAL = 0.1
"""Seconds between two reads of the followed log files."""
_STOP_WAIT = 10.0

_log = logging.getLogger("server_mock.cli")


def keep_logs(layout: JobLayout, operators: Sequence[str], destination: Path) -> list[Path]:
    """Copy each operator's log (those that exist) to ``destination/<operator>.log``."""
    kept: list[Path] = []
    for operator in operators:
        source = layout.log_path(operator)
        if not source.is_file():
            continue
        destination.mkdir(parents=True, exist_ok=True)
        target = destination / source.name
        shutil.copyfile(source, target)
        kept.append(target)
    return kept


class LogFollower:
    """Reads the operators' log files as they grow and hands over each line, prefixed.

    Args:
        layout: The job's folders (where the logs are).
        operators: The operators whose logs to follow, in display order.
        emit: Called with each ``"<operator> | <line>"`` (from the follower's thread).
    """

    def __init__(
        self, layout: JobLayout, operators: Sequence[str], emit: Callable[[str], None]
    ) -> None:
        self._paths = {name: layout.log_path(name) for name in operators}
        self._width = max((len(name) for name in operators), default=0)
        self._emit = emit
        self._offsets = dict.fromkeys(operators, 0)
        self._partial = dict.fromkeys(operators, b"")
        self._unreadable: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="clara-run-logs", daemon=True)

    def start(self) -> None:
        """Start following."""
        self._thread.start()

    def stop(self) -> None:
        """Read what is left (a last line without newline too), then stop the thread."""
        self._stop.set()
        self._thread.join(_STOP_WAIT)
        self._read(final=True)

    def _follow(self) -> None:
        while not self._stop.wait(FOLLOW_INTERVAL):
            self._read(final=False)

    def _read(self, final: bool) -> None:
        for name, path in self._paths.items():
            try:
                with path.open("rb") as log:
                    log.seek(self._offsets[name])
                    data = log.read()
            except FileNotFoundError:
                continue  # not launched yet
            except OSError as error:
                if name not in self._unreadable:
                    self._unreadable.add(name)
                    _log.warning("cannot read the log of %s (%s): %s", name, path, error)
                continue
            self._offsets[name] += len(data)
            *lines, rest = (self._partial[name] + data).split(b"\n")
            self._partial[name] = rest
            if final and rest:
                lines.append(rest)
                self._partial[name] = b""
            for raw in lines:
                text = raw.removesuffix(b"\r").decode("utf-8", "replace")
                self._emit(f"{name.ljust(self._width)} | {text}")
