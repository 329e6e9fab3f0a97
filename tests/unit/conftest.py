"""Fixtures for the unit tests: a vCenter core on the in-process engine and a SimClock.

No Ray and no sockets. Each test that needs a vCenter gets a fresh one in its own
tmp_path (`lab`, or `make_lab` for another cluster shape); everything started is
stopped at teardown. scrypt's cost is lowered for these fixtures only (a login then
takes well under a millisecond instead of ~50 ms); the tests of the password and
account code itself run with the real parameters.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from vclab import Lab

from vsim import passwords
from vsim.spec import ClusterSpec


@pytest.fixture
def fast_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap scrypt for tests whose subject is not password hashing."""
    monkeypatch.setattr(passwords, "SCRYPT_N", 2**4)


@pytest.fixture
async def make_lab(tmp_path: Path, fast_scrypt: None):
    """Builds labs with a given cluster spec; stops them all at teardown."""
    labs: list[Lab] = []

    async def make(spec: ClusterSpec | None = None, seed: int = 7) -> Lab:
        lab = Lab(tmp_path / f"vc-{len(labs)}", seed)
        labs.append(lab)
        return await lab.boot(spec if spec is not None else ClusterSpec.default(3))

    yield make
    for lab in labs:
        await lab.stop()


@pytest.fixture
async def lab(make_lab) -> Lab:
    """A started vCenter with the three default hosts esxi-01..03 and a session."""
    return await make_lab()
