"""The committed generated code (clara/_proto, server_mock/_proto) must match a fresh generation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_up_to_date() -> None:
    cmd = [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, (
        f"generated code is stale (exit {proc.returncode}); "
        f"run: python scripts/gen_protos.py\n{proc.stdout}\n{proc.stderr}"
    )
