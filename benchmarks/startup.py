"""Figure 4: start-up cost: ``import clara`` and an idle driver process vs bare grpc.

Import time: fresh interpreters time ``import clara`` (measured) and ``import grpc``
(baseline) with ``time.perf_counter`` around the import statement alone, alternating, many
repetitions. ``clara`` imports grpc itself, so the ratio is what clara adds on top of grpc.
The target row gives both packages cached bytecode, as installed packages have (the .pyc
files go to a temporary PYTHONPYCACHEPREFIX); an informational row keeps the environment as
it is (where PYTHONDONTWRITEBYTECODE may force clara to compile from source every time).

Peak memory: the peak RSS (``VmHWM``; ``ru_maxrss`` would report the benchmark's own
peak, as Linux carries it over fork+exec) of a fresh process that (a) constructs a Driver in
standalone mode without starting it, or (b) runs one standalone life-cycle with a no-op
execute, vs a process that imports grpc and holds one bare, unconnected channel to a
loopback address.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from benchmarks._common import PYTHON, Row, row

TITLE = "Figure 4 - start-up: import time and idle process memory vs bare grpc"
FIGURE = "4 start-up"
TARGET_IMPORT = 1.5
TARGET_RSS = 1.3

_IMPORT = """
import time
started = time.perf_counter()
import {module}
print(time.perf_counter() - started)
"""

_RSS = """
import json, sys
mode = sys.argv[1]
if mode == "channel":
    import grpc
    channel = grpc.insecure_channel("127.0.0.1:9")
else:
    import clara
    folder = sys.argv[2]
    env = {
        "NVIDIA_CLARA_NOSYNCLOCK": "1",
        "NVIDIA_CLARA_INPUT": folder,
        "NVIDIA_CLARA_OUTPUT": folder,
    }
    driver = clara.Driver(execute=lambda d, p: True, environ=env)
    if mode == "driver-run":
        driver.start()
        result = driver.wait_for_completion(30)
        assert result.succeeded, result
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so a child started by a big
# parent reports the parent's peak.
with open("/proc/self/status") as status:
    print(json.dumps(next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))))
"""


def _python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [PYTHON, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"subprocess failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def _cached_bytecode_env(prefix: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(prefix)
    return env


def _as_is_note() -> str:
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return (
            "PYTHONDONTWRITEBYTECODE is set here and the editable clara has no __pycache__: "
            "every import compiles clara from source, while grpc's .pyc files are installed"
        )
    return "with this environment's bytecode settings"


def run(quick: bool) -> list[Row]:
    repetitions = 8 if quick else 40
    memory_reps = 3 if quick else 10
    imports: dict[tuple[str, str], list[float]] = {
        (module, env): [] for module in ("clara", "grpc") for env in ("cached", "as-is")
    }
    with tempfile.TemporaryDirectory(prefix="clara-bench-pycache-") as pycache:
        envs = {"as-is": dict(os.environ), "cached": _cached_bytecode_env(Path(pycache))}
        for rep in range(repetitions + 1):
            keys = list(imports)
            keys = keys[rep % 4 :] + keys[: rep % 4]
            for module, env in keys:
                elapsed = float(_python(_IMPORT.format(module=module), env=envs[env])) * 1e3
                if rep:  # the first round warms the file cache and writes the bytecode
                    imports[module, env].append(elapsed)

    rss: dict[str, list[float]] = {"driver": [], "driver-run": [], "channel": []}
    with tempfile.TemporaryDirectory(prefix="clara-bench-") as folder:
        for rep in range(memory_reps):
            modes = list(rss)
            modes = modes[rep % 3 :] + modes[: rep % 3]
            for mode in modes:
                rss[mode].append(json.loads(_python(_RSS, mode, str(Path(folder)))) / 1024)

    return [
        row(
            FIGURE,
            "import clara (bytecode cached)",
            "ms",
            imports["clara", "cached"],
            baseline="import grpc",
            base_samples=imports["grpc", "cached"],
            target=f"median <= {TARGET_IMPORT:g}x",
            check=lambda r: r.ratio <= TARGET_IMPORT,
            note="as an installed wheel imports: .pyc files written once (PYTHONPYCACHEPREFIX "
            "in a temp folder, so the source tree is untouched)",
        ),
        row(
            FIGURE,
            "import clara (environment as is)",
            "ms",
            imports["clara", "as-is"],
            baseline="import grpc",
            base_samples=imports["grpc", "as-is"],
            note=_as_is_note(),
        ),
        row(
            FIGURE,
            "peak RSS, driver constructed (standalone)",
            "MiB",
            rss["driver"],
            baseline="grpc + one channel",
            base_samples=rss["channel"],
            target=f"median <= {TARGET_RSS:g}x",
            check=lambda r: r.ratio <= TARGET_RSS,
        ),
        row(
            FIGURE,
            "peak RSS, standalone no-op life-cycle run",
            "MiB",
            rss["driver-run"],
            baseline="grpc + one channel",
            base_samples=rss["channel"],
            target=f"median <= {TARGET_RSS:g}x",
            check=lambda r: r.ratio <= TARGET_RSS,
        ),
    ]
