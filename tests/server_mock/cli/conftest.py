"""Fixtures of the command-line tests: a real `clara-mock serve` process."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _cli_helpers import CLI, PROCESS_WAIT, Served, read_until, stop_process


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """A real `clara-mock serve --port 0`, operators in ``tmp_path``; stopped at teardown."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("CLARA_MOCK_ADDRESS", None)
    process = subprocess.Popen(
        [
            *CLI,
            "serve",
            "--port",
            "0",
            "--operators-dir",
            str(tmp_path),
            "--workspace",
            str(tmp_path / "workspace"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = read_until(process, "listening on", PROCESS_WAIT)
        address = line.strip().rsplit(" ", 1)[1]
        yield Served(process, address, tmp_path)
    finally:
        stop_process(process)
