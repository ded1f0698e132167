"""Importing the library stays light: the protobuf runtime loads only when a driver connects."""

from __future__ import annotations

import subprocess
import sys


def test_import_clara_does_not_load_protobuf_or_the_generated_code() -> None:
    probe = (
        "import sys, clara\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('google.protobuf', 'clara._proto',"
        " 'clara._grpc_link')))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == ""
