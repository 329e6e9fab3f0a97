"""Fixtures for the unit tests: a vCenter core on the in-process engine and a SimClock.

No Ray and no sockets. Each test that needs a vCenter gets a fresh one in its own
tmp_path (`lab`, or `make_lab` for another cluster shape); everything started is
stopped at teardown. scrypt's cost is lowered for these fixtures only (a login then
takes well under a millisecond instead of ~50 ms); the tests of the password and
account code itself run with the real parameters.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import pytest
from vclab import T0, Lab

from vsim import passwords
from vsim.clock import WallClock
from vsim.spec import ClusterSpec
from vsim.virtual_time import VirtualEventLoop

REAL_TIME_FIXTURES = {
    "cluster": "test_vcenter_datastores' array-backed cluster runs on a WallClock",
}
"""Fixtures that need real time: a test using one runs on asyncio's own loop."""


def on_real_loop(node: pytest.Item) -> bool:
    """Whether a test runs on asyncio's own loop: it is marked `real_loop` (real
    sockets, threads or time), or it uses a fixture of REAL_TIME_FIXTURES."""
    if node.get_closest_marker("real_loop") is not None:
        return True
    return not REAL_TIME_FIXTURES.keys().isdisjoint(getattr(node, "fixturenames", ()))


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict:
    """The event loop each async test runs on, fixtures and all: a fresh
    VirtualEventLoop per test function (its parametrized cases share it), or
    asyncio's own loop (one for all such tests in a row) if `on_real_loop`."""
    if on_real_loop(item):
        return {"real": asyncio.new_event_loop}
    # A new factory object per test: pytest-asyncio keeps its session runner only
    # while the factory stays the same, so each test starts on a loop of its own.
    return {"virtual": functools.partial(VirtualEventLoop)}


@pytest.fixture
def fast_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap scrypt for tests whose subject is not password hashing."""
    monkeypatch.setattr(passwords, "SCRYPT_N", 2**4)


@pytest.fixture
async def make_lab(request: pytest.FixtureRequest, tmp_path: Path, fast_scrypt: None):
    """Builds labs with a given cluster spec; stops them all at teardown. A lab's
    clock is a SimClock, or real time (a WallClock from T0) in a test `on_real_loop`."""
    labs: list[Lab] = []
    real_time = on_real_loop(request.node)

    async def make(spec: ClusterSpec | None = None, seed: int = 7, array: bool = False) -> Lab:
        """`array`: with a storage array in this process, the spec's datastores on it."""
        clock = WallClock(start=T0) if real_time else None
        lab = Lab(tmp_path / f"vc-{len(labs)}", seed, array=array, clock=clock)
        labs.append(lab)
        return await lab.boot(spec if spec is not None else ClusterSpec.default(3))

    yield make
    for lab in labs:
        await (lab.close() if lab.array is not None else lab.stop())


@pytest.fixture
async def lab(make_lab) -> Lab:
    """A started vCenter with the three default hosts esxi-01..03 and a session."""
    return await make_lab()
