"""The drivers' shared channels (clara._channels): one per target, linger, discard, retire."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, cast

import grpc
import pytest
from grpc.experimental import ChannelOptions

import clara
from clara import _channels, _grpc_link
from clara._channels import lease_channel, open_channel_count, retire_channels
from server_mock import MockPlatform, StageSpec

WAIT = 10.0


class FakeChannel:
    """Stands in for a grpc.Channel: records that it was closed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = threading.Event()

    def close(self) -> None:
        assert not self.closed.is_set(), f"{self.name} closed twice"
        self.closed.set()


class Opener:
    """Opens FakeChannels and keeps them, in order."""

    def __init__(self) -> None:
        self.opened: list[FakeChannel] = []

    def channel(self, index: int) -> grpc.Channel:
        return cast(grpc.Channel, self.opened[index])

    def __call__(self) -> grpc.Channel:
        channel = FakeChannel(f"channel-{len(self.opened)}")
        self.opened.append(channel)
        return cast(grpc.Channel, channel)


@pytest.fixture(autouse=True)
def _no_shared_channels_left() -> Iterator[None]:
    """Each test starts and ends with no shared channel open."""
    retire_channels()
    yield
    retire_channels()


@pytest.fixture
def short_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_channels, "LINGER_SECONDS", 0.05)


def test_one_key_one_channel_and_another_key_another() -> None:
    opener = Opener()
    first = lease_channel(("127.0.0.1:1", None), opener)
    second = lease_channel(("127.0.0.1:1", None), opener)
    third = lease_channel(("127.0.0.1:2", None), opener)
    assert first.channel is second.channel
    assert third.channel is not first.channel
    assert len(opener.opened) == 2
    assert open_channel_count() == 2
    for lease in (first, second, third):
        lease.release()


@pytest.mark.usefixtures("short_linger")
def test_an_unused_channel_closes_after_the_linger() -> None:
    opener = Opener()
    lease = lease_channel("target", opener)
    lease.release()
    lease.release()  # a second release changes nothing
    assert opener.opened[0].closed.wait(WAIT)
    assert open_channel_count() == 0


def test_a_channel_leased_again_within_the_linger_is_reused_not_closed() -> None:
    opener = Opener()
    lease_channel("target", opener).release()
    again = lease_channel("target", opener)
    assert again.channel is opener.channel(0)
    assert len(opener.opened) == 1
    assert not opener.opened[0].closed.is_set()
    again.release()


def test_a_discarded_channel_is_not_leased_again_and_closes_with_its_last_user() -> None:
    opener = Opener()
    failing = lease_channel("target", opener)
    other_user = lease_channel("target", opener)
    failing.discard()
    fresh = lease_channel("target", opener)
    assert fresh.channel is opener.channel(1)
    failing.release()
    assert not opener.opened[0].closed.is_set()  # still used
    other_user.release()
    assert opener.opened[0].closed.is_set()  # at once: no linger for a failed channel
    fresh.release()


def test_retiring_closes_unused_channels_now_and_used_ones_when_released() -> None:
    opener = Opener()
    lease_channel("unused", opener).release()
    used = lease_channel("used", opener)
    retire_channels()
    assert opener.opened[0].closed.is_set()
    assert not opener.opened[1].closed.is_set()
    assert open_channel_count() == 0
    assert lease_channel("used", opener).channel is opener.channel(2)
    used.release()
    assert opener.opened[1].closed.is_set()


def test_channel_options_name_grpcs_single_threaded_unary_stream() -> None:
    assert (ChannelOptions.SingleThreadedUnaryStream, 1) in clara.CHANNEL_OPTIONS


def counting_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    opened: list[str] = []
    real: Callable[..., grpc.Channel] = _grpc_link.open_channel

    def counting(config: Any) -> grpc.Channel:
        opened.append(config.target)
        return real(config)

    monkeypatch.setattr(_grpc_link, "open_channel", counting)
    return opened


def run_driver(target: str, job_id: Any, **kwargs: Any) -> clara.StageResult:
    driver: clara.Driver[Any] = clara.Driver(
        execute=lambda d, p: True, target=target, job_id=job_id, stage_name="only", **kwargs
    )
    driver.start()
    return driver.wait_for_completion(WAIT * 3)


def test_drivers_of_one_process_share_their_channel(
    clara_platform: MockPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = counting_opens(monkeypatch)
    for _ in range(3):
        job_id = clara_platform.create_job([StageSpec("only")])
        assert run_driver(clara_platform.address, job_id).succeeded
    assert opened == [clara_platform.address]
    assert open_channel_count() == 1


def test_a_driver_that_found_the_platform_unavailable_leaves_no_channel_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened = counting_opens(monkeypatch)
    with MockPlatform() as platform:
        address = platform.address
        job_id = platform.create_job([StageSpec("only")])
    # The platform is gone: connecting fails with UNAVAILABLE until the connect timeout.
    result = run_driver(
        address,
        job_id,
        timeouts=clara.DriverTimeouts(connect=timedelta(seconds=0.3)),
        retry=clara.RetryConfig(initial=0.01, maximum=0.05),
    )
    assert result.outcome is clara.StageOutcome.FAILED
    attempts = re.search(r"\((\d+) attempts\)", result.message)
    assert attempts is not None, result.message
    # Every attempt connected afresh (none waited out a channel's reconnect back-off) ...
    assert opened == [address] * int(attempts[1])
    assert open_channel_count() == 0  # ... and each was discarded: none is left behind
