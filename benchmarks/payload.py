"""Figure 5: payload transfer through the Platform API, and the server's memory meanwhile.

Each repetition creates a reusable payload (Payloads.Create), uploads one file of SIZE bytes
(Payloads.Upload, client streaming, 64 KiB chunks made on the fly from one reused block, so
the client never holds the file), downloads it back (Payloads.Download, server streaming,
counting bytes) and deletes the payload. The MockPlatform runs in a subprocess whose VmRSS
is sampled every 10 ms: the growth over its RSS before the upload must stay far below the
file size (a server that buffers the file grows by the file size).

Baseline: the same bytes written to and read back from a file in the same temp folder (same
disk) in 64 KiB chunks, without gRPC: the copy throughput of this machine.

256 MiB per file (32 MiB with ``--quick``); throughput in MiB/s.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from benchmarks._common import Row, ServerProcess, proc_status, row
from server_mock._proto.nvidia.clara.platform import common_pb2, payloads_pb2, payloads_pb2_grpc

TITLE = "Figure 5 - payload transfer (Payloads.Upload then Download) vs a direct file copy"
FIGURE = "5 payload"
CHUNK = 64 * 1024
MIB = 1024 * 1024
TARGET_MIBS = 200.0
# Flat memory: the server's growth is bounded by its transport buffers, not by the file size
# (a server that buffered the file would grow by at least the file: 32 or 256 MiB).
TARGET_GROWTH_MIB = 16.0
OPTIONS = [("grpc.max_receive_message_length", 8 * MIB), ("grpc.max_send_message_length", 8 * MIB)]


class _RssSampler:
    """Samples a process's VmRSS (kB) every ``interval`` seconds in a thread; keeps the max."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self._pid = pid
        self._interval = interval
        self._stop = threading.Event()
        self.start_kb = proc_status(pid)["VmRSS"]
        self.peak_kb = self.start_kb
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_kb = max(self.peak_kb, proc_status(self._pid)["VmRSS"])

    def stop(self) -> float:
        """Stop; return the peak growth in MiB."""
        self._stop.set()
        self._thread.join(5)
        self.peak_kb = max(self.peak_kb, proc_status(self._pid)["VmRSS"])
        return (self.peak_kb - self.start_kb) / 1024


def _chunks(
    payload_id: str, name: str, size: int, block: bytes
) -> Iterator[payloads_pb2.PayloadsUploadRequest]:
    sent = 0
    identifier = common_pb2.Identifier(value=payload_id)
    while sent < size:
        length = min(CHUNK, size - sent)
        data = block if length == CHUNK else block[:length]
        yield payloads_pb2.PayloadsUploadRequest(
            payload_id=identifier,
            details=payloads_pb2.PayloadFileDetails(name=name, size=length, mode=0o644),
            data=data,
        )
        sent += length


def _transfer(
    stub: payloads_pb2_grpc.PayloadsStub, server: ServerProcess, size: int, block: bytes
) -> tuple[float, float, float]:
    """One upload and download; returns (upload s, download s, peak RSS growth MiB)."""
    created = stub.Create(payloads_pb2.PayloadsCreateRequest(), timeout=30)
    if created.header.code < 0:
        raise RuntimeError(f"Payloads.Create failed: {list(created.header.messages)}")
    payload_id = created.payload_id.value
    sampler = _RssSampler(server.pid)
    try:
        started = time.perf_counter()
        uploaded = stub.Upload(_chunks(payload_id, "data.bin", size, block), timeout=600)
        upload_s = time.perf_counter() - started
        if uploaded.header.code < 0 or uploaded.details.size != size:
            raise RuntimeError(f"Payloads.Upload failed: {uploaded}")
        received = 0
        started = time.perf_counter()
        request = payloads_pb2.PayloadsDownloadRequest(
            payload_id=common_pb2.Identifier(value=payload_id), name="data.bin"
        )
        for response in stub.Download(request, timeout=600):
            if response.header.code < 0:
                raise RuntimeError(f"Payloads.Download failed: {list(response.header.messages)}")
            received += len(response.data)
        download_s = time.perf_counter() - started
        if received != size:
            raise RuntimeError(f"downloaded {received} bytes of {size}")
    finally:
        growth = sampler.stop()
        stub.Delete(
            payloads_pb2.PayloadsDeleteRequest(payload_id=common_pb2.Identifier(value=payload_id)),
            timeout=30,
        )
    return upload_s, download_s, growth


def _disk_copy(folder: Path, size: int, block: bytes) -> tuple[float, float]:
    """Write then read ``size`` bytes in 64 KiB chunks; returns (write s, read s)."""
    path = folder / "baseline.bin"
    started = time.perf_counter()
    with open(path, "wb") as out:
        written = 0
        while written < size:
            length = min(CHUNK, size - written)
            out.write(block if length == CHUNK else block[:length])
            written += length
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    received = 0
    with open(path, "rb") as source:
        while data := source.read(CHUNK):
            received += len(data)
    read_s = time.perf_counter() - started
    path.unlink()
    if received != size:
        raise RuntimeError(f"read back {received} bytes of {size}")
    return write_s, read_s


def run(quick: bool) -> list[Row]:
    size = (32 if quick else 256) * MIB
    repetitions = 3 if quick else 5
    block = os.urandom(CHUNK)
    upload: list[float] = []
    download: list[float] = []
    growth: list[float] = []
    write: list[float] = []
    read: list[float] = []
    mib = size / MIB
    with ServerProcess() as server, tempfile.TemporaryDirectory(prefix="clara-bench-") as temp:
        channel = grpc.insecure_channel(server.address, options=OPTIONS)
        try:
            stub = payloads_pb2_grpc.PayloadsStub(channel)
            _transfer(stub, server, 4 * MIB, block)  # warm-up
            for rep in range(repetitions):
                if rep % 2:
                    write_s, read_s = _disk_copy(Path(temp), size, block)
                    upload_s, download_s, grown = _transfer(stub, server, size, block)
                else:
                    upload_s, download_s, grown = _transfer(stub, server, size, block)
                    write_s, read_s = _disk_copy(Path(temp), size, block)
                upload.append(mib / upload_s)
                download.append(mib / download_s)
                growth.append(grown)
                write.append(mib / write_s)
                read.append(mib / read_s)
        finally:
            channel.close()
    return [
        row(
            FIGURE,
            f"Upload {mib:.0f} MiB",
            "MiB/s",
            upload,
            baseline="file write",
            base_samples=write,
            target=f">= {TARGET_MIBS:g} MiB/s",
            check=lambda r: r.median >= TARGET_MIBS,
        ),
        row(
            FIGURE,
            f"Download {mib:.0f} MiB",
            "MiB/s",
            download,
            baseline="file read",
            base_samples=read,
            target=f">= {TARGET_MIBS:g} MiB/s",
            check=lambda r: r.median >= TARGET_MIBS,
        ),
        row(
            FIGURE,
            "server peak RSS growth",
            "MiB",
            growth,
            target=f"p99 <= {TARGET_GROWTH_MIB:g} MiB",
            check=lambda r: r.p99 <= TARGET_GROWTH_MIB,
            note=f"VmRSS of the server subprocess, sampled every 10 ms during upload+download "
            f"of the {mib:.0f} MiB file, minus its VmRSS before",
        ),
    ]
