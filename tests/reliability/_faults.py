"""Real fault injection for the reliability tests.

* :class:`ServerProcess`: ``python -m server_mock serve --state PATH`` in a subprocess, killed
  (SIGKILL) and restarted on the same port.
* :class:`StageFaults`: a ``grpc.aio`` server interceptor that aborts, delays or loses the
  answers of stage API calls, on a second server sharing a real :class:`MockPlatform`'s state.
* :class:`OperatorProcess`: an operator (``operators/reliability_operator.py``) launched by the
  test, whose JSON stdout lines are its events.
* :class:`ControlServer`: a line channel to operators the mock launched.

Waiting is always on an event or a line, with a bound; nothing sleeps to wait for state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import grpc

import clara
from clara.stage_api import stage_service_pb2_grpc as stage_grpc
from server_mock import MockPlatform
from server_mock._platform import SERVER_OPTIONS
from server_mock._stage_service import StageService

ROOT = Path(__file__).resolve().parents[2]
OPERATORS = Path(__file__).resolve().parent / "operators"
OPERATOR_SCRIPT = OPERATORS / "reliability_operator.py"
WAIT = 30.0  # the bound of every wait on something that should happen in well under a second

Message = dict[str, Any]


class Recorder:
    """Collects a driver's notifications; tests wait on them instead of sleeping."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.notifications: list[clara.Notification] = []

    def notify(self, driver: clara.Driver[Any], notification: clara.Notification) -> None:
        with self._cond:
            self.notifications.append(notification)
            self._cond.notify_all()

    def of(self, kind: clara.NotificationKind) -> list[clara.Notification]:
        with self._cond:
            return [n for n in self.notifications if n.kind is kind]

    def kinds(self) -> list[clara.NotificationKind]:
        with self._cond:
            return [n.kind for n in self.notifications]

    def wait_count(self, kind: clara.NotificationKind, count: int, timeout: float) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.of(kind)) >= count, timeout):
                raise TimeoutError(f"fewer than {count} {kind.value} in {timeout} s")


class _LineReader:
    """Reads a text stream on a daemon thread; lines are waited for with a bound."""

    def __init__(self, stream: IO[str], name: str) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), name=name, daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in stream:
                self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self, timeout: float) -> str | None:
        """The next line; ``None`` at the end of the stream."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no line within {timeout} s (so far: {self.seen})") from None
        if line is not None:
            self.seen.append(line)
        return line

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def rest(self) -> list[str]:
        """Every line not read yet (call after the stream ended)."""
        rest: list[str] = []
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return rest
            if line is not None:
                rest.append(line)


class _LogTee:
    """Copies a process's stderr into its log file; tests wait for a line to appear."""

    def __init__(self, stream: IO[str], path: Path) -> None:
        self._cond = threading.Condition()
        self._lines: list[str] = []
        self._ended = False
        self._thread = threading.Thread(
            target=self._pump, args=(stream, path), name="serve-stderr", daemon=True
        )
        self._thread.start()

    def _pump(self, stream: IO[str], path: Path) -> None:
        with contextlib.suppress(ValueError, OSError), path.open("w") as log:
            for line in stream:
                log.write(line)
                log.flush()
                with self._cond:
                    self._lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float) -> str:
        """The first line containing ``text`` (logged already or still to come)."""

        def found() -> str | None:
            return next((line for line in self._lines if text in line), None)

        with self._cond:
            self._cond.wait_for(lambda: found() is not None or self._ended, timeout)
            line = found()
            if line is None:
                state = "ended" if self._ended else f"no such line in {timeout} s"
                raise TimeoutError(f"log {state} without {text!r}: {self._lines[-20:]}")
            return line

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class ServerProcess:
    """``clara-mock serve`` with a state file, in its own process.

    The first :meth:`start` binds an ephemeral port; later starts reuse it, so drivers that
    were given the address find the restarted server there. ``operators_dir`` may be changed
    between starts (a restart with another configuration). Its stderr goes to
    :attr:`log_path`; :meth:`wait_log` waits for a line of the current run. ``args`` are
    added to serve's command line (e.g. ``--operator-map``).
    """

    def __init__(
        self,
        state: Path | None,
        log_dir: Path,
        operators_dir: Path = OPERATORS,
        *,
        runner: str = "process",
        args: Sequence[str] = (),
    ) -> None:
        self.state = state
        self._args = list(args)
        self.port = 0
        self.address = ""
        self.operators_dir = operators_dir
        self._log_dir = log_dir
        self._runner = runner
        self._starts = 0
        self.process: subprocess.Popen[str] | None = None
        self._reader: _LineReader | None = None
        self._log: _LogTee | None = None

    @property
    def log_path(self) -> Path:
        """The stderr log of the latest start."""
        return self._log_dir / f"serve-{self._starts}.log"

    def start(self, env: dict[str, str] | None = None) -> str:
        """Start the server (with ``env`` added to its environment); return its address."""
        assert self.process is None, "already running"
        self._starts += 1
        log = self.log_path
        state = [] if self.state is None else ["--state", str(self.state)]
        argv = [
            sys.executable,
            "-m",
            "server_mock",
            "-v",
            "serve",
            "--port",
            str(self.port),
            *state,
            "--operators-dir",
            str(self.operators_dir),
            # Plain processes (by default): the tests signal operators by the pid they
            # report, and a sandboxed operator only knows its pid inside its own PID namespace.
            "--runner",
            self._runner,
            *self._args,
        ]
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self._reader = _LineReader(self.process.stdout, "serve-stdout")
        self._log = _LogTee(self.process.stderr, log)
        line = self._reader.next_line(WAIT)
        prefix = "clara-mock listening on "
        if line is None or not line.startswith(prefix):
            self.kill()
            raise RuntimeError(f"serve did not start: {line!r}; see {log}")
        self.address = line.removeprefix(prefix)
        self.port = int(self.address.rsplit(":", 1)[1])
        return self.address

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs; what was acknowledged must be on disk already."""
        process, self.process = self.process, None
        if process is None:
            return
        process.kill()
        process.wait(WAIT)
        self._close(process)

    def stop(self) -> int:
        """SIGTERM and wait for a clean exit; return the exit code."""
        process, self.process = self.process, None
        if process is None:
            return 0
        process.terminate()
        try:
            code = process.wait(WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait(WAIT)
        self._close(process)
        return code

    def wait_log(self, text: str, timeout: float = WAIT) -> str:
        """The first line of the running server's log containing ``text`` (or to come)."""
        assert self._log is not None, "not started"
        return self._log.wait_for(text, timeout)

    def wait_exit(self, timeout: float = WAIT) -> int:
        """Wait for the server to end by itself (a failpoint killed it); its exit code."""
        process, self.process = self.process, None
        assert process is not None, "not running"
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(WAIT)
            raise
        finally:
            self._close(process)
        return code

    def output(self) -> list[str]:
        """The lines the server wrote to stdout after "listening" (once it ended)."""
        return [] if self._reader is None else self._reader.rest()

    def _close(self, process: subprocess.Popen[str]) -> None:
        if self._reader is not None:
            self._reader.join(WAIT)
        if self._log is not None:
            self._log.join(WAIT)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


class HeldOpenUpload:
    """A client-streaming call that sends ``requests``, then holds its stream open.

    The server has the data but not the end of the stream, as an upload cut short sees it.
    :meth:`release` ends the stream and closes the channel; the call's own deadline
    (4 x ``WAIT``) bounds it when a test never gets there.

    Args:
        address: The server's ``host:port``.
        method: The stream-unary method on a channel, e.g. ``lambda c: Stub(c).Upload``.
        requests: What to send before holding the stream open.
    """

    def __init__(
        self,
        address: str,
        method: Callable[[grpc.Channel], grpc.StreamUnaryMultiCallable],
        requests: Iterable[Any],
    ) -> None:
        self._gate = threading.Event()
        self._channel = grpc.insecure_channel(address)
        self.future = method(self._channel).future(self._send(requests), timeout=4 * WAIT)

    def _send(self, requests: Iterable[Any]) -> Iterator[Any]:
        yield from requests
        self._gate.wait(4 * WAIT)  # bounded: the call's own deadline ends it anyway

    def release(self) -> None:
        """End the stream and close the channel."""
        self._gate.set()
        self._channel.close()


class OperatorProcess:
    """The reliability operator in a subprocess the test launched; its stdout lines are events."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(OPERATOR_SCRIPT)],
            cwd=ROOT,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self._stdout = _LineReader(self.process.stdout, "operator-stdout")
        self._stderr = _LineReader(self.process.stderr, "operator-stderr")
        self.events: list[Message] = []

    def wait_event(self, event: str, timeout: float = WAIT) -> Message:
        """Read events until ``event``; raise at end of output or after ``timeout``."""
        for message in self.events:
            if message["event"] == event:
                return message
        while True:
            line = self._stdout.next_line(timeout)
            if line is None:
                raise AssertionError(f"operator ended before {event!r}: {self.describe()}")
            message = json.loads(line)
            self.events.append(message)
            if message["event"] == event:
                return message

    def kinds(self) -> list[str]:
        return [m["event"] for m in self.events]

    def describe(self) -> str:
        with contextlib.suppress(TimeoutError):
            while self._stderr.next_line(0.01) is not None:
                pass
        return f"events {self.kinds()}; stderr: " + "\n".join(self._stderr.seen[-30:])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(WAIT)
        self._stdout.join(WAIT)
        self._stderr.join(WAIT)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


class ControlServer:
    """A JSON-line channel to operators the mock launched (they connect to ``address``)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._cond = threading.Condition()
        self.messages: list[Message] = []
        self._peers: dict[str, socket.socket] = {}
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._start(self._accept, "control-accept")

    def _start(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._cond:
                self._conns.append(conn)
            self._start(self._read, "control-read", conn)

    def _read(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError, ValueError), conn.makefile("r") as lines:
            for line in lines:
                message = json.loads(line)
                with self._cond:
                    if message.get("event") == "hello":
                        self._peers[message["stage"]] = conn
                    self.messages.append(message)
                    self._cond.notify_all()

    def wait_event(self, stage: str, event: str, timeout: float = WAIT) -> Message:
        """The first message ``event`` from ``stage`` (already received or still to come)."""

        def find() -> Message | None:
            return next(
                (m for m in self.messages if m["stage"] == stage and m["event"] == event), None
            )

        with self._cond:
            if not self._cond.wait_for(lambda: find() is not None, timeout):
                raise TimeoutError(f"no {event!r} from {stage} in {timeout} s: {self.messages}")
            found = find()
            assert found is not None
            return found

    def wait_count(self, stage: str, event: str, count: int, timeout: float = WAIT) -> None:
        """Wait until ``stage`` sent ``event`` at least ``count`` times (several processes)."""

        def seen() -> int:
            return sum(m["stage"] == stage and m["event"] == event for m in self.messages)

        with self._cond:
            if not self._cond.wait_for(lambda: seen() >= count, timeout):
                raise TimeoutError(f"{event!r} from {stage} not {count} times: {self.messages}")

    def wait_beyond(self, seen: int, timeout: float = WAIT) -> int:
        """Wait until more than ``seen`` messages arrived (from any stage); return the count."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) > seen, timeout):
                raise TimeoutError(f"no message beyond {seen} in {timeout} s: {self.messages}")
            return len(self.messages)

    def events(self, stage: str) -> list[str]:
        with self._cond:
            return [m["event"] for m in self.messages if m["stage"] == stage]

    def send(self, stage: str, command: str) -> None:
        with self._cond:
            conn = self._peers[stage]
        conn.sendall((json.dumps({"command": command}) + "\n").encode())

    def pids(self) -> list[int]:
        with self._cond:
            return [m["pid"] for m in self.messages if m["event"] == "hello"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        with self._cond:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(WAIT)


def kill_pids(pids: list[int]) -> None:
    """SIGKILL processes the test caused to exist but did not launch (finalizers only)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)


# -- stage API faults ---------------------------------------------------------------------


class StageFaults(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Injects faults into the answers of one stage API method.

    ``plan`` lists what happens to successive calls of ``method``: ``"pass"``, ``"unavailable"``
    (aborted before the platform sees it), ``"lose"`` (the platform applies it, then the
    answer is replaced by UNAVAILABLE), ``"slow"`` (applied, answered after ``delay`` s, past
    the client's deadline). Calls beyond the plan pass. Every request is recorded.
    """

    def __init__(self, method: str, plan: list[str], delay: float = 0.0) -> None:
        self.method = method
        self.plan = list(plan)
        self.delay = delay
        self.requests: list[Any] = []

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.endswith(f"/{self.method}"):
            return handler
        inner = handler.unary_unary

        async def faulty(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self.requests.append(request)
            action = self.plan.pop(0) if self.plan else "pass"
            if action == "unavailable":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: not reached")
            response = await inner(request, context)
            if action == "lose":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: answer lost")
            if action == "slow":
                await asyncio.sleep(self.delay)
            return response

        return grpc.unary_unary_rpc_method_handler(
            faulty,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@contextlib.contextmanager
def faulty_stage_server(platform: MockPlatform, faults: StageFaults) -> Iterator[str]:
    """A second stage API server over ``platform``'s jobs, with ``faults``; yields its address."""

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[faults])
        stage_grpc.add_StageServiceServicer_to_server(StageService(platform.jobs), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = platform.call_async(start)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        platform.call_async(lambda: server.stop(0))


def launch_operator(
    launched: list[OperatorProcess],
    platform: MockPlatform,
    job_id: uuid.UUID,
    stage: str,
    **env: str,
) -> OperatorProcess:
    """Start the reliability operator for ``stage`` of ``job_id`` on ``platform``."""
    operator = OperatorProcess(
        {
            "NVIDIA_CLARA_STAGE_SERVICE": platform.address,
            "NVIDIA_CLARA_JOBID": str(job_id),
            "NVIDIA_CLARA_STAGENAME": stage,
            **env,
        }
    )
    launched.append(operator)
    return operator


def pipeline_yaml(
    control: str,
    operators: list[tuple[str, str | None, str]],
    variables: dict[str, dict[str, str]] | None = None,
) -> str:
    """A pipeline of reliability operators: ``(name, upstream or None, mode)`` each.

    ``variables`` adds variables per operator name (they override the platform's own).
    """
    lines = ["api-version: 0.4.0", "name: reliability", "operators:"]
    for name, upstream, mode in operators:
        extra = [f'    {key}: "{value}"' for key, value in (variables or {}).get(name, {}).items()]
        lines += [
            f"- name: {name}",
            "  container:",
            "    image: reliability/operator",
            '    tag: "1"',
            '    command: ["python", "reliability_operator.py"]',
            "  variables:",
            f'    RELIABILITY_CONTROL: "{control}"',
            f"    RELIABILITY_MODE: {mode}",
            *extra,
            "  input:",
            *([f"  - from: {upstream}", "    path: /input"] if upstream else ["  - path: /input"]),
            "  output:",
            "  - path: /output",
        ]
    return "\n".join(lines) + "\n"
