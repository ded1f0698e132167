"""Operator ``statistics``: measure each segmented component in physical units.

Inputs: ``dicom-reader``'s output (``volume.npy``, ``geometry.json``) and ``segment``'s
(``labels.npy``, ``components.json``), told apart by the stage they come from. Output:
``statistics.json``: per component its voxel count, volume in mm³ and mL, HU mean,
standard deviation, minimum, median and maximum, centroid in patient coordinates (mm) and
extent along the volume's axes (mm).

The voxel volume is the slice spacing (from the slice positions) times the two pixel
spacings, so a component's volume is its voxel count times that.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import common
import numpy as np
import numpy.typing as npt
from scipy import ndimage

import clara

logger = logging.getLogger(__name__)

INPUT_VOLUME = "volume.npy"
INPUT_GEOMETRY = "geometry.json"
INPUT_LABELS = "labels.npy"
INPUT_COMPONENTS = "components.json"
OUTPUT_STATISTICS = "statistics.json"


def _round(value: float, digits: int = 3) -> float:
    return round(float(value), digits)


def measure(
    volume: npt.NDArray[np.floating[Any]],
    labels: npt.NDArray[np.integer[Any]],
    geometry: Mapping[str, Any],
    count: int,
) -> list[dict[str, Any]]:
    """Measure labels ``1..count`` of ``labels`` over the HU ``volume``.

    Raises:
        ValueError: The arrays' shapes differ from each other or from ``geometry``.
    """
    if volume.shape != labels.shape or list(volume.shape) != list(geometry["shape"]):
        raise ValueError(
            f"volume {list(volume.shape)}, labels {list(labels.shape)} and geometry "
            f"{geometry['shape']} must have one shape"
        )
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    voxels = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    hu = volume.astype(np.float64)
    means = ndimage.mean(hu, labels, index)
    stds = ndimage.standard_deviation(hu, labels, index)
    lows = ndimage.minimum(hu, labels, index)
    highs = ndimage.maximum(hu, labels, index)
    medians = ndimage.median(hu, labels, index)
    centres = ndimage.center_of_mass(np.ones(labels.shape), labels, index)
    boxes = ndimage.find_objects(labels, max_label=count)
    to_patient = np.asarray(geometry["index_to_patient"], dtype=np.float64)
    spacing = np.asarray(geometry["spacing_mm"], dtype=np.float64)
    voxel_mm3 = float(geometry["voxel_volume_mm3"])
    rows = []
    for number in range(count):
        box = boxes[number]
        if box is None or voxels[number] == 0:
            raise ValueError(f"label {number + 1} has no voxels")
        size = np.array([s.stop - s.start for s in box], dtype=np.float64)
        centroid = to_patient @ np.array([*centres[number], 1.0])
        volume_mm3 = float(voxels[number]) * voxel_mm3
        rows.append(
            {
                "label": number + 1,
                "voxels": int(voxels[number]),
                "volume_mm3": _round(volume_mm3, 2),
                "volume_ml": _round(volume_mm3 / 1000.0, 4),
                "hu": {
                    "mean": _round(means[number], 2),
                    "std": _round(stds[number], 2),
                    "min": _round(lows[number], 2),
                    "median": _round(medians[number], 2),
                    "max": _round(highs[number], 2),
                },
                "centroid_index": [_round(c) for c in centres[number]],
                "centroid_mm": [_round(c) for c in centroid[:3]],
                "extent_mm": [_round(v) for v in size * spacing],
            }
        )
    return rows


def compute_statistics(
    volume: npt.NDArray[np.floating[Any]],
    labels: npt.NDArray[np.integer[Any]],
    geometry: Mapping[str, Any],
    components: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``statistics.json`` document.

    Raises:
        ValueError: The inputs disagree (shapes, or voxel counts with ``components.json``).
    """
    rows = measure(volume, labels, geometry, int(components["count"]))
    for row, component in zip(rows, components["components"], strict=True):
        if row["voxels"] != component["voxels"]:
            raise ValueError(
                f"label {row['label']}: {row['voxels']} voxels in {INPUT_LABELS}, "
                f"{component['voxels']} in {INPUT_COMPONENTS}"
            )
    return {
        "series_instance_uid": geometry["series_instance_uid"],
        "shape": list(geometry["shape"]),
        "spacing_mm": list(geometry["spacing_mm"]),
        "voxel_volume_mm3": geometry["voxel_volume_mm3"],
        "threshold_hu": [components["lower_hu"], components["upper_hu"]],
        "count": len(rows),
        "total_volume_mm3": _round(sum(r["volume_mm3"] for r in rows), 2),
        "components": rows,
    }


def run(volume_dir: Path, labels_dir: Path, output_dir: Path) -> dict[str, Any]:
    """Measure ``labels_dir``'s components over ``volume_dir``'s volume; write the result."""
    geometry = common.read_json(volume_dir / INPUT_GEOMETRY)
    volume = common.read_npy(volume_dir / INPUT_VOLUME)
    labels = common.read_npy(labels_dir / INPUT_LABELS)
    components = common.read_json(labels_dir / INPUT_COMPONENTS)
    document = compute_statistics(volume, labels, geometry, components)
    common.write_outputs(output_dir, {OUTPUT_STATISTICS: common.json_bytes(document)})
    return document


def execute(driver: clara.Driver[None], payload: clara.Payload) -> bool:
    """Measure ``segment``'s components over ``dicom-reader``'s volume."""
    logger.info("job %s (%s), stage %s", driver.job_id, driver.job_name, driver.stage_name)
    try:
        volume_dir = common.input_folder(payload.input_entries, from_stage="dicom-reader")
        labels_dir = common.input_folder(payload.input_entries, from_stage="segment")
        output_dir = common.output_folder(payload.output_entries)
        document = run(volume_dir, labels_dir, output_dir)
    except (ValueError, LookupError, KeyError, OSError) as error:
        logger.error("statistics failed: %s", error)
        return False
    volumes = ", ".join(f"{c['volume_mm3']:g}" for c in document["components"])
    print(
        f"statistics: {document['count']} component(s) [{volumes}] mm³ -> {OUTPUT_STATISTICS}",
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
