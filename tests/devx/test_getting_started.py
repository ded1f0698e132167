"""docs/getting-started.md, followed literally: every command of the guide, run in order.

The guide is read as a reader reads it: a block after ``<!-- file: NAME -->`` is saved as NAME
in the current folder, every ``sh`` block is run with bash (stopping at the first failure)
in the folder the previous block ended in, a block marked ``<!-- guide-test: background -->``
(the "second terminal") runs alongside the next ones until the end, and one marked
``<!-- guide-test: skip ... -->`` is not run. The skipped one is the install: the commands run
in this test's own virtual environment (put first on PATH, as activating it does), which has
the project installed already, rather than installing it again.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "getting-started.md"
BLOCK_WAIT = 120.0
SERVE_WAIT = 60.0

_BLOCK = re.compile(r"(?:<!-- (?P<marker>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)


@dataclass(frozen=True)
class Block:
    """A fenced block of the guide and the marker before it (if any)."""

    lang: str
    body: str
    marker: str


def guide_blocks() -> list[Block]:
    return [
        Block(m["lang"], m["body"], m["marker"] or "") for m in _BLOCK.finditer(GUIDE.read_text())
    ]


def guide_env(address: str) -> dict[str, str]:
    """The environment of the guide's shell: this venv activated, no stray Clara variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NVIDIA_CLARA_", "CLARA_"))}
    venv_bin = Path(sys.executable).parent
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = sys.prefix
    env["CLARA_MOCK_ADDRESS"] = address  # a free port, not the default 50051 a user would get
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def wait_for_line(process: subprocess.Popen[str], wanted: str, timeout: float) -> str:
    assert process.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while wanted not in seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {wanted!r} within {timeout} s: {seen}"
            if selector.select(remaining):
                line = process.stdout.readline()
                assert line, f"the background block ended: {seen}"
                seen += line
    return seen


def test_the_guide_runs_as_written(tmp_path: Path) -> None:
    blocks = guide_blocks()
    markers = [b.marker.split()[1] for b in blocks if b.marker.startswith("guide-test:")]
    assert markers == ["skip", "background"]  # only the install is skipped
    env = guide_env(free_address())
    cwd = tmp_path / "clone"  # the reader starts in the clone (installed: see the docstring)
    cwd.mkdir()
    where = tmp_path / "cwd.txt"
    background: list[subprocess.Popen[str]] = []
    transcript: list[str] = []
    try:
        for block in blocks:
            if block.marker.startswith("file: "):
                (cwd / block.marker.removeprefix("file: ")).write_text(block.body)
            elif block.lang != "sh" or block.marker.startswith("guide-test: skip"):
                continue
            elif block.marker.startswith("guide-test: background"):
                process = subprocess.Popen(
                    ["bash", "-c", block.body],
                    cwd=cwd,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,  # its own process group, as a terminal's job
                )
                background.append(process)
                transcript.append(wait_for_line(process, "listening on", SERVE_WAIT))
            else:
                script = f"set -euo pipefail\n{block.body}\npwd > {where}\n"
                done = subprocess.run(
                    ["bash", "-c", script],
                    cwd=cwd,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=BLOCK_WAIT,
                    check=False,
                )
                transcript.append(f"$ {block.body}{done.stdout}{done.stderr}")
                assert done.returncode == 0, "\n".join(transcript)
                cwd = Path(where.read_text().strip())
        for process in background:  # Ctrl-C in the second terminal
            os.killpg(process.pid, signal.SIGINT)
            assert process.wait(SERVE_WAIT) == 0
    finally:
        for process in background:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(SERVE_WAIT)
            if process.stdout is not None:
                process.stdout.close()

    folder = tmp_path / "count-files"  # where the guide works, beside the clone
    assert cwd == folder
    text = "\n".join(transcript)
    assert (folder / "out" / "count.txt").read_text() == "3\n"  # standalone: empty file too
    assert (folder / "results" / "count-files" / "count.txt").read_text() == "3\n"
    assert "counted 3 file(s)" in (folder / "results" / "logs" / "count-files.log").read_text()
    assert "3 passed" in text  # the guide's tests
    assert (folder / "served-results" / "count-files" / "count.txt").read_text() == "3\n"
    assert "STOPPED HEALTHY: count-files COMPLETED" in text
