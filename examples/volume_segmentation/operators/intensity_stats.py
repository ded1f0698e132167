"""Operator ``statistics``: intensity statistics of the loaded volume.

Input: ``load-volume``'s output (``volume.mhd`` normalized 0..65535 and ``metadata.json`` with
the intensity window). Output: ``statistics.json`` with count, min, max, mean, standard
deviation, percentiles and a histogram, in the source's intensity units (mapped back through
the window) and normalized 0..1.

Variables: ``HISTOGRAM_BINS`` (default 32), ``PERCENTILES`` (comma-separated, default
``5,25,50,75,95``).

The file is not called ``statistics.py``: run as a script, ``operators/`` is ``sys.path[0]``,
and that name would shadow the standard library's ``statistics`` module.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common

import clara

logger = logging.getLogger(__name__)

INPUT_VOLUME = "volume.mhd"
INPUT_METADATA = "metadata.json"
OUTPUT_STATISTICS = "statistics.json"
DEFAULT_PERCENTILES = (5.0, 25.0, 50.0, 75.0, 95.0)


def parse_percentiles(text: str) -> tuple[float, ...]:
    """``"5, 50,95"`` -> ``(5.0, 50.0, 95.0)``; each must be within 0..100."""
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"PERCENTILES must be comma-separated numbers, got {text!r}") from None
        if not 0 <= value <= 100:
            raise ValueError(f"percentiles must be within 0..100, got {part.strip()}")
        values.append(value)
    return tuple(values)


@dataclass(frozen=True)
class StatisticsConfig:
    """The operator's variables."""

    bins: int = 32
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StatisticsConfig:
        """Read the variables from ``env`` (``os.environ`` in the operator)."""
        text = env.get("PERCENTILES", "").strip()
        return cls(
            bins=common.env_int(env, "HISTOGRAM_BINS", 32, minimum=1),
            percentiles=parse_percentiles(text) if text else DEFAULT_PERCENTILES,
        )


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of sorted values, linearly interpolated."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    position = (len(sorted_values) - 1) * p / 100
    below = math.floor(position)
    above = min(below + 1, len(sorted_values) - 1)
    fraction = position - below
    return sorted_values[below] + (sorted_values[above] - sorted_values[below]) * fraction


def histogram(values: Sequence[float], bins: int, lo: float, hi: float) -> list[int]:
    """Counts in ``bins`` equal bins over ``lo..hi``; the last bin includes ``hi``.

    Values outside the range are counted in the first or last bin.
    """
    counts = [0] * bins
    width = (hi - lo) / bins if hi > lo else 1.0
    for value in values:
        index = int((value - lo) / width)
        counts[min(bins - 1, max(0, index))] += 1
    return counts


def summarize(
    values: Sequence[float],
    *,
    bins: int,
    percentiles: Sequence[float],
    value_range: tuple[float, float],
    digits: int = 4,
) -> dict[str, Any]:
    """Count, min, max, mean, population standard deviation, percentiles and histogram."""
    if not values:
        raise ValueError("no values to summarize")
    ordered = sorted(values)
    count = len(ordered)
    mean = math.fsum(ordered) / count
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in ordered) / count)
    lo, hi = value_range
    width = (hi - lo) / bins
    return {
        "count": count,
        "min": round(ordered[0], digits),
        "max": round(ordered[-1], digits),
        "mean": round(mean, digits),
        "std": round(std, digits),
        "percentiles": {f"{p:g}": round(percentile(ordered, p), digits) for p in percentiles},
        "histogram": {
            "range": [lo, hi],
            "edges": [round(lo + width * k, digits) for k in range(bins + 1)],
            "counts": histogram(ordered, bins, lo, hi),
        },
    }


def run(input_dir: Path, output_dir: Path, config: StatisticsConfig) -> dict[str, Any]:
    """Summarize ``input_dir/volume.mhd``; write ``statistics.json``."""
    metadata = common.read_json(input_dir / INPUT_METADATA)
    volume = common.read_mhd(input_dir / metadata.get("volume", INPUT_VOLUME))
    lo, hi = (float(v) for v in metadata["window"])
    top = float(metadata.get("stored_max", common.NORMALIZED_MAX))
    normalized = [v / top for v in volume.data]
    source_units = [lo + v * (hi - lo) for v in normalized]
    bins, percentiles = config.bins, config.percentiles
    document = {
        "source": metadata.get("source", ""),
        "window": [lo, hi],
        "intensity": summarize(
            source_units, bins=bins, percentiles=percentiles, value_range=(lo, hi), digits=2
        ),
        "normalized": summarize(
            normalized, bins=bins, percentiles=percentiles, value_range=(0.0, 1.0)
        ),
    }
    common.write_json(output_dir / OUTPUT_STATISTICS, document)
    return document


def execute(driver: clara.Driver[None], payload: clara.Payload) -> bool:
    """Summarize ``load-volume``'s output into this stage's output."""
    logger.info("job %s (%s), stage %s", driver.job_id, driver.job_name, driver.stage_name)
    try:
        config = StatisticsConfig.from_env(os.environ)
        input_dir = common.input_folder(payload.input_entries)
        output_dir = common.output_folder(payload.output_entries)
        document = run(input_dir, output_dir, config)
    except (ValueError, LookupError, KeyError, OSError) as error:
        logger.error("statistics failed: %s", error)
        return False
    stats = document["intensity"]
    print(
        f"statistics: {stats['count']} voxels, mean {stats['mean']:g} std {stats['std']:g}, "
        f"median {stats['percentiles'].get('50', float('nan')):g} -> {OUTPUT_STATISTICS}",
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
