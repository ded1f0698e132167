"""``--operator-rootfs IMAGE[:TAG]=DIR``: an operator runs inside an unpacked image root.

The test builds a small image root of its own: the files the host's Python, grpc and clara
need (hard links where the filesystem allows, else copies), an operator script and a marker
file, and nothing else of the host: an image with a driver in it, as `docker export` of an
operator image gives. Its operator reports over loopback like any other.
"""

from __future__ import annotations

import encodings
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path, PurePosixPath

import grpc
from _launch import DRIVER_OPERATOR, WAIT

import clara
from server_mock._sandbox import bwrap_problem

ROOT = Path(__file__).resolve().parents[2]

# Loads what a driver loads (a standalone life-cycle, a real channel), then lists every file
# the process uses: its Python modules and its mapped shared objects.
COLLECT = textwrap.dedent(
    """
    import json, os, pkgutil, sys, tempfile
    import grpc, clara
    for module in pkgutil.walk_packages(clara.__path__, "clara."):
        __import__(module.name)
    folder = tempfile.mkdtemp()
    env = {"NVIDIA_CLARA_NOSYNCLOCK": "1", "NVIDIA_CLARA_INPUT": folder,
           "NVIDIA_CLARA_OUTPUT": folder}
    driver = clara.Driver(execute=lambda d, p: True, environ=env)
    driver.start()
    assert driver.wait_for_completion(30).succeeded
    channel = grpc.insecure_channel("127.0.0.1:9")
    try:
        grpc.channel_ready_future(channel).result(timeout=0.05)
    except grpc.FutureTimeoutError:
        pass
    files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
    with open("/proc/self/maps") as maps:
        files |= {line.split()[-1] for line in maps if line.rstrip().endswith(".so")
                  or ".so." in line.split()[-1]}
    print(json.dumps(sorted(f for f in files if f and os.path.isabs(f))))
    """
)


def mirror(root: Path, path: str) -> None:
    """Make ``path`` resolve inside ``root`` as on the host: symlinks stay symlinks."""
    parts = PurePosixPath(path).parts
    current = "/"
    for index, part in enumerate(parts[1:], start=1):
        current = os.path.join(current, part)
        inside = root / current.lstrip("/")
        if os.path.islink(current):
            if not inside.is_symlink():
                inside.parent.mkdir(parents=True, exist_ok=True)
                inside.symlink_to(os.readlink(current))
            target = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
            mirror(root, os.path.join(target, *parts[index + 1 :]))
            return
        if os.path.isdir(current):
            inside.mkdir(parents=True, exist_ok=True)
        elif os.path.isfile(current) and not inside.exists():
            inside.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(current, inside)
            except OSError:
                shutil.copy2(current, inside)


def linked_libraries(binaries: list[str]) -> list[str]:
    """The shared objects ``binaries`` load, by the paths the loader finds them at."""
    listing = subprocess.run(
        ["ldd", *binaries], capture_output=True, text=True, timeout=WAIT, check=False
    ).stdout
    found = []
    for line in listing.splitlines():
        words = line.split()
        if "=>" in words and len(words) > words.index("=>") + 1:
            found.append(words[words.index("=>") + 1])
        elif words and words[0].startswith("/") and not words[0].endswith(":"):
            found.append(words[0])  # the loader itself
    return [path for path in found if path.startswith("/")]


def place(root: Path, source: Path, target: Path) -> None:
    """Put the host file ``source`` at ``target`` inside ``root`` (a hard link, else a copy)."""
    inside = root / str(target).lstrip("/")
    if inside.exists():
        return
    inside.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, inside)
    except OSError:
        shutil.copy2(source, inside)


# The image's Python is the base interpreter, with the venv's packages (and the checkout's
# clara) installed into its own site-packages: paths of the venv or the checkout may lie under
# /tmp, which the sandbox covers with the operator's private /tmp.
IMAGE_PYTHON = os.path.realpath(sys.executable)
IMAGE_SITE_PACKAGES = Path(
    sys.base_prefix, "lib", f"python3.{sys.version_info.minor}", "site-packages"
)


def build_image(root: Path) -> None:
    collected = subprocess.run(
        [sys.executable, "-c", COLLECT], capture_output=True, text=True, timeout=WAIT, check=True
    )
    files: list[str] = json.loads(collected.stdout.strip().splitlines()[-1])
    files += [IMAGE_PYTHON, "/etc/ld.so.cache"]
    files += linked_libraries([IMAGE_PYTHON, *(f for f in files if ".so" in f)])
    site_packages = Path(grpc.__file__).parent.parent
    clara_package = Path(clara.__file__).parent
    packages = [Path(grpc.__file__).parent, clara_package]
    packages.append(Path(encodings.__file__).parent)  # codecs are found by the locale's name
    for package in packages:
        files += [
            str(p) for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts
        ]
    for path in files:
        host = Path(path)
        if host.is_relative_to(clara_package):
            place(root, host, IMAGE_SITE_PACKAGES / "clara" / host.relative_to(clara_package))
        elif host.is_relative_to(site_packages):
            place(root, host, IMAGE_SITE_PACKAGES / host.relative_to(site_packages))
        elif host != Path(sys.executable):
            mirror(root, path)
    dynload = Path(sys.base_exec_prefix, "lib", f"python3.{sys.version_info.minor}", "lib-dynload")
    (root / str(dynload).lstrip("/")).mkdir(parents=True, exist_ok=True)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "image-release").write_text("test image 1\n")
    (root / "opt" / "op").mkdir(parents=True)
    (root / "opt" / "op" / "op.py").write_text(DRIVER_OPERATOR)


CHECK = """
import json, os, pathlib
seen = {
    "release": pathlib.Path("/etc/image-release").read_text(),
    "host_shell": os.path.exists("/usr/bin/sh") or os.path.exists("/bin/sh"),
    "host_passwd": os.path.exists("/etc/passwd"),
    "input": pathlib.Path("/input/in.txt").read_text(),
}
pathlib.Path("/output/seen.json").write_text(json.dumps(seen))
"""


def test_an_operator_runs_inside_its_image_root(tmp_path: Path) -> None:
    assert bwrap_problem() is None, f"the sandbox tests need bubblewrap: {bwrap_problem()}"
    image = tmp_path / "image"
    build_image(image)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "in.txt").write_text("payload\n")
    body = textwrap.indent(CHECK.strip(), "      ")
    (tmp_path / "pipeline.yaml").write_text(
        "api-version: 0.4.0\nname: image\noperators:\n"
        "- name: inside\n"
        f"  container: {{image: t/image, tag: '1', command: [{IMAGE_PYTHON}, /opt/op/op.py]}}\n"
        f"  variables:\n    OPERATOR_CODE: |\n{body}\n"
        "  input: [{path: /input}]\n  output: [{path: /output}]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVIDIA_CLARA_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "server_mock",
            "run",
            str(tmp_path / "pipeline.yaml"),
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "out"),
            "--workspace",
            str(tmp_path / "ws"),
            "--operator-rootfs",
            f"t/image:1={image}",
        ],
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
        cwd=ROOT,
        env=env,
        check=False,
    )
    logs = "\n".join(p.read_text() for p in (tmp_path / "ws").rglob("inside.log"))
    assert done.returncode == 0, (done.stdout, done.stderr, logs)
    seen = json.loads((tmp_path / "out" / "inside" / "seen.json").read_text())
    assert seen == {
        "release": "test image 1\n",
        "host_shell": False,
        "host_passwd": False,
        "input": "payload\n",
    }
