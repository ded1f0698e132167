"""examples/dicom_segmentation: the whole pipeline, by `clara-mock run` and the plugin."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from _dicom_example import (
    CLARA_MOCK,
    EXAMPLE,
    INPUT,
    ROOT,
    STAGES,
    bad_input,
    check_seg,
    check_volumes,
    files_in,
    pipeline_variables,
    write,
)

from server_mock._definition import parse_pipeline_definition

# ----------------------------------------------------------------------------- pipeline


def test_pipeline_definition_parses_and_wires_the_operators(ex: SimpleNamespace) -> None:
    definition = parse_pipeline_definition((EXAMPLE / "pipeline.yaml").read_text())
    assert definition.api_version == "0.4.0"
    assert definition.topological_order() == STAGES
    upstream = {op.name: sorted(op.upstream) for op in definition.operators}
    assert upstream == {
        "dicom-reader": [],
        "segment": ["dicom-reader"],
        "seg-writer": ["segment"],
        "statistics": ["dicom-reader", "segment"],
        "report": ["seg-writer", "statistics"],
    }
    seg_writer = definition.operator("seg-writer")
    assert [i.from_operator for i in seg_writer.inputs] == [None, "segment"]  # the payload
    for op in definition.operators:
        assert op.container.image == f"clara-examples/{op.name}"
        assert op.container.command[0] == "python"
        assert (EXAMPLE / op.container.command[1]).is_file()
    variables = pipeline_variables()
    ex.segment.SegmentConfig.from_env(variables["segment"])
    ex.seg_writer.SegWriterConfig.from_env(variables["seg-writer"])
    ex.report.ReportConfig.from_env(variables["report"])


def test_clara_mock_run_on_the_committed_input(
    ex: SimpleNamespace, tmp_path: Path, committed: Any
) -> None:
    output = tmp_path / "out"
    result = subprocess.run(
        [
            str(CLARA_MOCK),
            "run",
            "examples/dicom_segmentation/pipeline.yaml",
            "--input",
            "examples/dicom_segmentation/input",
            "--output",
            str(output),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    for stage in STAGES:
        assert f"] {stage}: succeeded" in result.stdout
    check_seg(ex, output / "seg-writer" / "seg" / "seg.dcm", committed, INPUT)
    statistics = json.loads((output / "statistics" / "statistics" / "statistics.json").read_text())
    check_volumes(ex, committed, statistics)
    report = json.loads((output / "report" / "report.json").read_text())
    assert [c["voxels"] for c in report["components"]] == [1704, 780, 216]
    markdown = (output / "report" / "report.md").read_text()
    assert markdown.startswith("# Synthetic CT phantom: segmentation report\n")
    assert "| 1 | dense region 1 | 1704 | 2181.1 |" in markdown


def test_pipeline_runner_on_a_shuffled_signed_anisotropic_series(
    ex: SimpleNamespace, clara_pipeline_runner: Any, tmp_path: Path
) -> None:
    phantom = write(
        ex,
        tmp_path / "input",
        shape=(30, 56, 48),
        pixel_spacing=(0.7, 0.9),
        slice_spacing=1.25,
        orientation=(1, 0, 0, 0, -1, 0),
        descending=True,
        shuffle=True,
        pixel_representation=1,
        bits_stored=16,
        rescale_intercept=0.0,
    )

    run = clara_pipeline_runner(EXAMPLE / "pipeline.yaml", tmp_path / "input")

    assert run.succeeded, run.describe()
    check_seg(ex, run.output("seg-writer", "seg") / "seg.dcm", phantom, tmp_path / "input")
    statistics = json.loads(
        (run.output("statistics", "statistics") / "statistics.json").read_text()
    )
    check_volumes(ex, phantom, statistics)
    assert (run.output("report") / "report.md").is_file()


def test_pipeline_runner_on_bad_input_fails_the_reader_and_writes_nothing(
    ex: SimpleNamespace, clara_pipeline_runner: Any, tmp_path: Path
) -> None:
    bad_input(ex, tmp_path / "input", "not-dicom")

    run = clara_pipeline_runner(EXAMPLE / "pipeline.yaml", tmp_path / "input")

    assert not run.succeeded
    states = {name: state.value for name, state in run.stage_states.items()}
    assert states["dicom-reader"] == "failed", run.describe()
    assert all(states[stage] == "cancelled" for stage in STAGES[1:]), run.describe()
    assert "notes.txt: not a DICOM file" in run.log("dicom-reader")
    assert files_in(run.outputs) == []
