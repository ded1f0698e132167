"""A service and an operator that uses it, for the tests of a pipeline's ``services``.

Given ``--model-store=DIR`` (like a TensorRT Inference Server), the service answers with the
text of ``DIR/segmentation/config.pbtxt`` and whether it could write in ``DIR``.
The service reports itself (``service <pid>``) to a test :class:`~_launch.Listener` and keeps
that connection open, so a test learns that it is gone from the end of the connection,
without polling; the operator reports ``operator <pid> <the service's answer>``.
"""

from __future__ import annotations

import textwrap

from _launch import Listener, driver_operator

IMAGE = "nvcr.io/nvidia/tensorrtserver"

SERVICE = textwrap.dedent(
    """
    import errno, http.server, json, os, signal, socket, sys

    mode = sys.argv[1]
    store = next((a.split("=", 1)[1] for a in sys.argv[2:] if a.startswith("--model-store=")), None)

    def model_store():
        if store is None:
            return {}
        try:
            open(os.path.join(store, "written-by-the-service"), "w").close()
            written = "written"
        except OSError as error:
            written = errno.errorcode[error.errno]
        with open(os.path.join(store, "segmentation", "config.pbtxt")) as config:
            return {"store": store, "config": config.read(), "write": written}

    print(f"service pid {os.getpid()} mode {mode}", flush=True)
    if mode == "exit":
        print("cannot load the model store", flush=True)
        sys.exit(3)
    host, port = os.environ["LISTENER"].rsplit(":", 1)
    watcher = socket.create_connection((host, int(port)))  # closes when this process ends
    watcher.sendall(f"service {os.getpid()}\\n".encode())

    def stop(signum, frame):
        print("stopping on SIGTERM", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "ignore-term" else stop)
    if mode == "silent":  # never listens
        while True:
            signal.pause()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({
                "pid": os.getpid(),
                "path": self.path,
                "port": int(os.environ["PORT"]),
                "own_port": int(os.environ["CLARA_MOCK_SERVICE_PORT_NVIDIA_CLARA_TRTISURI"]),
                "uri": os.environ["NVIDIA_CLARA_TRTISURI"],
                "model": os.environ.get("MODEL_NAME"),
                "data_path": os.environ.get("NVIDIA_CLARA_SERVICE_DATA_PATH"),
                **model_store(),
            }).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    print("listening", flush=True)
    server.serve_forever()
    """
)

# The operator asks the service, keeps the answer in its output, tells the test, then ends as
# END says: "succeed", "fail" (raises), or "hang" (until cancelled or timed out).
OPERATOR = """
import os, pathlib, socket, urllib.request
uri = os.environ["NVIDIA_CLARA_TRTISURI"]
answer = urllib.request.urlopen(f"http://{uri}/v2/health/ready", timeout=30).read()
pathlib.Path(payload.output().path, "answer.json").write_bytes(answer)
data_path = os.environ.get("NVIDIA_CLARA_SERVICE_DATA_PATH", "unset")  # for services only
pathlib.Path(payload.output().path, "service_data_path.txt").write_text(data_path)
host, port = os.environ["LISTENER"].rsplit(":", 1)
connection = socket.create_connection((host, int(port)))
connection.sendall(f"operator {os.getpid()} ".encode() + answer + b"\\n")
if os.environ["END"] == "fail":
    raise RuntimeError("the operator fails after asking the service")
if os.environ["END"] == "hang":
    connection.recv(1)
"""


MODEL_STORE_COMMAND = (
    '[python, service.py, serve, "--model-store=$(NVIDIA_CLARA_SERVICE_DATA_PATH)/models"]'
)
"""A definition ``command`` (YAML) running SERVICE with its model store in the common volume."""


def service_definition(
    tag: str, server: Listener, command: str = "[trtserver, --model-store=/models]"
) -> str:
    """The operator's ``services:`` (indented YAML): the image at ``tag``, the mode it runs.

    ``command``: the container's ``command`` (YAML), run where the image ``tag`` is not mapped.
    """
    return textwrap.indent(
        textwrap.dedent(
            f"""\
            services:
            - name: trtis
              container: {{image: {IMAGE}, tag: {tag}, command: {command}}}
              connections:
                http: [{{name: NVIDIA_CLARA_TRTISURI, port: 8000}}]
              variables: {{LISTENER: "{server.address}", MODEL_NAME: segmentation}}
            """
        ),
        "  ",
    )


def operator_with_service(
    name: str, server: Listener, tag: str = "serve", end: str = "succeed", **service: str
) -> str:
    """An operator running OPERATOR (ending as ``end``) that declares the service at ``tag``.

    ``service``: more arguments of :func:`service_definition` (its ``command``).
    """
    variables = {"LISTENER": server.address, "END": end}
    operator = driver_operator(name, OPERATOR, variables=variables)
    return operator + service_definition(tag, server, **service)


def pid_of(line: str, kind: str) -> int:
    """The pid of a ``<kind> <pid> ...`` line a process sent to the test's listener."""
    word, pid = line.split(" ")[:2]
    assert word == kind, line
    return int(pid)
