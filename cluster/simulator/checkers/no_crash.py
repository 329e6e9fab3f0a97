"""Invariant: bad input never crashes a component (DESIGN.md section 7, 6): no call
vCenter answers ends in SystemError (an unexpected exception behind its dispatch
table), and no background task of vCenter, a host or the array dies of one."""

from __future__ import annotations

import logging

from vsim.cluster.simulator.checkers import Checker


class _Errors(logging.Handler):
    def __init__(self, checker: NoCrashChecker) -> None:
        super().__init__(logging.ERROR)
        self.checker = checker

    def emit(self, record: logging.LogRecord) -> None:
        what = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            what += f": {type(error).__name__}: {error}"
        self.checker.violate(f"{record.name}: {what}"[:400])


class NoCrashChecker(Checker):
    name = "no component crashes"

    def __init__(self, dc, history) -> None:
        super().__init__(dc, history)
        self._handler = _Errors(self)
        logging.getLogger("vsim").addHandler(self._handler)

    def system_error(self, call: str, message: str) -> None:
        self.violate(f"{call} got SystemError: {message}"[:300])

    def close(self) -> None:
        logging.getLogger("vsim").removeHandler(self._handler)
