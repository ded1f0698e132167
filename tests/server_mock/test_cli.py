"""The clara-mock command line: run (the main job), serve, and argument errors."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from server_mock._cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "volume_segmentation"


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_run_executes_the_example_end_to_end(tmp_path: Path) -> None:
    output = tmp_path / "out"
    code, text = run_cli(
        "run",
        str(EXAMPLE / "pipeline.yaml"),
        "--input",
        str(EXAMPLE / "input"),
        "--output",
        str(output),
    )
    assert code == 0, text
    for stage in ("load-volume", "segment", "statistics", "report"):
        assert f"] {stage}: succeeded" in text  # live progress
        assert any(line.startswith(stage) and " succeeded " in line for line in text.splitlines())
    assert "job volume-segmentation" in text and text.rstrip().endswith(f"written to {output}")
    report = json.loads((output / "report" / "report.json").read_text())
    classes = sorted(c["class"] for c in report["components"])
    assert classes == ["lesion candidate", "organ", "organ"]
    assert (output / "report" / "report.md").read_text().startswith("# ")


def test_run_exits_non_zero_when_the_job_fails(tmp_path: Path) -> None:
    (tmp_path / "op.py").write_text(
        "import clara, sys\n"
        "d = clara.Driver(execute=lambda d, p: False)\n"
        "d.start()\n"
        "sys.exit(0 if d.wait_for_completion().succeeded else 1)\n"
    )
    (tmp_path / "p.yaml").write_text(
        "api-version: 0.4.0\nname: failing\noperators:\n"
        "- name: only\n  container: {image: t/only, command: [python, op.py]}\n"
        "  input: [{path: /input}]\n  output: [{path: /output}]\n"
    )
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "f").write_text("x")
    code, text = run_cli(
        "run",
        str(tmp_path / "p.yaml"),
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
    )
    assert code == 1
    assert "execute returned False" in text
    assert "job failing" in text and ": failed" in text


def test_run_reports_an_invalid_definition_naming_operator_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p.yaml").write_text(
        "api-version: 0.4.0\nname: bad\noperators:\n"
        "- name: a\n  container: {image: t/a}\n  input: [{from: ghost, path: /in}]\n"
    )
    (tmp_path / "in").mkdir()
    code, _ = run_cli("run", str(tmp_path / "p.yaml"), "--input", str(tmp_path / "in"))
    assert code == 1
    err = capsys.readouterr().err
    assert "operator 'a'" in err and "input[0].from" in err and "ghost" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "missing.yaml", "--input", "."], "PIPELINE missing.yaml: no such file"),
        (
            ["run", str(EXAMPLE / "pipeline.yaml"), "--input", "nowhere"],
            "--input nowhere: not a folder",
        ),
        (["serve", "--port", "70000"], "--port 70000"),
        (["serve", "--host", "0.0.0.0"], "TLS is required"),
        (["serve", "--operators-dir", "nowhere"], "--operators-dir nowhere: not a folder"),
    ],
)
def test_argument_errors_name_the_argument(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(*argv)[0] == 2
    assert message in capsys.readouterr().err


def test_serve_prints_its_address_binds_loopback_and_stops_on_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "server_mock", "serve", "--port", "0", "--workspace", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("clara-mock listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        assert port > 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def test_console_script_help_reads_well() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server_mock", "run", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert "--input" in result.stdout and "--output" in result.stdout
