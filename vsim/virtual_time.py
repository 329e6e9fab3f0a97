"""The deterministic event loop: asyncio on virtual time, in one thread, without I/O.

`VirtualEventLoop` runs coroutines, tasks, futures, locks, queues, `wait_for` and
`asyncio.timeout` as any asyncio loop does, but its clock is virtual: when nothing is
ready to run it jumps straight to the next timer, so an hour of simulated time costs
only the work done in it. `run(main, start=T0)` runs a coroutine to completion on a
fresh one; `settle()` lets everything runnable run without moving time.

The order is fixed, so a run is a function of its inputs:

- The loop runs in rounds. A round first moves every timer due at the current time
  onto the end of the ready queue, earliest deadline first and, among equal deadlines,
  in the order they were scheduled (FIFO); then it runs the callbacks that were ready
  when the round began, in the order they became ready. What they schedule runs in a
  later round. Time moves only between rounds, and only when nothing is ready.
- CPython's own loop keeps its timers in a heap ordered by deadline alone, and
  `heapq` is not stable: equal deadlines come out in an order that depends on the
  heap's history, not on when they were scheduled. This loop's heap entries are
  (deadline, sequence number), so equal deadlines leave in FIFO order.

What the loop must never do, and does not: read the wall clock, start a thread, or
touch a socket, a file descriptor, a subprocess or a signal. Executor calls
(`run_in_executor`, `asyncio.to_thread`) run inline, at once, in the calling task.
Every I/O method raises `RealIOForbidden` naming what was attempted (code that calls
the `socket` module itself is beyond a loop's reach). If the loop must wait and there
is neither a ready callback nor a timer, nothing can ever wake it: it raises
`SimulationDeadlock` naming the tasks that wait and where, rather than hang.

Why `AbstractEventLoop` and not a `BaseEventLoop`/`SelectorEventLoop` subclass (read
against CPython 3.11's asyncio/base_events.py): `BaseEventLoop._run_once` needs a
private `_selector` and `_process_events`, takes time from `time.monotonic()` unless
`time()` is overridden, and batches every timer due within `_clock_resolution` in
heap order; making it FIFO means replacing `call_at` to push into its private
`_scheduled` heap, and making it virtual means a selector whose `select(timeout)`
moves time by the timeout that `_run_once` computed, a private contract between the
two. `SelectorEventLoop.__init__` also opens a socket pair (its self-pipe). A loop on
`AbstractEventLoop` owns its queue, heap and clock outright and uses only public
asyncio API (`Handle`, `TimerHandle`, `Future`, `Task`, `asyncio._set_running_loop`,
which asyncio exports for loop implementations). One private hook is unavoidable:
`TimerHandle.cancel()` calls its loop's `_timer_handle_cancelled`, which
`AbstractEventLoop` declares; it is the one method below with a leading underscore
that asyncio itself calls.

Unfinished async generators are closed when the garbage collector finds them, as on
any loop; the cyclic collector's timing is not the loop's to fix, so code that needs
a replayable run closes its generators (`aclose()`) or runs them to the end.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import heapq
import itertools
import logging
import math
import sys
import threading
import traceback
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

logger = logging.getLogger("asyncio")

_COMPACT_AFTER = 100
"""Cancelled timers stay in the heap until this many (and half of it) are dead."""


class SimulationDeadlock(RuntimeError):
    """The loop must wait, but nothing is ready and no timer is set."""


class SimulationTimeLimit(RuntimeError):
    """Virtual time would pass the loop's limit: something waits that nothing ends
    while timers keep firing (a retry loop, a periodic heartbeat), which no deadlock
    check can see."""


class RealIOForbidden(RuntimeError):
    """Something asked the virtual loop for a socket, subprocess, fd, signal or thread."""


_Call = tuple[asyncio.Handle, Callable[..., object], tuple, contextvars.Context]


def _refused(method: str, what: str) -> Callable[..., Any]:
    """A loop method that refuses real I/O, naming the call and its arguments."""

    def refuse(self: VirtualEventLoop, *args: object, **kwargs: object) -> Any:
        shown = [repr(a) for a in args if not callable(a)]  # not the protocol factories
        shown += [f"{k}={v!r}" for k, v in kwargs.items() if v is not None and not callable(v)]
        raise RealIOForbidden(
            f"the virtual event loop has no real I/O: {method}({', '.join(shown)}) would {what}"
        )

    refuse.__name__ = refuse.__qualname__ = method
    refuse.__doc__ = f"Refused: it would {what}."
    return refuse


class VirtualEventLoop(asyncio.AbstractEventLoop):
    """An asyncio event loop on virtual time (see the module docstring)."""

    def __init__(self, start: float = 0.0, time_limit: float | None = None) -> None:
        """time_limit: the most virtual seconds the loop may run past its start
        (SimulationTimeLimit beyond them); None for no limit."""
        if not math.isfinite(start):
            raise ValueError(f"a virtual clock starts at a finite time, got {start!r}")
        if time_limit is not None and not (time_limit > 0 and math.isfinite(time_limit)):
            raise ValueError(f"a time limit is a finite number of seconds > 0, got {time_limit!r}")
        self._now = float(start)
        self._start = self._now
        self.time_limit = time_limit
        self._runnable: collections.deque[_Call] = collections.deque()
        self._timers: list[tuple[float, int, asyncio.TimerHandle, Callable, tuple, Any]] = []
        self._sequence = itertools.count()
        self._cancelled_hint = 0
        self._settlers: list[asyncio.Future[None]] = []
        self._pristine = True
        self._running_thread: int | None = None
        self._stopping = False
        self._closed = False
        self._debug = False
        self._exception_handler: Callable[..., object] | None = None
        self._task_factory: Callable[..., asyncio.Task] | None = None
        # Insertion-ordered (unlike a WeakSet), so shutdown closes them in a fixed order.
        self._asyncgens: weakref.WeakKeyDictionary[Any, None] = weakref.WeakKeyDictionary()
        self.callbacks_run = 0
        """How many callbacks this loop has run (a measure of the work done)."""

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} time={self._now!r} running={self.is_running()} "
            f"closed={self._closed}>"
        )

    # -- virtual time ----------------------------------------------------------------

    def time(self) -> float:
        """The virtual time, in seconds; it moves only when nothing is ready."""
        return self._now

    def set_start(self, when: float) -> None:
        """Sets the clock of a loop that has not yet used it (no start was set, no
        timer ever scheduled, time never moved), so one owner chooses where it starts."""
        if not self._pristine:
            raise RuntimeError("this loop's clock is already in use; its start is fixed")
        if not math.isfinite(when):
            raise ValueError(f"a virtual clock starts at a finite time, got {when!r}")
        self._now = float(when)
        self._start = self._now
        self._pristine = False  # chosen once: a second owner must not move it back

    @property
    def pristine(self) -> bool:
        """True until the start is set, the first timer scheduled or time first moves."""
        return self._pristine

    def next_timer(self) -> float | None:
        """The deadline of the earliest timer still set, or None."""
        self._drop_cancelled_head()
        return self._timers[0][0] if self._timers else None

    def settle(self) -> asyncio.Future[None]:
        """A future done once nothing is runnable at the current time: every ready
        callback and all it set off has run, and no timer is due. Time does not move."""
        future = self.create_future()
        self._settlers.append(future)
        return future

    # -- scheduling --------------------------------------------------------------------

    def call_soon(
        self,
        callback: Callable[..., object],
        *args: object,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        self._check_closed()
        if context is None:
            context = contextvars.copy_context()
        handle = asyncio.Handle(callback, args, self, context)
        self._runnable.append((handle, callback, args, context))
        return handle

    def call_soon_threadsafe(
        self,
        callback: Callable[..., object],
        *args: object,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        """call_soon, from this loop's own thread only (a signal handler runs there)."""
        running = self._running_thread
        if running is not None and running != threading.get_ident():
            raise RealIOForbidden(
                f"the virtual event loop runs in one thread: call_soon_threadsafe({callback!r}) "
                "came from another"
            )
        return self.call_soon(callback, *args, context=context)

    def call_later(
        self,
        delay: float,
        callback: Callable[..., object],
        *args: object,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        if delay is None:
            raise TypeError("delay must not be None")
        return self.call_at(self._now + delay, callback, *args, context=context)

    def call_at(
        self,
        when: float,
        callback: Callable[..., object],
        *args: object,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        if when is None:
            raise TypeError("when cannot be None")
        if math.isnan(when):
            raise ValueError("a timer's deadline cannot be NaN")
        self._check_closed()
        if context is None:
            context = contextvars.copy_context()
        handle = asyncio.TimerHandle(when, callback, args, self, context)
        heapq.heappush(self._timers, (when, next(self._sequence), handle, callback, args, context))
        self._pristine = False
        return handle

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        """Called by TimerHandle.cancel() (asyncio's contract with its loops)."""
        self._cancelled_hint += 1

    # -- running -----------------------------------------------------------------------

    def run_forever(self) -> None:
        self._check_closed()
        if self.is_running():
            raise RuntimeError("this event loop is already running")
        if asyncio._get_running_loop() is not None:
            raise RuntimeError("cannot run the event loop while another loop is running")
        hooks = sys.get_asyncgen_hooks()
        sys.set_asyncgen_hooks(
            firstiter=self._asyncgen_firstiter, finalizer=self._asyncgen_finalizer
        )
        self._running_thread = threading.get_ident()
        asyncio._set_running_loop(self)
        try:
            while True:
                self._run_once()
                if self._stopping:
                    break
        finally:
            self._stopping = False
            self._running_thread = None
            asyncio._set_running_loop(None)
            sys.set_asyncgen_hooks(*hooks)

    def run_until_complete(self, future: Any) -> Any:
        self._check_closed()
        new_task = not asyncio.isfuture(future)
        future = asyncio.ensure_future(future, loop=self)
        future.add_done_callback(self._stop_when_done)
        try:
            self.run_forever()
        except BaseException:
            if new_task and future.done() and not future.cancelled():
                future.exception()  # raised here instead: do not also log it as never retrieved
            raise
        finally:
            future.remove_done_callback(self._stop_when_done)
        if not future.done():
            raise RuntimeError("event loop stopped before the future completed")
        return future.result()

    def _stop_when_done(self, future: asyncio.Future) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping = True

    def is_running(self) -> bool:
        return self._running_thread is not None

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("cannot close a running event loop")
        self._closed = True
        self._runnable.clear()
        self._timers.clear()
        self._settlers.clear()

    def _check_closed(self) -> None:
        if self._closed:
            raise RuntimeError("Event loop is closed")

    def _run_once(self) -> None:
        """One round: wait for work if there is none, then run what was ready."""
        if not self._runnable and not self._stopping:
            self._wait_for_work()
        self._release_due_timers()
        for _ in range(len(self._runnable)):
            handle, callback, args, context = self._runnable.popleft()
            if handle.cancelled():
                continue
            self.callbacks_run += 1
            try:
                context.run(callback, *args)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self.call_exception_handler(
                    {
                        "message": f"Exception in callback {callback!r}",
                        "exception": exc,
                        "handle": handle,
                    }
                )

    def _wait_for_work(self) -> None:
        """Nothing is ready: run what is due now, else wake the settlers, else move
        time to the next timer, else nothing can ever run again."""
        when = self.next_timer()
        if when is not None and when <= self._now:
            return
        if self._settlers:
            settlers, self._settlers = self._settlers, []
            for future in settlers:
                if not future.done():
                    future.set_result(None)
            return
        if when is None or when == math.inf:
            raise SimulationDeadlock(
                self._waiting_report(
                    f"deadlock at virtual time {self._now!r}: the loop must wait, but no "
                    "callback is ready and no timer is set, so nothing can ever wake"
                )
            )
        if self.time_limit is not None and when > self._start + self.time_limit:
            raise SimulationTimeLimit(
                self._waiting_report(
                    f"virtual time would pass its limit of {self.time_limit:g} s (at "
                    f"{self._start + self.time_limit!r}; the next timer is at {when!r}), "
                    "stopped, with"
                )
            )
        self._now = when
        self._pristine = False

    def _release_due_timers(self) -> None:
        timers = self._timers
        while timers and timers[0][0] <= self._now:
            _, _, handle, callback, args, context = heapq.heappop(timers)
            if handle.cancelled():
                self._cancelled_hint = max(0, self._cancelled_hint - 1)
            else:
                self._runnable.append((handle, callback, args, context))

    def _drop_cancelled_head(self) -> None:
        timers = self._timers
        if self._cancelled_hint > _COMPACT_AFTER and self._cancelled_hint * 2 > len(timers):
            timers[:] = [entry for entry in timers if not entry[2].cancelled()]
            heapq.heapify(timers)
            self._cancelled_hint = 0
        while timers and timers[0][2].cancelled():
            heapq.heappop(timers)
            self._cancelled_hint = max(0, self._cancelled_hint - 1)

    def _waiting_report(self, headline: str) -> str:
        """headline, then each waiting task and the line it waits on."""
        waiting = sorted(
            (t for t in asyncio.all_tasks(self) if not t.done()), key=lambda t: t.get_name()
        )
        lines = [f"{headline} {len(waiting)} waiting task(s)"]
        for task in waiting[:20]:
            frames = task.get_stack()
            where = "(not started)"
            if frames:
                frame = frames[-1]
                code = frame.f_code
                where = f"in {code.co_qualname} ({code.co_filename}:{frame.f_lineno})"
            lines.append(f"  {task.get_name()} waits {where}")
        if len(waiting) > 20:
            lines.append(f"  ... and {len(waiting) - 20} more")
        return "\n".join(lines)

    # -- futures and tasks -------------------------------------------------------------

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(
        self,
        coro: Coroutine[Any, Any, T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[T]:
        self._check_closed()
        if self._task_factory is None:
            return asyncio.Task(coro, loop=self, name=name, context=context)
        if context is None:
            task = self._task_factory(self, coro)
        else:
            task = self._task_factory(self, coro, context=context)
        if name is not None:
            task.set_name(name)
        return task

    def set_task_factory(self, factory: Callable[..., asyncio.Task] | None) -> None:
        if factory is not None and not callable(factory):
            raise TypeError("task factory must be a callable or None")
        self._task_factory = factory

    def get_task_factory(self) -> Callable[..., asyncio.Task] | None:
        return self._task_factory

    # -- executors: inline -------------------------------------------------------------

    def run_in_executor(
        self, executor: Any, func: Callable[..., T], *args: object
    ) -> asyncio.Future[T]:
        """Runs func(*args) now, in this thread, whatever executor is named: the
        returned future is already done. A virtual loop has no threads to wait for."""
        self._check_closed()
        future: asyncio.Future[T] = self.create_future()
        try:
            result = func(*args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future

    def set_default_executor(self, executor: Any) -> None:
        raise RealIOForbidden(
            "the virtual event loop runs executor calls inline; it takes no executor "
            f"({executor!r})"
        )

    async def shutdown_default_executor(self) -> None:
        """Nothing to shut down: executor calls ran inline."""

    # -- async generators --------------------------------------------------------------

    def _asyncgen_firstiter(self, agen: Any) -> None:
        self._asyncgens[agen] = None

    def _asyncgen_finalizer(self, agen: Any) -> None:
        self._asyncgens.pop(agen, None)
        if not self._closed:
            self.call_soon(self.create_task, agen.aclose())

    async def shutdown_asyncgens(self) -> None:
        closing = list(self._asyncgens)
        self._asyncgens.clear()
        results = await asyncio.gather(*(agen.aclose() for agen in closing), return_exceptions=True)
        for result, agen in zip(results, closing, strict=True):
            if isinstance(result, Exception):
                self.call_exception_handler(
                    {
                        "message": f"error while closing asynchronous generator {agen!r}",
                        "exception": result,
                        "asyncgen": agen,
                    }
                )

    # -- errors and debug --------------------------------------------------------------

    def get_exception_handler(self) -> Callable[..., object] | None:
        return self._exception_handler

    def set_exception_handler(self, handler: Callable[..., object] | None) -> None:
        if handler is not None and not callable(handler):
            raise TypeError(f"a callable object or None is expected, got {handler!r}")
        self._exception_handler = handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        """Logs the error and its context to the 'asyncio' logger, as asyncio does."""
        exception = context.get("exception")
        exc_info = False
        if exception is not None:
            exc_info = (type(exception), exception, exception.__traceback__)
        lines = [context.get("message") or "Unhandled exception in event loop"]
        for key in sorted(context):
            if key in ("message", "exception"):
                continue
            value = context[key]
            if key == "source_traceback":
                value = "Object created at:\n" + "".join(traceback.format_list(value)).rstrip()
            else:
                value = repr(value)
            lines.append(f"{key}: {value}")
        logger.error("\n".join(lines), exc_info=exc_info)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        try:
            if self._exception_handler is None:
                self.default_exception_handler(context)
            else:
                self._exception_handler(self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            # A failing handler must not stop the loop; say so where asyncio would.
            logger.error("Exception in the event loop's exception handler", exc_info=True)

    def get_debug(self) -> bool:
        return self._debug

    def set_debug(self, enabled: bool) -> None:
        self._debug = bool(enabled)

    # -- real I/O: refused ---------------------------------------------------------

    getaddrinfo = _refused("getaddrinfo", "resolve a name")
    getnameinfo = _refused("getnameinfo", "resolve an address")
    create_connection = _refused("create_connection", "open a TCP socket")
    create_server = _refused("create_server", "listen on a TCP socket")
    create_unix_connection = _refused("create_unix_connection", "open a Unix socket")
    create_unix_server = _refused("create_unix_server", "listen on a Unix socket")
    create_datagram_endpoint = _refused("create_datagram_endpoint", "open a UDP socket")
    connect_accepted_socket = _refused("connect_accepted_socket", "use a real socket")
    sendfile = _refused("sendfile", "send a file over a real transport")
    start_tls = _refused("start_tls", "start TLS on a real transport")
    connect_read_pipe = _refused("connect_read_pipe", "read a pipe's file descriptor")
    connect_write_pipe = _refused("connect_write_pipe", "write a pipe's file descriptor")
    subprocess_exec = _refused("subprocess_exec", "start a subprocess")
    subprocess_shell = _refused("subprocess_shell", "start a subprocess through a shell")
    add_reader = _refused("add_reader", "watch a file descriptor for reading")
    add_writer = _refused("add_writer", "watch a file descriptor for writing")
    sock_recv = _refused("sock_recv", "read a real socket")
    sock_recv_into = _refused("sock_recv_into", "read a real socket")
    sock_recvfrom = _refused("sock_recvfrom", "read a real socket")
    sock_recvfrom_into = _refused("sock_recvfrom_into", "read a real socket")
    sock_sendall = _refused("sock_sendall", "write a real socket")
    sock_sendto = _refused("sock_sendto", "write a real socket")
    sock_connect = _refused("sock_connect", "connect a real socket")
    sock_accept = _refused("sock_accept", "accept on a real socket")
    sock_sendfile = _refused("sock_sendfile", "send a file over a real socket")
    add_signal_handler = _refused("add_signal_handler", "wait for a real signal")

    def remove_reader(self, fd: object) -> bool:
        """Nothing is ever watched, so nothing is removed."""
        return False

    def remove_writer(self, fd: object) -> bool:
        """Nothing is ever watched, so nothing is removed."""
        return False

    def remove_signal_handler(self, sig: int) -> bool:
        """No handler is ever installed, so none is removed."""
        return False


def run(
    main: Coroutine[Any, Any, T],
    *,
    start: float = 0.0,
    time_limit: float | None = None,
    debug: bool | None = None,
) -> T:
    """Runs `main` to completion on a fresh VirtualEventLoop whose clock starts at
    `start` (and may run `time_limit` virtual seconds at most), then cancels what is
    left and closes the loop (as asyncio.run does)."""
    with asyncio.Runner(
        loop_factory=lambda: VirtualEventLoop(start, time_limit), debug=debug
    ) as runner:
        return runner.run(main)


def running_loop() -> VirtualEventLoop:
    """The running VirtualEventLoop; a clear error on any other loop."""
    loop = asyncio.get_running_loop()
    if not isinstance(loop, VirtualEventLoop):
        raise TypeError(
            f"this needs vsim's VirtualEventLoop (vsim.virtual_time.run, or the unit "
            f"tests' loop), not {type(loop).__name__}"
        )
    return loop


async def settle() -> None:
    """Lets everything runnable run, and all it sets off, without moving time."""
    await running_loop().settle()
