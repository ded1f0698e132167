"""Shared by the tests of examples/dicom_segmentation: paths, and checks of the outputs.

The phantom of ``make_input.py`` knows which voxel belongs to which object, so the
segmentation is checked voxel for voxel (and the DICOM SEG frame for frame). Its volumes are
also checked against the objects' exact volumes, within the bounds that sampling a shape at
voxel centres allows (``Sphere.volume_bounds`` / ``Box.volume_bounds`` in ``make_input.py``).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import yaml
from pydicom.uid import MRImageStorage, SegmentationStorage

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "dicom_segmentation"
OPERATORS = EXAMPLE / "operators"
INPUT = EXAMPLE / "input"
CLARA_MOCK = Path(sys.executable).parent / "clara-mock"
STAGES = ("dicom-reader", "segment", "seg-writer", "statistics", "report")


def write(ex: SimpleNamespace, folder: Path, **spec: Any) -> Any:
    return ex.make_input.write_series(folder, ex.make_input.SeriesSpec(**spec))


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def run_chain(ex: SimpleNamespace, input_dir: Path, work: Path) -> dict[str, Any]:
    """Every operator's ``run`` in pipeline order, in-process; returns their documents."""
    folders = {stage: work / stage for stage in STAGES}
    for folder in folders.values():
        folder.mkdir(parents=True)
    variables = pipeline_variables()
    results = {
        "dicom-reader": ex.reader.run(input_dir, folders["dicom-reader"]),
        "segment": ex.segment.run(
            folders["dicom-reader"],
            folders["segment"],
            ex.segment.SegmentConfig.from_env(variables["segment"]),
        ),
        "seg-writer": ex.seg_writer.run(
            input_dir,
            folders["segment"],
            folders["seg-writer"],
            ex.seg_writer.SegWriterConfig.from_env(variables["seg-writer"]),
        ),
        "statistics": ex.stats.run(
            folders["dicom-reader"], folders["segment"], folders["statistics"]
        ),
    }
    results["report"] = ex.report.run(
        folders["seg-writer"],
        folders["statistics"],
        folders["report"],
        ex.report.ReportConfig.from_env(variables["report"]),
    )
    return {"folders": folders, **results}


def pipeline_variables() -> dict[str, dict[str, str]]:
    pipeline = yaml.safe_load((EXAMPLE / "pipeline.yaml").read_text())
    return {op["name"]: op.get("variables", {}) for op in pipeline["operators"]}


def expected_labels(ex: SimpleNamespace, phantom: Any) -> np.ndarray:
    """The phantom's objects labelled as the segmentation must label them (specks dropped)."""
    labels = phantom.labels.copy()
    labels[labels > len(ex.make_input.OBJECTS)] = 0
    return labels


def check_volumes(ex: SimpleNamespace, phantom: Any, statistics: dict[str, Any]) -> None:
    """Voxel counts are the phantom's exactly; volumes are within the sampling bounds."""
    spec = phantom.spec
    objects = ex.make_input.OBJECTS
    assert statistics["count"] == len(objects)
    for number, (item, row) in enumerate(zip(objects, statistics["components"], strict=True), 1):
        assert row["label"] == number
        assert row["voxels"] == phantom.voxel_count(number), item.name
        assert row["volume_mm3"] == pytest.approx(row["voxels"] * spec.voxel_volume_mm3, abs=0.01)
        low, high = item.volume_bounds(spec.spacing)
        assert low <= row["volume_mm3"] <= high, (item.name, low, row["volume_mm3"], high)
        # The noise has mean 0 and a standard deviation of 20 HU: the mean of >= 100 voxels
        # is within a few HU of the object's density (slope 0.5 quantizes to 0.5 HU).
        assert row["hu"]["mean"] == pytest.approx(item.hu, abs=6), item.name
        assert item.hu - 61 <= row["hu"]["min"] <= row["hu"]["max"] <= item.hu + 61


def check_seg(ex: SimpleNamespace, seg_path: Path, phantom: Any, input_dir: Path) -> None:
    """The SEG references the input series, and its frames are the phantom's objects."""
    seg = pydicom.dcmread(seg_path)
    assert seg.Modality == "SEG"
    assert seg.SOPClassUID == SegmentationStorage
    assert seg.SegmentationType == "BINARY"
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in files_in(input_dir)]
    source_uids = {str(s.SOPInstanceUID) for s in sources}
    assert source_uids == set(phantom.sop_instance_uids)
    assert seg.StudyInstanceUID == phantom.uids["study"]
    assert seg.SeriesInstanceUID != phantom.uids["series"]
    assert seg.FrameOfReferenceUID == phantom.uids["frame_of_reference"]
    assert seg.PatientID == sources[0].PatientID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == phantom.uids["series"]
    instances = {
        str(item.ReferencedSOPInstanceUID) for item in referenced.ReferencedInstanceSequence
    }
    assert instances == source_uids  # every referenced instance is in the input, and all are
    objects = ex.make_input.OBJECTS
    assert [s.SegmentNumber for s in seg.SegmentSequence] == list(range(1, len(objects) + 1))
    for item in seg.SegmentSequence:
        assert item.SegmentLabel == f"dense region {item.SegmentNumber}"
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Lesion"
    segmentation = hd.seg.Segmentation.from_dataset(seg)
    labels = segmentation.get_pixels_by_source_instance(
        source_sop_instance_uids=phantom.sop_instance_uids,
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    np.testing.assert_array_equal(labels, expected_labels(ex, phantom))
    # Frames are stored only for the slices where a segment has voxels.
    expected_frames = sum(
        int(np.any(phantom.labels[k] == n))
        for k in range(phantom.spec.shape[0])
        for n in range(1, len(objects) + 1)
    )
    assert seg.NumberOfFrames == expected_frames


# -- bad input: each case fails with a message naming the culprit, and writes nothing


def _not_dicom(folder: Path) -> None:
    (folder / "notes.txt").write_text("not an image\n")


def _two_series(folder: Path, ex: SimpleNamespace) -> None:
    write(ex, folder / "other", series_number=2)


def _missing_slice(folder: Path) -> None:
    (folder / "CT0010.dcm").unlink()
    (folder / "CT0011.dcm").unlink()


def _duplicate_slice(folder: Path) -> None:
    ds = pydicom.dcmread(folder / "CT0007.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "copy-of-7.dcm")


def _mr_image(folder: Path) -> None:
    ds = pydicom.dcmread(folder / "CT0003.dcm")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.save_as(folder / "CT0003.dcm")


def _tilted_orientation(folder: Path) -> None:
    ds = pydicom.dcmread(folder / "CT0004.dcm")
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.98, 0.198997]
    ds.save_as(folder / "CT0004.dcm")


def _truncated_pixels(folder: Path) -> None:
    ds = pydicom.dcmread(folder / "CT0006.dcm")
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(folder / "CT0006.dcm")


BAD_INPUTS = {
    "not-dicom": (_not_dicom, [r"notes\.txt: not a DICOM file"]),
    "two-series": (_two_series, ["the input holds 2 series", "other/CT0001.dcm", "24 file"]),
    "missing-slice": (
        _missing_slice,
        [r"gap in the slice positions", r"-67 -> -61 mm \(CT0009\.dcm -> CT0012\.dcm\)", "2 slice"],
    ),
    "duplicate-slice": (_duplicate_slice, [r"CT0007\.dcm and copy-of-7\.dcm", "same position"]),
    "not-ct": (_mr_image, [r"CT0003\.dcm: SOP class .* is not CT Image Storage"]),
    "other-orientation": (_tilted_orientation, [r"CT0004\.dcm: ImageOrientationPatient"]),
    "truncated-pixels": (_truncated_pixels, [r"CT0006\.dcm: cannot decode the pixel data"]),
}


def bad_input(ex: SimpleNamespace, folder: Path, case: str) -> list[str]:
    shutil.copytree(INPUT, folder)
    make, patterns = BAD_INPUTS[case]
    if make is _two_series:
        _two_series(folder, ex)
    else:
        make(folder)
    return patterns
