"""examples/dicom_segmentation: the synthetic input, and the dicom-reader operator."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pydicom
import pytest
from _dicom_example import (
    BAD_INPUTS,
    INPUT,
    bad_input,
    check_seg,
    check_volumes,
    expected_labels,
    files_in,
    run_chain,
    write,
)

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
