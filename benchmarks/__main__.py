"""``python -m benchmarks [--quick] [--json PATH] [--only 1,3]``: run the figures, print tables."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from benchmarks._common import Row, cpu_count, format_table

FIGURES = {
    "1": "benchmarks.lifecycle",
    "2": "benchmarks.inputs_ready",
    "3": "benchmarks.scale",
    "4": "benchmarks.startup",
    "5": "benchmarks.payload",
    "6": "benchmarks.dag",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks of the clara driver and the mock platform, each figure next "
        "to a baseline measured in the same run.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small repetition counts (under a minute in total)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument(
        "--only",
        metavar="FIGURES",
        default=",".join(FIGURES),
        help="comma-separated figure numbers to run (default: all)",
    )
    args = parser.parse_args(argv)
    chosen = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = [f for f in chosen if f not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s) {unknown}; choose from {list(FIGURES)}")

    # The driver logs every life-cycle step at INFO: keep the output to the tables.
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("clara").setLevel(logging.WARNING)
    logging.getLogger("server_mock").setLevel(logging.WARNING)

    mode = "quick" if args.quick else "full"
    print(
        f"clara benchmarks ({mode}) - python {platform.python_version()}, "
        f"{cpu_count()} cpu(s), {platform.machine()}; ratios = measured median / baseline median",
        flush=True,
    )
    results: list[Row] = []
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    begun = time.monotonic()
    for number in chosen:
        module = importlib.import_module(FIGURES[number])
        started = time.monotonic()
        try:
            rows = module.run(args.quick)
        except Exception:
            errors[number] = traceback.format_exc()
            print(f"\n{module.TITLE}\nERROR:\n{errors[number]}", file=sys.stderr, flush=True)
            continue
        finally:
            timings[number] = time.monotonic() - started
        results.extend(rows)
        print(f"\n{format_table(module.TITLE, rows)}\n  ({timings[number]:.1f} s)", flush=True)

    misses = [r for r in results if r.passed is False]
    total = time.monotonic() - begun
    print(
        f"\n{len(results)} rows, {sum(r.passed is True for r in results)} PASS, "
        f"{len(misses)} MISS, {len(errors)} error(s) in {total:.1f} s",
        flush=True,
    )
    if args.json is not None:
        document = {
            "mode": mode,
            "python": platform.python_version(),
            "cpus": cpu_count(),
            "machine": platform.machine(),
            "pid": os.getpid(),
            "seconds": {k: round(v, 2) for k, v in timings.items()} | {"total": round(total, 2)},
            "rows": [r.as_dict() for r in results],
            "errors": errors,
        }
        args.json.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    return 1 if errors or any(math.isnan(r.median) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
