"""The benchmark suite runs (quick mode) and reports every figure; targets are not asserted.

Speed targets live in `python -m benchmarks`, which compares against baselines measured in
the same run; a shared CI machine is too noisy to fail a build on them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmarks_report_every_figure(tmp_path: Path) -> None:
    results = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    for figure in range(1, 7):
        assert f"Figure {figure} - " in run.stdout
    assert "error(s)" in run.stdout and " 0 error(s)" in run.stdout
    assert json.loads(results.read_text())
