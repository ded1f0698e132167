"""`clara-mock run`: the job end to end, its logs, its checks before anything runs, stopping."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from _cli_helpers import (
    CLI,
    EXAMPLE,
    PROCESS_WAIT,
    make_input,
    pid_alive,
    read_until,
    run_cli,
    stop_process,
    write_pipeline,
)

from server_mock._cli.run import STOP_GRACE


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
        assert f"] {stage}: succeeded in " in text  # live progress
        assert any(line.startswith(stage) and " succeeded " in line for line in text.splitlines())
        assert (output / "logs" / f"{stage}.log").read_text().strip()  # every operator's log
    assert "job volume-segmentation" in text and f"written to {output}\n" in text
    assert f"operator logs: {output / 'logs'}/<operator>.log" in text
    report = json.loads((output / "report" / "report.json").read_text())
    classes = sorted(c["class"] for c in report["components"])
    assert classes == ["lesion candidate", "organ", "organ"]
    assert (output / "report" / "report.md").read_text().startswith("# ")
    run_log = (output / "run.log").read_text()
    assert "load-volume: succeeded in " in run_log and "STAGE" in run_log


def test_every_stage_shows_that_it_ran_and_how_long(tmp_path: Path) -> None:
    stages = [("first", "count"), ("second", "count"), ("third", "count")]
    pipeline = write_pipeline(tmp_path, stages, chain=True)
    inputs = make_input(tmp_path / "in", {"a.txt": "a"})

    code, text = run_cli(
        "run", str(pipeline), "--input", str(inputs), "--output", str(tmp_path / "o")
    )

    assert code == 0, text
    lines = text.splitlines()
    for stage, _ in stages:
        running = next(i for i, line in enumerate(lines) if line.endswith(f"] {stage}: running"))
        done = next(i for i, line in enumerate(lines) if f"] {stage}: succeeded in " in line)
        assert running < done, text
        seconds = float(re.search(rf"{stage}: succeeded in (\d+\.\d+)s", text).group(1))  # type: ignore[union-attr]
        summary = next(line for line in lines if line.startswith(stage + " "))
        assert summary.split()[2] == f"{seconds:.2f}s"  # the same duration, from running on


def test_empty_input_files_are_inputs_too(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, [("count", "count")])
    inputs = make_input(tmp_path / "in", {"a.txt": "a", "empty.txt": "", "sub/also-empty": ""})

    code, text = run_cli(
        "run", str(pipeline), "--input", str(inputs), "--output", str(tmp_path / "o")
    )

    assert code == 0, text
    assert "3 input file(s)" in text
    assert (tmp_path / "o" / "count" / "count.txt").read_text() == "3\n"


def test_a_failure_points_to_a_log_that_is_still_there(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, [("broken", "crash")])
    inputs = make_input(tmp_path / "in", {"a.txt": "a"})
    output = tmp_path / "out"

    code, text = run_cli("run", str(pipeline), "--input", str(inputs), "--output", str(output))

    assert code == 1, text
    named = re.findall(r"\(see (\S+\.log)\)", text)
    assert named, text
    for path in named:
        assert Path(path) == output / "logs" / "broken.log"
        assert "about to exit with code 3" in Path(path).read_text()
    assert "job test-pipeline" in text and ": failed" in text


def test_a_long_message_is_cut_on_screen_and_whole_in_the_log(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, [("talker", "long_message")])
    inputs = make_input(tmp_path / "in", {"a.txt": "a"})
    output = tmp_path / "out"

    code, text = run_cli("run", str(pipeline), "--input", str(inputs), "--output", str(output))

    assert code == 1
    failed = next(line for line in text.splitlines() if "] talker: failed" in line)
    assert "the start of a long story" in failed and failed.endswith("…)")
    assert "THE END" not in text
    run_log = (output / "run.log").read_text()
    assert "the start of a long story" in run_log and "THE END" in run_log


def test_stream_logs_prefixes_each_line_with_its_operator(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, [("first", "count"), ("second-stage", "count")])
    inputs = make_input(tmp_path / "in", {"a.txt": "a"})

    code, text = run_cli(
        "run",
        str(pipeline),
        "--input",
        str(inputs),
        "--output",
        str(tmp_path / "o"),
        "--stream-logs",
    )

    assert code == 0, text
    assert re.search(r"^first        \| hello from first counted a\.txt$", text, re.M), text
    assert re.search(r"^second-stage \| hello from second-stage counted", text, re.M), text


def test_an_invalid_definition_is_refused_naming_operator_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p.yaml").write_text(
        "api-version: 0.4.0\nname: bad\noperators:\n"
        "- name: a\n  container: {image: t/a}\n  input: [{from: ghost, path: /in}]\n"
    )
    (tmp_path / "in").mkdir()
    code, _ = run_cli("run", str(tmp_path / "p.yaml"), "--input", str(tmp_path / "in"))
    assert code == 2
    err = capsys.readouterr().err
    assert "operator 'a'" in err and "input[0].from" in err and "ghost" in err


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("output is a file", "--output {tmp}/taken: is a file, not a folder"),
        ("missing script", "operator 'only': no script {tmp}/gone.py"),
        ("missing program", "operator 'only': no program 'no-such-program-here' on PATH"),
        ("missing path", "operator 'only': no program {tmp}/bin/tool"),
        ("no command", "operator 'only': no local command for container t/only"),
    ],
)
def test_what_cannot_run_is_refused_before_the_job_runs(
    tmp_path: Path, case: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    command = {
        "missing script": "[python, gone.py]",
        "missing program": "[no-such-program-here, --flag]",
        "missing path": "[bin/tool]",
        "no command": "[]",
    }.get(case, "[python, op.py]")
    (tmp_path / "op.py").write_text("print('never runs')\n")
    (tmp_path / "p.yaml").write_text(
        "api-version: 0.4.0\nname: refused\noperators:\n"
        f"- name: only\n  container: {{image: t/only, command: {command}}}\n"
        "  input: [{path: /input}]\n  output: [{path: /output}]\n"
    )
    (tmp_path / "taken").write_text("a file")
    output = tmp_path / ("taken" if case == "output is a file" else "out")

    code, text = run_cli(
        "run", str(tmp_path / "p.yaml"), "--input", str(tmp_path), "--output", str(output)
    )

    assert (code, text) == (2, "")
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written


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


def _start_run(tmp_path: Path, stages: list[tuple[str, str]]) -> subprocess.Popen[str]:
    pipeline = write_pipeline(tmp_path, stages)
    inputs = make_input(tmp_path / "in", {"a.txt": "a"})
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path / "tmp")}
    return subprocess.Popen(
        [
            *CLI,
            "run",
            str(pipeline),
            "--input",
            str(inputs),
            "--output",
            str(tmp_path / "out"),
            "--stream-logs",
            # The operators write their pids to the test's folder, and the test checks those
            # host pids: plain processes (the sandbox's own no-orphan tests are in
            # tests/security/test_sandbox.py).
            "--runner",
            "process",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )


def _wait_ready(process: subprocess.Popen[str], stages: list[str]) -> str:
    """Read the run's output until every stage's operator said it is ready."""
    seen = ""
    while not all(re.search(rf"^{s}\s+\| ready \d+$", seen, re.M) for s in stages):
        seen += read_until(process, "| ready", PROCESS_WAIT)
    return seen


def test_sigterm_cancels_the_job_and_leaves_no_operator_behind(tmp_path: Path) -> None:
    stages = [("sleeper", "sleeper"), ("stubborn", "stubborn")]
    process = _start_run(tmp_path, stages)
    try:
        _wait_ready(process, ["sleeper", "stubborn"])
        pids = {name: int((tmp_path / "pids" / name).read_text()) for name, _ in stages}
        assert all(pid_alive(pid) for pid in pids.values())

        process.send_signal(signal.SIGTERM)
        assert process.wait(PROCESS_WAIT) == 143
        assert process.stdout is not None
        text = process.stdout.read()
    finally:
        stop_process(process)

    assert "SIGTERM received: cancelling job test-pipeline" in text
    assert "interrupted by SIGTERM: 2 stage(s) cancelled (sleeper, stubborn)" in text
    assert f"killed (SIGKILL) {STOP_GRACE:g} s after the cancellation: stubborn" in text
    assert re.search(r"^sleeper\s+cancelled\s", text, re.M), text
    assert not [name for name, pid in pids.items() if pid_alive(pid)]
    assert list((tmp_path / "tmp").iterdir()) == []  # the temporary workspace is gone
    assert (tmp_path / "out" / "logs" / "sleeper.log").is_file()


def test_ctrl_c_stops_the_run_the_same_way(tmp_path: Path) -> None:
    process = _start_run(tmp_path, [("sleeper", "sleeper")])
    try:
        _wait_ready(process, ["sleeper"])
        pid = int((tmp_path / "pids" / "sleeper").read_text())
        process.send_signal(signal.SIGINT)
        assert process.wait(PROCESS_WAIT) == 130
        assert process.stdout is not None
        text = process.stdout.read()
    finally:
        stop_process(process)
    assert "interrupted by SIGINT: 1 stage(s) cancelled (sleeper)" in text
    assert "killed" not in text  # the driver stopped on its own when the job was cancelled
    assert not pid_alive(pid)
    assert list((tmp_path / "tmp").iterdir()) == []
