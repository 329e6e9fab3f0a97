"""One component's runtime: its clock, its seeded randomness, its ids and secrets,
the background tasks it spawns and the timeouts it waits out.

Each component (one boot of a host, vCenter, the array, the in-process engine) is
handed a `Runtime` by the one place that assembles it, and asks it, never `time`,
`random`, `uuid`, `secrets` or the event loop directly, for these things:

- time: `clock`, `now()`, `sleep()`, and `timeout()` / `wait_for()`, measured on that
  clock in simulated seconds (under `WallClock(speed)` a 16 s timeout is 16/speed real
  seconds; under the simulator it is virtual);
- randomness and ids: `random` (a `random.Random` seeded from the runtime's seed),
  `uuid()`, `hex_id()`;
- secrets: `secure_random`, `token()`, `secret_bytes()` (session tokens, passwords,
  salts, keys): the OS's CSPRNG in a live runtime, drawn from the seed in a simulated
  one, so a seed replays a whole run while `vsim up` stays unguessable;
- tasks: `spawn()` names and tracks a background task; `halt()` cancels all of them
  at once (a crash), `stop()` cancels them and waits until they are gone.

`child(name)` derives a part's own runtime on the same clock: its seed is a hash of
the parent's seed and the name, so a child's randomness does not depend on which
other children were made before it, or in what order.

It never picks a clock: the caller passes one, which is what lets the same component
run on real or virtual time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import secrets
import uuid
from collections.abc import Awaitable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from vsim.clock import Clock
from vsim.passwords import SYSTEM_RANDOM, new_token

log = logging.getLogger(__name__)
T = TypeVar("T")


def derive_seed(seed: int, name: str) -> int:
    """A 64-bit seed for the part called `name` of a component seeded with `seed`."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def random_uuid(rng: random.Random) -> uuid.UUID:
    """A version 4 UUID drawn from rng (uuid4 reads the OS instead)."""
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def random_hex(rng: random.Random, digits: int) -> str:
    """`digits` lower-case hex digits drawn from rng."""
    return f"{rng.getrandbits(4 * digits):0{digits}x}"


class Runtime:
    def __init__(self, clock: Clock, seed: int, name: str = "", *, simulated: bool) -> None:
        """Prefer `Runtime.live` and `Runtime.simulated`, which say which kind it is
        (the kind has no default: seeded secrets must be asked for)."""
        self.clock = clock
        self.seed = seed
        """Everything this runtime draws (secrets too, when simulated) follows from it."""
        self.name = name
        self.simulated = simulated
        """True: secrets come from the seed too (tests, the simulator). False: they come
        from the OS's CSPRNG (`vsim up`, Ray, docker-compose)."""
        self.random = random.Random(derive_seed(seed, "random"))
        """Ids, backoff jitter and every other choice that is not a secret."""
        self.secure_random: random.Random = (
            random.Random(derive_seed(seed, "secure")) if simulated else SYSTEM_RANDOM
        )
        """Passwords, tokens, salts and keys. A stream of its own, so drawing a secret
        never shifts the ids a simulated run makes."""
        self._tasks: dict[asyncio.Task[Any], None] = {}
        """Tasks spawned and not yet ended, in the order they were spawned."""

    @classmethod
    def live(cls, clock: Clock, name: str = "") -> Runtime:
        """A real component's runtime: its seed is drawn once from the OS (ids differ
        between runs, as on real machines), its secrets from `secrets`."""
        return cls(clock, secrets.randbits(64), name, simulated=False)

    @classmethod
    def simulated(cls, clock: Clock, seed: int, name: str = "") -> Runtime:
        """A runtime whose every draw, secrets included, follows from `seed`."""
        return cls(clock, seed, name, simulated=True)

    def child(self, name: str) -> Runtime:
        """The runtime of a part called `name` (a host, a boot, the vCenter): the same
        clock and kind, a seed derived from this one's and the name alone. Its tasks
        are its own: whoever stops the part stops them."""
        full = f"{self.name}/{name}" if self.name else name
        seed = derive_seed(self.seed, f"child:{name}")
        return Runtime(self.clock, seed, full, simulated=self.simulated)

    def __repr__(self) -> str:
        kind = "simulated" if self.simulated else "live"
        return f"Runtime({self.name or '-'}, {kind}, seed={self.seed})"

    # time

    def now(self) -> float:
        return self.clock.now()

    async def sleep(self, seconds: float) -> None:
        await self.clock.sleep(seconds)

    def timeout(self, seconds: float) -> Timeout:
        """`async with runtime.timeout(s):` raises TimeoutError in the block once `s`
        seconds of this runtime's clock pass (the block is cancelled at its await)."""
        return Timeout(self.clock, seconds)

    async def wait_for(self, awaitable: Awaitable[T], seconds: float) -> T:
        """The awaitable's result, or TimeoutError after `seconds` of this clock."""
        async with self.timeout(seconds):
            return await awaitable

    # ids and secrets

    def uuid(self) -> uuid.UUID:
        """A random (version 4) UUID from this runtime's `random`."""
        return random_uuid(self.random)

    def hex_id(self, digits: int) -> str:
        """`digits` random lower-case hex digits (a VMDK CID: 8; a LUN serial: 16)."""
        return random_hex(self.random, digits)

    def secret_bytes(self, count: int) -> bytes:
        return self.secure_random.randbytes(count)

    def token(self) -> str:
        """A session token (unguessable in a live runtime), as vsim/passwords.py makes."""
        return new_token(self.secure_random)

    # tasks

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Runs coro as a background task of this component, named `<runtime>/<name>`,
        kept until it ends (the event loop holds tasks only weakly) and cancelled by
        `halt` or `stop`. A task that fails is logged: nobody else awaits it."""
        full = f"{self.name}/{name}" if self.name else name
        task = asyncio.get_running_loop().create_task(coro, name=full)
        self._tasks[task] = None
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    @property
    def tasks(self) -> list[asyncio.Task[Any]]:
        """This component's background tasks that have not ended, oldest first."""
        return [t for t in self._tasks if not t.done()]

    def halt(self) -> None:
        """Cancels every task at once, as a crash stops everything (nothing waited for)."""
        for task in list(self._tasks):
            task.cancel()

    async def stop(self) -> None:
        """Cancels every task and returns once they have all ended."""
        while self._tasks:
            running = list(self._tasks)
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            for task in running:
                self._tasks.pop(task, None)


class Timeout:
    """An async context manager that cancels its block after `seconds` of `clock` and
    raises TimeoutError in its place, as `asyncio.timeout` does on the loop's time.
    A cancellation from elsewhere passes through unchanged. One timer on the loop, no
    task: cheap enough to bound every I/O."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        self._clock = clock
        self._seconds = seconds
        self._task: asyncio.Task[Any] | None = None
        self._alarm: asyncio.TimerHandle | None = None
        self._cancelling = 0
        self.expired = False

    async def __aenter__(self) -> Timeout:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a Timeout must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._alarm = self._clock.call_later(self._seconds, self._ring)
        return self

    def _ring(self) -> None:
        assert self._task is not None
        self.expired = True
        self._task.cancel()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._alarm is not None and self._task is not None
        self._alarm.cancel()
        if not self.expired:
            return
        # Our cancel: take it back, and if nobody else cancelled too, it was a timeout.
        if self._task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
            raise TimeoutError(f"timed out after {self._seconds:g} s") from error
