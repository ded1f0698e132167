"""Tests of examples/dicom_segmentation: the operators' functions, and the whole pipeline.

The phantom of ``make_input.py`` knows which voxel belongs to which object, so the
segmentation is checked voxel for voxel (and the DICOM SEG frame for frame). Its volumes are
also checked against the objects' exact volumes, within the bounds that sampling a shape at
voxel centres allows (``Sphere.volume_bounds`` / ``Box.volume_bounds`` in ``make_input.py``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import yaml
from pydicom.uid import MRImageStorage, SegmentationStorage

from server_mock._definition import parse_pipeline_definition

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "dicom_segmentation"
OPERATORS = EXAMPLE / "operators"
INPUT = EXAMPLE / "input"
CLARA_MOCK = Path(sys.executable).parent / "clara-mock"
STAGES = ("dicom-reader", "segment", "seg-writer", "statistics", "report")


def _load(mp: pytest.MonkeyPatch, name: str, path: Path) -> ModuleType:
    """Import ``path`` as module ``name``; the sys.modules entry is undone with ``mp``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    mp.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ex() -> Iterator[SimpleNamespace]:
    """The example's modules, imported with its folders on a temporary sys.path.

    Operators get unique module names (no clash with other tests' modules); the helpers keep
    the names the operators import them by.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "path", [str(OPERATORS), str(EXAMPLE), *sys.path])
        common = _load(mp, "common", OPERATORS / "common.py")
        series = _load(mp, "dicom_series", OPERATORS / "dicom_series.py")
        yield SimpleNamespace(
            common=common,
            series=series,
            reader=_load(mp, "dicomseg_dicom_reader", OPERATORS / "dicom_reader.py"),
            segment=_load(mp, "dicomseg_segment", OPERATORS / "segment.py"),
            seg_writer=_load(mp, "dicomseg_seg_writer", OPERATORS / "seg_writer.py"),
            stats=_load(mp, "dicomseg_component_stats", OPERATORS / "component_stats.py"),
            report=_load(mp, "dicomseg_report", OPERATORS / "report.py"),
            make_input=_load(mp, "dicomseg_make_input", EXAMPLE / "make_input.py"),
        )


@pytest.fixture(scope="module")
def committed(ex: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The phantom of the committed input (regenerated elsewhere, to know its voxels)."""
    return ex.make_input.write_series(tmp_path_factory.mktemp("committed"))


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


# ----------------------------------------------------------------------------- make_input


def test_committed_input_is_what_make_input_writes(committed: Any) -> None:
    names = sorted(p.name for p in files_in(INPUT))
    assert names == sorted(committed.files) == [f"CT{n:04d}.dcm" for n in range(1, 25)]
    assert sum(p.stat().st_size for p in files_in(INPUT)) < 300_000
    for name in names:
        again = pydicom.dcmread(committed.folder / name)
        assert pydicom.dcmread(INPUT / name) == again, f"re-run make_input.py ({name})"


def test_phantom_objects_fit_and_bound_their_volumes(ex: SimpleNamespace) -> None:
    spec = ex.make_input.SeriesSpec()
    for item in ex.make_input.OBJECTS:
        low, high = item.volume_bounds(spec.spacing)
        assert low < item.volume_mm3 < high
    with pytest.raises(ValueError, match="does not fit"):
        ex.make_input.check_covered(ex.make_input.SeriesSpec(shape=(8, 64, 64)))
    with pytest.raises(ValueError, match="pixel_representation must be 0 or 1"):
        ex.make_input.SeriesSpec(pixel_representation=2)


# ----------------------------------------------------------------------------- dicom-reader


def test_reader_returns_the_encoded_hu_and_the_geometry(
    ex: SimpleNamespace, committed: Any
) -> None:
    volume, geometry = ex.reader.read_volume(INPUT)

    assert volume.dtype == np.float32
    np.testing.assert_array_equal(volume, committed.hu)
    assert geometry["shape"] == [24, 64, 64]
    assert geometry["spacing_mm"] == pytest.approx([2.0, 0.8, 0.8])
    assert geometry["voxel_volume_mm3"] == pytest.approx(1.28)
    assert geometry["slice_normal"] == pytest.approx([0.0, 0.0, 1.0])
    assert geometry["series_instance_uid"] == committed.uids["series"]
    assert geometry["study_instance_uid"] == committed.uids["study"]
    assert geometry["sop_instance_uids"] == committed.sop_instance_uids
    assert geometry["files"] == committed.files
    assert geometry["pixel_representation"] == [0]
    assert geometry["rescale"] == [{"slope": 1.0, "intercept": -1024.0}]
    assert geometry["hu_range"] == [float(committed.hu.min()), float(committed.hu.max())]
    # The index-to-patient matrix puts each slice's first voxel at its ImagePositionPatient.
    matrix = np.asarray(geometry["index_to_patient"])
    for k in (0, 11, 23):
        ds = pydicom.dcmread(INPUT / committed.files[k], stop_before_pixels=True)
        corner = matrix @ [k, 0, 0, 1]
        assert corner[:3] == pytest.approx([float(v) for v in ds.ImagePositionPatient])
        assert geometry["slice_positions_mm"][k] == pytest.approx(corner[:3].tolist())
    assert (matrix @ [0, 1, 2, 1])[:2] - matrix[:2, 3] == pytest.approx([1.6, 0.8])


OBLIQUE = (
    math.cos(0.5),
    math.sin(0.5),
    0.0,
    -math.sin(0.5) * math.cos(0.3),
    math.cos(0.5) * math.cos(0.3),
    math.sin(0.3),
)
VARIANTS = {
    "shuffled-file-names": {"shuffle": True},
    "descending-instances": {"descending": True, "shuffle": True},
    "signed-pixels": {"pixel_representation": 1, "bits_stored": 16, "rescale_intercept": 0.0},
    "slope-0.5": {"bits_stored": 16, "rescale_slope": 0.5, "rescale_intercept": -1024.0},
    "anisotropic": {"shape": (30, 56, 48), "pixel_spacing": (0.7, 0.9), "slice_spacing": 1.25},
    "normal-towards-feet": {"orientation": (1, 0, 0, 0, -1, 0)},
    "coronal": {"orientation": (1, 0, 0, 0, 0, -1), "centre": (10.0, 40.0, -300.0)},
    "oblique": {"orientation": OBLIQUE, "slice_spacing": 2.5, "shape": (20, 64, 64)},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_any_valid_series_is_segmented_voxel_for_voxel(
    ex: SimpleNamespace, tmp_path: Path, variant: str
) -> None:
    phantom = write(ex, tmp_path / "input", **VARIANTS[variant])

    results = run_chain(ex, tmp_path / "input", tmp_path / "work")

    volume = ex.common.read_npy(results["folders"]["dicom-reader"] / "volume.npy")
    np.testing.assert_array_equal(volume, phantom.hu)
    assert results["dicom-reader"]["sop_instance_uids"] == phantom.sop_instance_uids
    assert results["dicom-reader"]["slice_spacing_mm"] == pytest.approx(phantom.spec.slice_spacing)
    labels = ex.common.read_npy(results["folders"]["segment"] / "labels.npy")
    np.testing.assert_array_equal(labels, expected_labels(ex, phantom))
    assert results["segment"]["discarded"] == len(ex.make_input.SPECKS)
    check_volumes(ex, phantom, results["statistics"])
    check_seg(ex, results["folders"]["seg-writer"] / "seg.dcm", phantom, tmp_path / "input")
    assert results["report"]["findings"]["count"] == 3


def test_reader_accepts_sub_folders_and_skips_a_dicomdir(
    ex: SimpleNamespace, tmp_path: Path, committed: Any
) -> None:
    nested = tmp_path / "input" / "SERIES1"
    shutil.copytree(INPUT, nested)
    dicomdir = pydicom.dcmread(INPUT / "CT0001.dcm")
    dicomdir.file_meta.MediaStorageSOPClassUID = pydicom.uid.MediaStorageDirectoryStorage
    dicomdir.save_as(tmp_path / "input" / "DICOMDIR")

    volume, geometry = ex.reader.read_volume(tmp_path / "input")

    np.testing.assert_array_equal(volume, committed.hu)
    assert geometry["files"] == [f"SERIES1/{name}" for name in committed.files]


def test_each_slice_is_rescaled_with_its_own_slope_and_intercept(
    ex: SimpleNamespace, tmp_path: Path, committed: Any
) -> None:
    shutil.copytree(INPUT, tmp_path / "input")
    ds = pydicom.dcmread(tmp_path / "input" / "CT0005.dcm")
    stored = ds.pixel_array.astype(np.int32) + 76  # the same HU with intercept -1100
    ds.RescaleIntercept = -1100
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(tmp_path / "input" / "CT0005.dcm")

    volume, geometry = ex.reader.read_volume(tmp_path / "input")

    np.testing.assert_array_equal(volume, committed.hu)
    assert geometry["rescale"] == [
        {"slope": 1.0, "intercept": -1100.0},
        {"slope": 1.0, "intercept": -1024.0},
    ]


def test_single_slice_uses_slice_thickness(ex: SimpleNamespace, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    shutil.copy(INPUT / "CT0005.dcm", tmp_path / "in")
    series = ex.series.read_series(tmp_path / "in")
    assert series.shape == (1, 64, 64)
    assert series.slice_spacing == 2.0


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


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_reader_rejects_bad_input_naming_it(ex: SimpleNamespace, tmp_path: Path, case: str) -> None:
    patterns = bad_input(ex, tmp_path / "input", case)
    (tmp_path / "out").mkdir()

    with pytest.raises(ex.series.SeriesError) as caught:
        ex.reader.run(tmp_path / "input", tmp_path / "out")

    for pattern in patterns:
        assert re.search(pattern, str(caught.value)), str(caught.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_two_series_message_names_both_uids(ex: SimpleNamespace, tmp_path: Path) -> None:
    bad_input(ex, tmp_path / "input", "two-series")
    other = pydicom.dcmread(tmp_path / "input" / "other" / "CT0001.dcm").SeriesInstanceUID
    first = pydicom.dcmread(INPUT / "CT0001.dcm").SeriesInstanceUID
    with pytest.raises(ex.series.SeriesError) as caught:
        ex.series.read_series(tmp_path / "input")
    assert str(first) in str(caught.value) and str(other) in str(caught.value)


def test_empty_input_and_uneven_spacing(ex: SimpleNamespace, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ex.series.SeriesError, match="no DICOM files in"):
        ex.series.read_series(tmp_path / "empty")
    shutil.copytree(INPUT, tmp_path / "uneven")
    ds = pydicom.dcmread(tmp_path / "uneven" / "CT0012.dcm")
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, z + 0.5]
    ds.save_as(tmp_path / "uneven" / "CT0012.dcm")
    with pytest.raises(
        ex.series.SeriesError, match=r"CT0011\.dcm -> CT0012\.dcm\): step 2\.5 mm, uneven"
    ):
        ex.series.read_series(tmp_path / "uneven")


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_reader_stage_fails_on_bad_input_and_writes_nothing(
    ex: SimpleNamespace,
    clara_stage_runner: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    patterns = bad_input(ex, tmp_path / "input", case)

    run = clara_stage_runner(
        execute=ex.reader.execute,
        stage="dicom-reader",
        input_dir=tmp_path / "input",
        output_dir=tmp_path / "out",
    )

    assert not run.result.succeeded
    assert run.snapshot.state.value == "failed"
    assert run.result.message == "execute returned False"  # the reason is in the log
    errors = [r.getMessage() for r in caplog.records if r.name == ex.reader.logger.name]
    assert errors[-1].startswith("dicom-reader failed: "), errors
    for pattern in patterns:
        assert re.search(pattern, errors[-1]), errors[-1]
    assert list((tmp_path / "out").iterdir()) == []


def test_reader_stage_succeeds_on_the_committed_input(
    ex: SimpleNamespace, clara_stage_runner: Any, tmp_path: Path
) -> None:
    run = clara_stage_runner(
        execute=ex.reader.execute, input_dir=INPUT, output_dir=tmp_path / "out"
    )
    assert run.result.succeeded, run.result.message
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["geometry.json", "volume.npy"]


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
