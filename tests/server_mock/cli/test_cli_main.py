"""The `clara-mock` command as a user starts it: its version, help, and global flags."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

from _cli_helpers import PROCESS_WAIT, cli_process, make_input, write_pipeline


def console_script() -> list[str]:
    """The installed `clara-mock` entry point (beside this interpreter)."""
    script = Path(sys.executable).parent / "clara-mock"
    assert script.is_file(), "install the project (pip install -e '.[test]')"
    return [str(script)]


def test_version() -> None:
    done = subprocess.run(
        [*console_script(), "--version"],
        capture_output=True,
        text=True,
        timeout=PROCESS_WAIT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"clara-mock {importlib.metadata.version('clara-stage-driver')}\n"


def test_help_reads_well() -> None:
    done = cli_process("run", "--help")
    assert done.returncode == 0
    for flag in ("--input", "--output", "--stream-logs", "-v, --verbose"):
        assert flag in done.stdout, flag
    assert "logs/<operator>.log" in done.stdout


def test_global_flags_are_accepted_after_the_command(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, [("count", "count")])
    inputs = make_input(tmp_path / "in", {"a.txt": "a"})

    after = cli_process(
        "run", "-v", str(pipeline), "--input", str(inputs), "--output", "o", cwd=tmp_path
    )
    assert after.returncode == 0, after.stderr
    assert "INFO server_mock.runner: job" in after.stderr  # -v took effect
    before = cli_process(
        "-vv", "list", "jobs", "--address", "127.0.0.1:1", "--connect-timeout", "1"
    )
    after = cli_process("list", "jobs", "-v", "--address", "127.0.0.1:1", "--connect-timeout", "1")
    assert before.returncode == after.returncode == 1  # parsed; nothing listens there
    assert "error: argument" not in before.stderr + after.stderr


HIDE_MOCK_EXTRA = """
import importlib.abc, sys

class HideMockExtra(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("yaml", "grpc_health", "grpc_reflection", "rich"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, HideMockExtra())
from server_mock._cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_the_mock_extra_run_says_what_to_install_and_clients_still_work() -> None:
    def without_extra(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", HIDE_MOCK_EXTRA, *argv],
            capture_output=True,
            text=True,
            timeout=PROCESS_WAIT,
            check=False,
        )

    refused = without_extra("run", "pipeline.yaml", "--input", ".")
    assert refused.returncode == 2
    assert refused.stderr.startswith("clara-mock run: error: server_mock needs the 'mock' extra")
    assert "pip install 'clara-stage-driver[mock]'" in refused.stderr and "rich" in refused.stderr
    client = without_extra("list", "jobs", "--address", "127.0.0.1:1", "--connect-timeout", "1")
    assert client.returncode == 1 and "is `clara-mock serve` running there?" in client.stderr
