"""The sandboxed runner: declared paths, read-only inputs, a private /tmp, nothing left behind.

Every test runs real operator processes in real bubblewrap sandboxes; CI installs bubblewrap
(``.ci/run``). Without it, these tests fail at their first line, saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _launch import (
    DRIVER_OPERATOR,
    LINGERER,
    WAIT,
    Platform,
    driver_operator,
    listener,
    pipeline,
    platform,
)

from server_mock import JobState
from server_mock._client import PlatformApiError, PlatformClient
from server_mock._sandbox import bwrap_problem

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sandboxed(tmp_path: Path) -> Iterator[Platform]:
    assert bwrap_problem() is None, f"the sandbox tests need bubblewrap: {bwrap_problem()}"
    with platform(
        tmp_path,
        {"lingerer.py": LINGERER, "detach.py": DETACH},
        runner="sandbox",
    ) as running:
        assert running.launcher.runner == "sandbox"
        yield running


# Forks a grandchild that leaves the session (setsid) and lingers.
DETACH = textwrap.dedent(
    """
    import os, sys
    if os.fork() == 0:
        os.setsid()
        os.execv(sys.executable, [sys.executable, "lingerer.py", sys.argv[1]])
    """
)


def test_an_operator_reads_and_writes_its_declared_paths_directly(sandboxed: Platform) -> None:
    first = driver_operator(
        "first",
        """
        import os, pathlib
        assert payload.input().path == "/input" and os.environ["NVIDIA_CLARA_INPUT"] == "/input"
        text = pathlib.Path("/input/in.txt").read_text()
        pathlib.Path("/output/a.txt").write_text(text.upper())
        """,
        """
        input: [{path: /input}]
        output: [{name: data, path: /output}]
        """,
    )
    second = driver_operator(
        "second",
        """
        import pathlib
        both = [pathlib.Path(p).read_text() for p in ("/input/in.txt", "/input/first/a.txt")]
        pathlib.Path("/results/both.txt").write_text("".join(both))
        """,
        """
        input: [{path: /input}, {from: first, name: data, path: /input/first}]
        output: [{path: /results}]
        """,
    )
    run = sandboxed.run(pipeline(first + second), {"in.txt": "hello\n"})
    assert run.job.state is JobState.SUCCEEDED, (run.job.message, run.logs)
    assert (run.output("first", "data") / "a.txt").read_text() == "HELLO\n"
    assert (run.output("second") / "both.txt").read_text() == "hello\nHELLO\n"


def test_writing_into_an_input_fails(sandboxed: Platform) -> None:
    code = """
    import errno, json, os, pathlib
    tried = {}
    for what, attempt in {
        "create": lambda: open("/input/new.txt", "w"),
        "overwrite": lambda: open("/input/in.txt", "a"),
        "delete": lambda: os.remove("/input/in.txt"),
    }.items():
        try:
            attempt()
            tried[what] = "allowed"
        except OSError as error:
            tried[what] = errno.errorcode[error.errno]
    pathlib.Path("/output/tried.json").write_text(json.dumps(tried))
    """
    run = sandboxed.run(
        pipeline(driver_operator("reader", code)),
        {"in.txt": "keep me\n"},
    )
    assert run.job.state is JobState.SUCCEEDED, (run.job.message, run.logs)
    tried = json.loads((run.output("reader") / "tried.json").read_text())
    assert tried == {"create": "EROFS", "overwrite": "EROFS", "delete": "EROFS"}
    assert sorted(p.name for p in run.layout.input_dir.iterdir()) == ["in.txt"]
    assert (run.layout.input_dir / "in.txt").read_text() == "keep me\n"


def test_the_publishing_log_and_outbox_folders_it_is_given_are_writable(
    sandboxed: Platform,
) -> None:
    code = """
    import os, pathlib
    pathlib.Path(os.environ["NVIDIA_CLARA_PUBLISHING"], "render.txt").write_text("published")
    pathlib.Path(os.environ["NVIDIA_CLARA_LOGS"], "extra.log").write_text("noted")
    pathlib.Path(os.environ["NVIDIA_CLARA_OUTBOX"], "probe.txt").write_text("writable")
    """
    run = sandboxed.run(pipeline(driver_operator("publisher", code)))
    assert run.job.state is JobState.SUCCEEDED, (run.job.message, run.logs)
    published = run.layout.publishing_dir("publisher") / "render.txt"
    assert published.read_text() == "published"
    assert (run.layout.logs_dir / "extra.log").read_text() == "noted"
    assert (run.layout.outbox_dir("publisher") / "probe.txt").read_text() == "writable"


def test_its_tmp_is_not_the_hosts(sandboxed: Platform) -> None:
    with tempfile.NamedTemporaryFile(dir="/tmp", prefix="clara-host-") as host_file:
        written = f"/tmp/clara-operator-{uuid.uuid4().hex}"
        code = f"""
        import json, os, pathlib
        pathlib.Path({written!r}).write_text("inside")
        seen = {{"host_file": os.path.exists({host_file.name!r}), "dev": os.stat("/tmp").st_dev}}
        pathlib.Path("/output/tmp.json").write_text(json.dumps(seen))
        """
        run = sandboxed.run(pipeline(driver_operator("tmp", code)))
        assert run.job.state is JobState.SUCCEEDED, (run.job.message, run.logs)
        seen = json.loads((run.output("tmp") / "tmp.json").read_text())
        assert seen["host_file"] is False
        assert seen["dev"] != os.stat("/tmp").st_dev
        assert not os.path.exists(written)


def test_a_forked_detached_grandchild_is_gone_when_the_stage_ends(sandboxed: Platform) -> None:
    with listener() as server:
        code = """
        import subprocess, sys
        argv = [sys.executable, "detach.py", "grandchild"]
        detach = subprocess.Popen(argv, stdout=subprocess.PIPE)
        detach.stdout.readline()  # the grandchild is connected
        detach.wait()
        """
        definition = pipeline(
            driver_operator("parent", code, "input: [{path: /input}]", {"LISTENER": server.address})
        )
        job_id = sandboxed.submit(definition)
        connection, hello = server.accept()
        assert hello.startswith("alive ") and hello.endswith(" grandchild")
        job = sandboxed.mock.wait_for_job(job_id, WAIT)
        assert job.state is JobState.SUCCEEDED, job.message
        assert sandboxed.mock.call_async(lambda: sandboxed.launcher.wait_idle(WAIT), WAIT + 5)
        # The grandchild left the operator's session and ignores SIGTERM, yet it is gone: the
        # kernel closed its connection when the sandbox's PID namespace ended.
        assert server.closed(connection)


def test_a_declared_path_on_a_system_folder_is_refused_before_the_job_starts(
    sandboxed: Platform,
) -> None:
    definition = pipeline(
        driver_operator("bad", "pass", "input: [{path: /input}]\noutput: [{path: /usr/out}]\n")
    )
    with pytest.raises(PlatformApiError, match=r"operator 'bad': output path '/usr/out' collides"):
        sandboxed.submit(definition)
    jobs = sandboxed.mock.call(sandboxed.mock.jobs.all)
    assert [job.state for job in jobs] == [JobState.CREATED]


SEEN_OPERATOR = textwrap.dedent(
    """
    import json, os, pathlib, socket, sys, clara

    def execute(driver, payload):
        paths = json.loads(os.environ["CHECK_PATHS"])
        seen = {p: sorted(os.listdir(p)) if os.path.isdir(p) else os.path.exists(p) for p in paths}
        seen["home"] = sorted(os.listdir(os.environ["HOME"]))
        (pathlib.Path(payload.output().path) / "seen.json").write_text(json.dumps(seen))
        host, port = os.environ["LISTENER"].rsplit(":", 1)
        with socket.create_connection((host, int(port))) as done:
            done.sendall(b"done\\n")
        return True

    driver = clara.Driver(execute=execute)
    driver.start()
    sys.exit(0 if driver.wait_for_completion().succeeded else 1)
    """
)


def serve(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVIDIA_CLARA_")}
    return subprocess.Popen(
        [sys.executable, "-m", "server_mock", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )


def test_other_jobs_folders_and_the_state_file_are_not_visible_inside(tmp_path: Path) -> None:
    assert bwrap_problem() is None, f"the sandbox tests need bubblewrap: {bwrap_problem()}"
    operators = tmp_path / "ops"
    operators.mkdir()
    (operators / "seen.py").write_text(SEEN_OPERATOR)
    state = operators / "state.db"  # inside the operators folder, which every sandbox shows
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.txt").write_text("x")
    process = serve("--state", str(state), "--operators-dir", str(operators))
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("clara-mock listening on "), line
        with PlatformClient(line.split()[-1]) as client, listener() as done:
            payload_id = client.create_payload()
            client.upload_folder(payload_id, tmp_path / "in")
            first = start_seen_job(client, tmp_path, payload_id, [], done.address)
            assert done.accept()[1] == "done"
            payloads = Path(f"{state}.workspace", "payloads")
            first_root = payloads / client.job_status(first).payload_id.hex
            assert (first_root / "input" / "data.txt").is_file()
            checks = [
                str(first_root),
                str(first_root / "input" / "data.txt"),
                str(first_root / "operators" / "only" / "seen.json"),
                str(state),
                str(ROOT / "pyproject.toml"),
                str(payloads),
                "/input/data.txt",  # its own input: visible
            ]
            second = start_seen_job(client, tmp_path, payload_id, checks, done.address)
            assert done.accept()[1] == "done"
            second_root = payloads / client.job_status(second).payload_id.hex
        seen = json.loads((second_root / "operators" / "only" / "seen.json").read_text())
    finally:
        process.terminate()
        process.wait(WAIT)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    assert seen.pop("/input/data.txt") is True
    # Its own job's log folder lives in the workspace: only the path to it shows there.
    assert seen.pop(str(payloads)) == [second_root.name]
    home = seen.pop("home")
    assert seen == dict.fromkeys(checks[:-2], False)
    # The home is a private tmpfs: at most the folders the Python runtime needs show in it.
    assert set(home) <= {".pyenv", ".local"}, home


def start_seen_job(
    client: PlatformClient,
    tmp_path: Path,
    payload_id: uuid.UUID,
    checks: list[str],
    listener_address: str,
) -> uuid.UUID:
    definition = tmp_path / f"seen-{uuid.uuid4().hex[:6]}.yaml"
    definition.write_text(
        pipeline(
            f"""
            - name: only
              container: {{image: t/seen, command: [python, seen.py]}}
              variables:
                CHECK_PATHS: '{json.dumps(checks)}'
                LISTENER: '{listener_address}'
              input: [{{path: /input}}]
              output: [{{path: /output}}]
            """
        )
    )
    job_id = client.create_job(client.create_pipeline(definition), "seen", [payload_id])
    client.start_job(job_id)
    return job_id


def test_an_operator_map_program_outside_the_operators_folder_runs_in_the_sandbox(
    tmp_path: Path,
) -> None:
    assert bwrap_problem() is None, f"the sandbox tests need bubblewrap: {bwrap_problem()}"
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "tool.py").write_text(DRIVER_OPERATOR)
    mapping = {"t/mapped": [sys.executable, str(tools / "tool.py")]}
    with platform(tmp_path, runner="sandbox", operator_map=mapping) as running:
        run = running.run(
            pipeline(
                """
                - name: mapped
                  container: {image: t/mapped}
                  variables: {OPERATOR_CODE: "print('the mapped tool ran')"}
                  input: [{path: /input}]
                """
            )
        )
    assert run.job.state is JobState.SUCCEEDED, (run.job.message, run.logs)
    assert "the mapped tool ran" in run.logs["mapped"]
