"""Contract evolution: the protos must not break the last released contract (``buf breaking``).

The baseline is the buf image of the last release, checked in as
``protos/released/v<version>.binpb`` (see docs/contract.md for how to refresh it), so the check
needs no git history and works in any fresh clone.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RELEASED = ROOT / "protos" / "released"
STAGE_PROTO = Path("protos/nvidia/clara/platform/stage/v1/stage_service.proto")


def _version(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in path.stem.removeprefix("v").split("."))


def latest_baseline() -> Path:
    images = [p for p in RELEASED.glob("v*.binpb") if re.fullmatch(r"v\d+\.\d+\.\d+", p.stem)]
    assert images, f"no released baseline in {RELEASED}; see docs/contract.md"
    return max(images, key=_version)


def breaking(buf: str, module_root: Path) -> subprocess.CompletedProcess[str]:
    cmd = [buf, "breaking", str(module_root), "--against", str(latest_baseline())]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def copy_module(target: Path) -> Path:
    """Copy buf.yaml and the .proto files (not the released images) to ``target``."""
    shutil.copy2(ROOT / "buf.yaml", target / "buf.yaml")
    shutil.copytree(ROOT / "protos", target / "protos", ignore=shutil.ignore_patterns("released"))
    return target


def test_no_breaking_change_since_the_last_release(buf: str) -> None:
    proc = breaking(buf, ROOT)
    assert proc.returncode == 0, (
        f"protos/ breaks the released contract {latest_baseline().name} "
        "(see docs/contract.md: add fields, never renumber; breaking changes go in a new "
        f"package version):\n{proc.stdout}{proc.stderr}"
    )


def test_the_baseline_is_not_newer_than_the_package() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^version = "(\d+)\.(\d+)\.(\d+)"', text, re.MULTILINE)
    assert match is not None
    package = tuple(int(g) for g in match.groups())
    assert _version(latest_baseline()) <= package


def test_the_baseline_holds_both_apis(buf: str) -> None:
    proc = subprocess.run(
        [buf, "ls-files", str(latest_baseline())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    files = set(proc.stdout.split())
    assert "nvidia/clara/platform/stage/v1/stage_service.proto" in files
    assert "nvidia/clara/platform/jobs.proto" in files


def test_the_check_catches_a_renumbered_field(buf: str, tmp_path: Path) -> None:
    module = copy_module(tmp_path)
    proto = module / STAGE_PROTO
    text = proto.read_text()
    assert "  string job_name = 2;\n" in text, "the test's field moved; pick another one"
    proto.write_text(text.replace("  string job_name = 2;\n", "  string job_name = 12;\n"))

    proc = breaking(buf, module)

    assert proc.returncode != 0, "buf breaking accepted a renumbered field"
    assert str(STAGE_PROTO) in proc.stdout
    assert 'Previously present field "2" with name "job_name" on message "StageContext"' in (
        proc.stdout
    )


def test_the_check_catches_a_removed_rpc(buf: str, tmp_path: Path) -> None:
    module = copy_module(tmp_path)
    proto = module / STAGE_PROTO
    lines = proto.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.lstrip().startswith("rpc CompleteStage(")]
    assert len(kept) == len(lines) - 1, "the test's RPC moved; pick another one"
    proto.write_text("".join(kept))

    proc = breaking(buf, module)

    assert proc.returncode != 0
    assert '"CompleteStage"' in proc.stdout


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("  string job_name = 2;\n", "  string job_name = 2;\n  string job_label = 10;\n"),
        ("  string pipeline_id = 3;\n", "  string pipeline_id = 3 [deprecated = true];\n"),
        (
            "  STAGE_STATE_CANCELLED = 6;\n",
            "  STAGE_STATE_CANCELLED = 6;\n  // Paused.\n  STAGE_STATE_PAUSED = 7;\n",
        ),
    ],
    ids=["new-field", "deprecated-field", "new-enum-value"],
)
def test_the_check_allows_additive_changes(buf: str, tmp_path: Path, old: str, new: str) -> None:
    module = copy_module(tmp_path)
    proto = module / STAGE_PROTO
    text = proto.read_text()
    assert old in text
    proto.write_text(text.replace(old, new))
    proc = breaking(buf, module)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_removed_field_breaks_even_when_reserved(buf: str, tmp_path: Path) -> None:
    """The FILE policy keeps every released field: deprecate it instead (docs/contract.md)."""
    module = copy_module(tmp_path)
    proto = module / STAGE_PROTO
    text = proto.read_text()
    old = "  string pipeline_id = 3;\n"
    assert old in text
    proto.write_text(text.replace(old, '  reserved 3;\n  reserved "pipeline_id";\n'))
    proc = breaking(buf, module)
    assert proc.returncode != 0
    assert 'field "3" with name "pipeline_id"' in proc.stdout
