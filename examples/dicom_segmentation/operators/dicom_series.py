"""Read one CT series from a folder of DICOM files into a volume, with its geometry.

The folder is what a PACS sends to Clara: one file per slice (CT Image Storage), in any
order and under any file names. :func:`read_series` checks the files form one complete,
evenly spaced series and returns a :class:`CtSeries`: the slices sorted by position along
the slice normal, which :meth:`CtSeries.volume` stacks into a ``(slice, row, column)``
array of Hounsfield units (``RescaleSlope`` and ``RescaleIntercept`` applied per slice).

Geometry, as DICOM defines it (PS3.3 C.7.6.2): ``ImageOrientationPatient`` holds the
direction cosines of a row (the direction in which the column index grows) and of a column
(the direction in which the row index grows); their cross product is the slice normal.
``PixelSpacing`` is (spacing between rows, spacing between columns) in mm. A slice's place
in the stack is its ``ImagePositionPatient`` (the centre of its first pixel) projected on
the normal; the slice spacing is computed from those positions, never taken from
``SliceThickness`` (which may differ from it, e.g. for overlapping reconstructions).

Errors are :class:`SeriesError` (a ``ValueError``) whose message names the file, the series
UIDs or the slice positions at fault.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pydicom.errors
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MediaStorageDirectoryStorage

#: Attributes every slice must have (beyond the pixel data), for a volume to be built.
REQUIRED_ATTRIBUTES = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "RescaleSlope",
    "RescaleIntercept",
    "PixelData",
)

#: Largest deviation of a direction cosine vector from unit length, or of two from orthogonal.
ORIENTATION_TOLERANCE = 1e-3
#: Largest in-plane offset (mm) between slices: more is a tilted or sheared stack.
IN_PLANE_TOLERANCE_MM = 0.01
#: Two slices closer than this (mm) along the normal are at the same position.
DUPLICATE_TOLERANCE_MM = 1e-3
#: Relative deviation of a slice step from the series' spacing that is still "even".
SPACING_TOLERANCE = 0.01
#: At most this many gaps are listed in an error message.
MAX_LISTED = 3


class SeriesError(ValueError):
    """The files are not one complete, evenly spaced CT series; the message says why."""


@dataclass(frozen=True)
class Slice:
    """One image of the series.

    Attributes:
        name: The file's path relative to the series folder (POSIX), for messages.
        dataset: The file's data set, pixel data included.
        position: ``ImagePositionPatient`` in mm.
        distance: ``position`` projected on the slice normal, in mm.
    """

    name: str
    dataset: Dataset
    position: tuple[float, float, float]
    distance: float


@dataclass(frozen=True)
class CtSeries:
    """A validated CT series, its slices sorted by position along the slice normal.

    Attributes:
        slices: The images, in increasing ``distance``.
        rows: Rows per slice.
        columns: Columns per slice.
        pixel_spacing: (spacing between rows, spacing between columns) in mm.
        slice_spacing: Distance between consecutive slices along the normal, in mm.
        row_direction: Direction cosines of a row (the column index grows along it).
        column_direction: Direction cosines of a column (the row index grows along it).
        normal: the cross product ``row_direction x column_direction``.
    """

    slices: tuple[Slice, ...]
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    row_direction: tuple[float, float, float]
    column_direction: tuple[float, float, float]
    normal: tuple[float, float, float]

    def __iter__(self) -> Iterator[Slice]:
        return iter(self.slices)

    @property
    def first(self) -> Dataset:
        """The first slice's data set (study, series and patient attributes are shared)."""
        return self.slices[0].dataset

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns)."""
        return (len(self.slices), self.rows, self.columns)

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm³."""
        return self.slice_spacing * self.pixel_spacing[0] * self.pixel_spacing[1]

    @property
    def sop_instance_uids(self) -> list[str]:
        """The slices' SOP Instance UIDs, in volume order."""
        return [str(s.dataset.SOPInstanceUID) for s in self.slices]

    def index_to_patient(self) -> npt.NDArray[np.float64]:
        """The 4x4 matrix mapping a voxel index ``(slice, row, column, 1)`` to patient mm."""
        matrix = np.eye(4)
        matrix[:3, 0] = np.multiply(self.normal, self.slice_spacing)
        matrix[:3, 1] = np.multiply(self.column_direction, self.pixel_spacing[0])
        matrix[:3, 2] = np.multiply(self.row_direction, self.pixel_spacing[1])
        matrix[:3, 3] = self.slices[0].position
        return matrix

    def volume(self) -> npt.NDArray[np.float32]:
        """The ``(slice, row, column)`` volume in Hounsfield units.

        Raises:
            SeriesError: A slice's pixel data cannot be decoded or has the wrong size.
        """
        volume = np.empty(self.shape, dtype=np.float32)
        for index, item in enumerate(self.slices):
            volume[index] = hounsfield_units(item.dataset, item.name)
        return volume

    def geometry(self) -> dict[str, Any]:
        """The volume's geometry and the source UIDs, as written to ``geometry.json``."""
        first = self.first
        spacing = [self.slice_spacing, *self.pixel_spacing]
        rescale = sorted(
            {(float(s.dataset.RescaleSlope), float(s.dataset.RescaleIntercept)) for s in self}
        )
        return {
            "shape": list(self.shape),
            "axes": ["slice", "row", "column"],
            "spacing_mm": spacing,
            "pixel_spacing_mm": list(self.pixel_spacing),
            "slice_spacing_mm": self.slice_spacing,
            "slice_thickness_mm": _optional_float(first, "SliceThickness"),
            "voxel_volume_mm3": self.voxel_volume_mm3,
            "image_orientation_patient": [*self.row_direction, *self.column_direction],
            "slice_normal": list(self.normal),
            "origin_mm": list(self.slices[0].position),
            "index_to_patient": self.index_to_patient().tolist(),
            "slice_positions_mm": [list(s.position) for s in self.slices],
            "study_instance_uid": str(first.StudyInstanceUID),
            "series_instance_uid": str(first.SeriesInstanceUID),
            "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
            "sop_class_uid": str(first.SOPClassUID),
            "sop_instance_uids": self.sop_instance_uids,
            "files": [s.name for s in self.slices],
            "modality": str(first.get("Modality", "")),
            "series_description": str(first.get("SeriesDescription", "")),
            "pixel_representation": sorted({int(s.dataset.PixelRepresentation) for s in self}),
            "rescale": [{"slope": slope, "intercept": intercept} for slope, intercept in rescale],
        }


# ----------------------------------------------------------------------------- files


def list_files(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` (recursively), sorted by path."""
    if not folder.is_dir():
        raise SeriesError(f"{folder}: not a folder")
    return sorted(path for path in folder.rglob("*") if path.is_file())


def read_dicom_file(path: Path, name: str) -> Dataset:
    """Read one DICOM Part 10 file (a 128-byte preamble and ``DICM``, then the data set).

    Raises:
        SeriesError: ``name`` is not a DICOM file or cannot be read.
    """
    try:
        return pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError as error:
        raise SeriesError(f"{name}: not a DICOM file ({error})") from None
    except (OSError, ValueError, EOFError, KeyError, TypeError) as error:
        raise SeriesError(f"{name}: cannot read the DICOM file: {error}") from None


def is_dicomdir(dataset: Dataset) -> bool:
    """Whether ``dataset`` is a DICOMDIR (a media directory, not an image)."""
    meta = getattr(dataset, "file_meta", None)
    return meta is not None and meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage


def check_ct_image(dataset: Dataset, name: str) -> None:
    """Check ``dataset`` is a single-frame, single-sample CT image with a geometry.

    Raises:
        SeriesError: It is not; the message names the file and the attribute.
    """
    missing = [keyword for keyword in REQUIRED_ATTRIBUTES if keyword not in dataset]
    sop_class = dataset.get("SOPClassUID")
    if sop_class is not None and sop_class != CTImageStorage:
        what = getattr(sop_class, "name", "") or "unknown"
        raise SeriesError(
            f"{name}: SOP class {sop_class} ({what}) is not CT Image Storage ({CTImageStorage})"
        )
    if missing:
        raise SeriesError(f"{name}: missing attribute(s) {', '.join(missing)}")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise SeriesError(f"{name}: {frames} frames; only single-frame CT images are supported")
    samples = int(dataset.get("SamplesPerPixel", 1))
    if samples != 1:
        raise SeriesError(f"{name}: SamplesPerPixel is {samples}; CT images have 1")
    slope = float(dataset.RescaleSlope)
    if not math.isfinite(slope) or slope == 0:
        raise SeriesError(f"{name}: RescaleSlope must be a non-zero number, got {slope!r}")
    if not math.isfinite(float(dataset.RescaleIntercept)):
        raise SeriesError(f"{name}: RescaleIntercept must be finite")


def hounsfield_units(dataset: Dataset, name: str) -> npt.NDArray[np.float64]:
    """One slice's pixels with the modality rescale applied: ``stored * slope + intercept``.

    The stored values are read as the file declares them (``PixelRepresentation`` 0:
    unsigned, 1: two's complement; ``BitsStored`` of ``BitsAllocated``).

    Raises:
        SeriesError: The pixel data cannot be decoded or does not have ``Rows x Columns``.
    """
    try:
        stored = dataset.pixel_array
    except Exception as error:  # pydicom raises many kinds for bad or unsupported data
        raise SeriesError(f"{name}: cannot decode the pixel data: {error}") from None
    expected = (int(dataset.Rows), int(dataset.Columns))
    if stored.shape != expected:
        raise SeriesError(f"{name}: pixel data of shape {stored.shape}, expected {expected}")
    slope = float(dataset.RescaleSlope)
    intercept = float(dataset.RescaleIntercept)
    return stored.astype(np.float64) * slope + intercept


def read_datasets(folder: Path) -> list[tuple[str, Dataset]]:
    """Read and check every file under ``folder``; DICOMDIR files are skipped.

    Returns:
        ``(name, dataset)`` pairs, ``name`` relative to ``folder``.

    Raises:
        SeriesError: A file is not a DICOM CT image, or there is none.
    """
    images = []
    for path in list_files(folder):
        name = path.relative_to(folder).as_posix()
        dataset = read_dicom_file(path, name)
        if is_dicomdir(dataset):
            continue
        check_ct_image(dataset, name)
        images.append((name, dataset))
    if not images:
        raise SeriesError(f"no DICOM files in {folder}")
    return images


# ----------------------------------------------------------------------------- geometry


def _floats(dataset: Dataset, keyword: str, count: int, name: str) -> tuple[float, ...]:
    value = dataset.get(keyword)
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise SeriesError(f"{name}: {keyword} must be {count} numbers, got {value!r}") from None
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise SeriesError(f"{name}: {keyword} must be {count} finite numbers, got {value!r}")
    return numbers


def _optional_float(dataset: Dataset, keyword: str) -> float | None:
    value = dataset.get(keyword)
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def orientation(
    values: Sequence[float], name: str
) -> tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]:
    """Row direction, column direction and slice normal from ``ImageOrientationPatient``.

    Raises:
        SeriesError: The two vectors are not unit length or not orthogonal.
    """
    row = np.asarray(values[:3], dtype=np.float64)
    column = np.asarray(values[3:6], dtype=np.float64)
    for label, vector in (("row", row), ("column", column)):
        if abs(np.linalg.norm(vector) - 1.0) > ORIENTATION_TOLERANCE:
            raise SeriesError(
                f"{name}: ImageOrientationPatient {label} vector {vector.tolist()} "
                "is not of unit length"
            )
    if abs(float(row @ column)) > ORIENTATION_TOLERANCE:
        raise SeriesError(f"{name}: ImageOrientationPatient vectors are not orthogonal")
    row /= np.linalg.norm(row)
    column /= np.linalg.norm(column)
    normal = np.cross(row, column)

    def triple(v: npt.NDArray[np.float64]) -> tuple[float, float, float]:
        return (float(v[0]), float(v[1]), float(v[2]))

    return triple(row), triple(column), triple(normal)


def single_series(images: Sequence[tuple[str, Dataset]]) -> None:
    """Check every image belongs to one series (and one study).

    Raises:
        SeriesError: Several ``SeriesInstanceUID`` values; the message lists each with its
            file count and a file of it.
    """
    by_series: dict[str, list[str]] = {}
    for name, dataset in images:
        by_series.setdefault(str(dataset.SeriesInstanceUID), []).append(name)
    if len(by_series) > 1:
        listed = "; ".join(
            f"{uid} ({len(names)} file(s), e.g. {names[0]})" for uid, names in by_series.items()
        )
        raise SeriesError(
            f"the input holds {len(by_series)} series, expected one: {listed}. "
            "Send one series per job."
        )


def _check_shared(images: Sequence[tuple[str, Dataset]], keyword: str, count: int) -> None:
    """Every image has the first image's ``keyword`` (to a small tolerance)."""
    first_name, first = images[0]
    reference = _floats(first, keyword, count, first_name)
    for name, dataset in images[1:]:
        values = _floats(dataset, keyword, count, name)
        if not np.allclose(values, reference, rtol=0, atol=ORIENTATION_TOLERANCE):
            raise SeriesError(
                f"{name}: {keyword} {list(values)} differs from {list(reference)} "
                f"of {first_name}; a series has one {keyword}"
            )


def _check_same(images: Sequence[tuple[str, Dataset]], keyword: str) -> None:
    first_name, first = images[0]
    for name, dataset in images[1:]:
        if dataset.get(keyword) != first.get(keyword):
            raise SeriesError(
                f"{name}: {keyword} {dataset.get(keyword)} differs from "
                f"{first.get(keyword)} of {first_name}"
            )


def sort_slices(images: Sequence[tuple[str, Dataset]], normal: Sequence[float]) -> list[Slice]:
    """The images as slices, sorted by ``ImagePositionPatient · normal``.

    Raises:
        SeriesError: Two slices share a position.
    """
    slices = []
    for name, dataset in images:
        position = _floats(dataset, "ImagePositionPatient", 3, name)
        distance = float(np.dot(position, normal))
        slices.append(Slice(name, dataset, (position[0], position[1], position[2]), distance))
    slices.sort(key=lambda s: (s.distance, s.name))
    for before, after in itertools.pairwise(slices):
        if after.distance - before.distance < DUPLICATE_TOLERANCE_MM:
            raise SeriesError(
                f"{before.name} and {after.name} are at the same position "
                f"({before.distance:g} mm along the slice normal); duplicated slice?"
            )
    return slices


def check_stacked_along_normal(slices: Sequence[Slice], normal: Sequence[float]) -> None:
    """Every slice's position lies on the line through the first along the normal.

    Raises:
        SeriesError: A slice is shifted in-plane (gantry tilt, or a sheared stack).
    """
    origin = np.asarray(slices[0].position)
    unit = np.asarray(normal)
    for item in slices[1:]:
        offset = np.asarray(item.position) - origin
        in_plane = offset - (offset @ unit) * unit
        shift = float(np.linalg.norm(in_plane))
        if shift > IN_PLANE_TOLERANCE_MM:
            raise SeriesError(
                f"{item.name}: ImagePositionPatient is {shift:.3g} mm off the slice normal "
                f"through {slices[0].name}; tilted or sheared series are not supported"
            )


def slice_spacing(slices: Sequence[Slice]) -> float:
    """The series' slice spacing in mm, computed from the positions.

    The nominal spacing is the median step between consecutive slices; every step must
    match it within :data:`SPACING_TOLERANCE`. A step of about twice it or more is a missing
    slice. A single-slice series uses ``SpacingBetweenSlices`` or else ``SliceThickness``.

    Raises:
        SeriesError: The steps are uneven; the message gives the positions and the files
            on either side of each gap.
    """
    if len(slices) == 1:
        only = slices[0]
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            value = _optional_float(only.dataset, keyword)
            if value is not None and value > 0:
                return value
        raise SeriesError(
            f"{only.name}: a single slice needs SpacingBetweenSlices or SliceThickness"
        )
    steps = [after.distance - before.distance for before, after in itertools.pairwise(slices)]
    spacing = float(np.median(steps))
    problems = []
    for index, step in enumerate(steps):
        if abs(step - spacing) <= SPACING_TOLERANCE * spacing:
            continue
        before, after = slices[index], slices[index + 1]
        missing = round(step / spacing) - 1
        what = (
            f"{missing} slice(s) missing"
            if missing >= 1 and abs(step - (missing + 1) * spacing) <= SPACING_TOLERANCE * spacing
            else "uneven spacing"
        )
        problems.append(
            f"{before.distance:g} -> {after.distance:g} mm ({before.name} -> {after.name}): "
            f"step {step:g} mm, {what}"
        )
    if problems:
        more = len(problems) - MAX_LISTED
        listed = "; ".join(problems[:MAX_LISTED]) + (f"; and {more} more" if more > 0 else "")
        raise SeriesError(
            f"gap in the slice positions along the slice normal (spacing {spacing:g} mm): {listed}"
        )
    # The mean step is the best estimate once the steps are known to be even.
    return (slices[-1].distance - slices[0].distance) / (len(slices) - 1)


def build_series(images: Sequence[tuple[str, Dataset]]) -> CtSeries:
    """Validate already-read CT images as one series and sort them.

    Raises:
        SeriesError: Mixed series, inconsistent geometry, duplicate or missing slices.
    """
    single_series(images)
    for keyword in ("Rows", "Columns", "FrameOfReferenceUID"):
        _check_same(images, keyword)
    _check_shared(images, "ImageOrientationPatient", 6)
    _check_shared(images, "PixelSpacing", 2)
    first_name, first = images[0]
    row, column, normal = orientation(
        _floats(first, "ImageOrientationPatient", 6, first_name), first_name
    )
    spacing = _floats(first, "PixelSpacing", 2, first_name)
    if min(spacing) <= 0:
        raise SeriesError(f"{first_name}: PixelSpacing must be positive, got {list(spacing)}")
    slices = sort_slices(images, normal)
    check_stacked_along_normal(slices, normal)
    return CtSeries(
        slices=tuple(slices),
        rows=int(first.Rows),
        columns=int(first.Columns),
        pixel_spacing=(spacing[0], spacing[1]),
        slice_spacing=slice_spacing(slices),
        row_direction=row,
        column_direction=column,
        normal=normal,
    )


def read_series(folder: Path) -> CtSeries:
    """Read the one CT series in ``folder`` (any file names, any order, sub-folders too).

    Raises:
        SeriesError: A file is not a DICOM CT image, the files are not one series, or the
            series is not complete and evenly spaced.
    """
    return build_series(read_datasets(folder))
