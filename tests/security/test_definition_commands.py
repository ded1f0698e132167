"""A submitted definition's command: only in the sandbox, or a file of the operators folder."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _launch import pipeline, platform
from _pki import Pki

from server_mock import JobState
from server_mock._client import PlatformApiError
from server_mock._command_policy import DefinitionCommandRefused, check_definition_command
from server_mock._sandbox import bwrap_problem

PYTHON = frozenset({"python", "python3"})


def touching(targets: list[Path]) -> str:
    """A definition whose command tries to create every target on the host."""
    script = "; ".join(f"touch {t} && echo wrote {t}" for t in targets) + "; exit 0"
    return pipeline(
        f"""
        - name: intruder
          container: {{image: t/intruder, command: ["sh", "-c", "{script}"]}}
          input: [{{path: /input}}]
        """
    )


@pytest.fixture
def targets(tmp_path: Path) -> Iterator[list[Path]]:
    """Host paths a malicious command would write; removed afterwards whatever happened."""
    marker = f"clara-intruder-{uuid.uuid4().hex}"
    paths = [
        Path("/tmp") / marker,
        tmp_path / "ops" / marker,  # the operators folder
        tmp_path / "workspace" / marker,
        tmp_path / marker,
        Path.home() / marker,
    ]
    yield paths
    for path in paths:
        path.unlink(missing_ok=True)


def test_in_the_sandbox_a_definitions_command_cannot_write_the_hosts_files(
    tmp_path: Path, targets: list[Path]
) -> None:
    assert bwrap_problem() is None, f"the sandbox tests need bubblewrap: {bwrap_problem()}"
    with platform(tmp_path, runner="sandbox") as running:
        run = running.run(touching(targets))
    # It ran (and, not speaking the stage API, failed its stage) but changed nothing outside.
    assert run.job.stages["intruder"].state.value == "failed"
    assert "wrote /tmp/" in run.logs["intruder"]  # its own, private /tmp
    assert [path for path in targets if path.exists()] == []


def test_the_process_runner_refuses_a_definitions_command_and_says_why(
    tmp_path: Path, targets: list[Path]
) -> None:
    with platform(tmp_path, runner="process") as running:
        with pytest.raises(PlatformApiError) as refused:
            running.submit(touching(targets))
        jobs = running.mock.call(running.mock.jobs.all)
        assert [job.state for job in jobs] == [JobState.CREATED]
    message = str(refused.value)
    assert "operator 'intruder'" in message
    assert "does not run the definition's command" in message and "from PATH" in message
    assert "--allow-definition-commands" in message and "--runner sandbox" in message
    assert [path for path in targets if path.exists()] == []


def test_allow_definition_commands_lets_the_process_runner_run_them(tmp_path: Path) -> None:
    written = tmp_path / "allowed.txt"
    with platform(tmp_path, runner="process", allow_definition_commands=True) as running:
        run = running.run(touching([written]))
    assert run.job.stages["intruder"].state.value == "failed"  # no driver: never reported
    assert written.exists()


def test_the_process_runner_runs_files_of_the_operators_folder(tmp_path: Path) -> None:
    with platform(tmp_path, runner="process") as running:
        run = running.run(
            pipeline(
                """
                - name: only
                  container: {image: t/op, command: [python, -u, op.py]}
                  variables: {OPERATOR_CODE: "print('ran from the operators folder')"}
                  input: [{path: /input}]
                """
            )
        )
    assert run.job.state is JobState.SUCCEEDED, (run.job.message, run.logs)
    assert "ran from the operators folder" in run.logs["only"]


@pytest.mark.parametrize("variable", ["PYTHONPATH", "LD_PRELOAD", "PATH", "BASH_ENV"])
def test_the_process_runner_refuses_variables_that_choose_the_code_that_runs(
    tmp_path: Path, variable: str
) -> None:
    # An allowed command, but PYTHONPATH at an uploaded payload would shadow `clara` itself.
    definition = pipeline(
        f"""
        - name: only
          container: {{image: t/op, command: [python, op.py]}}
          variables: {{{variable}: /somewhere, OPERATOR_CODE: pass}}
          input: [{{path: /input}}]
        """
    )
    with (
        platform(tmp_path, runner="process") as running,
        pytest.raises(PlatformApiError, match=f"does not let a definition or a job set {variable}"),
    ):
        running.submit(definition)
    with platform(tmp_path, runner="process", allow_definition_commands=True) as running:
        assert running.run(definition).job.state is JobState.SUCCEEDED


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (["touch", "/tmp/x"], "from PATH"),
        (["python", "-c", "print(1)"], "not a file"),
        (["python", "-m", "http.server"], "not a file"),
        (["python"], "not a file"),
        (["python", "../outside.py"], "is not a file in the command folder"),
        (["python", "missing.py"], "is not a file in the command folder"),
        (["/bin/sh", "-c", "id"], "is not a file in the command folder"),
        (["./escape.py"], "is not a file in the command folder"),
    ],
)
def test_commands_outside_the_operators_folder_are_refused(
    tmp_path: Path, command: list[str], reason: str
) -> None:
    folder = tmp_path / "ops"
    folder.mkdir()
    (tmp_path / "outside.py").write_text("")
    (folder / "escape.py").symlink_to(tmp_path / "outside.py")
    with pytest.raises(DefinitionCommandRefused, match=reason):
        check_definition_command("op", command, folder, PYTHON)


@pytest.mark.parametrize(
    "command",
    [
        ["python", "op.py", "--flag"],
        ["python3", "-u", "-B", "tools/op.py"],
        ["./run.sh", "arg"],
        ["{folder}/run.sh"],
    ],
)
def test_commands_running_a_file_of_the_operators_folder_are_allowed(
    tmp_path: Path, command: list[str]
) -> None:
    folder = tmp_path / "ops"
    (folder / "tools").mkdir(parents=True)
    for name in ("op.py", "tools/op.py", "run.sh"):
        (folder / name).write_text("")
    command = [part.format(folder=folder) for part in command]
    check_definition_command("op", command, folder, PYTHON)  # raises when refused


def test_serve_beyond_loopback_needs_mutual_tls_not_just_tls(pki: Pki) -> None:
    # Whoever can call Jobs.Start chooses what runs: TLS alone lets anyone call it.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "server_mock",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--tls-cert",
            str(pki.server_cert),
            "--tls-key",
            str(pki.server_key),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "mutual TLS is required to listen beyond loopback" in done.stderr
    assert "--tls-client-ca" in done.stderr and "--insecure" in done.stderr
    assert "listening" not in done.stdout
