"""The runner flags of ``clara-mock``: --runner, --allow-definition-commands, --operator-rootfs,
and what happens on a machine without bubblewrap."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WAIT = 120.0
OPERATOR = (
    "import clara, pathlib, sys\n"
    "def execute(driver, payload):\n"
    "    (pathlib.Path(payload.output().path) / 'ok.txt').write_text('ok')\n"
    "    return True\n"
    "d = clara.Driver(execute=execute)\n"
    "d.start()\n"
    "sys.exit(0 if d.wait_for_completion().succeeded else 1)\n"
)


def write_job(folder: Path, command: str = "[python, op.py]") -> Path:
    (folder / "op.py").write_text(OPERATOR)
    (folder / "in").mkdir()
    (folder / "in" / "f.txt").write_text("x")
    pipeline = folder / "p.yaml"
    pipeline.write_text(
        "api-version: 0.4.0\nname: cli\noperators:\n"
        f"- name: only\n  container: {{image: t/only, command: {command}}}\n"
        "  input: [{path: /input}]\n  output: [{path: /output}]\n"
    )
    return pipeline


def clara_mock(
    folder: Path, *argv: str, path: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVIDIA_CLARA_")}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "server_mock", *argv],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=folder,
        env=env,
        check=False,
    )


def run_args(folder: Path, pipeline: Path, *flags: str) -> list[str]:
    return [
        "run",
        str(pipeline),
        "--input",
        str(folder / "in"),
        "--output",
        str(folder / "out"),
        *flags,
    ]


def test_without_bwrap_run_falls_back_to_plain_processes_with_a_one_line_warning(
    tmp_path: Path,
) -> None:
    done = clara_mock(tmp_path, *run_args(tmp_path, write_job(tmp_path)), path="/nonexistent")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, done.stderr
    assert "not in a sandbox" in warnings[0] and "bubblewrap" in warnings[0]
    assert "other jobs' folders" in warnings[0] and "share /tmp" in warnings[0]
    assert (tmp_path / "out" / "only" / "ok.txt").read_text() == "ok"


def test_runner_sandbox_without_bwrap_is_a_usage_error(tmp_path: Path) -> None:
    argv = run_args(tmp_path, write_job(tmp_path), "--runner", "sandbox")
    done = clara_mock(tmp_path, *argv, path="/nonexistent")
    assert done.returncode == 2
    assert "--runner sandbox: the sandbox runner cannot run here" in done.stderr
    assert "bubblewrap" in done.stderr and "is not installed" in done.stderr


@pytest.mark.parametrize("runner", ["sandbox", "process"])
def test_runner_flag_picks_the_runner(tmp_path: Path, runner: str) -> None:
    argv = run_args(tmp_path, write_job(tmp_path), "--runner", runner)
    done = clara_mock(tmp_path, "-v", *argv)
    assert done.returncode == 0, done.stderr
    assert f"({runner} runner, pid" in done.stderr


def test_the_process_runner_runs_a_definitions_own_code_only_when_allowed(
    tmp_path: Path,
) -> None:
    pipeline = write_job(tmp_path, command="[python, -c, \"exec(open('op.py').read())\"]")
    refused = clara_mock(tmp_path, *run_args(tmp_path, pipeline, "--runner", "process"))
    assert refused.returncode == 1
    assert "could not launch job" in refused.stderr
    assert "does not run the definition's command" in refused.stderr
    # Nothing ran: `run` keeps only its own log of the refusal.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["run.log"]
    flags = ("--runner", "process", "--allow-definition-commands")
    allowed = clara_mock(tmp_path, *run_args(tmp_path, pipeline, *flags))
    assert allowed.returncode == 0, allowed.stderr
    assert (tmp_path / "out" / "only" / "ok.txt").read_text() == "ok"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--operator-rootfs", "no-equals-sign"], "expected IMAGE[:TAG]=DIR"),
        (["--operator-rootfs", "t/x=/nowhere"], "/nowhere is not a folder"),
        (["--service-data", "p.yaml"], "p.yaml is not a folder"),
        (
            ["--runner", "process", "--operator-rootfs", "t/x=."],
            "--operator-rootfs: the process runner cannot give an operator an image root",
        ),
    ],
)
def test_bad_runner_flags_are_usage_errors(tmp_path: Path, flags: list[str], message: str) -> None:
    done = clara_mock(tmp_path, *run_args(tmp_path, write_job(tmp_path), *flags))
    assert done.returncode == 2
    assert message in done.stderr
