"""Operator ``segment``: threshold the normalized volume and label its connected components.

Input: ``load-volume``'s output (``volume.mhd``, normalized ``MET_USHORT``). Output:
``labels.mhd`` + ``labels.raw`` (``MET_UCHAR``; 0 = background, components labelled 1..n from
largest to smallest) and ``components.json``.

Variables: ``THRESHOLD`` (normalized 0..1, voxels at or above it are foreground; default 0.5),
``MIN_COMPONENT_VOXELS`` (smaller components are discarded as noise; default 1).
"""

from __future__ import annotations

import array
import logging
import math
import os
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common

import clara

logger = logging.getLogger(__name__)

INPUT_VOLUME = "volume.mhd"
OUTPUT_LABELS = "labels.mhd"
OUTPUT_COMPONENTS = "components.json"
MAX_LABELS = 255  # a MET_UCHAR label volume


@dataclass(frozen=True)
class SegmentConfig:
    """The operator's variables."""

    threshold: float = 0.5
    min_component_voxels: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SegmentConfig:
        """Read the variables from ``env`` (``os.environ`` in the operator)."""
        threshold = common.env_float(env, "THRESHOLD", 0.5, minimum=0.0, maximum=1.0)
        assert threshold is not None
        if threshold == 0.0:
            raise ValueError("THRESHOLD must be greater than 0 (0 selects every voxel)")
        return cls(
            threshold=threshold,
            min_component_voxels=common.env_int(env, "MIN_COMPONENT_VOXELS", 1, minimum=1),
        )


def threshold_cutoff(threshold: float, stored_max: int = common.NORMALIZED_MAX) -> int:
    """The smallest stored value that is foreground for a normalized ``threshold``."""
    return math.ceil(threshold * stored_max - 1e-9)


def threshold_mask(values: Sequence[int], cutoff: int) -> bytearray:
    """1 where ``value >= cutoff``, else 0."""
    return bytearray(1 if v >= cutoff else 0 for v in values)


def label_components(
    mask: Sequence[int], dims: tuple[int, int, int]
) -> tuple[array.array[int], int]:
    """Label the 6-connected components of ``mask`` (x varies fastest).

    Iterative breadth-first search, so arbitrarily large components cannot overflow the
    stack. Labels are 1..n in order of each component's first voxel; returns
    ``(labels, n)``.
    """
    nx, ny, nz = dims
    plane = nx * ny
    if len(mask) != plane * nz:
        raise ValueError(f"mask has {len(mask)} voxels, dims {dims} need {plane * nz}")
    labels = array.array("i", [0]) * len(mask)
    count = 0
    queue: deque[int] = deque()
    for start, inside in enumerate(mask):
        if not inside or labels[start]:
            continue
        count += 1
        labels[start] = count
        queue.append(start)
        while queue:
            i = queue.popleft()
            x = i % nx
            y = (i // nx) % ny
            z = i // plane
            neighbours = (
                (x > 0, i - 1),
                (x < nx - 1, i + 1),
                (y > 0, i - nx),
                (y < ny - 1, i + nx),
                (z > 0, i - plane),
                (z < nz - 1, i + plane),
            )
            for ok, j in neighbours:
                if ok and mask[j] and not labels[j]:
                    labels[j] = count
                    queue.append(j)
    return labels, count


def measure_components(
    labels: Sequence[int],
    count: int,
    dims: tuple[int, int, int],
    values: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Voxel count, inclusive bounding box, centroid (voxels) and mean value per label 1..count."""
    nx, ny, _ = dims
    voxels = [0] * (count + 1)
    lows = [[math.inf] * 3 for _ in range(count + 1)]
    highs = [[-math.inf] * 3 for _ in range(count + 1)]
    sums = [[0, 0, 0] for _ in range(count + 1)]
    value_sums = [0] * (count + 1)
    for i, label in enumerate(labels):
        if not label:
            continue
        coords = (i % nx, (i // nx) % ny, i // (nx * ny))
        voxels[label] += 1
        low, high, total = lows[label], highs[label], sums[label]
        for axis, c in enumerate(coords):
            low[axis] = min(low[axis], c)
            high[axis] = max(high[axis], c)
            total[axis] += c
        if values is not None:
            value_sums[label] += values[i]
    components = []
    for label in range(1, count + 1):
        n = voxels[label]
        component: dict[str, Any] = {
            "label": label,
            "voxels": n,
            "bbox": {"min": [int(v) for v in lows[label]], "max": [int(v) for v in highs[label]]},
            "centroid": [round(s / n, 3) for s in sums[label]],
        }
        if values is not None:
            component["mean_value"] = round(value_sums[label] / n, 3)
        components.append(component)
    return components


def segment_volume(
    volume: common.Volume, threshold: float, min_component_voxels: int = 1
) -> tuple[common.Volume, dict[str, Any]]:
    """Threshold a normalized volume and label its components.

    Components smaller than ``min_component_voxels`` are discarded; the rest are relabelled
    1..n by decreasing size. Returns the ``MET_UCHAR`` label volume and the
    ``components.json`` document.
    """
    cutoff = threshold_cutoff(threshold)
    mask = threshold_mask(volume.data, cutoff)
    raw_labels, raw_count = label_components(mask, volume.dims)
    measured = measure_components(raw_labels, raw_count, volume.dims, volume.data)
    kept = sorted(
        (c for c in measured if c["voxels"] >= min_component_voxels),
        key=lambda c: (-c["voxels"], c["label"]),
    )
    if len(kept) > MAX_LABELS:
        raise ValueError(
            f"{len(kept)} components do not fit a MET_UCHAR label volume; "
            "raise THRESHOLD or MIN_COMPONENT_VOXELS"
        )
    relabel = [0] * (raw_count + 1)
    for new_label, component in enumerate(kept, start=1):
        relabel[component["label"]] = new_label
        component["label"] = new_label
        component["mean_intensity"] = round(component.pop("mean_value") / common.NORMALIZED_MAX, 4)
    label_data = array.array("B", (relabel[label] for label in raw_labels))
    labels = common.Volume(volume.dims, volume.spacing, "MET_UCHAR", label_data)
    document = {
        "threshold": threshold,
        "cutoff": cutoff,
        "connectivity": 6,
        "min_component_voxels": min_component_voxels,
        "dims": list(volume.dims),
        "spacing_mm": list(volume.spacing),
        "foreground_voxels": sum(mask),
        "count": len(kept),
        "discarded": raw_count - len(kept),
        "components": kept,
        "labels": OUTPUT_LABELS,
    }
    return labels, document


def run(input_dir: Path, output_dir: Path, config: SegmentConfig) -> dict[str, Any]:
    """Segment ``input_dir/volume.mhd``; write ``labels.mhd`` and ``components.json``."""
    volume = common.read_mhd(input_dir / INPUT_VOLUME)
    if volume.element_type != "MET_USHORT":
        raise ValueError(f"expected a normalized MET_USHORT volume, got {volume.element_type}")
    labels, document = segment_volume(volume, config.threshold, config.min_component_voxels)
    common.write_mhd(output_dir / OUTPUT_LABELS, labels)
    common.write_json(output_dir / OUTPUT_COMPONENTS, document)
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
    """Segment ``load-volume``'s output into this stage's output."""
    logger.info("job %s (%s), stage %s", driver.job_id, driver.job_name, driver.stage_name)
    try:
        config = SegmentConfig.from_env(os.environ)
        input_dir = common.input_folder(payload.input_entries)
        output_dir = common.output_folder(payload.output_entries)
        document = run(input_dir, output_dir, config)
    except (ValueError, LookupError, OSError) as error:
        logger.error("segment failed: %s", error)
        return False
    sizes = ", ".join(str(c["voxels"]) for c in document["components"])
    print(
        f"segment: threshold {config.threshold:g}, {document['count']} component(s) "
        f"[{sizes}] voxels, {document['discarded']} discarded -> {OUTPUT_LABELS}",
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
