"""The drivers' own channels: one per stage service and TLS settings in a process, shared.

gRPC's advice is to reuse channels: a new one costs a TCP connection and an HTTP/2
hand-shake, about as much again as a round trip on loopback. Drivers of one process that
talk to the same stage service with the same TLS settings lease one channel (stage tokens
ride on each call, not on the channel). When the last lease ends, the channel stays open for
:data:`LINGER_SECONDS`, so that a driver started next reuses its connection; then it is
closed, on a thread of :mod:`clara._threads`. A process that runs one driver closes its
channel that long after the driver ends, or at exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable

import grpc

from clara._threads import run_in_thread
from clara.contract import DRIVER_KEEPALIVE_INTERVAL

__all__ = [
    "CHANNEL_OPTIONS",
    "KEEPALIVE_TIMEOUT_MS",
    "KEEPALIVE_TIME_MS",
    "LINGER_SECONDS",
    "ChannelLease",
    "lease_channel",
    "open_channel_count",
    "retire_channels",
]

_log = logging.getLogger("clara")

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
KEEPALIVE_TIME_MS = int(DRIVER_KEEPALIVE_INTERVAL.total_seconds() * 1000)
KEEPALIVE_TIMEOUT_MS = 3_000  # a ping unanswered this long closes the connection
CHANNEL_OPTIONS: tuple[tuple[str, int | str], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Keepalive: a connection that silently stops carrying bytes (no reset) is closed within
    # KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS, so that a call on it fails UNAVAILABLE and is
    # retried on a new connection, and a wait for inputs notices it instead of hanging.
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # gRPC core (1.85 measured) bounds an unanswered keepalive ping by this one (default
    # 60 s), not by keepalive_timeout_ms alone: set both.
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    # Without this, gRPC stops pinging after 2 pings with no data sent: a stage waiting for
    # its inputs sends none for minutes, and would not notice a dead connection.
    ("grpc.http2.max_pings_without_data", 0),
    # A connection of this channel's own. In gRPC's global subchannel pool, channels with the
    # same target and options share one connection, so the fresh channel that replaces a
    # retired one would ride on the very connection that failed.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.primary_user_agent", "clara-stage-driver"),
    # grpc.experimental.ChannelOptions.SingleThreadedUnaryStream (in grpcio since 1.29;
    # spelled out so that `import clara` need not load grpc.experimental): the driver's
    # watcher thread reads WatchStage itself, so gRPC starts no helper thread per stream.
    ("SingleThreadedUnaryStream", 1),
)
"""The options of the driver's own channel; open a channel you give drivers with them too.

``grpc.insecure_channel(target, options=clara.CHANNEL_OPTIONS)``: without
``SingleThreadedUnaryStream``, gRPC starts a helper thread for each driver's signal stream, and
without the keepalive options a connection that silently died (no reset) is not noticed: the
driver never closes a channel it was given, so its retries would stay on that connection.
"""

LINGER_SECONDS = 5.0  # how long an unused channel stays open for the next driver


class _Shared:
    """One shared channel: its users, and since when nobody uses it."""

    __slots__ = ("channel", "closer_due", "discarded", "idle_since", "key", "users")

    def __init__(self, key: Hashable, channel: grpc.Channel) -> None:
        self.key = key
        self.channel = channel
        self.users = 0
        self.idle_since = 0.0
        self.closer_due = False  # a closer job waits for this channel's linger to pass
        self.discarded = False  # not to be leased again; closed when its last user is done


class ChannelLease:
    """A driver's use of a shared channel; :meth:`release` exactly once when done."""

    __slots__ = ("_released", "_shared", "channel")

    def __init__(self, shared: _Shared) -> None:
        self._shared = shared
        self._released = False
        self.channel = shared.channel

    def release(self) -> None:
        """End this use; the channel closes once unused for :data:`LINGER_SECONDS`."""
        if self._released:
            return
        self._released = True
        _registry.release(self._shared)

    def discard(self) -> None:
        """Lease this channel to nobody else (it failed); close it when its users are done."""
        _registry.discard(self._shared)


class _Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channels: dict[Hashable, _Shared] = {}

    def lease(self, key: Hashable, open_channel: Callable[[], grpc.Channel]) -> ChannelLease:
        with self._lock:
            shared = self._channels.get(key)
            if shared is None:
                shared = _Shared(key, open_channel())
                self._channels[key] = shared
            shared.users += 1
            return ChannelLease(shared)

    def release(self, shared: _Shared) -> None:
        with self._lock:
            shared.users -= 1
            if shared.users:
                return
            close_now = shared.discarded
            if not close_now:
                shared.idle_since = time.monotonic()
                if shared.closer_due:
                    return  # the waiting closer sees the new idle time when it wakes
                shared.closer_due = True
        if close_now:
            shared.channel.close()
            return
        run_in_thread(lambda: self._close_when_idle(shared), "clara-channel-closer")

    def discard(self, shared: _Shared) -> None:
        with self._lock:
            shared.discarded = True
            if self._channels.get(shared.key) is shared:
                del self._channels[shared.key]

    def _close_when_idle(self, shared: _Shared) -> None:
        """Wait until ``shared`` was unused for the linger time, then close it (a timer)."""
        waited = threading.Event()  # never set: a bounded wait that nothing cuts short
        while True:
            with self._lock:
                if shared.users or shared.discarded:
                    shared.closer_due = False  # its last user closes it, or starts a closer
                    return
                left = shared.idle_since + LINGER_SECONDS - time.monotonic()
                if left <= 0:
                    shared.closer_due = False
                    if self._channels.get(shared.key) is shared:
                        del self._channels[shared.key]
                    break
            waited.wait(left)
        _log.debug("closing the unused channel to %s", _target_of(shared.key))
        shared.channel.close()

    def count(self) -> int:
        with self._lock:
            return len(self._channels)

    def retire_all(self) -> None:
        with self._lock:
            retired = list(self._channels.values())
            self._channels.clear()
            for shared in retired:
                shared.discarded = True
            unused = [shared for shared in retired if not shared.users]
        for shared in unused:
            shared.channel.close()

    def forget_after_fork(self) -> None:
        # A child process cannot use its parent's channels (gRPC's fork rules): start afresh.
        self._lock = threading.Lock()
        self._channels = {}


def _target_of(key: Hashable) -> object:
    return key[0] if isinstance(key, tuple) and key else key


_registry = _Registry()
atexit.register(_registry.retire_all)  # a channel still in use closes when its driver ends
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_registry.forget_after_fork)


def lease_channel(key: Hashable, open_channel: Callable[[], grpc.Channel]) -> ChannelLease:
    """Lease the process's channel for ``key``, opening it with ``open_channel`` if none is."""
    return _registry.lease(key, open_channel)


def open_channel_count() -> int:
    """How many shared channels are open (in use or lingering): for tests and diagnostics."""
    return _registry.count()


def retire_channels() -> None:
    """Lease no open channel again: drivers started from now on open new ones.

    Unused channels close now; a channel in use closes when its last driver ends. For a
    change that only new channels pick up (gRPC instrumentation), and for benchmarks.
    """
    _registry.retire_all()
