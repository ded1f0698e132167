"""Figure 6: a DAG of no-op stages: platform overhead per stage vs starting one operator process.

The DAG (200 stages; 30 with ``--quick``): a ``root`` stage; chains fanning out from it (8
chains of 20); leaves reading straight from ``root``; a ``join`` reading every chain's tail.
Every operator is a no-op driver (``execute`` returns True).

Measured (:func:`run_cli_variant`): the wall time of ``clara-mock run pipeline.yaml`` (an
embedded platform that launches every operator as its own local process), per stage.

Baseline: the wall time of starting one ``python -c "import clara"`` process and waiting
for it (sequential, median of many), i.e. what one operator process costs on this machine
before any platform work. Were the platform free and the processes not to overlap at all,
the ratio would be 1x; target <= 2x: the platform's overhead per stage is at most one
process start. (Starting all N baseline processes at once was tried first: on this VM its
wall time varied 2-3x between runs, so it is not used.)

Informational (:func:`run_inprocess_variant`): the same DAG on a MockPlatform with every
driver in this process (no process starts): the platform and driver cost per stage alone.

Sandbox start (:func:`spawn_sandboxed`): the same ``python -c "import clara"`` process started
in the bubblewrap sandbox the sandboxed runner gives a stage (its namespaces, the host's
system folders and Python, an input, an output and a log folder), built by the runner's own
:func:`server_mock._sandbox.sandbox_command`; baseline: the plain process start, the two
alternating. Target <= 1.2x: the sandbox adds at most a fifth to a stage's process start.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import clara
from benchmarks._common import PYTHON, Row, row
from server_mock import InputRef, MockPlatform, OutputRef, StageSpec
from server_mock._runner import choose_runner
from server_mock._sandbox import SandboxSettings, StageMount, bwrap_problem, sandbox_command

TITLE = "Figure 6 - DAG of no-op stages: per-stage cost vs starting one operator process"
FIGURE = "6 dag"
TARGET_RATIO = 2.0
TARGET_SANDBOX_RATIO = 1.2
RUN_TIMEOUT = 300.0

_OPERATOR = """\
import sys

import clara

driver = clara.Driver(execute=lambda driver, payload: True)
driver.start()
sys.exit(0 if driver.wait_for_completion().succeeded else 1)
"""


def dag(stages: int) -> list[tuple[str, list[str]]]:
    """``(name, upstream names)`` of a DAG of ``stages`` stages: fan-out, chains, fan-in."""
    chains = 8 if stages >= 100 else 4
    chain_length = int(0.8 * (stages - 2) / chains)
    leaves = stages - 2 - chains * chain_length
    nodes: list[tuple[str, list[str]]] = [("root", [])]
    tails = []
    for chain in range(chains):
        previous = "root"
        for link in range(chain_length):
            name = f"c{chain}-{link}"
            nodes.append((name, [previous]))
            previous = name
        tails.append(previous)
    nodes += [(f"leaf{i}", ["root"]) for i in range(leaves)]
    nodes.append(("join", tails))
    assert len(nodes) == stages
    return nodes


def write_pipeline(folder: Path, stages: int) -> Path:
    """Write ``pipeline.yaml``, the no-op operator and an input folder into ``folder``."""
    (folder / "noop_operator.py").write_text(_OPERATOR)
    (folder / "input").mkdir(exist_ok=True)
    (folder / "input" / "in.txt").write_text("benchmark input\n")
    lines = ["api-version: 0.4.0", f"name: noop-dag-{stages}", "operators:"]
    nodes = dag(stages)
    # The fan-in reads several upstream outputs: each must be named (one unnamed input only).
    fan_in = {source for _, upstream in nodes if len(upstream) > 1 for source in upstream}
    for name, upstream in nodes:
        lines += [
            f"- name: {name}",
            "  container:",
            "    image: benchmarks/noop",
            '    tag: "0.1"',
            '    command: ["python", "noop_operator.py"]',
            "  input:",
        ]
        if not upstream:
            lines.append("  - path: /input")
        elif len(upstream) == 1:
            lines += [f"  - from: {upstream[0]}", "    path: /input"]
        else:
            for source in upstream:
                lines += [
                    f"  - from: {source}",
                    f"    name: {source}",
                    f"    path: /input/{source}",
                ]
        lines += ["  output:", "  - path: /output"]
        if name in fan_in:
            lines.append(f"    name: {name}")
        lines.append("  timeout: 300")
    path = folder / "pipeline.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _clara_mock() -> list[str]:
    script = Path(PYTHON).parent / "clara-mock"
    if script.exists():
        return [str(script)]
    return [PYTHON, "-c", "import sys; from server_mock._cli import main; sys.exit(main())"]


def run_cli_variant(folder: Path, stages: int) -> float:
    """The figure through ``clara-mock run``: the wall time of one run, in seconds.

    Raises:
        RuntimeError: The run failed (its output is in the message).
    """
    pipeline = write_pipeline(folder, stages)
    output = folder / f"out-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    done = subprocess.run(
        [
            *_clara_mock(),
            "run",
            str(pipeline),
            "--input",
            str(folder / "input"),
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        cwd=folder,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(
            f"clara-mock run failed ({done.returncode}):\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return elapsed


def run_inprocess_variant(stages: int) -> float:
    """The same DAG on a MockPlatform with every driver in this process; wall seconds."""
    specs = [
        StageSpec(
            name,
            inputs=tuple(InputRef(f"/in/{u}", u, name=u if len(up) > 1 else "") for u in up)
            or (InputRef("/in"),),
            outputs=(OutputRef(f"/out/{name}"),),
        )
        for name, up in dag(stages)
    ]
    with MockPlatform() as platform:
        job_id = platform.create_job(specs, name="noop-dag")
        drivers: list[clara.Driver[Any]] = [
            clara.Driver(
                execute=lambda driver, payload: True,
                target=platform.address,
                job_id=job_id,
                stage_name=spec.name,
            )
            for spec in specs
        ]
        started = time.perf_counter()
        for driver in drivers:
            driver.start()
        results = [driver.wait_for_completion(RUN_TIMEOUT) for driver in drivers]
        elapsed = time.perf_counter() - started
    failed = [r for r in results if not r.succeeded]
    if failed:
        raise RuntimeError(f"{len(failed)} in-process stage(s) failed: {failed[0]}")
    return elapsed


def spawn_one(cwd: Path) -> float:
    """Start one ``python -c "import clara"`` process and wait for it; wall seconds."""
    started = time.perf_counter()
    subprocess.run(
        [PYTHON, "-c", "import clara"], stdout=subprocess.DEVNULL, cwd=cwd, check=True, timeout=60
    )
    return time.perf_counter() - started


def spawn_sandboxed(folder: Path) -> float:
    """Start one ``python -c "import clara"`` process in a stage's sandbox; wall seconds."""
    for name in ("input", "output", "logs"):
        (folder / "stage" / name).mkdir(parents=True, exist_ok=True)
    argv = sandbox_command(
        [PYTHON, "-c", "import clara"],
        settings=SandboxSettings(),
        stage_mounts=[
            StageMount(folder / "stage" / "input", "/input", writable=False),
            StageMount(folder / "stage" / "output", "/output", writable=True),
        ],
        shared_dirs=[(folder / "stage" / "logs", True)],
        command_dir=folder,
        home=os.environ.get("HOME"),
    )
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, cwd=folder, check=True, timeout=60)
    return time.perf_counter() - started


def run(quick: bool) -> list[Row]:
    stages = 30 if quick else 200
    repetitions = 1 if quick else 2
    spawns = 10  # per repetition, around the run
    cli: list[float] = []
    spawn: list[float] = []
    inprocess: list[float] = []
    with tempfile.TemporaryDirectory(prefix="clara-bench-dag-") as temp:
        folder = Path(temp)
        spawn_one(folder)  # warm the file cache
        for _ in range(repetitions):
            spawn += [spawn_one(folder) * 1e3 for _ in range(spawns // 2)]
            cli.append(run_cli_variant(folder, stages) / stages * 1e3)
            spawn += [spawn_one(folder) * 1e3 for _ in range(spawns // 2)]
            inprocess.append(run_inprocess_variant(stages) / stages * 1e3)
        sandboxed: list[float] = []
        plain: list[float] = []
        problem = bwrap_problem()
        if problem is None:
            spawn_sandboxed(folder)  # warm the file cache
            for _ in range(10 if quick else 30):
                plain.append(spawn_one(folder) * 1e3)
                sandboxed.append(spawn_sandboxed(folder) * 1e3)
    runner = choose_runner(None, SandboxSettings())
    rows = [
        row(
            FIGURE,
            f"clara-mock run, {stages} stages, per stage",
            "ms",
            cli,
            baseline="one 'import clara' process",
            base_samples=spawn,
            target=f"median <= {TARGET_RATIO:g}x",
            check=lambda r: r.ratio <= TARGET_RATIO,
            note=f"each sample: one run's wall time / {stages} (embedded platform start, "
            f"{stages} operator processes, outputs written; the {runner} runner, the "
            "default here); baseline: one process start, sequential"
            + ("" if problem is None else f"; sandbox start not measured: {problem}"),
        ),
        row(
            FIGURE,
            f"in-process drivers, {stages} stages, per stage",
            "ms",
            inprocess,
            baseline="one 'import clara' process",
            base_samples=spawn,
            note="MockPlatform + one in-process driver per stage, all started at once: the "
            "platform and driver cost without process starts",
        ),
    ]
    if problem is None:
        rows.append(
            row(
                FIGURE,
                "sandboxed operator process start",
                "ms",
                sandboxed,
                baseline="one 'import clara' process",
                base_samples=plain,
                target=f"median <= {TARGET_SANDBOX_RATIO:g}x",
                check=lambda r: r.ratio <= TARGET_SANDBOX_RATIO,
                note="the same process in a stage's bwrap sandbox (namespaces, system "
                "folders, Python, an input, an output, logs), alternating with the plain start",
            )
        )
    return rows
