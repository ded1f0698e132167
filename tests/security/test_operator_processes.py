"""Nothing an operator starts outlives it: its process group and session (process runner), its
PID namespace (sandbox), when it ends by itself and when the platform stops it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from _launch import LINGERER, WAIT, driver_operator, listener, pipeline, platform

from server_mock import JobState
from server_mock._client import PlatformClient
from server_mock._runner import RunnerTimeouts
from server_mock._sandbox import bwrap_problem

# Leaves the operator's process group (but not its session), then lingers.
REGROUP = textwrap.dedent(
    """
    import os, sys
    os.setpgid(0, 0)
    os.execv(sys.executable, [sys.executable, "lingerer.py", sys.argv[1]])
    """
)
SPAWN = """
import subprocess, sys
for script, tag in (("lingerer.py", "group"), ("regroup.py", "session")):
    child = subprocess.Popen([sys.executable, script, tag], stdout=subprocess.PIPE)
    child.stdout.readline()  # connected
"""
OPERATORS = {"lingerer.py": LINGERER, "regroup.py": REGROUP}
RUNNERS = ["process", "sandbox"]


def needs(runner: str) -> None:
    if runner == "sandbox":
        assert bwrap_problem() is None, f"the sandbox tests need bubblewrap: {bwrap_problem()}"


@pytest.mark.parametrize("runner", RUNNERS)
def test_what_an_operator_started_ends_with_it(tmp_path: Path, runner: str) -> None:
    needs(runner)
    with listener() as server, platform(tmp_path, OPERATORS, runner=runner) as running:
        definition = pipeline(
            driver_operator(
                "spawner", SPAWN, "input: [{path: /input}]", {"LISTENER": server.address}
            )
        )
        job_id = running.submit(definition)
        first, second = server.accept(), server.accept()
        assert sorted(hello.split()[-1] for _, hello in (first, second)) == ["group", "session"]
        job = running.mock.wait_for_job(job_id, WAIT)
        assert job.state is JobState.SUCCEEDED, job.message
        assert running.mock.call_async(lambda: running.launcher.wait_idle(WAIT), WAIT + 5)
        # Both ignore SIGTERM; both are gone once the operator's main process ended.
        assert server.closed(first[0]) and server.closed(second[0])


HANG = """
import threading
threading.Event().wait()  # never returns: only the platform can end this stage
"""


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_cancelled_operator_is_stopped_with_everything_it_started(
    tmp_path: Path, runner: str
) -> None:
    needs(runner)
    timeouts = RunnerTimeouts(timeout_grace=1, exit_grace=0.5, kill_grace=0.5)
    with (
        listener() as server,
        platform(tmp_path, OPERATORS, runner=runner, timeouts=timeouts) as running,
    ):
        definition = pipeline(
            driver_operator(
                "stuck", SPAWN + HANG, "input: [{path: /input}]", {"LISTENER": server.address}
            )
        )
        job_id = running.submit(definition)
        first, second = server.accept(), server.accept()
        with PlatformClient(running.mock.address) as client:
            client.cancel_job(job_id, "test over")
        assert running.mock.wait_for_job(job_id, WAIT).state is JobState.CANCELLED
        assert running.mock.call_async(lambda: running.launcher.wait_idle(WAIT), WAIT + 5)
        assert server.closed(first[0]) and server.closed(second[0])
