"""The driver's outbox (clara._outbox, clara._report): atomic, durable, removed when acked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

import clara
from clara._outbox import PendingRecord, outbox_record, write_record
from clara._threads import running_tasks
from clara.contract import ENV_OUTBOX, OUTBOX_RECORD_NAME, OUTBOX_SCHEMA_VERSION
from server_mock import MockPlatform, StageSpec, StageState

WAIT = 30.0
ROOT = Path(__file__).resolve().parents[2]


def record(report_id: str, outcome: clara.StageOutcome = clara.StageOutcome.SUCCEEDED) -> Any:
    return outbox_record(
        job_id=uuid.UUID(int=7),
        stage_name="stage",
        report_id=report_id,
        outcome=outcome,
        message=f"message of {report_id}",
    )


def test_a_record_is_written_whole_with_every_field_and_no_temporary_file(tmp_path: Path) -> None:
    folder = tmp_path / "outbox" / "stage"  # created if missing
    path = write_record(folder, record("r1", clara.StageOutcome.FAILED))
    assert path == folder / OUTBOX_RECORD_NAME
    written = json.loads(path.read_text())
    assert written == {
        "schema": OUTBOX_SCHEMA_VERSION,
        "job_id": str(uuid.UUID(int=7)),
        "stage_name": "stage",
        "report_id": "r1",
        "outcome": "failed",
        "message": "message of r1",
        "written_at": pytest.approx(written["written_at"]),
    }
    assert isinstance(written["written_at"], float)
    assert os.listdir(folder) == [OUTBOX_RECORD_NAME]
    assert path.stat().st_mode & 0o777 == 0o600
    write_record(folder, record("r2"))
    assert json.loads(path.read_text())["report_id"] == "r2"
    assert os.listdir(folder) == [OUTBOX_RECORD_NAME]


def test_a_record_that_cannot_be_written_leaves_the_previous_one_and_no_temporary(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "outbox"
    write_record(folder, record("first"))
    with pytest.raises(TypeError):
        write_record(folder, {"not json": object()})
    assert json.loads((folder / OUTBOX_RECORD_NAME).read_text())["report_id"] == "first"
    assert os.listdir(folder) == [OUTBOX_RECORD_NAME]


# A child process writing records with the real writer. With PAUSE, os.replace is wrapped so
# that the child says "renaming" and waits, between the fsynced temporary file and the rename.
CHILD = textwrap.dedent(
    """
    import os, sys, uuid
    from pathlib import Path
    from clara._outbox import outbox_record, write_record
    from clara._result import StageOutcome

    folder, count, pause = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "pause"
    real_replace = os.replace

    def paused_replace(src, dst):
        print("renaming", flush=True)
        sys.stdin.readline()  # never answered: the parent kills us here
        real_replace(src, dst)

    for index in range(count):
        if pause and index == count - 1:
            os.replace = paused_replace
        report_id = f"report-{index}-" + "x" * (index % 50)
        write_record(folder, outbox_record(
            job_id=uuid.UUID(int=7), stage_name="stage", report_id=report_id,
            outcome=StageOutcome.SUCCEEDED, message="m" * (index * 37 % 3000)))
        print("written", report_id, flush=True)
    """
)


def start_writer(folder: Path, count: int, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(folder), str(count), mode],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(WAIT)
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()


def test_a_writer_killed_between_write_and_rename_leaves_the_previous_record(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "outbox"
    writer = start_writer(folder, 2, "pause")
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().split() == ["written", "report-0-"]
        assert writer.stdout.readline().strip() == "renaming"  # new record fsynced, not renamed
    finally:
        kill(writer)
    assert json.loads((folder / OUTBOX_RECORD_NAME).read_text())["report_id"] == "report-0-"
    leftovers = [name for name in os.listdir(folder) if name != OUTBOX_RECORD_NAME]
    assert len(leftovers) == 1 and leftovers[0].endswith(".tmp")  # what readers ignore


def test_a_writer_killed_before_its_first_rename_leaves_no_record(tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    writer = start_writer(folder, 1, "pause")
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "renaming"
    finally:
        kill(writer)
    assert not (folder / OUTBOX_RECORD_NAME).exists()


@pytest.mark.parametrize("after", [3, 40, 200])
def test_a_writer_killed_at_any_moment_leaves_a_whole_record(tmp_path: Path, after: int) -> None:
    folder = tmp_path / "outbox"
    writer = start_writer(folder, 100_000, "run")
    written = []
    try:
        assert writer.stdout is not None
        while len(written) < after:  # bounded: the writer prints one line per record
            line = writer.stdout.readline()
            assert line, "the writer ended early"
            written.append(line.split()[1])
    finally:
        kill(writer)  # somewhere in the middle of writing the next records
    landed = json.loads((folder / OUTBOX_RECORD_NAME).read_text())  # whole, never torn
    assert landed["schema"] == OUTBOX_SCHEMA_VERSION
    index = int(landed["report_id"].split("-")[1])
    assert index >= after - 1  # the last one announced, or one written after it
    assert landed["message"] == "m" * (index * 37 % 3000)


# -- the driver writes its outbox ---------------------------------------------------------


def run_driver(
    target: str, job_id: uuid.UUID, outbox: Path | None, **kwargs: Any
) -> clara.StageResult:
    environ = {} if outbox is None else {ENV_OUTBOX: str(outbox)}
    driver: clara.Driver[Any] = clara.Driver(
        execute=lambda d, p: False,
        target=target,
        job_id=job_id,
        stage_name="only",
        environ=environ,
        handle_sigterm=False,
        **kwargs,
    )
    driver.start()
    return driver.wait_for_completion(WAIT)


def finish_outbox_writes() -> None:
    """Join the outbox writers still running (they do not hold up the life-cycle)."""
    for task in running_tasks():
        if task.name == "clara-outbox":
            assert task.join(WAIT)


def test_a_pending_record_acknowledged_in_time_is_never_written(tmp_path: Path) -> None:
    pending = PendingRecord(tmp_path / "outbox", record("quick"), {})
    pending.acknowledged()
    finish_outbox_writes()
    assert not (tmp_path / "outbox").exists()


def test_a_pending_record_written_then_acknowledged_is_removed(tmp_path: Path) -> None:
    pending = PendingRecord(tmp_path / "outbox", record("slow"), {})
    assert pending.wait(WAIT)  # the report was given up (or is slow): write it now
    assert json.loads((tmp_path / "outbox" / OUTBOX_RECORD_NAME).read_text())["report_id"] == (
        "slow"
    )
    pending.acknowledged()  # ... and then the platform answered after all
    assert os.listdir(tmp_path / "outbox") == []


def test_an_acknowledged_report_leaves_no_record(
    clara_platform: MockPlatform, tmp_path: Path
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    result = run_driver(clara_platform.address, job_id, tmp_path / "outbox")
    assert result.reported and result.outcome is clara.StageOutcome.FAILED
    assert clara_platform.job(job_id).stages["only"].state is StageState.FAILED
    finish_outbox_writes()
    # Acknowledged within WRITE_DELAY: never written; later: written, then removed.
    assert not (tmp_path / "outbox" / OUTBOX_RECORD_NAME).exists()
    assert not (tmp_path / "outbox").exists() or os.listdir(tmp_path / "outbox") == []


def test_without_an_outbox_nothing_is_written(
    clara_platform: MockPlatform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    job_id = clara_platform.create_job([StageSpec("only")])
    assert run_driver(clara_platform.address, job_id, None).reported
    standalone: clara.Driver[Any] = clara.Driver(
        execute=lambda d, p: True,
        standalone=True,
        environ={ENV_OUTBOX: str(tmp_path / "standalone")},
        handle_sigterm=False,
    )
    standalone.start()
    assert standalone.wait_for_completion(WAIT).succeeded
    assert os.listdir(tmp_path) == []
