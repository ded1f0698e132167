"""The driver's thread cache (clara._threads): reuse, naming, expiry, errors, exit, waits."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from concurrent import futures

import pytest

from clara import _threads
from clara._threads import run_in_thread, running_tasks, wait_for_any

WAIT = 10.0


def record_thread(into: list[threading.Thread]) -> None:
    into.append(threading.current_thread())


def test_a_thread_whose_job_ended_takes_the_next_job() -> None:
    first: list[threading.Thread] = []
    assert run_in_thread(lambda: record_thread(first), "clara-test-first").join(WAIT)
    existing = set(threading.enumerate())  # the first job's thread is parked among them

    second: list[threading.Thread] = []
    assert run_in_thread(lambda: record_thread(second), "clara-test-second").join(WAIT)

    assert second[0] in existing, "a parked thread was there: no new thread should start"
    assert second[0].daemon


def test_the_thread_carries_the_job_name_while_it_runs() -> None:
    names: list[str] = []
    job = run_in_thread(lambda: names.append(threading.current_thread().name), "clara-test-name")
    assert job.join(WAIT)
    assert names == ["clara-test-name"]
    assert job.ended
    assert job not in running_tasks()


def test_join_times_out_while_the_job_runs() -> None:
    release = threading.Event()
    job = run_in_thread(lambda: release.wait(WAIT), "clara-test-blocked")
    try:
        assert not job.join(0.01)
        assert not job.ended
        assert job in running_tasks()
    finally:
        release.set()
    assert job.join(WAIT)


def test_an_escaping_error_is_logged_and_the_thread_serves_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fail() -> None:
        raise ValueError("boom in a job")

    assert run_in_thread(fail, "clara-test-failing").join(WAIT)
    assert any(
        record.name == "clara"
        and "clara-test-failing" in record.getMessage()
        and record.exc_info is not None
        for record in caplog.records
    )
    existing = set(threading.enumerate())
    after: list[threading.Thread] = []
    assert run_in_thread(lambda: record_thread(after), "clara-test-after").join(WAIT)
    assert after[0] in existing


def test_a_parked_thread_ends_after_the_idle_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_threads, "IDLE_SECONDS", 0.05)
    threads: list[threading.Thread] = []
    assert run_in_thread(lambda: record_thread(threads), "clara-test-expiring").join(WAIT)
    # The thread parks with the patched idle time once its job ended, then ends.
    threads[0].join(WAIT)
    assert not threads[0].is_alive()


def test_a_job_that_holds_exit_finishes_before_the_process_ends() -> None:
    script = textwrap.dedent(
        """
        import threading
        from clara._threads import run_in_thread

        started = threading.Event()

        def work():
            started.set()
            threading.Event().wait(0.3)  # work still in progress when main returns
            print("held job finished", flush=True)

        def background():
            started.wait(5)
            threading.Event().wait(30)
            print("daemon job finished", flush=True)

        run_in_thread(work, "clara-test-held", hold_exit=True)
        run_in_thread(background, "clara-test-daemon")
        started.wait(5)
        print("main returns", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["main returns", "held job finished"]


def test_wait_for_any_returns_at_once_for_a_done_future() -> None:
    done: futures.Future[int] = futures.Future()
    done.set_result(1)
    assert wait_for_any([futures.Future(), done], 0)


def test_wait_for_any_times_out() -> None:
    assert not wait_for_any([futures.Future()], 0)
    assert not wait_for_any([futures.Future()], 0.01)


def test_wait_for_any_wakes_when_another_thread_completes_one() -> None:
    pending: futures.Future[int] = futures.Future()
    other: futures.Future[int] = futures.Future()
    completer = run_in_thread(lambda: pending.set_result(2), "clara-test-completer")
    assert wait_for_any([other, pending], WAIT)
    assert completer.join(WAIT)
    other.set_result(3)  # the stale wake-up callback fires into a queue nobody reads


def test_a_driver_whose_main_returns_at_once_still_runs_its_life_cycle_to_the_end() -> None:
    # The life-cycle runs on a cached daemon thread; interpreter exit must wait for it, and
    # its callbacks may need new threads while the interpreter is exiting.
    script = textwrap.dedent(
        """
        import uuid
        import clara

        def step(name):
            def callback(driver, *args):
                print(name, flush=True)
                return True
            return callback

        def report(driver, notification):
            if notification.kind is clara.NotificationKind.COMPLETED:
                print("completed:", notification.message, flush=True)

        driver = clara.Driver(
            prepare=step("prepare"),
            execute=step("execute"),
            cleanup=step("cleanup"),
            notify=report,
            standalone=True,
            job_id=uuid.uuid4(),
            stage_name="exiting",
            environ={},
        )
        driver.start()
        print("main returns", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "main returns" in lines
    assert [line for line in lines if line != "main returns"] == [
        "prepare",
        "execute",
        "cleanup",
        "completed: succeeded: all callbacks succeeded",
    ], done.stdout


def test_interpreter_exit_waits_for_notifications_queued_before_the_life_cycle_ended() -> None:
    # The notification callback is slower than the life-cycle's own wait for it (the grace
    # period): the life-cycle ends with `completed` still queued behind a slow notification,
    # and the main thread has already returned. Exit must still deliver it (bounded).
    script = textwrap.dedent(
        """
        import time
        import uuid
        from datetime import timedelta
        import clara

        def report(driver, notification):
            if notification.kind is clara.NotificationKind.CLEANUP_FINISHED:
                time.sleep(2.0)  # longer than the 0.2 s grace the life-cycle waits
                print("slow notification delivered", flush=True)
            if notification.kind is clara.NotificationKind.COMPLETED:
                print("completed:", notification.message, flush=True)

        driver = clara.Driver(
            execute=lambda d, p: True,
            cleanup=lambda d: True,
            notify=report,
            standalone=True,
            job_id=uuid.uuid4(),
            stage_name="exiting",
            timeouts=clara.DriverTimeouts(grace=timedelta(milliseconds=200)),
            environ={},
        )
        driver.start()
        print("main returns", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "main returns",
        "slow notification delivered",
        "completed: succeeded: all callbacks succeeded",
    ], (done.stdout, done.stderr)
    assert "interpreter exit waits" in done.stderr  # the slow callback is not silent either
