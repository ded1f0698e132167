"""examples/dicom_segmentation: segment, statistics, seg-writer, report, their helpers."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from _dicom_example import (
    INPUT,
    run_chain,
)

# ----------------------------------------------------------------------------- segment


def test_label_components_connectivity(ex: SimpleNamespace) -> None:
    mask = np.zeros((3, 3, 3), dtype=bool)
    mask[0, 0, 0] = mask[0, 0, 1] = True  # two voxels sharing a face
    mask[1, 1, 1] = True  # shares an edge with (0, 0, 1)
    mask[2, 2, 2] = True  # shares a corner with (1, 1, 1)

    counts = [ex.segment.label_components(mask, c)[1] for c in (6, 18, 26)]

    assert counts == [3, 2, 1]
    labels, _ = ex.segment.label_components(mask, 6)
    assert labels.dtype == np.int32
    assert (labels[0, 0, 0], labels[0, 0, 1], labels[1, 1, 1], labels[2, 2, 2]) == (1, 1, 2, 3)


def test_segment_thresholds_inclusively_discards_small_and_orders_by_size(
    ex: SimpleNamespace,
) -> None:
    volume = np.full((4, 6, 6), -1000.0, dtype=np.float32)
    volume[0, 0, 0] = 150.0  # exactly LOWER_HU: kept as foreground, but one voxel is small
    volume[1:3, 1:3, 1:3] = 400.0  # 8 voxels
    volume[0:4, 5, 0:4] = 3071.0  # 16 voxels, exactly UPPER_HU
    volume[3, 0, 5] = 3072.0  # above UPPER_HU: background
    config = ex.segment.SegmentConfig(min_component_mm3=4.0)

    labels, document = ex.segment.segment_volume(volume, 2.0, config)  # 2 mm³ per voxel

    assert document["foreground_voxels"] == 25
    assert (document["count"], document["discarded"], document["discarded_voxels"]) == (2, 1, 1)
    assert [c["voxels"] for c in document["components"]] == [16, 8]
    assert document["components"][0]["bbox"] == {"min": [0, 5, 0], "max": [3, 5, 3]}
    assert labels.dtype == np.uint8
    assert labels[0, 5, 0] == 1 and labels[1, 1, 1] == 2
    assert labels[0, 0, 0] == 0 and labels[3, 0, 5] == 0


def test_segment_refuses_too_many_components(ex: SimpleNamespace) -> None:
    volume = np.full((1, 1, 9), 500.0)
    volume[0, 0, 1::2] = 0.0  # 5 separate voxels
    config = ex.segment.SegmentConfig(min_component_mm3=0.0, max_components=4)
    with pytest.raises(ValueError, match=r"5 components .* more than MAX_COMPONENTS \(4\)"):
        ex.segment.segment_volume(volume, 1.0, config)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOWER_HU": "abc"}, "LOWER_HU must be a number, got 'abc'"),
        ({"LOWER_HU": "500", "UPPER_HU": "100"}, r"UPPER_HU \(100\) must be at least LOWER_HU"),
        ({"CONNECTIVITY": "8"}, "CONNECTIVITY must be 6, 18 or 26, got 8"),
        ({"MIN_COMPONENT_MM3": "-1"}, "MIN_COMPONENT_MM3 must be >= 0"),
        ({"MAX_COMPONENTS": "256"}, "MAX_COMPONENTS must be <= 255"),
        ({"MAX_COMPONENTS": "0"}, "MAX_COMPONENTS must be >= 1"),
    ],
)
def test_segment_config_errors(ex: SimpleNamespace, env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ex.segment.SegmentConfig.from_env(env)


# ----------------------------------------------------------------------------- statistics


def small_geometry(shape: list[int]) -> dict[str, Any]:
    # Index (slice, row, column) to patient (x, y, z): columns along x, rows along y, slices
    # along z; spacing 2 mm between slices, 0.5 mm between rows, 0.25 mm between columns.
    matrix = [[0, 0, 0.25, 10.0], [0, 0.5, 0, 20.0], [2.0, 0, 0, 30.0], [0, 0, 0, 1]]
    return {
        "shape": shape,
        "spacing_mm": [2.0, 0.5, 0.25],
        "voxel_volume_mm3": 0.25,
        "index_to_patient": matrix,
        "series_instance_uid": "1.2.3",
    }


def test_statistics_of_a_small_known_volume(ex: SimpleNamespace) -> None:
    volume = np.zeros((2, 3, 4), dtype=np.float32)
    labels = np.zeros((2, 3, 4), dtype=np.uint8)
    labels[0, 0, 0:4] = 1
    volume[0, 0, 0:4] = [100, 200, 300, 400]
    labels[1, 2, 3] = 2
    volume[1, 2, 3] = -5
    components = {
        "count": 2,
        "lower_hu": -10.0,
        "upper_hu": 500.0,
        "components": [{"label": 1, "voxels": 4}, {"label": 2, "voxels": 1}],
    }

    document = ex.stats.compute_statistics(volume, labels, small_geometry([2, 3, 4]), components)

    first, second = document["components"]
    assert (first["voxels"], first["volume_mm3"], first["volume_ml"]) == (4, 1.0, 0.001)
    assert first["hu"] == {"mean": 250.0, "std": 111.8, "min": 100.0, "median": 250.0, "max": 400.0}
    assert first["centroid_index"] == [0.0, 0.0, 1.5]
    assert first["centroid_mm"] == [10.375, 20.0, 30.0]
    assert first["extent_mm"] == [2.0, 0.5, 1.0]
    assert second["centroid_mm"] == [10.75, 21.0, 32.0]
    assert document["total_volume_mm3"] == 1.25
    assert document["threshold_hu"] == [-10.0, 500.0]

    components["components"][1]["voxels"] = 3
    with pytest.raises(ValueError, match=r"label 2: 1 voxels in labels\.npy, 3 in components"):
        ex.stats.compute_statistics(volume, labels, small_geometry([2, 3, 4]), components)
    with pytest.raises(ValueError, match="must have one shape"):
        ex.stats.compute_statistics(volume, labels, small_geometry([2, 3, 5]), components)


# ----------------------------------------------------------------------------- seg-writer


def test_seg_writer_checks_the_source_is_the_segmented_series(
    ex: SimpleNamespace, committed: Any
) -> None:
    series = ex.series.read_series(INPUT)
    geometry = series.geometry()
    ex.seg_writer.check_source(series, geometry)
    with pytest.raises(ValueError, match=r"the labels were computed from series 1\.2\.3"):
        ex.seg_writer.check_source(series, {**geometry, "series_instance_uid": "1.2.3"})
    reordered = {**geometry, "sop_instance_uids": geometry["sop_instance_uids"][::-1]}
    with pytest.raises(ValueError, match="not those, in the same order"):
        ex.seg_writer.check_source(series, reordered)
    labels = np.zeros((24, 64, 64), dtype=np.uint8)
    labels[3, 3, 3] = 2
    one = {**pipeline_segmentation(), "components": [{"label": 1, "voxels": 1}]}
    with pytest.raises(ValueError, match=r"labels\.npy holds labels \[2\] not in components"):
        ex.seg_writer.build_segmentation(series, labels, one, ex.seg_writer.SegWriterConfig())
    with pytest.raises(ValueError, match=r"labels of shape \(2, 64, 64\)"):
        ex.seg_writer.build_segmentation(series, labels[:2], one, ex.seg_writer.SegWriterConfig())


def pipeline_segmentation() -> dict[str, Any]:
    return {"lower_hu": 150.0, "upper_hu": 3071.0, "connectivity": 6, "min_component_mm3": 10.0}


def test_no_component_writes_a_summary_and_no_seg(ex: SimpleNamespace, tmp_path: Path) -> None:
    results_dir = tmp_path / "reader"
    results_dir.mkdir()
    ex.reader.run(INPUT, results_dir)
    for name in ("segment", "seg", "stats", "report"):
        (tmp_path / name).mkdir()
    nothing = ex.segment.SegmentConfig(lower_hu=3000.0)
    ex.segment.run(results_dir, tmp_path / "segment", nothing)
    config = ex.seg_writer.SegWriterConfig()

    summary = ex.seg_writer.run(INPUT, tmp_path / "segment", tmp_path / "seg", config)
    ex.stats.run(results_dir, tmp_path / "segment", tmp_path / "stats")
    report = ex.report.run(
        tmp_path / "seg", tmp_path / "stats", tmp_path / "report", ex.report.ReportConfig()
    )

    assert summary["file"] is None and summary["segments"] == []
    assert [p.name for p in (tmp_path / "seg").iterdir()] == ["seg.json"]
    assert report["seg"] is None and report["findings"]["count"] == 0
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "- DICOM SEG: none (no component to encode)" in markdown
    assert "No component within the threshold." in markdown


def test_seg_writer_config(ex: SimpleNamespace) -> None:
    config = ex.seg_writer.SegWriterConfig.from_env({"SERIES_NUMBER": "12", "SEGMENT_LABEL": " "})
    assert (config.series_number, config.segment_label) == (12, "dense region")
    with pytest.raises(ValueError, match="SERIES_NUMBER must be >= 1"):
        ex.seg_writer.SegWriterConfig.from_env({"SERIES_NUMBER": "0"})
    with pytest.raises(ValueError, match="SEGMENT_LABEL must be at most 60 characters"):
        ex.seg_writer.SegWriterConfig.from_env({"SEGMENT_LABEL": "x" * 61})


# ----------------------------------------------------------------------------- report


STATISTICS = {
    "series_instance_uid": "1.2.3",
    "shape": [2, 3, 4],
    "spacing_mm": [2.0, 0.5, 0.25],
    "voxel_volume_mm3": 0.25,
    "threshold_hu": [150.0, 3071.0],
    "count": 1,
    "total_volume_mm3": 1.0,
    "components": [
        {
            "label": 1,
            "voxels": 4,
            "volume_mm3": 1.0,
            "volume_ml": 0.001,
            "hu": {"mean": 250.0, "std": 111.8, "min": 100.0, "median": 250.0, "max": 400.0},
            "centroid_index": [0.0, 0.0, 1.5],
            "centroid_mm": [10.375, 20.0, 30.0],
            "extent_mm": [2.0, 0.5, 1.0],
        }
    ],
}
SEG = {
    "file": "seg.dcm",
    "sop_instance_uid": "1.2.9",
    "series_instance_uid": "1.2.8",
    "series_number": 900,
    "series_description": "Segmentation",
    "referenced_series_instance_uid": "1.2.3",
    "source_instances": 2,
    "frames": 1,
    "segments": [{"number": 1, "label": "dense region 1", "description": "", "voxels": 4}],
}


def test_report_from_small_inputs(ex: SimpleNamespace) -> None:
    config = ex.report.ReportConfig(title="Test report")

    report = ex.report.build_report(SEG, STATISTICS, config, {"id": "j-1", "name": "demo"})

    (row,) = report["components"]
    assert (row["segment"], row["segment_label"], row["volume_mm3"]) == (1, "dense region 1", 1.0)
    assert "label" not in row
    assert report["seg"]["sop_instance_uid"] == "1.2.9"
    markdown = ex.report.render_markdown(report)
    assert markdown.startswith("# Test report\n\n- Job: demo (`j-1`)\n")
    assert "spacing 2 x 0.5 x 0.25 mm (0.25 mm³ per voxel)" in markdown
    assert (
        "- DICOM SEG: `seg.dcm`, SOP instance `1.2.9`, series 900 `1.2.8`, 1 frame(s)" in markdown
    )
    assert (
        "| 1 | dense region 1 | 4 | 1.0 | 0.001 | 250.0 ± 111.8 | 100..400 "
        "| (10.375, 20, 30) | 2 x 0.5 x 1 |" in markdown
    )


@pytest.mark.parametrize(
    ("seg", "message"),
    [
        ({**SEG, "referenced_series_instance_uid": "9.9"}, "references series 9.9"),
        (
            {**SEG, "segments": [{**SEG["segments"][0], "voxels": 5}]},  # type: ignore[dict-item]
            r"segments \(number: voxels\) \{1: 5\} differ from the measured components \{1: 4\}",
        ),
        (None, r"no seg\.dcm but 1 measured component"),
    ],
)
def test_report_refuses_a_seg_that_does_not_match(
    ex: SimpleNamespace, seg: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ex.report.build_report(seg, STATISTICS, ex.report.ReportConfig())


def test_report_execute_finds_its_inputs_by_stage(
    ex: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = run_chain(ex, INPUT, tmp_path / "chain")
    monkeypatch.setenv("REPORT_TITLE", "From the environment")
    entries = (
        entry(results["folders"]["statistics"], "statistics", "statistics"),
        entry(results["folders"]["seg-writer"], "seg-writer", "seg"),
    )
    out = entry(tmp_path / "out")
    payload = SimpleNamespace(input_entries=entries, output_entries=(out,))

    assert ex.report.execute(fake_driver("report"), payload) is True

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["title"] == "From the environment"
    assert report["job"] == {"id": str(uuid.UUID(int=7)), "name": "demo-job"}
    payload = SimpleNamespace(input_entries=entries[:1], output_entries=(out,))
    assert ex.report.execute(fake_driver("report"), payload) is False  # no seg-writer input


def fake_driver(stage: str) -> SimpleNamespace:
    return SimpleNamespace(
        job_id=uuid.UUID(int=7),
        job_name="demo-job",
        stage_name=stage,
        stage_timeout=timedelta(seconds=120),
    )


def entry(path: Path, from_stage: str = "", name: str = "") -> SimpleNamespace:
    path.mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(name=name, path=str(path), from_stage=from_stage)


# ----------------------------------------------------------------------------- common


def test_write_outputs_writes_all_or_nothing(ex: SimpleNamespace, tmp_path: Path) -> None:
    written = ex.common.write_outputs(tmp_path, {"a.json": b"{}", "b.npy": b"x"})
    assert [p.name for p in written] == ["a.json", "b.npy"]
    (tmp_path / "c").mkdir()  # a folder where a file should go: the rename fails
    with pytest.raises(IsADirectoryError):
        ex.common.write_outputs(tmp_path, {"d.json": b"{}", "c": b"x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.npy", "c"]
    with pytest.raises(ValueError, match="plain names"):
        ex.common.write_outputs(tmp_path, {"../e": b""})


def test_payload_entry_lookup(ex: SimpleNamespace, tmp_path: Path) -> None:
    job = entry(tmp_path / "job")
    labels = entry(tmp_path / "labels", "segment", "labels")
    assert ex.common.input_folder((labels,)) == tmp_path / "labels"
    assert ex.common.input_folder((job, labels), "") == tmp_path / "job"
    assert ex.common.input_folder((job, labels), "segment", "labels") == tmp_path / "labels"
    with pytest.raises(LookupError, match="more than one input entry "):
        ex.common.input_folder((job, labels))
    with pytest.raises(LookupError, match=r"no input entry from statistics \(entries: <job>"):
        ex.common.input_folder((job, labels), "statistics")
    with pytest.raises(LookupError, match="no output entry named x"):
        ex.common.output_folder((job,), "x")
