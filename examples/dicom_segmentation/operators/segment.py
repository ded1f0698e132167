"""Operator ``segment``: threshold the HU volume and label its connected components.

Input: ``dicom-reader``'s output (``volume.npy``, ``geometry.json``). Output:
``labels.npy`` (``uint8``, same shape as the volume; 0 is background, components are
labelled 1..n from largest to smallest), ``components.json`` and ``geometry.json`` (the
input's, unchanged: the labels have the volume's geometry and source UIDs).

This is the example's "AI operator": a classical, deterministic segmentation with
``scipy.ndimage`` that needs nothing downloaded at run time.

Variables: ``LOWER_HU`` and ``UPPER_HU`` (voxels within ``LOWER_HU..UPPER_HU``, inclusive,
are foreground; default 150..3071), ``CONNECTIVITY`` (6, 18 or 26 neighbours; default 6),
``MIN_COMPONENT_MM3`` (smaller components are discarded as noise; default 10),
``MAX_COMPONENTS`` (more is an error, not a truncated result; default 64, at most 255).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import numpy as np
import numpy.typing as npt
from scipy import ndimage

import clara

logger = logging.getLogger(__name__)

INPUT_VOLUME = "volume.npy"
GEOMETRY = "geometry.json"
OUTPUT_LABELS = "labels.npy"
OUTPUT_COMPONENTS = "components.json"
#: ``CONNECTIVITY`` to the rank of ``ndimage.generate_binary_structure``.
CONNECTIVITY_RANKS = {6: 1, 18: 2, 26: 3}
MAX_LABEL = 255  # a uint8 label volume


@dataclass(frozen=True)
class SegmentConfig:
    """The operator's variables."""

    lower_hu: float = 150.0
    upper_hu: float = 3071.0
    connectivity: int = 6
    min_component_mm3: float = 10.0
    max_components: int = 64

    def __post_init__(self) -> None:
        if self.upper_hu < self.lower_hu:
            raise ValueError(
                f"UPPER_HU ({self.upper_hu:g}) must be at least LOWER_HU ({self.lower_hu:g})"
            )
        if self.connectivity not in CONNECTIVITY_RANKS:
            raise ValueError(f"CONNECTIVITY must be 6, 18 or 26, got {self.connectivity}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SegmentConfig:
        """Read the variables from ``env`` (``os.environ`` in the operator).

        Raises:
            ValueError: A variable is malformed; the message names it and its value.
        """
        return cls(
            lower_hu=common.env_float(env, "LOWER_HU", cls.lower_hu),
            upper_hu=common.env_float(env, "UPPER_HU", cls.upper_hu),
            connectivity=common.env_int(env, "CONNECTIVITY", cls.connectivity),
            min_component_mm3=common.env_float(
                env, "MIN_COMPONENT_MM3", cls.min_component_mm3, minimum=0.0
            ),
            max_components=common.env_int(
                env, "MAX_COMPONENTS", cls.max_components, minimum=1, maximum=MAX_LABEL
            ),
        )


def threshold(
    volume: npt.NDArray[np.floating[Any]], lower_hu: float, upper_hu: float
) -> npt.NDArray[np.bool_]:
    """The foreground mask: ``lower_hu <= volume <= upper_hu``."""
    mask: npt.NDArray[np.bool_] = (volume >= lower_hu) & (volume <= upper_hu)
    return mask


def label_components(
    mask: npt.NDArray[np.bool_], connectivity: int = 6
) -> tuple[npt.NDArray[np.int32], int]:
    """Label the connected components of ``mask``; returns ``(labels, count)``.

    ``connectivity`` is the number of neighbours a voxel touches: 6 (faces), 18 (faces and
    edges) or 26 (faces, edges and corners). Labels follow the order of each component's
    first voxel in C (slice, row, column) order.
    """
    structure = ndimage.generate_binary_structure(3, CONNECTIVITY_RANKS[connectivity])
    labels, count = ndimage.label(mask, structure=structure, output=np.int32)
    return labels, int(count)


def segment_volume(
    volume: npt.NDArray[np.floating[Any]], voxel_volume_mm3: float, config: SegmentConfig
) -> tuple[npt.NDArray[np.uint8], dict[str, Any]]:
    """Threshold ``volume``, label its components, drop the small ones, order by size.

    Returns:
        The ``uint8`` label volume (components 1..n, largest first; ties keep scan order)
        and the ``components.json`` document.

    Raises:
        ValueError: More components are kept than ``config.max_components``.
    """
    if volume.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {volume.shape}")
    mask = threshold(volume, config.lower_hu, config.upper_hu)
    raw, count = label_components(mask, config.connectivity)
    sizes = np.bincount(raw.ravel(), minlength=count + 1)
    min_voxels = config.min_component_mm3 / voxel_volume_mm3
    kept = [label for label in range(1, count + 1) if sizes[label] >= min_voxels]
    kept.sort(key=lambda label: (-int(sizes[label]), label))
    if len(kept) > config.max_components:
        raise ValueError(
            f"{len(kept)} components of at least {config.min_component_mm3:g} mm³ in "
            f"{config.lower_hu:g}..{config.upper_hu:g} HU, more than MAX_COMPONENTS "
            f"({config.max_components}); raise LOWER_HU or MIN_COMPONENT_MM3"
        )
    relabel = np.zeros(count + 1, dtype=np.uint8)
    for new_label, old_label in enumerate(kept, start=1):
        relabel[old_label] = new_label
    labels = relabel[raw]
    boxes = ndimage.find_objects(labels, max_label=len(kept))
    components: list[dict[str, Any]] = []
    for new_label, (old_label, box) in enumerate(zip(kept, boxes, strict=True), start=1):
        assert box is not None  # every kept label has voxels
        components.append(
            {
                "label": new_label,
                "voxels": int(sizes[old_label]),
                "bbox": {
                    "min": [int(s.start) for s in box],
                    "max": [int(s.stop) - 1 for s in box],
                },
            }
        )
    discarded = count - len(kept)
    document = {
        "lower_hu": config.lower_hu,
        "upper_hu": config.upper_hu,
        "connectivity": config.connectivity,
        "min_component_mm3": config.min_component_mm3,
        "shape": list(volume.shape),
        "foreground_voxels": int(mask.sum()),
        "count": len(kept),
        "discarded": discarded,
        "discarded_voxels": int(mask.sum()) - sum(c["voxels"] for c in components),
        "components": components,
        "labels": OUTPUT_LABELS,
    }
    return labels, document


def run(input_dir: Path, output_dir: Path, config: SegmentConfig) -> dict[str, Any]:
    """Segment ``input_dir/volume.npy``; write the labels, the components and the geometry."""
    geometry_bytes = (input_dir / GEOMETRY).read_bytes()
    geometry = common.read_json(input_dir / GEOMETRY)
    volume = common.read_npy(input_dir / INPUT_VOLUME)
    if list(volume.shape) != geometry["shape"]:
        raise ValueError(
            f"{INPUT_VOLUME} has shape {list(volume.shape)}, {GEOMETRY} says {geometry['shape']}"
        )
    labels, document = segment_volume(volume, geometry["voxel_volume_mm3"], config)
    common.write_outputs(
        output_dir,
        {
            OUTPUT_LABELS: common.npy_bytes(labels),
            OUTPUT_COMPONENTS: common.json_bytes(document),
            GEOMETRY: geometry_bytes,
        },
    )
    return document


def prepare(driver: clara.Driver[None]) -> bool:
    """Validate the variables before the input is ready, so a bad setting fails fast."""
    try:
        config = SegmentConfig.from_env(os.environ)
    except ValueError as error:
        logger.error("invalid variable: %s", error)
        return False
    logger.info("stage %s: %s", driver.stage_name, config)
    return True


def execute(driver: clara.Driver[None], payload: clara.Payload) -> bool:
    """Segment ``dicom-reader``'s output into this stage's output."""
    logger.info("job %s (%s), stage %s", driver.job_id, driver.job_name, driver.stage_name)
    try:
        config = SegmentConfig.from_env(os.environ)
        input_dir = common.input_folder(payload.input_entries)
        output_dir = common.output_folder(payload.output_entries)
        document = run(input_dir, output_dir, config)
    except (ValueError, LookupError, KeyError, OSError) as error:
        logger.error("segment failed: %s", error)
        return False
    sizes = ", ".join(str(c["voxels"]) for c in document["components"])
    print(
        f"segment: {config.lower_hu:g}..{config.upper_hu:g} HU, "
        f"{config.connectivity}-connectivity, {document['count']} component(s) [{sizes}] "
        f"voxels, {document['discarded']} smaller than {config.min_component_mm3:g} mm³ "
        f"discarded -> {OUTPUT_LABELS}, {OUTPUT_COMPONENTS}",
        flush=True,
    )
    return True


def main() -> int:
    """Run the operator under the Clara pipeline driver."""
    logging.basicConfig(level=logging.INFO)
    driver: clara.Driver[None] = clara.Driver(prepare=prepare, execute=execute)
    driver.start()
    result = driver.wait_for_completion()
    return 0 if result.succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
