"""The bubblewrap (``bwrap``) command line that runs one operator as in its container.

Each operator gets its own mount, PID, IPC and UTS namespace (and, with network isolation, its
own network namespace), no capabilities, a new session, and a root that holds only:

* the host's system folders, read-only: ``/usr`` and the ``/bin``, ``/lib*``, ``/sbin`` links
  or folders, a few files of ``/etc`` (users, name resolution, TLS roots, the loader cache);
  a new ``/proc``, a minimal ``/dev`` (plus ``/dev/nvidia*`` for an operator given GPUs);
* the Python the mock runs on, read-only at the same paths: the interpreter's prefix, the
  virtual environment, its ``.pth`` folders, editable installs, ``PYTHONPATH`` of the mock;
* the operator's command folder, read-only, as its working folder;
* the stage's inputs read-only and its outputs writable, at the paths the definition declares
  (``/input``, ``/output``, ``/input/segmentation``); the job's log folder, writable; the TLS
  files of the launcher's ``extra_env``, read-only;
* a private ``/tmp`` and a private, empty home (tmpfs); everything else read-only.

With an image root (``--operator-rootfs``), the root holds the image's top-level entries,
read-only, instead of the host's system folders and Python; the stage's folders are added the
same way.

When the operator's first process ends, bwrap ends, and ``--die-with-parent`` ends bwrap's
PID 1 with it: the kernel then kills everything left in the PID namespace. The same option
ends the sandbox with the mock when the mock keeps no state (nobody could take the operator
over); with a state file, bwrap runs under a small ``sh`` so that the sandbox outlives a crash
of the mock, as a pod outlives a restart of the platform, and its driver reconnects.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import importlib.metadata
import json
import logging
import os
import shutil
import site
import subprocess
import sys
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

import clara
import server_mock

__all__ = [
    "SANDBOX_STAGE_SOCKET",
    "RunnerKind",
    "SandboxPathError",
    "SandboxSettings",
    "SandboxUnavailableError",
    "StageMount",
    "bwrap_problem",
    "choose_runner",
    "program_dirs",
    "sandbox_command",
]

SANDBOX_STAGE_SOCKET = "/run/clara-mock/stage.sock"
"""Where the stage service's Unix socket appears inside a sandbox without network."""

_OWN_DISTRIBUTION = "clara-stage-driver"
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_ENTRIES = (
    "passwd",
    "group",
    "hosts",
    "host.conf",
    "nsswitch.conf",
    "resolv.conf",
    "gai.conf",
    "localtime",
    "timezone",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "pki",
    "mime.types",
    "os-release",
    "protocols",
    "services",
)
_GPU_DEVICES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
_ROOTFS_SKIPPED = frozenset({"proc", "dev", "sys", "tmp"})
_PROBE_TIMEOUT = 10.0


class SandboxUnavailableError(RuntimeError):
    """``bwrap`` cannot run here; the message says why."""


class SandboxPathError(ValueError):
    """A declared input or output path cannot be mounted in the sandbox; the message says why."""


@dataclass(frozen=True, slots=True)
class SandboxSettings:
    """How the sandboxed runner isolates operators (beyond what every sandbox does).

    Attributes:
        isolate_network: Give each operator its own network namespace (loopback only); its
            driver then reaches the stage service over ``stage_socket``.
        stage_socket: The platform's Unix socket (``MockPlatform(unix_socket=...)``), bound
            into each sandbox at :data:`SANDBOX_STAGE_SOCKET`; needed with
            ``isolate_network``.
        die_with_server: End every sandbox when the mock's process ends (right without a state
            file); ``False`` lets operators outlive a crash and reconnect to the restarted
            server.
        hidden_paths: Host paths masked inside the sandbox should they lie in a folder it
            shows (the state file, the workspace): e.g. a state file inside
            ``--operators-dir``.
        rootfs: ``image[:tag]`` to the folder of an unpacked image: that operator runs in it.
    """

    isolate_network: bool = False
    stage_socket: Path | None = None
    die_with_server: bool = True
    hidden_paths: tuple[Path, ...] = ()
    rootfs: Mapping[str, Path] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StageMount:
    """One of the stage's folders, and where the operator sees it.

    Attributes:
        host: The folder on the host.
        path: The path the definition declares (``/input``).
        writable: True for an output.
    """

    host: Path
    path: str
    writable: bool


@dataclass(frozen=True, slots=True)
class _Mount:
    """One bwrap mount operation; ``target`` is the path inside the sandbox."""

    option: str  # --ro-bind, --bind, --dev-bind, --tmpfs, --symlink
    target: str
    source: str = ""
    size: int | None = None

    def args(self) -> list[str]:
        if self.option == "--tmpfs":
            size = [] if self.size is None else ["--size", str(self.size)]
            return [*size, "--tmpfs", self.target]
        if self.option in ("--proc", "--dev"):
            return [self.option, self.target]
        return [self.option, self.source, self.target]


def _depth(path: str) -> int:
    return len(PurePosixPath(path).parts)


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


# -- what every sandbox holds -----------------------------------------------------------------


def _namespace_options(*, network: bool) -> list[str]:
    options = [
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--new-session",
        "--cap-drop",
        "ALL",
        # bwrap's PID 1 lingers while anything in the namespace lives; this ends it, and with
        # it the namespace, as soon as bwrap itself ends (so when the operator's first
        # process ends).
        "--die-with-parent",
    ]
    if not network:
        options.append("--unshare-net")
    return options


@functools.cache
def _system_mounts() -> tuple[_Mount, ...]:
    mounts: list[_Mount] = []
    for folder in _SYSTEM_DIRS:
        if os.path.islink(folder):
            mounts.append(_Mount("--symlink", folder, os.readlink(folder)))
        elif os.path.isdir(folder):
            mounts.append(_Mount("--ro-bind", folder, folder))
    entries = [f"/etc/{name}" for name in _ETC_ENTRIES] + sorted(glob.glob("/etc/python3*"))
    mounts += [_Mount("--ro-bind", p, p) for p in entries if os.path.exists(p)]
    return tuple(mounts)


@functools.cache
def _python_runtime_dirs() -> tuple[str, ...]:
    """The folders the mock's Python needs, as paths to bind at the same place (cached)."""
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    packages = site.getsitepackages()
    if site.ENABLE_USER_SITE:
        packages.append(site.getusersitepackages())
    candidates += packages
    for folder in packages:
        for pth in sorted(glob.glob(os.path.join(folder, "*.pth"))):
            candidates += _pth_folders(folder, pth)
    candidates += [os.path.dirname(clara.__file__), os.path.dirname(server_mock.__file__)]
    candidates += _editable_roots()
    candidates += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    found: list[str] = []
    for path in candidates:
        for variant in (os.path.abspath(path), os.path.realpath(path)):
            if os.path.isdir(variant) and variant not in found:
                found.append(variant)
    system = [m.target for m in _system_mounts()]
    return tuple(_outermost(p for p in found if not any(_is_within(p, s) for s in system)))


def _pth_folders(site_dir: str, pth: str) -> list[str]:
    try:
        lines = Path(pth).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    return [
        os.path.join(site_dir, line.strip())
        for line in lines
        if line.strip() and not line.startswith(("#", "import ", "import\t"))
    ]


def _editable_roots() -> list[str]:
    roots = []
    for dist in importlib.metadata.distributions():
        if (dist.metadata["Name"] or "").lower() == _OWN_DISTRIBUTION:
            continue  # its two packages are bound one by one, not its whole source tree
        text = dist.read_text("direct_url.json")
        if not text:
            continue
        try:
            info = json.loads(text)
        except ValueError:
            continue
        url = urllib.parse.urlparse(info.get("url", ""))
        if info.get("dir_info", {}).get("editable") and url.scheme == "file":
            roots.append(urllib.parse.unquote(url.path))
    return roots


def _outermost(paths: Iterable[str]) -> list[str]:
    ordered = sorted(set(paths), key=lambda p: (_depth(p), p))
    kept: list[str] = []
    for path in ordered:
        if not any(_is_within(path, outer) for outer in kept):
            kept.append(path)
    return kept


@functools.cache
def bwrap_problem(isolate_network: bool = False) -> str | None:
    """Why the sandbox cannot run here, or ``None`` when it can (probed once per process).

    Runs ``bwrap <the sandbox's namespaces and system folders> true``.
    """
    path = shutil.which("bwrap")
    if path is None:
        return "bwrap (Debian package bubblewrap) is not installed"
    argv = [path, *_namespace_options(network=not isolate_network)]
    for mount in _system_mounts():
        argv += mount.args()
    # Every option a sandbox may use, so that an older bwrap fails here, not at a launch.
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(1 << 20)]
    argv += ["--tmpfs", "/tmp", "--remount-ro", "/", "--chdir", "/", "--", "true"]
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=_PROBE_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bwrap could not run: {error}"
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"bwrap fails here: {reason[-1] if reason else f'exit code {done.returncode}'}"
    return None


# -- one operator's sandbox ---------------------------------------------------------------------


def sandbox_command(
    command: Sequence[str],
    *,
    settings: SandboxSettings,
    stage_mounts: Sequence[StageMount],
    shared_dirs: Sequence[tuple[Path, bool]] = (),
    shared_files: Sequence[Path] = (),
    command_dir: Path | None = None,
    rootfs: Path | None = None,
    gpu_devices: Sequence[str] = (),
    tmp_size: int | None = None,
    home: str | None = None,
) -> list[str]:
    """The argv that runs ``command`` in a sandbox.

    Args:
        command: The operator's argv, as it runs inside.
        settings: The runner's sandbox settings.
        stage_mounts: The stage's inputs and outputs.
        shared_dirs: Host folders shown at their own path, with whether they are writable
            (the job's log folder).
        shared_files: Host files shown read-only at their own path (TLS files).
        command_dir: Shown read-only at its own path; the working folder (host root only).
        rootfs: An unpacked image to use as the root instead of the host's folders.
        gpu_devices: The GPUs given (their ``/dev/nvidia*`` nodes are shown).
        tmp_size: The size of the private ``/tmp`` in bytes (default: the kernel's).
        home: The operator's ``HOME``: a private, empty tmpfs there.

    Raises:
        SandboxPathError: A declared path collides with the sandbox's own folders, or its
            mount point cannot be made.
    """
    # Relative host paths (a relative --workspace) would land relative to the sandbox's root.
    stage_mounts = [
        dataclasses.replace(m, host=Path(os.path.abspath(m.host))) for m in stage_mounts
    ]
    shared_dirs = [(Path(os.path.abspath(d)), writable) for d, writable in shared_dirs]
    shared_files = [Path(os.path.abspath(f)) for f in shared_files]
    if command_dir is not None:
        command_dir = Path(os.path.abspath(command_dir))
    mounts: list[_Mount] = [
        _Mount("--proc", "/proc"),
        _Mount("--dev", "/dev"),
        _Mount("--tmpfs", "/tmp", size=tmp_size),
    ]
    if rootfs is None:
        mounts += _system_mounts()
        same_path_dirs = [(d, False) for d in _python_runtime_dirs()]
        if command_dir is not None:
            same_path_dirs.append((str(command_dir), False))
        workdir = str(command_dir) if command_dir is not None else "/"
    else:
        mounts += _rootfs_mounts(rootfs)
        same_path_dirs = []
        workdir = "/"
    system = [m.target for m in _system_mounts()] if rootfs is None else []
    same_path_dirs += [
        (str(d), writable)
        for d, writable in shared_dirs
        if str(d) != "/" and not any(_is_within(str(d), s) for s in system)
    ]
    hidden = [os.path.abspath(p) for p in settings.hidden_paths]
    read_only_tmpfs: list[str] = []
    for folder, writable in _dedupe(same_path_dirs):
        mounts += _show_folder(folder, writable, hidden, read_only_tmpfs)
    mounts += [_Mount("--ro-bind", str(f), str(f)) for f in shared_files]
    if settings.isolate_network and settings.stage_socket is not None:
        socket = os.path.abspath(settings.stage_socket)
        mounts.append(_Mount("--bind", SANDBOX_STAGE_SOCKET, socket))
    if gpu_devices:
        nodes = [*_GPU_DEVICES, *(f"nvidia{d}" for d in gpu_devices if d.isdigit())]
        if not all(d.isdigit() for d in gpu_devices):  # UUIDs: show every device node
            nodes += [p.name for p in Path("/dev").glob("nvidia[0-9]*")]
        mounts += [_Mount("--dev-bind-try", f"/dev/{n}", f"/dev/{n}") for n in nodes]
    _check_stage_paths(stage_mounts, mounts, rootfs)
    mounts += _stage_binds(stage_mounts)
    if home and home != "/" and not any(_is_within(home, m.target) for m in mounts):
        mounts.append(_Mount("--tmpfs", home))
    ordered = sorted(enumerate(mounts), key=lambda item: (_depth(item[1].target), item[0]))
    argv = [
        shutil.which("bwrap") or "bwrap",
        *_namespace_options(network=not settings.isolate_network),
    ]
    for _, mount in ordered:
        if mount.target == "/tmp":
            argv += ["--perms", "1777"]
        argv += mount.args()
    for folder in read_only_tmpfs:
        argv += ["--remount-ro", folder]
    argv += ["--remount-ro", "/", "--chdir", workdir, "--", *command]
    if not settings.die_with_server:
        # --die-with-parent also ends bwrap when its own parent dies: give it one that stays.
        argv = ["/bin/sh", "-c", '"$@"; exit $?', "clara-sandbox", *argv]
    return argv


def program_dirs(command: Sequence[str]) -> list[tuple[Path, bool]]:
    """The folders of a host command's programs (the interpreter and its script), read-only.

    For ``shared_dirs`` of :func:`sandbox_command`, when the command is the mock's own (an
    operator map's), not a definition's.
    """
    programs = command[:2] if command[0] == sys.executable else command[:1]
    return [(Path(p).parent, False) for p in programs if os.path.isabs(p)]


def _dedupe(dirs: Sequence[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """Drop folders already shown by an enclosing folder with the same writability."""
    ordered = sorted(dict(dirs).items(), key=lambda item: (_depth(item[0]), item[0]))
    kept: list[tuple[str, bool]] = []
    for folder, writable in ordered:
        enclosing = [w for outer, w in kept if _is_within(folder, outer)]
        if not enclosing or enclosing[-1] != writable:
            kept.append((folder, writable))
    return kept


def _rootfs_mounts(rootfs: Path) -> list[_Mount]:
    mounts = []
    for entry in sorted(rootfs.iterdir()):
        if entry.name in _ROOTFS_SKIPPED:
            continue
        target = f"/{entry.name}"
        if entry.is_symlink():
            mounts.append(_Mount("--symlink", target, os.readlink(entry)))
        else:
            mounts.append(_Mount("--ro-bind", target, str(entry)))
    return mounts


def _check_stage_paths(
    stage_mounts: Sequence[StageMount], mounts: Sequence[_Mount], rootfs: Path | None
) -> None:
    for stage_mount in stage_mounts:
        path = stage_mount.path
        kind = "output" if stage_mount.writable else "input"
        if path == "/" or _is_within(path, "/proc") or _is_within(path, "/dev"):
            raise SandboxPathError(f"{kind} path {path!r} is a system folder of the sandbox")
        for mount in mounts:
            target = mount.target
            if target in ("/proc", "/dev", "/tmp") or mount.option == "--tmpfs":
                continue
            if rootfs is not None and _depth(target) == 1:
                if path != target and _is_within(path, target):
                    inside = rootfs / path.lstrip("/")
                    if not inside.is_dir():
                        raise SandboxPathError(
                            f"{kind} path {path!r} lies in the image's {target} and the image "
                            f"has no such folder ({inside}); create it in the image"
                        )
                continue
            if _is_within(path, target) or _is_within(target, path):
                raise SandboxPathError(
                    f"{kind} path {path!r} collides with {target}, which the sandbox shows "
                    "from the host (system folders, the Python runtime, the command folder, "
                    "the logs); choose another path"
                )


def _stage_binds(stage_mounts: Sequence[StageMount]) -> list[_Mount]:
    """The stage's binds; a path nested in another gets its mount point made on the host."""
    binds: list[_Mount] = []
    ordered = sorted(stage_mounts, key=lambda m: (_depth(m.path), m.path))
    for index, stage_mount in enumerate(ordered):
        for outer in reversed(ordered[:index]):
            if _is_within(stage_mount.path, outer.path):
                relative = PurePosixPath(stage_mount.path).relative_to(outer.path)
                mount_point = outer.host / relative
                try:
                    mount_point.mkdir(parents=True, exist_ok=True)
                except OSError as error:
                    raise SandboxPathError(
                        f"path {stage_mount.path!r} is nested in {outer.path!r}, and its mount "
                        f"point {mount_point} cannot be made: {error.strerror}"
                    ) from None
                break
        option = "--bind" if stage_mount.writable else "--ro-bind"
        binds.append(_Mount(option, stage_mount.path, str(stage_mount.host)))
    return binds


def _show_folder(
    folder: str, writable: bool, hidden: Sequence[str], read_only_tmpfs: list[str]
) -> list[_Mount]:
    """Bind ``folder`` at its own path; entry by entry when it holds a hidden path.

    A hidden path (the state file in ``--operators-dir``) is then absent inside, not merely
    empty: the folder becomes a tmpfs (read-only once filled) holding binds of its other
    entries. Entries made after the launch do not appear.
    """
    inner = [h for h in hidden if h != folder and _is_within(h, folder)]
    if not inner:
        return [_Mount("--bind" if writable else "--ro-bind", folder, folder)]
    mounts = [_Mount("--tmpfs", folder)]
    if not writable:
        read_only_tmpfs.append(folder)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return mounts
    for entry in entries:
        path = os.path.join(folder, entry.name)
        if path in inner:
            continue
        if entry.is_symlink():
            mounts.append(_Mount("--symlink", path, os.readlink(path)))
        elif entry.is_dir() and any(_is_within(h, path) for h in inner):
            mounts += _show_folder(path, writable, inner, read_only_tmpfs)
        else:
            mounts.append(_Mount("--bind" if writable else "--ro-bind", path, path))
    return mounts


RunnerKind = Literal["sandbox", "process"]
"""How operators run: in a bubblewrap sandbox, or as plain processes."""

_log = logging.getLogger("server_mock.runner")

_NOT_ISOLATED = (
    "operators run as plain processes of this user, not in a sandbox: they can read and write "
    "every file this user can (other jobs' folders, the state file, the home), share /tmp, "
    "and processes they detach with setsid outlive them"
)


def choose_runner(runner: RunnerKind | None, sandbox: SandboxSettings) -> RunnerKind:
    """The runner to use: ``runner`` if given (checked), else the sandbox where bwrap works.

    Without bwrap and without an explicit choice, the process runner is chosen and a one-line
    warning says what is not isolated.

    Raises:
        SandboxUnavailableError: The sandbox was asked for (``runner="sandbox"``, an image
            root, network isolation) and bwrap does not work here.
        ValueError: ``runner="process"`` with image roots or network isolation.
    """
    needs_sandbox = bool(sandbox.rootfs) or sandbox.isolate_network
    if runner == "process":
        if needs_sandbox:
            raise ValueError(
                "the process runner cannot give an operator an image root or its own network; "
                "use the sandbox runner"
            )
        return "process"
    problem = bwrap_problem(sandbox.isolate_network)
    if problem is None:
        return "sandbox"
    if runner == "sandbox" or needs_sandbox:
        raise SandboxUnavailableError(f"the sandbox runner cannot run here: {problem}")
    _log.warning("%s (%s; install bubblewrap to isolate them)", _NOT_ISOLATED, problem)
    return "process"
