"""What every suite shares: a run stopped by SIGTERM ends as one stopped by Ctrl-C.

pytest answers Ctrl-C (KeyboardInterrupt) by stopping and running every fixture's
teardown, so the Ray cluster and the docker-compose stack a session started are
removed. SIGTERM would end the process at once and leave them running; here it
raises KeyboardInterrupt instead. (Fixtures that let a library install its own
SIGTERM handler, as `ray.init` does, put this one back.)
"""

from __future__ import annotations

import signal


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def pytest_configure(config) -> None:
    signal.signal(signal.SIGTERM, _interrupt)
