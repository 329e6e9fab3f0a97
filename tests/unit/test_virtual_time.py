"""The deterministic event loop (vsim/virtual_time.py): virtual time that jumps to the
next timer, a fixed order at one instant, executor calls inline, real I/O refused, a
deadlock reported, and runs that repeat exactly, down to a vCenter lab's history."""

from __future__ import annotations

import asyncio
import math
import random
import shutil
import socket
import threading
from pathlib import Path

import pytest
from vclab import CONNECTED, ON, SUCCESS, T0, Lab

from vsim.spec import ClusterSpec
from vsim.virtual_time import (
    RealIOForbidden,
    SimulationDeadlock,
    SimulationTimeLimit,
    VirtualEventLoop,
    run,
    settle,
)

# -- time ------------------------------------------------------------------------------


def test_an_hour_of_sleep_is_one_jump_of_the_loops_clock():
    async def main() -> tuple[float, float, int]:
        loop = asyncio.get_running_loop()
        before = loop.callbacks_run
        await asyncio.sleep(3600)
        return loop.time(), loop.time() - 3600, loop.callbacks_run - before

    now, began, callbacks = run(main(), start=T0)
    assert (now, began) == (T0 + 3600, T0)
    assert callbacks <= 3  # the wake-up and the task's step: no ticking through the hour


def test_time_moves_only_to_timers_and_exactly_to_them():
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        log: list[tuple[str, float]] = []

        async def every(name: str, period: float, times: int) -> None:
            for _ in range(times):
                await asyncio.sleep(period)
                log.append((name, loop.time()))

        await asyncio.gather(every("heartbeat", 3, 4), every("lease", 16, 1))
        return log

    assert run(main(), start=100.0) == [
        ("heartbeat", 103.0),
        ("heartbeat", 106.0),
        ("heartbeat", 109.0),
        ("heartbeat", 112.0),
        ("lease", 116.0),
    ]


def test_a_fresh_loop_starts_where_it_is_told_and_refuses_to_be_moved_back():
    loop = VirtualEventLoop(50.0)
    try:
        assert loop.time() == 50.0 and loop.pristine
        loop.set_start(T0)
        assert loop.time() == T0 and not loop.pristine
        with pytest.raises(RuntimeError, match="already in use"):
            loop.set_start(0.0)
    finally:
        loop.close()
    with pytest.raises(ValueError, match="finite"):
        VirtualEventLoop(math.nan)


async def test_wait_for_and_timeout_expire_on_virtual_time():
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.Event().wait(), 30)
    assert loop.time() == start + 30
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(5):
            await asyncio.sleep(60)
    assert loop.time() == start + 35


# -- order -----------------------------------------------------------------------------


def test_equal_deadlines_run_in_the_order_they_were_scheduled():
    """Hundreds of timers on three deadlines, scheduled in a shuffled order: they run
    by deadline, then FIFO (a heap on the deadline alone scrambles the ties)."""

    async def main() -> tuple[list[int], list[int]]:
        loop = asyncio.get_running_loop()
        rng = random.Random(13)
        deadlines = [rng.choice([1.0, 2.0, 3.0]) for _ in range(300)]
        ran: list[int] = []
        for i, delay in enumerate(deadlines):
            loop.call_at(loop.time() + delay, ran.append, i)
        await asyncio.sleep(5)
        return ran, sorted(range(300), key=lambda i: (deadlines[i], i))

    ran, expected = run(main())
    assert ran == expected


def test_one_instant_runs_what_was_ready_then_what_fell_due_then_what_they_scheduled():
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        log: list[str] = []

        def first() -> None:
            log.append("first")
            loop.call_later(0, log.append, "timer due now")
            loop.call_soon(log.append, "scheduled by first")

        loop.call_soon(first)
        loop.call_soon(log.append, "second")
        await asyncio.sleep(0)
        await settle()
        return log

    assert run(main()) == ["first", "second", "scheduled by first", "timer due now"]


def test_a_cancelled_timer_never_runs_and_many_are_swept_out():
    """TimerHandle.cancel() tells the loop through `_timer_handle_cancelled` (asyncio's
    one private hook into it); once most of the heap is dead the loop sweeps it."""
    async def main() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        ran: list[int] = []
        handles = [loop.call_later(1 + i % 7, ran.append, i) for i in range(1000)]
        for i, handle in enumerate(handles):
            if i % 4 or i % 7 == 0:  # every deadline-1 timer (i % 7 == 0) among them
                handle.cancel()
        assert loop.next_timer() == loop.time() + 2  # the earliest left
        kept = len(loop._timers)  # the heap itself: the dead are swept, not kept
        await asyncio.sleep(10)
        return ran, kept

    ran, kept = run(main())
    alive = [i for i in range(1000) if i % 4 == 0 and i % 7]
    assert ran == sorted(alive, key=lambda i: (1 + i % 7, i))
    assert kept == len(alive)


# -- executors inline, real I/O refused ------------------------------------------------


async def test_executor_calls_run_inline_in_the_loops_thread_at_once():
    loop = asyncio.get_running_loop()
    threads = threading.active_count()
    start = loop.time()
    calls: list[str] = []

    def work(tag: str) -> int:
        calls.append(tag)
        return threading.get_ident()

    future = loop.run_in_executor(None, work, "executor")
    assert future.done() and calls == ["executor"]  # ran before anything else could
    assert await future == threading.get_ident()
    assert await asyncio.to_thread(work, "to_thread") == threading.get_ident()
    with pytest.raises(ZeroDivisionError):
        await asyncio.to_thread(lambda: 1 / 0)
    assert calls == ["executor", "to_thread"]
    assert (threading.active_count(), loop.time()) == (threads, start)
    with pytest.raises(RealIOForbidden, match="inline"):
        loop.set_default_executor(None)


async def _unix_connect() -> None:
    await asyncio.open_unix_connection("/tmp/vsim-no-such.sock")


async def _add_reader() -> None:
    left, right = socket.socketpair()
    try:
        asyncio.get_running_loop().add_reader(left.fileno(), print)
    finally:
        left.close()
        right.close()


REFUSED = {
    "tcp connect": (
        lambda: asyncio.open_connection("127.0.0.1", 9),
        "create_connection('127.0.0.1', 9) would open a TCP socket",
    ),
    "tcp listen": (
        lambda: asyncio.start_server(print, "127.0.0.1", 0),
        "create_server('127.0.0.1', 0) would listen on a TCP socket",
    ),
    "unix connect": (_unix_connect, "would open a Unix socket"),
    "name lookup": (
        lambda: asyncio.get_running_loop().getaddrinfo("example.org", 443),
        "getaddrinfo('example.org', 443) would resolve a name",
    ),
    "subprocess": (
        lambda: asyncio.create_subprocess_exec("true", "--version"),
        "subprocess_exec('true', '--version') would start a subprocess",
    ),
    "shell": (
        lambda: asyncio.create_subprocess_shell("echo hi"),
        "subprocess_shell('echo hi') would start a subprocess through a shell",
    ),
    "fd watch": (_add_reader, "add_reader"),
}


@pytest.mark.parametrize("attempt", REFUSED)
async def test_real_io_is_refused_naming_what_was_attempted(attempt: str):
    call, words = REFUSED[attempt]
    with pytest.raises(RealIOForbidden, match="no real I/O") as refused:
        await call()
    assert words in str(refused.value)


async def test_signals_and_other_threads_are_refused():
    loop = asyncio.get_running_loop()
    with pytest.raises(RealIOForbidden, match="add_signal_handler.*real signal"):
        loop.add_signal_handler(2, print)
    assert not loop.remove_signal_handler(2) and not loop.remove_reader(0)
    errors: list[BaseException] = []

    def from_a_thread() -> None:
        try:
            loop.call_soon_threadsafe(print)
        except RealIOForbidden as exc:
            errors.append(exc)

    worker = threading.Thread(target=from_a_thread)
    worker.start()
    worker.join()
    assert len(errors) == 1 and "one thread" in str(errors[0])


def test_every_method_of_the_abstract_loop_is_the_virtual_loops_own():
    """Nothing falls through to AbstractEventLoop's NotImplementedError."""
    missing = [
        name
        for name, member in vars(asyncio.AbstractEventLoop).items()
        if callable(member) and not name.startswith("__")
        if getattr(VirtualEventLoop, name) is member
    ]
    assert missing == []


# -- deadlock --------------------------------------------------------------------------


def test_a_wait_nothing_can_end_is_a_deadlock_naming_the_waiters():
    async def main() -> None:
        lock = asyncio.Lock()
        await lock.acquire()

        async def needs_the_lock() -> None:
            async with lock:
                pass

        asyncio.get_running_loop().create_task(needs_the_lock(), name="vmx-worker")
        timer = asyncio.get_running_loop().call_later(60, print)
        await asyncio.sleep(5)
        timer.cancel()  # a cancelled timer wakes nobody
        await asyncio.Event().wait()

    with pytest.raises(SimulationDeadlock) as deadlock:
        run(main(), start=10.0)
    message = str(deadlock.value)
    assert message.startswith("deadlock at virtual time 15.0")
    assert "2 waiting task(s)" in message
    assert "vmx-worker waits in test_a_wait_nothing_can_end" in message
    assert "test_virtual_time.py:" in message


def test_a_wait_kept_alive_only_by_periodic_timers_stops_at_the_time_limit():
    """No deadlock check sees a wait nothing ends while a heartbeat keeps firing; the
    loop's time limit does, and names who waits."""

    async def main() -> None:
        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(3)

        asyncio.get_running_loop().create_task(heartbeat(), name="vmfs-heartbeat")
        await asyncio.Event().wait()

    loop = VirtualEventLoop(100.0, time_limit=3600)
    with pytest.raises(SimulationTimeLimit) as stopped:
        loop.run_until_complete(main())
    assert 100.0 + 3600 - 3 <= loop.time() <= 100.0 + 3600  # never past the limit
    message = str(stopped.value)
    assert message.startswith("virtual time would pass its limit of 3600 s")
    assert "vmfs-heartbeat waits in" in message
    loop.close()


def test_work_that_ends_within_the_time_limit_is_not_stopped():
    async def main() -> float:
        await asyncio.sleep(3599)
        return asyncio.get_running_loop().time()

    assert run(main(), start=5.0, time_limit=3600) == 5.0 + 3599
    with pytest.raises(ValueError):
        VirtualEventLoop(time_limit=0)
    with pytest.raises(ValueError):
        VirtualEventLoop(time_limit=math.inf)


def test_sleeping_forever_is_a_deadlock_not_a_jump_to_infinity():
    with pytest.raises(SimulationDeadlock, match="virtual time 0.0"):
        run(asyncio.sleep(math.inf))


# -- settle, run ---------------------------------------------------------------------


async def test_settle_runs_all_that_is_runnable_and_moves_no_time():
    loop = asyncio.get_running_loop()
    start = loop.time()
    done: list[str] = []

    async def chain(name: str, depth: int) -> None:
        for _ in range(depth):
            await asyncio.sleep(0)
        if depth:
            loop.create_task(chain(name, depth - 1))
        else:
            done.append(name)

    for name in ("a", "b", "c"):
        loop.create_task(chain(name, 5))
    loop.call_later(0, done.append, "due now")
    loop.call_later(1, done.append, "later")
    await settle()
    assert sorted(done) == ["a", "b", "c", "due now"]
    assert loop.time() == start
    await asyncio.sleep(1)
    assert done[-1] == "later"


def test_settle_and_simclock_need_the_virtual_loop():
    with pytest.raises(TypeError, match="VirtualEventLoop"):
        asyncio.run(settle())


def test_run_returns_the_result_then_cancels_what_is_left_and_closes_generators():
    log: list[str] = []

    async def ticker() -> None:
        try:
            while True:
                await asyncio.sleep(1)
        finally:
            log.append("ticker cancelled")

    async def numbers():
        try:
            yield 1
            yield 2
        finally:
            log.append("generator closed")

    async def main() -> int:
        asyncio.get_running_loop().create_task(ticker())
        gen = numbers()
        first = await anext(gen)
        await asyncio.sleep(2.5)
        return first

    assert run(main()) == 1
    assert sorted(log) == ["generator closed", "ticker cancelled"]


def test_an_exception_in_a_callback_goes_to_the_loops_handler():
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        seen: list[str] = []
        loop.set_exception_handler(lambda _, context: seen.append(context["message"]))
        loop.call_soon(lambda: 1 / 0)
        await asyncio.sleep(1)
        return seen

    (message,) = run(main())
    assert message.startswith("Exception in callback")


# -- determinism -----------------------------------------------------------------------


async def workload(seed: int) -> list[tuple]:
    """Forty workers on seeded random sleeps contend for a lock and a semaphore, pass
    jobs through a queue, wait with timeouts, and are cancelled at random: every step
    recorded with the loop's time."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    trace: list[tuple] = []
    lock, slots = asyncio.Lock(), asyncio.Semaphore(3)
    jobs: asyncio.Queue[int] = asyncio.Queue(maxsize=5)
    done = asyncio.Event()

    def note(*what: object) -> None:
        trace.append((loop.time(), *what))

    async def worker(n: int) -> None:
        my = random.Random(rng.random())
        try:
            for step in range(12):
                choice = my.random()
                if choice < 0.25:
                    async with lock:
                        note(n, "lock", step)
                        await asyncio.sleep(my.uniform(0, 0.5))
                elif choice < 0.45:
                    async with slots:
                        note(n, "slot", step)
                        await asyncio.sleep(my.expovariate(2))
                elif choice < 0.65:
                    try:
                        await asyncio.wait_for(jobs.put(n * 100 + step), my.uniform(0, 1))
                        note(n, "put", step)
                    except TimeoutError:
                        note(n, "put timed out", step)
                elif choice < 0.8:
                    try:
                        async with asyncio.timeout(my.uniform(0, 2)):
                            note(n, "got", await jobs.get())
                    except TimeoutError:
                        note(n, "get timed out", step)
                else:
                    note(n, "thread", await asyncio.to_thread(pow, n, step))
                    await asyncio.sleep(my.choice([0, 0.25, 1]))
        except asyncio.CancelledError:
            note(n, "cancelled")
            raise
        note(n, "finished")

    async def chaos() -> None:
        while not done.is_set():
            await asyncio.sleep(rng.uniform(0.1, 1.5))
            victims = [t for t in workers if not t.done()]
            if victims:
                rng.choice(victims).cancel()

    workers = [loop.create_task(worker(n), name=f"worker-{n}") for n in range(40)]
    monkey = loop.create_task(chaos(), name="chaos")
    await asyncio.gather(*workers, return_exceptions=True)
    done.set()
    await monkey
    note("end", jobs.qsize(), loop.callbacks_run)
    return trace


def test_a_seeded_workload_runs_the_same_twice_and_another_seed_differs():
    first, again, other = (run(workload(seed), start=T0) for seed in (21, 21, 22))
    assert first == again
    assert first != other
    kinds = {entry[2] for entry in first if len(entry) > 2}
    assert {"lock", "slot", "put", "got", "cancelled", "finished", "thread"} <= kinds
    assert {"put timed out", "get timed out"} & kinds
    assert len(first) > 300


async def lab_history(data_dir: Path, seed: int) -> dict[str, list[str]]:
    """A vCenter lab's tasks, events and VMs after a few minutes: VMs created and
    powered on, one powered off and destroyed, the hosts ticking and heartbeating
    between (each host's simulated second costs real work, so minutes, not hours)."""
    lab = Lab(data_dir, seed)
    await lab.boot(ClusterSpec.default(3))
    try:
        for i in range(3):
            assert (await lab.create(f"vm-{i:03d}")).state == SUCCESS
            assert (await lab.power_on(f"vm-{i:03d}")).state == SUCCESS
            await lab.clock.advance(30)
        assert {vm.power_state for vm in (await lab.vms()).values()} == {ON}
        for _ in range(2):
            await lab.clock.advance(60)
            assert {h.connection_state for h in (await lab.hosts()).values()} == {CONNECTED}
        await lab.power_off("vm-001")
        await lab.destroy("vm-001")
        await lab.clock.advance(60)
        return {
            "tasks": [str(task) for task in await lab.tasks()],
            "events": [str(event) for event in await lab.events()],
            "vms": [str(vm) for vm in (await lab.vms()).values()],
            "end": [repr(lab.clock.now())],
        }
    finally:
        await lab.stop()


def test_a_vcenter_lab_on_the_loop_has_the_same_history_twice(tmp_path, fast_scrypt):
    histories = []
    for seed in (11, 11, 12):
        data_dir = tmp_path / "vc"  # the same path each time: paths may be in events
        histories.append(run(lab_history(data_dir, seed)))
        shutil.rmtree(data_dir)
    first, again, other = histories
    for part in first:
        assert first[part] == again[part], part
    assert first["vms"] != other["vms"]  # the history does show what the seed draws
    assert len(first["tasks"]) >= 8 and len(first["events"]) > 10
    assert len(first["vms"]) == 2
    assert first["end"] == [repr(T0 + 3 * 30 + 2 * 60 + 60)]
