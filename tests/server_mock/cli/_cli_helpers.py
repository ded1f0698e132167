"""Helpers of the command-line tests: pipelines of small operators, real processes."""

from __future__ import annotations

import io
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from server_mock._cli import main

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "volume_segmentation"
CLI = [sys.executable, "-m", "server_mock"]
PROCESS_WAIT = 60.0

# Operators: each is a script; `python NAME.py` in the pipeline's folder runs it.
OPERATORS = {
    # Counts its input files (empty ones too) into count.txt and says hello.
    "count": """
        import sys
        from pathlib import Path
        import clara

        def execute(driver, payload):
            source, target = Path(payload.input().path), Path(payload.output().path)
            names = sorted(p.name for p in source.rglob("*") if p.is_file())
            (target / "count.txt").write_text(f"{len(names)}\\n")
            print("hello from", driver.stage_name, "counted", ",".join(names), flush=True)
            return True

        driver = clara.Driver(execute=execute)
        driver.start()
        sys.exit(0 if driver.wait_for_completion().succeeded else 1)
    """,
    # Dies before reporting anything.
    "crash": """
        import sys
        print("crash: about to exit with code 3", file=sys.stderr, flush=True)
        sys.exit(3)
    """,
    # Fails with a long message.
    "long_message": """
        import sys
        import clara

        def execute(driver, payload):
            raise ValueError("the start of a long story " + "and so on " * 40 + "THE END")

        driver = clara.Driver(execute=execute)
        driver.start()
        sys.exit(0 if driver.wait_for_completion().succeeded else 1)
    """,
    # Says it is ready (with its pid, into pids/), then works until cancelled.
    "sleeper": """
        import os, sys, time
        from pathlib import Path
        import clara

        def execute(driver, payload):
            Path("pids", driver.stage_name).write_text(str(os.getpid()))
            print("ready", os.getpid(), flush=True)
            deadline = time.monotonic() + 300
            while not driver.cancel_requested and time.monotonic() < deadline:
                time.sleep(0.05)
            return True

        driver = clara.Driver(execute=execute)
        driver.start()
        sys.exit(0 if driver.wait_for_completion().succeeded else 1)
    """,
    # Not a driver: ignores SIGTERM and never reports.
    "stubborn": """
        import os, signal, sys, time
        from pathlib import Path
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        Path("pids", "stubborn").write_text(str(os.getpid()))
        print("ready", os.getpid(), flush=True)
        time.sleep(300)
    """,
    # Runs for a while, so a display can show its time ticking.
    "slow": """
        import sys, time
        import clara

        def execute(driver, payload):
            time.sleep(2.5)
            return True

        driver = clara.Driver(execute=execute)
        driver.start()
        sys.exit(0 if driver.wait_for_completion().succeeded else 1)
    """,
}


def write_pipeline(
    folder: Path, stages: list[tuple[str, str]], name: str = "test-pipeline", chain: bool = False
) -> Path:
    """A pipeline of (stage name, operator script) in ``folder``; returns its file.

    Stages read the job's input, or (``chain``) the previous stage's output.
    """
    lines = ["api-version: 0.4.0", f"name: {name}", "operators:"]
    previous = None
    for stage, script in stages:
        (folder / f"{script}.py").write_text(textwrap.dedent(OPERATORS[script]))
        source = f"{{from: {previous}, path: /input}}" if chain and previous else "{path: /input}"
        lines += [
            f"- name: {stage}",
            f"  container: {{image: test/{script}, command: [python, {script}.py]}}",
            f"  input: [{source}]",
            "  output: [{path: /output}]",
        ]
        previous = stage
    (folder / "pids").mkdir(exist_ok=True)
    path = folder / "pipeline.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_input(folder: Path, files: dict[str, str]) -> Path:
    """An input folder with these files (text; "" makes an empty file)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def run_cli(*argv: str) -> tuple[int, str]:
    """``clara-mock ARGV`` in this process; returns the exit code and what it printed."""
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def cli_process(*argv: str, **options: object) -> subprocess.CompletedProcess[str]:
    """``clara-mock ARGV`` as a process of its own (stdout and stderr captured)."""
    return subprocess.run(
        [*CLI, *argv],
        capture_output=True,
        text=True,
        timeout=PROCESS_WAIT,
        check=False,
        **options,  # type: ignore[call-overload]
    )


def read_until(process: subprocess.Popen[str], wanted: str, timeout: float) -> str:
    """Read the process's stdout until a line containing ``wanted``; return all read so far.

    Raises:
        AssertionError: The process ended, or ``timeout`` passed, first.
    """
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {wanted!r} within {timeout} s; got:\n{''.join(seen)}"
            if not selector.select(remaining):
                continue
            line = process.stdout.readline()
            assert line, f"the process ended before {wanted!r}; got:\n{''.join(seen)}"
            seen.append(line)
            if wanted in line:
                return "".join(seen)


def stop_process(process: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL if it lingers; close its pipes."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(PROCESS_WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(PROCESS_WAIT)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


@dataclass
class Served:
    """A `clara-mock serve` process and the address it listens on."""

    process: subprocess.Popen[str]
    address: str
    folder: Path


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
