"""Failpoints kill the process for real where they are armed, and do nothing elsewhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from server_mock._failpoints import ENV_FAILPOINTS

PROGRAM = """
from server_mock._failpoints import failpoint
for step in range(3):
    failpoint("step")
    failpoint("other")
    print("passed", step, flush=True)
"""


def run(armed: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_FAILPOINTS}
    if armed is not None:
        env[ENV_FAILPOINTS] = armed
    return subprocess.run(
        [sys.executable, "-c", PROGRAM],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_unarmed_failpoint_does_nothing() -> None:
    result = run(None)
    assert result.returncode == 0
    assert result.stdout.split("\n")[:3] == ["passed 0", "passed 1", "passed 2"]


def test_an_armed_failpoint_kills_the_process_at_its_nth_hit() -> None:
    result = run("unrelated, step@2")
    assert result.returncode == -signal.SIGKILL
    assert result.stdout == "passed 0\n"
    assert "failpoint step reached: killing this process" in result.stderr


def test_a_failpoint_without_a_count_kills_at_its_first_hit() -> None:
    result = run("other")
    assert result.returncode == -signal.SIGKILL
    assert result.stdout == ""
