"""Operator ``dicom-reader``: read the CT series the job received into a volume.

Input: the job's input payload, a folder of DICOM files of one CT series (CT Image Storage,
one file per slice, any file names and order, sub-folders allowed; a DICOMDIR is skipped).
Output: ``volume.npy`` (``float32``, ``(slice, row, column)``, Hounsfield units) and
``geometry.json`` (shape, spacing, orientation, slice positions, the index-to-patient matrix,
and the study, series and SOP instance UIDs of the slices in volume order).

The slices are sorted by position along the slice normal; the slice spacing comes from the
positions. A file that is not DICOM, a second series, a duplicate or missing slice fails
the stage, with a log message naming the file, the series UIDs or the gap, and nothing is
written.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import common
import dicom_series
import numpy as np
import numpy.typing as npt

import clara

logger = logging.getLogger(__name__)

OUTPUT_VOLUME = "volume.npy"
OUTPUT_GEOMETRY = "geometry.json"


def read_volume(input_dir: Path) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
    """The series in ``input_dir`` as a HU volume and its ``geometry.json`` document.

    Raises:
        dicom_series.SeriesError: The folder does not hold one valid CT series.
    """
    series = dicom_series.read_series(input_dir)
    volume = series.volume()
    geometry = series.geometry()
    geometry["hu_range"] = [float(volume.min()), float(volume.max())]
    geometry["volume"] = OUTPUT_VOLUME
    return volume, geometry


def run(input_dir: Path, output_dir: Path) -> dict[str, Any]:
    """Read the series in ``input_dir``; write ``volume.npy`` and ``geometry.json``."""
    volume, geometry = read_volume(input_dir)
    common.write_outputs(
        output_dir,
        {OUTPUT_VOLUME: common.npy_bytes(volume), OUTPUT_GEOMETRY: common.json_bytes(geometry)},
    )
    return geometry


def execute(driver: clara.Driver[None], payload: clara.Payload) -> bool:
    """Read the job's DICOM series into this stage's output."""
    logger.info("job %s (%s), stage %s", driver.job_id, driver.job_name, driver.stage_name)
    try:
        input_dir = common.input_folder(payload.input_entries)
        output_dir = common.output_folder(payload.output_entries)
        geometry = run(input_dir, output_dir)
    except (ValueError, LookupError, OSError) as error:
        logger.error("dicom-reader failed: %s", error)
        return False
    shape = "x".join(map(str, geometry["shape"]))
    spacing = " x ".join(f"{v:g}" for v in geometry["spacing_mm"])
    low, high = geometry["hu_range"]
    print(
        f"dicom-reader: series {geometry['series_instance_uid']}, {shape} voxels "
        f"(slice, row, column), spacing {spacing} mm, {low:g}..{high:g} HU -> "
        f"{OUTPUT_VOLUME}, {OUTPUT_GEOMETRY}",
        flush=True,
    )
    return True


def main() -> int:
    """Run the operator under the Clara pipeline driver."""
    logging.basicConfig(level=logging.INFO)
    driver: clara.Driver[None] = clara.Driver(execute=execute)
    driver.start()
    result = driver.wait_for_completion()
    return 0 if result.succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
