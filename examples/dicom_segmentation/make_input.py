"""Generate the example's synthetic CT series (a phantom of known objects), deterministically.

Writes one CT Image Storage file per slice: a soft-tissue "body" (40 HU, an elliptic
cylinder along the slice normal) in air, holding three objects of known density and size
(a sphere of 300 HU, a box of 600 HU, a small sphere of 1000 HU) and three single-voxel
specks (800 HU) that the segmentation is expected to discard as noise. Every voxel gets
noise from a seeded NumPy generator (the sum of three uniform variates, within ±60 HU), so
soft tissue never reaches 150 HU and no object falls below it.

Objects are placed in millimetres relative to the centre of the volume, along its row,
column and normal directions, so the same phantom comes out for any size, spacing,
orientation, slice order, pixel representation and rescale that still covers it. The UIDs
are made with ``pydicom.uid.generate_uid`` from the seed and the series number (the same
command writes the same UIDs); no real patient data is involved.

    python make_input.py [--output FOLDER] [--seed N] [--shape S R C] [--pixel-spacing R C]
        [--slice-spacing MM] [--signed] [--descending] [--shuffle]

The default writes the committed ``input/``: 24 slices of 64 x 64 pixels, 0.8 x 0.8 mm,
2 mm apart, 12 bits unsigned with RescaleIntercept -1024 (about 210 KB).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "input"
DEFAULT_SEED = 20240611
AIR_HU = -1000.0
BODY_HU = 40.0
SPECK_HU = 800.0
NOISE_HU = 40.0  # noise is (u1 + u2 + u3 - 1.5) * NOISE_HU, so within +-60 HU
#: The CT number range a scanner stores (12 bits with intercept -1024).
HU_RANGE = (-1024.0, 3071.0)
UID_NAMESPACE = "clara-stage-driver/examples/dicom_segmentation"

Vector = tuple[float, float, float]


@dataclass(frozen=True)
class Sphere:
    """A ball of constant HU; ``centre`` in phantom mm (row, column, normal directions)."""

    name: str
    centre: Vector
    radius: float
    hu: float

    def contains(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> npt.NDArray[np.bool_]:
        """Which points ``(u, v, w)`` (mm) are inside."""
        cu, cv, cw = self.centre
        inside: npt.NDArray[np.bool_] = (u - cu) ** 2 + (v - cv) ** 2 + (w - cw) ** 2 <= (
            self.radius**2
        )
        return inside

    @property
    def volume_mm3(self) -> float:
        """The exact volume, 4/3 π r³."""
        return 4.0 / 3.0 * math.pi * self.radius**3

    def volume_bounds(self, spacing: Vector) -> tuple[float, float]:
        """Bounds of the voxelized volume (voxels whose centre is inside, times their volume).

        Every point of a voxel is within ``d`` (half the voxel's diagonal) of its centre, so
        the voxels with a centre inside cover the ball of radius ``r - d`` and lie within the
        ball of radius ``r + d``.
        """
        d = 0.5 * math.sqrt(sum(s * s for s in spacing))
        low = 4.0 / 3.0 * math.pi * max(self.radius - d, 0.0) ** 3
        return low, 4.0 / 3.0 * math.pi * (self.radius + d) ** 3


@dataclass(frozen=True)
class Box:
    """An axis-aligned box of constant HU; ``centre`` and ``size`` in phantom mm."""

    name: str
    centre: Vector
    size: Vector
    hu: float

    def contains(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> npt.NDArray[np.bool_]:
        """Which points ``(u, v, w)`` (mm) are inside."""
        inside = np.ones(np.broadcast_shapes(u.shape, v.shape, w.shape), dtype=bool)
        for coordinate, centre, size in zip((u, v, w), self.centre, self.size, strict=True):
            inside &= np.abs(coordinate - centre) <= size / 2
        return inside

    @property
    def volume_mm3(self) -> float:
        """The exact volume."""
        return self.size[0] * self.size[1] * self.size[2]

    def volume_bounds(self, spacing: Vector) -> tuple[float, float]:
        """Bounds of the voxelized volume.

        Along each axis the voxels with a centre inside span more than ``L - s`` and at most
        ``L + s`` (``L`` the box's length, ``s`` the spacing along that axis).
        """
        low = math.prod(max(size - s, 0.0) for size, s in zip(self.size, spacing, strict=True))
        high = math.prod(size + s for size, s in zip(self.size, spacing, strict=True))
        return low, high


#: The body: an elliptic cylinder along the normal, semi-axes along the row and column.
BODY_SEMI_AXES = (24.0, 21.0)
#: The objects the segmentation must find, in decreasing size (the labels' order).
OBJECTS: tuple[Sphere | Box, ...] = (
    Sphere("sphere-300", (-9.0, -8.0, 0.0), 8.0, 300.0),
    Box("box-600", (10.0, -9.0, -4.0), (10.0, 8.0, 12.0), 600.0),
    Sphere("sphere-1000", (8.0, 12.0, 8.0), 4.0, 1000.0),
)
#: Single bright voxels (the nearest voxel to each point), too small to be kept.
SPECKS: tuple[Vector, ...] = ((-15.0, 14.0, -14.0), (16.0, 10.0, -16.0), (0.0, 18.0, 16.0))


@dataclass(frozen=True)
class SeriesSpec:
    """How to write the phantom as a CT series.

    Attributes:
        shape: (slices, rows, columns).
        pixel_spacing: (spacing between rows, spacing between columns) in mm.
        slice_spacing: Distance between slices along the normal, in mm.
        orientation: ``ImageOrientationPatient`` (row then column direction cosines).
        centre: Patient coordinates (mm) of the centre of the volume.
        descending: Instance numbers run against the slice normal (instance 1 is the last
            slice along it), as in many head-first scans.
        shuffle: File names in a random order of the instance numbers.
        pixel_representation: 0 (unsigned) or 1 (two's complement).
        bits_stored: Bits of each 16-bit value that hold the stored value.
        rescale_slope: ``RescaleSlope``.
        rescale_intercept: ``RescaleIntercept``.
        seed: Seeds the noise and, with ``series_number``, the UIDs.
        series_number: ``SeriesNumber``.
    """

    shape: tuple[int, int, int] = (24, 64, 64)
    pixel_spacing: tuple[float, float] = (0.8, 0.8)
    slice_spacing: float = 2.0
    orientation: tuple[float, float, float, float, float, float] = (1, 0, 0, 0, 1, 0)
    centre: Vector = (0.0, 0.0, -60.0)
    descending: bool = False
    shuffle: bool = False
    pixel_representation: int = 0
    bits_stored: int = 12
    rescale_slope: float = 1.0
    rescale_intercept: float = -1024.0
    seed: int = DEFAULT_SEED
    series_number: int = 1

    def __post_init__(self) -> None:
        if self.pixel_representation not in (0, 1):
            raise ValueError(
                f"pixel_representation must be 0 or 1, got {self.pixel_representation}"
            )
        if not 8 < self.bits_stored <= 16:
            raise ValueError(f"bits_stored must be 9..16, got {self.bits_stored}")
        if self.rescale_slope <= 0:
            raise ValueError(f"rescale_slope must be positive, got {self.rescale_slope}")

    @property
    def spacing(self) -> Vector:
        """Spacing along (row direction, column direction, normal), i.e. phantom u, v, w."""
        return (self.pixel_spacing[1], self.pixel_spacing[0], self.slice_spacing)

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm³."""
        return self.pixel_spacing[0] * self.pixel_spacing[1] * self.slice_spacing

    def stored_range(self) -> tuple[int, int]:
        """The smallest and largest stored value."""
        if self.pixel_representation:
            return -(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1
        return 0, 2**self.bits_stored - 1


@dataclass(frozen=True)
class Phantom:
    """The written phantom, in volume order (slices sorted along the normal).

    Attributes:
        spec: How it was written.
        folder: Where it was written.
        hu: The HU each voxel encodes (``stored * slope + intercept``): what a reader of the
            series must return.
        labels: 0 outside the objects, ``n`` in ``OBJECTS[n - 1]``, ``len(OBJECTS) + m``
            in speck ``m`` (1-based).
        sop_instance_uids: The SOP Instance UID of each slice, in volume order.
        files: The file name of each slice, in volume order.
        uids: The study, series and frame of reference UIDs.
    """

    spec: SeriesSpec
    folder: Path
    hu: npt.NDArray[np.float32]
    labels: npt.NDArray[np.uint8]
    sop_instance_uids: list[str]
    files: list[str]
    uids: dict[str, str] = field(default_factory=dict)

    def voxel_count(self, label: int) -> int:
        """Voxels of label ``label``."""
        return int(np.count_nonzero(self.labels == label))


def _directions(spec: SeriesSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row = np.asarray(spec.orientation[:3], dtype=np.float64)
    column = np.asarray(spec.orientation[3:], dtype=np.float64)
    row /= np.linalg.norm(row)
    column /= np.linalg.norm(column)
    return row, column, np.cross(row, column)


def phantom_coordinates(spec: SeriesSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each voxel's centre in phantom mm (u along rows, v along columns, w along the normal)."""
    slices, rows, columns = spec.shape
    su, sv, sw = spec.spacing
    w = (np.arange(slices) - (slices - 1) / 2) * sw
    v = (np.arange(rows) - (rows - 1) / 2) * sv
    u = (np.arange(columns) - (columns - 1) / 2) * su
    return u[None, None, :], v[None, :, None], w[:, None, None]


def check_covered(spec: SeriesSpec) -> None:
    """Check the field of view holds every object and speck, with a voxel to spare.

    Raises:
        ValueError: Something would be cut off; the message names it.
    """
    half = [(n - 1) / 2 * s - s for n, s in zip(spec.shape[::-1], spec.spacing, strict=True)]
    for item in OBJECTS:
        reach = (item.radius,) * 3 if isinstance(item, Sphere) else [s / 2 for s in item.size]
        for axis in range(3):
            if abs(item.centre[axis]) + reach[axis] > half[axis]:
                raise ValueError(
                    f"{item.name} does not fit {spec.shape} voxels of {spec.spacing} mm (u, v, w)"
                )
    for point in SPECKS:
        if any(abs(point[axis]) > half[axis] for axis in range(3)):
            raise ValueError(f"speck at {point} mm does not fit {spec.shape} voxels")


def make_phantom_hu(spec: SeriesSpec) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.uint8]]:
    """The ideal HU (noise added, not yet quantized) and the labels, in volume order."""
    check_covered(spec)
    u, v, w = phantom_coordinates(spec)
    shape = spec.shape
    body = (u / BODY_SEMI_AXES[0]) ** 2 + (v / BODY_SEMI_AXES[1]) ** 2 <= 1.0
    hu = np.where(np.broadcast_to(body, shape), BODY_HU, AIR_HU).astype(np.float64)
    labels = np.zeros(shape, dtype=np.uint8)
    for number, item in enumerate(OBJECTS, start=1):
        inside = np.broadcast_to(item.contains(u, v, w), shape)
        hu[inside] = item.hu
        labels[inside] = number
    su, sv, sw = spec.spacing
    for number, (pu, pv, pw) in enumerate(SPECKS, start=len(OBJECTS) + 1):
        k = round(pw / sw + (shape[0] - 1) / 2)
        i = round(pv / sv + (shape[1] - 1) / 2)
        j = round(pu / su + (shape[2] - 1) / 2)
        hu[k, i, j] = SPECK_HU
        labels[k, i, j] = number
    rng = np.random.default_rng(spec.seed)
    hu += (rng.random((3, *shape)).sum(axis=0) - 1.5) * NOISE_HU
    return hu, labels


def quantize(spec: SeriesSpec, hu: npt.NDArray[np.float64]) -> npt.NDArray[np.int32]:
    """The stored values for ``hu`` (clipped to the scanner's and the encoding's range)."""
    low, high = spec.stored_range()
    clipped = np.clip(hu, *HU_RANGE)
    stored = np.rint((clipped - spec.rescale_intercept) / spec.rescale_slope)
    return np.clip(stored, low, high).astype(np.int32)


def _uid(spec: SeriesSpec, *parts: object) -> str:
    return str(generate_uid(entropy_srcs=[UID_NAMESPACE, str(spec.seed), *map(str, parts)]))


def _ds(values: Iterable[float]) -> list[DSfloat]:
    return [DSfloat(round(float(v), 6), auto_format=True) for v in values]


def slice_dataset(
    spec: SeriesSpec,
    uids: dict[str, str],
    *,
    sop_instance_uid: str,
    instance_number: int,
    position: np.ndarray,
    distance: float,
    stored: npt.NDArray[np.int32],
) -> Dataset:
    """One slice as a CT Image Storage data set, with its file meta information."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240611"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "clara-stage-driver examples"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic CT phantom"
    ds.SeriesDescription = "Phantom: spheres of 300 and 1000 HU, a box of 600 HU"
    ds.PatientName = "Phantom^Synthetic"
    ds.PatientID = "PHANTOM-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.SliceThickness = DSfloat(spec.slice_spacing, auto_format=True)
    ds.KVP = "120"
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.StudyID = "PHANTOM"
    ds.SeriesNumber = spec.series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = _ds(position)
    ds.ImageOrientationPatient = _ds(spec.orientation)
    ds.FrameOfReferenceUID = uids["frame_of_reference"]
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = DSfloat(round(distance, 6), auto_format=True)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.PixelSpacing = _ds(spec.pixel_spacing)
    ds.BitsAllocated = 16
    ds.BitsStored = spec.bits_stored
    ds.HighBit = spec.bits_stored - 1
    ds.PixelRepresentation = spec.pixel_representation
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = DSfloat(spec.rescale_intercept, auto_format=True)
    ds.RescaleSlope = DSfloat(spec.rescale_slope, auto_format=True)
    ds.RescaleType = "HU"
    dtype = "<i2" if spec.pixel_representation else "<u2"
    ds.PixelData = stored.astype(dtype).tobytes()
    return ds


def write_series(folder: Path, spec: SeriesSpec | None = None) -> Phantom:
    """Write the phantom as ``spec`` says into ``folder`` (its ``*.dcm`` files are replaced).

    Returns:
        The phantom as written, in volume order, to check a pipeline's results against.
    """
    spec = spec or SeriesSpec()
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.dcm"):
        old.unlink()
    hu, labels = make_phantom_hu(spec)
    stored = quantize(spec, hu)
    encoded = (stored * spec.rescale_slope + spec.rescale_intercept).astype(np.float32)
    uids = {
        "study": _uid(spec, "study"),
        "series": _uid(spec, "series", spec.series_number),
        "frame_of_reference": _uid(spec, "frame-of-reference"),
    }
    row, column, normal = _directions(spec)
    u, v, w = phantom_coordinates(spec)
    slices = spec.shape[0]
    instances = [slices - k if spec.descending else k + 1 for k in range(slices)]
    order = list(range(1, slices + 1))
    if spec.shuffle:
        order = [int(n) for n in np.random.default_rng(spec.seed + 1).permutation(order)]
    sop_uids, files = [], []
    for k in range(slices):
        sop_uid = _uid(spec, "instance", spec.series_number, instances[k])
        first_pixel = u[0, 0, 0] * row + v[0, 0, 0] * column + w[k, 0, 0] * normal
        position = np.asarray(spec.centre) + first_pixel
        name = f"CT{order[instances[k] - 1]:04d}.dcm"
        ds = slice_dataset(
            spec,
            uids,
            sop_instance_uid=sop_uid,
            instance_number=instances[k],
            position=position,
            distance=float(position @ normal),
            stored=stored[k],
        )
        ds.save_as(folder / name, enforce_file_format=True)
        sop_uids.append(sop_uid)
        files.append(name)
    return Phantom(spec, folder, encoded, labels, sop_uids, files, uids)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="output folder")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="noise and UID seed")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("S", "R", "C"), default=None)
    parser.add_argument("--pixel-spacing", type=float, nargs=2, metavar=("ROW", "COL"))
    parser.add_argument("--slice-spacing", type=float, default=None, metavar="MM")
    parser.add_argument("--signed", action="store_true", help="PixelRepresentation 1, 16 bits")
    parser.add_argument("--descending", action="store_true", help="instances against the normal")
    parser.add_argument("--shuffle", action="store_true", help="file names in random order")
    args = parser.parse_args(argv)
    base = SeriesSpec()
    spec = SeriesSpec(
        shape=tuple(args.shape) if args.shape else base.shape,
        pixel_spacing=tuple(args.pixel_spacing) if args.pixel_spacing else base.pixel_spacing,
        slice_spacing=args.slice_spacing or base.slice_spacing,
        descending=args.descending,
        shuffle=args.shuffle,
        pixel_representation=1 if args.signed else 0,
        bits_stored=16 if args.signed else base.bits_stored,
        rescale_intercept=0.0 if args.signed else base.rescale_intercept,
        seed=args.seed,
    )
    phantom = write_series(args.output, spec)
    size = sum((args.output / name).stat().st_size for name in phantom.files)
    print(f"wrote {len(phantom.files)} slices to {args.output} ({size} bytes)")
    for number, item in enumerate(OBJECTS, start=1):
        voxels = phantom.voxel_count(number)
        print(
            f"  {item.name}: {voxels} voxels = {voxels * spec.voxel_volume_mm3:.1f} mm³ "
            f"(exact {item.volume_mm3:.1f} mm³)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
