"""`clara-mock run` on a terminal: a live table updated in place (a real process on a pty)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
import uuid
from pathlib import Path

from _cli_helpers import CLI, PROCESS_WAIT, make_input, write_pipeline

from server_mock._cli.progress import Transition, TransitionTracker, shorten
from server_mock._jobs import JobState, StageState
from server_mock._platform import JobSnapshot, StageSnapshot

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CURSOR_UP_AND_ERASE = "\x1b[1A\x1b[2K"


def run_on_a_terminal(tmp_path: Path) -> tuple[int, str]:
    """Run a two-stage pipeline with stdout and stderr on a pseudo-terminal; return all shown."""
    pipeline = write_pipeline(tmp_path, [("slow", "slow"), ("after", "count")], chain=True)
    inputs = make_input(tmp_path / "in", {"a.txt": "a"})
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        [*CLI, "run", str(pipeline), "--input", str(inputs), "--output", str(tmp_path / "out")],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"},
        cwd=tmp_path,
    )
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + PROCESS_WAIT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process closed its side
                break
            if not chunk:
                break
            shown += chunk
        code = process.wait(PROCESS_WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(PROCESS_WAIT)
        os.close(master)
    return code, shown.decode("utf-8", "replace")


def test_the_table_updates_in_place_with_the_running_time_ticking(tmp_path: Path) -> None:
    code, shown = run_on_a_terminal(tmp_path)

    assert code == 0, shown
    frames = [ANSI.sub("", frame) for frame in shown.split(CURSOR_UP_AND_ERASE)]
    assert len(frames) > 5, shown  # redrawn in place, not appended
    ticks = [
        float(seconds)
        for frame in frames
        for seconds in re.findall(r"│ slow\s+│ running\s+│\s+(\d+\.\d)s", frame)
    ]
    assert len(set(ticks)) >= 3 and ticks == sorted(ticks), ticks  # the time goes on, live
    last = frames[-1]
    assert re.search(r"│ slow\s+│ succeeded\s+│\s+\d+\.\ds\s+│\s+0\s+│ all callbacks", last), last
    assert re.search(r"│ after\s+│ succeeded\s+│", last), last
    assert "job test-pipeline: succeeded" in last
    assert "] slow: running" not in shown  # no appended progress lines on a terminal
    assert "output file(s) written to" in last


def snapshot(stage: StageSnapshot) -> JobSnapshot:
    return JobSnapshot(
        job_id=uuid.uuid4(),
        name="j",
        state=JobState.SUCCEEDED if stage.state.terminal else JobState.RUNNING,
        message="",
        stages={stage.name: stage},
    )


def test_a_stage_seen_only_once_it_ended_still_shows_it_ran() -> None:
    tracker = TransitionTracker(started=100.0)
    waiting = StageSnapshot("quick", StageState.WAITING, "", 0, (), None, None)
    done = StageSnapshot(
        "quick", StageState.SUCCEEDED, "ok", 1, ("execute_started",), 100.5, 100.53
    )

    assert [t.state for t in tracker.changes(snapshot(waiting), now=100.1)] == ["waiting"]
    running, succeeded = tracker.changes(snapshot(done), now=101.0)

    assert running == Transition(0.5, "quick", "running", "", None)
    assert (succeeded.state, succeeded.message) == ("succeeded", "ok")
    assert succeeded.at == 100.53 - 100.0
    assert round(succeeded.duration or 0, 2) == 0.03  # from when it began running


def test_shorten_keeps_one_line_and_the_pointer_to_the_log() -> None:
    assert shorten("a\n  b\tc", 10) == "a b c"
    assert shorten("x" * 50, 10) == "x" * 9 + "…"
    cut = shorten("failed: " + "why " * 30 + "(see out/logs/op.log)", 40)
    assert len(cut) <= 40 and cut.endswith("… (see out/logs/op.log)")
