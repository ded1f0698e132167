"""How ``clara-mock run`` shows a job's progress: a live table, or appended lines.

On a terminal, a table (drawn with ``rich``) is updated in place: one row per stage, its state,
the time since it began running (ticking while it runs), its exit code and its message, cut
with an ellipsis to fit. Elsewhere (CI logs, pipes) each change of a stage is one appended line.
Either way every change is also written whole to the run's log (:class:`RunLog`).

A stage "began running" when the platform made it ready (its inputs are complete and its
operator was told to execute), so every duration counts from then. A stage that ran so briefly
that no snapshot caught it running still gets its ``running`` line, at the time it began.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from server_mock._jobs import StageState
from server_mock._platform import JobSnapshot, StageSnapshot

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = [
    "LineProgress",
    "LiveProgress",
    "RunLog",
    "Transition",
    "TransitionTracker",
    "display_state",
    "shorten",
    "summary_table",
]

MESSAGE_WIDTH = 100
"""Characters of a stage's message shown on one progress line or summary row."""
REFRESH_PER_SECOND = 8

_WHITESPACE = re.compile(r"\s+")
_POINTER = re.compile(r" ?\(see [^()]+\)$")


def shorten(text: str, width: int, ellipsis: str = "…") -> str:
    """``text`` on one line (runs of whitespace become one space), cut to ``width``.

    A closing ``(see PATH)`` is kept whole: it is where the rest of the story is.
    """
    flat = _WHITESPACE.sub(" ", text).strip()
    if len(flat) <= width:
        return flat
    pointer = _POINTER.search(flat)
    tail = pointer.group(0) if pointer else ""
    room = max(width - len(ellipsis) - len(tail), 0)
    return flat[: len(flat) - len(tail)][:room].rstrip() + ellipsis + tail


def display_state(stage: StageSnapshot) -> str:
    """The state shown for a stage: waiting, preparing, running, or how it ended."""
    if stage.state is StageState.READY:
        return "running"
    if stage.state is StageState.WAITING:
        return "preparing" if "prepare_started" in stage.events else "waiting"
    return str(stage.state.value).replace("_", " ")


def run_time(stage: StageSnapshot, now: float) -> float | None:
    """Seconds since the stage began running (until it ended), or None if it never ran."""
    if stage.ready_at is None:
        return None
    return (stage.ended_at if stage.ended_at is not None else now) - stage.ready_at


@dataclass(frozen=True, slots=True)
class Transition:
    """A stage's shown state changed.

    Attributes:
        at: When, in seconds since the run began.
        stage: The stage.
        state: The state now shown (see :func:`display_state`).
        message: The stage's message (set once it ended).
        duration: For an ended stage that ran: how long it ran, in seconds.
    """

    at: float
    stage: str
    state: str
    message: str
    duration: float | None

    def line(self, message_width: int | None, ellipsis: str = "…") -> str:
        """The transition as one progress line (the message cut to ``message_width``)."""
        text = f"[{self.at:7.2f}s] {self.stage}: {self.state}"
        if self.duration is not None:
            text += f" in {self.duration:.2f}s"
        if self.message:
            message = (
                self.message
                if message_width is None
                else shorten(self.message, message_width, ellipsis)
            )
            text += f" ({message})"
        return text


class TransitionTracker:
    """Turns successive job snapshots into the stage transitions not shown yet.

    Args:
        started: When the run began (``time.time()``).
    """

    def __init__(self, started: float) -> None:
        self._started = started
        self._shown: dict[str, str] = {}

    def changes(self, job: JobSnapshot, now: float | None = None) -> list[Transition]:
        """The transitions since the last call, in stage order."""
        moment = time.time() if now is None else now
        found: list[Transition] = []
        for name, stage in job.stages.items():
            state = display_state(stage)
            before = self._shown.get(name)
            if before == state:
                continue
            self._shown[name] = state
            if stage.state.terminal and stage.ready_at is not None and before != "running":
                # It ran between two snapshots: show that it did, at the time it began.
                found.append(Transition(stage.ready_at - self._started, name, "running", "", None))
            if stage.state.terminal:
                at = (stage.ended_at or moment) - self._started
                found.append(Transition(at, name, state, stage.message, run_time(stage, moment)))
            elif state == "running" and stage.ready_at is not None:
                found.append(Transition(stage.ready_at - self._started, name, state, "", None))
            else:
                found.append(Transition(moment - self._started, name, state, "", None))
        return found


def summary_table(
    job: JobSnapshot,
    exit_codes: Mapping[str, int],
    message_width: int | None = MESSAGE_WIDTH,
    ellipsis: str = "…",
) -> str:
    """The end-of-run table: each stage's state, run time, exit code and message."""
    rows = [("STAGE", "STATE", "DURATION", "EXIT", "MESSAGE")]
    for name, stage in job.stages.items():
        duration = run_time(stage, time.time()) if stage.state.terminal else None
        code = exit_codes.get(name)
        message = stage.message
        if message_width is not None:
            message = shorten(message, message_width, ellipsis)
        rows.append(
            (
                name,
                stage.state.value,
                "-" if duration is None else f"{duration:.2f}s",
                "-" if code is None else str(code),
                message,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        (
            "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
        ).rstrip()
        for row in rows
    ]
    lines.append(f"job {job.name} ({job.job_id}): {job.state.value}")
    return "\n".join(lines)


class RunLog:
    """The run's own log, ``<output>/run.log``: every line of the run, messages whole.

    Args:
        path: The file; created (with its folder), appended to.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        """Append ``text`` and a newline."""
        with self._lock:
            self._file.write(text + "\n")
            self._file.flush()

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._file.close()


class LineProgress:
    """What ``run`` shows while the job runs, as appended lines (CI logs, pipes, files).

    Args:
        out: Where to show it.
        started: When the run began (``time.time()``).
        message: Rewrites a stage's message for display (e.g. log paths), or None.
    """

    def __init__(
        self, out: TextIO, started: float, message: Callable[[str], str] | None = None
    ) -> None:
        self.out = out
        self.started = started
        self._message = message or (lambda text: text)
        self._lock = threading.Lock()
        self.ellipsis = _ellipsis_for(out)
        self.run_log: RunLog | None = None

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop showing progress (the live table stays on screen as it last was)."""

    def show_message(self, text: str) -> str:
        """A stage's message as shown (and logged)."""
        return self._message(text)

    def note(self, text: str) -> None:
        """Show one line (and log it)."""
        self._emit(text, text)

    def operator_line(self, text: str) -> None:
        """Show a line of an operator's output (``--stream-logs``); not logged again."""
        with self._lock:
            print(text, file=self.out, flush=True)

    def update(self, job: JobSnapshot, transitions: list[Transition]) -> None:
        """Show the job as it is now; ``transitions`` are the changes since the last update."""
        for change in transitions:
            shown = self._shown(change)
            self._emit(shown.line(MESSAGE_WIDTH, self.ellipsis), shown.line(None))

    def finish(self, job: JobSnapshot, exit_codes: Mapping[str, int]) -> None:
        """Show the end-of-run summary."""
        shown = _with_messages(job, self.show_message)
        self._emit(
            summary_table(shown, exit_codes, MESSAGE_WIDTH, self.ellipsis),
            summary_table(shown, exit_codes, None),
        )

    def _shown(self, change: Transition) -> Transition:
        return dataclasses.replace(change, message=self.show_message(change.message))

    def _emit(self, shown: str, logged: str) -> None:
        with self._lock:
            print(shown, file=self.out, flush=True)
        if self.run_log is not None:
            self.run_log.write(logged)


class LiveProgress(LineProgress):
    """A table on the terminal, updated in place (``rich``), ticking while stages run."""

    def __init__(
        self, out: TextIO, started: float, message: Callable[[str], str] | None = None
    ) -> None:
        super().__init__(out, started, message)
        # Imported here: rich is needed only on a terminal, and `run` in CI stays light.
        from rich.console import Console  # noqa: PLC0415
        from rich.live import Live  # noqa: PLC0415

        self._job: JobSnapshot | None = None
        self._exit_codes: Mapping[str, int] = {}
        self._console = Console(file=out, highlight=False)
        self._live = Live(
            console=self._console,
            get_renderable=self._render,
            refresh_per_second=REFRESH_PER_SECOND,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def __enter__(self) -> LiveProgress:
        self._live.start()
        return self

    def close(self) -> None:
        """Draw the table a last time and leave it on screen."""
        self._live.stop()

    def note(self, text: str) -> None:
        """Print a line above the table (and log it)."""
        self._console.print(text, markup=False, highlight=False)
        if self.run_log is not None:
            self.run_log.write(text)

    def operator_line(self, text: str) -> None:
        """Print a line of an operator's output above the table."""
        self._console.print(text, markup=False, highlight=False)

    def update(self, job: JobSnapshot, transitions: list[Transition]) -> None:
        """Show ``job`` in the table; log the transitions whole."""
        self._job = job
        if self.run_log is not None:
            for change in transitions:
                self.run_log.write(self._shown(change).line(None))
        self._live.refresh()

    def finish(self, job: JobSnapshot, exit_codes: Mapping[str, int]) -> None:
        """Show the final table (with exit codes); log the summary whole."""
        self._job = job
        self._exit_codes = dict(exit_codes)
        self._live.refresh()
        if self.run_log is not None:
            self.run_log.write(
                summary_table(_with_messages(job, self.show_message), exit_codes, None)
            )

    def _render(self) -> RenderableType:
        from rich.console import Group  # noqa: PLC0415
        from rich.table import Table  # noqa: PLC0415
        from rich.text import Text  # noqa: PLC0415

        job = self._job
        if job is None:
            return Text("starting the job…")
        now = time.time()
        end = max((s.ended_at or now) for s in job.stages.values()) if job.state.terminal else now
        heading = Text(f"job {job.name}: {job.state.value}, {end - self.started:.1f}s")
        table = Table(expand=False)
        table.add_column("STAGE", no_wrap=True)
        table.add_column("STATE", no_wrap=True)
        table.add_column("TIME", justify="right", no_wrap=True)
        table.add_column("EXIT", justify="right", no_wrap=True)
        table.add_column("MESSAGE", no_wrap=True, overflow="ellipsis", max_width=MESSAGE_WIDTH)
        for name, stage in job.stages.items():
            state = display_state(stage)
            ran = run_time(stage, now)
            code = self._exit_codes.get(name)
            table.add_row(
                name,
                Text(state, style=_STYLES.get(state, "")),
                "-" if ran is None else f"{ran:.1f}s",
                "-" if code is None else str(code),
                shorten(self.show_message(stage.message), MESSAGE_WIDTH),
            )
        return Group(heading, table)


_STYLES = {
    "preparing": "cyan",
    "running": "bold yellow",
    "succeeded": "green",
    "failed": "bold red",
    "timed out": "bold red",
    "cancelled": "magenta",
}


def _with_messages(job: JobSnapshot, rewrite: Callable[[str], str]) -> JobSnapshot:
    return dataclasses.replace(
        job,
        stages={
            name: dataclasses.replace(stage, message=rewrite(stage.message))
            for name, stage in job.stages.items()
        },
    )


def _ellipsis_for(out: Any) -> str:
    """``…`` where the stream can encode it, else ``...``."""
    try:
        "…".encode(getattr(out, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return "..."
    return "…"
