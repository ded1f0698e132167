"""The pytest plugin's helpers: run an operator's callbacks as a stage, run a whole pipeline."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import clara
from server_mock import InputRef, MockPlatform, OutputRef, StageSpec, StageState
from server_mock.pytest_plugin import PipelineRunner, StageRunner, run_stage

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "volume_segmentation"


def count_files(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
    source = Path(payload.input().path)
    (Path(payload.output().path) / "count.txt").write_text(str(len(list(source.iterdir()))))
    return True


def test_stage_runner_runs_execute_with_folders(
    clara_stage_runner: StageRunner, tmp_path: Path
) -> None:
    (tmp_path / "in").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / "in" / name).write_text(name)

    run = clara_stage_runner(
        execute=count_files, input_dir=tmp_path / "in", output_dir=tmp_path / "out"
    )

    assert run.result.succeeded and run.result.reported
    assert (tmp_path / "out" / "count.txt").read_text() == "3"
    assert run.snapshot.state is StageState.SUCCEEDED
    assert run.job.state.value == "succeeded"
    assert run.kinds[0] is clara.NotificationKind.STARTED
    assert run.kinds[-1] is clara.NotificationKind.COMPLETED
    assert clara.NotificationKind.EXECUTE_FINISHED in run.kinds


def test_stage_runner_reports_a_failed_execute_as_a_result(
    clara_stage_runner: StageRunner,
) -> None:
    def broken(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        raise RuntimeError("disk full")

    run = clara_stage_runner(execute=broken, stage="writer")

    assert run.result.outcome is clara.StageOutcome.FAILED
    assert "execute raised RuntimeError: disk full" in run.result.message
    assert run.snapshot.state is StageState.FAILED
    assert run.stage == "writer"


def test_prepare_overlaps_upstream_then_execute_runs(clara_stage_runner: StageRunner) -> None:
    seen: list[str] = []
    stages = [
        StageSpec("upstream", outputs=(OutputRef("/tmp/up"),)),
        StageSpec("mine", inputs=(InputRef("/tmp/up", from_stage="upstream"),)),
    ]

    def prepare(driver: clara.Driver[Any]) -> bool:
        seen.append(f"prepare:{driver.job_name}")
        return True

    def execute(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        seen.append(f"execute:{payload.input().from_stage}")
        return True

    run = clara_stage_runner(execute=execute, prepare=prepare, stages=stages, job_name="j")

    assert run.result.succeeded
    assert seen == ["prepare:j", "execute:upstream"]
    assert run.job.stages["upstream"].state is StageState.SUCCEEDED
    assert run.snapshot.events.index("prepare_started") < run.snapshot.events.index("inputs_ready")


def test_failed_upstream_cancels_the_stage_without_execute(
    clara_stage_runner: StageRunner,
) -> None:
    executed: list[bool] = []
    cleaned: list[bool] = []
    stages = [StageSpec("up"), StageSpec("down", inputs=(InputRef("/x", from_stage="up"),))]

    run = clara_stage_runner(
        execute=lambda d, p: executed.append(True) or True,
        cleanup=lambda d: cleaned.append(True) or True,
        stages=stages,
        upstream={"up": "failed"},
    )

    assert run.result.outcome is clara.StageOutcome.CANCELLED
    assert "upstream" in run.result.message
    assert executed == [] and cleaned == [True]
    assert run.snapshot.state is StageState.CANCELLED
    assert clara.NotificationKind.CANCELLED in run.kinds


def test_stages_downstream_of_the_stage_end_after_it(clara_stage_runner: StageRunner) -> None:
    stages = [
        StageSpec("up"),
        StageSpec("mine", inputs=(InputRef("/u", from_stage="up"),)),
        StageSpec("down", inputs=(InputRef("/m", from_stage="mine"),)),
        StageSpec("last", inputs=(InputRef("/d", from_stage="down"),)),
    ]

    run = clara_stage_runner(execute=lambda d, p: True, stage="mine", stages=stages)

    assert run.result.succeeded
    assert run.job.state.value == "succeeded"
    down, mine = run.job.stages["down"], run.job.stages["mine"]
    # The platform's rule holds for the helper too: "down" succeeded only once its input was.
    assert down.ready_at is not None and mine.ended_at is not None
    assert down.ready_at >= mine.ended_at


def test_stages_downstream_of_a_failed_stage_are_cancelled(
    clara_stage_runner: StageRunner,
) -> None:
    stages = [StageSpec("mine"), StageSpec("down", inputs=(InputRef("/m", from_stage="mine"),))]

    run = clara_stage_runner(
        execute=lambda d, p: False, stage="mine", stages=stages, upstream={"down": "succeeded"}
    )

    assert run.snapshot.state is StageState.FAILED
    assert run.job.stages["down"].state is StageState.CANCELLED


def test_run_stage_rejects_bad_arguments(clara_platform: Any) -> None:
    with pytest.raises(ValueError, match="'ghost' is not one of the stages"):
        run_stage(clara_platform, stage="ghost", stages=[StageSpec("a")])
    with pytest.raises(ValueError, match="upstream: 'b' is not another stage"):
        run_stage(clara_platform, stages=[StageSpec("a")], upstream={"b": "failed"})
    with pytest.raises(ValueError, match=r"upstream\['a'\]: 'maybe' is not an outcome"):
        run_stage(clara_platform, stages=[StageSpec("a"), StageSpec("b")], upstream={"a": "maybe"})


def test_run_stage_times_out_and_cancels(clara_stage_runner: StageRunner) -> None:
    def slow(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        while not driver.cancel_requested:
            time.sleep(0.01)
        return False

    with pytest.raises(TimeoutError, match=r"did not complete within 0\.5 s"):
        clara_stage_runner(execute=slow, wait=0.5)


def test_pipeline_runner_runs_the_example(clara_pipeline_runner: PipelineRunner) -> None:
    run = clara_pipeline_runner(EXAMPLE / "pipeline.yaml", EXAMPLE / "input")

    assert run.succeeded, run.describe()
    assert run.stage_states == dict.fromkeys(
        ["load-volume", "segment", "statistics", "report"], StageState.SUCCEEDED
    )
    assert run.exit_codes == dict.fromkeys(run.stage_states, 0)
    assert run.status.state == "STOPPED" and run.status.status == "HEALTHY"
    report = json.loads((run.output("report") / "report.json").read_text())
    assert sorted(c["class"] for c in report["components"]) == [
        "lesion candidate",
        "organ",
        "organ",
    ]
    assert (run.output("segment", "segmentation") / "components.json").is_file()
    assert "report: 2 organ(s), 1 lesion candidate(s)" in run.log("report")


def test_pipeline_runner_shows_a_failing_operator(
    clara_pipeline_runner: PipelineRunner, tmp_path: Path
) -> None:
    (tmp_path / "op.py").write_text(
        "import clara, sys\n"
        "print('about to fail', flush=True)\n"
        "d = clara.Driver(execute=lambda d, p: False)\n"
        "d.start()\n"
        "sys.exit(0 if d.wait_for_completion().succeeded else 3)\n"
    )
    (tmp_path / "p.yaml").write_text(
        "api-version: 0.4.0\nname: failing\noperators:\n"
        "- name: only\n  container: {image: t/only, command: [python, op.py]}\n"
        "  input: [{path: /input}]\n  output: [{path: /output}]\n"
        "- name: after\n  container: {image: t/after, command: [python, op.py]}\n"
        "  input: [{from: only, path: /input}]\n  output: [{path: /output}]\n"
    )
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "f").write_text("x")

    run = clara_pipeline_runner(tmp_path / "p.yaml", tmp_path / "in")

    assert not run.succeeded
    assert run.stage_states == {"only": StageState.FAILED, "after": StageState.CANCELLED}
    assert run.exit_codes["only"] == 3
    assert "about to fail" in run.log("only")
    assert "execute returned False" in run.job.stages["only"].message
    assert "only: failed" in run.describe()


def test_run_pipeline_names_a_missing_file(clara_pipeline_runner: PipelineRunner) -> None:
    with pytest.raises(FileNotFoundError, match=r"pipeline nowhere\.yaml: no such file"):
        clara_pipeline_runner("nowhere.yaml", EXAMPLE / "input")


def test_run_stage_passes_the_stage_token_when_the_platform_requires_one() -> None:
    with MockPlatform(require_stage_tokens=True) as platform:
        run = run_stage(platform, execute=lambda d, p: True)
        refused = run_stage(
            platform,
            execute=lambda d, p: True,
            driver_options={
                "stage_token": "not-the-token-of-this-stage",
                "timeouts": clara.DriverTimeouts(connect=timedelta(seconds=2)),
            },
        )
    assert run.result.succeeded and run.result.reported
    assert refused.result.outcome is clara.StageOutcome.FAILED
    assert not refused.result.reported
