"""`clara-mock jobs ...` and `clara-mock pipelines list` against an in-process platform."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from server_mock import MockPlatform
from server_mock._cli import main
from server_mock._client import PlatformClient
from server_mock._runner import LocalProcessLauncher

OPERATOR = textwrap.dedent(
    """
    import sys
    import clara

    print("hello from", sys.argv[1], flush=True)
    driver = clara.Driver(execute=lambda d, p: True)
    driver.start()
    sys.exit(0 if driver.wait_for_completion().succeeded else 1)
    """
)
PIPELINE = textwrap.dedent(
    """
    api-version: 0.4.0
    name: greeting
    operators:
    - name: first
      container: {image: t/first, command: [python, op.py, first]}
      input: [{path: /input}]
      output: [{path: /output}]
    - name: second
      container: {image: t/second, command: [python, op.py, second]}
      input: [{from: first, path: /input}]
      output: [{path: /output}]
    """
)


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[MockPlatform]:
    """A platform like `clara-mock serve`: operators as processes, stage tokens required."""
    (tmp_path / "op.py").write_text(OPERATOR)
    (tmp_path / "pipeline.yaml").write_text(PIPELINE)
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "f.txt").write_text("x")
    launcher = LocalProcessLauncher(None, tmp_path)
    platform = MockPlatform(
        workspace=tmp_path / "workspace", launcher=launcher, require_stage_tokens=True
    )
    launcher.attach(lambda: platform.address, platform.stage_tokens.issue)
    platform.start()
    try:
        yield platform
    finally:
        platform.call_async(lambda: launcher.wait_idle(30), timeout=35)
        platform.call_async(launcher.stop_all, timeout=30)
        platform.stop()


def create_job(platform: MockPlatform, folder: Path, *, start: bool) -> tuple[uuid.UUID, uuid.UUID]:
    with PlatformClient(platform.address) as client:
        pipeline_id = client.create_pipeline(folder / "pipeline.yaml")
        payload_id = client.create_payload()
        client.upload_folder(payload_id, folder / "input")
        job_id = client.create_job(pipeline_id, "greeting-job", [payload_id])
        if start:
            client.start_job(job_id)
    return pipeline_id, job_id


def test_pipelines_list(served: MockPlatform, tmp_path: Path) -> None:
    address = ("--address", served.address)
    assert cli("pipelines", "list", *address) == (0, "no pipelines\n")

    pipeline_id, _ = create_job(served, tmp_path, start=False)

    code, text = cli("pipelines", "list", *address)
    assert code == 0
    header, row = text.splitlines()
    assert header.split() == ["PIPELINE", "ID", "NAME"]
    assert row.split() == [str(pipeline_id), "greeting"]
    code, text = cli("pipelines", "list", "--json", *address)
    assert json.loads(text) == [{"pipeline_id": str(pipeline_id), "name": "greeting"}]


def test_jobs_list_status_and_logs(served: MockPlatform, tmp_path: Path) -> None:
    address = ("--address", served.address)
    assert cli("jobs", "list", *address) == (0, "no jobs\n")
    pipeline_id, job_id = create_job(served, tmp_path, start=True)
    served.wait_for_job(job_id, 60)
    served.call_async(lambda: served.state.launcher.wait_idle(30), timeout=35)  # logs complete

    code, text = cli("jobs", "list", *address)
    assert code == 0, text
    header, row = text.splitlines()
    assert header.split()[:4] == ["JOB", "ID", "NAME", "STATE"]
    assert row.split()[:5] == [str(job_id), "greeting-job", "STOPPED", "HEALTHY", str(pipeline_id)]
    (listed,) = json.loads(cli("jobs", "list", "--json", *address)[1])
    assert listed["job_id"] == str(job_id) and listed["state"] == "STOPPED"
    assert listed["created"].endswith("Z")

    code, text = cli("jobs", "status", job_id.hex, *address)  # hyphens are optional
    assert code == 0, text
    assert text.startswith(f"job greeting-job ({job_id})\n  state:   STOPPED\n")
    assert "\n  OPERATOR  STATUS\n  first     COMPLETED\n  second    COMPLETED\n" in text
    status = json.loads(cli("jobs", "status", str(job_id), "--json", *address)[1])
    assert status["operators"] == {"first": "COMPLETED", "second": "COMPLETED"}

    code, text = cli("jobs", "logs", str(job_id), "second", *address)
    assert code == 0
    assert "hello from second" in text and "hello from first" not in text
    code, text = cli("jobs", "logs", str(job_id), *address)
    assert code == 0
    assert text.index("==> first <==") < text.index("hello from first")
    assert text.index("==> second <==") < text.index("hello from second")


def test_jobs_cancel(served: MockPlatform, tmp_path: Path) -> None:
    _, job_id = create_job(served, tmp_path, start=False)
    address = ("--address", served.address)

    code, text = cli("jobs", "cancel", str(job_id), "--reason", "wrong input", *address)

    assert code == 0, text
    assert text == f"job greeting-job ({job_id}): cancel requested; now STOPPED (CANCELED)\n"
    status = json.loads(cli("jobs", "status", str(job_id), "--json", *address)[1])
    assert (status["state"], status["status"]) == ("STOPPED", "CANCELED")
    assert status["messages"] == ["wrong input"]


def test_errors_name_the_argument(
    served: MockPlatform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, job_id = create_job(served, tmp_path, start=False)
    address = ("--address", served.address)

    with pytest.raises(SystemExit) as exited:
        cli("jobs", "status", "not-a-uuid", *address)
    assert exited.value.code == 2
    assert "argument JOB_ID: 'not-a-uuid' is not a job id" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exited:
        cli("jobs", "list", "--address", "localhost")
    assert exited.value.code == 2
    assert "argument --address: 'localhost' is not HOST:PORT" in capsys.readouterr().err

    unknown = uuid.uuid4()
    code, text = cli("jobs", "status", str(unknown), *address)
    err = capsys.readouterr().err
    assert (code, text) == (1, "")
    assert err.startswith("clara-mock jobs status: platform error: Jobs.Status")
    assert unknown.hex in err or str(unknown) in err
    assert "Traceback" not in err

    code, _ = cli("jobs", "logs", str(job_id), "ghost", *address)
    err = capsys.readouterr().err
    assert code == 2
    assert "OPERATOR 'ghost': job" in err and "(operators: first, second)" in err

    code, _ = cli("jobs", "list", "--tls-cert", str(tmp_path / "c.pem"), *address)
    assert code == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err


def test_an_unreachable_platform_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with MockPlatform() as platform:
        address = platform.address  # a port that was just free and is closed again
    code, text = cli("jobs", "list", "--address", address, "--connect-timeout", "3")
    err = capsys.readouterr().err
    assert (code, text) == (1, "")
    assert err.startswith(f"clara-mock jobs list: error: --address {address}: ")
    assert "is `clara-mock serve` running there?" in err
    assert "Traceback" not in err


def test_help_reads_well(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["jobs", "--help"], ["jobs", "logs", "--help"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "jobs         list, inspect, read the logs of, or cancel jobs" in text
    assert "clara-mock jobs logs 0c3b7f1e-1a2b-4c3d-8e9f-0a1b2c3d4e5f segment" in text
    assert "OPERATOR" in text and "--address HOST:PORT" in text


def test_the_console_script_runs_jobs_list(served: MockPlatform) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "server_mock", "jobs", "list", "--address", served.address],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (0, "no jobs\n"), proc.stderr
