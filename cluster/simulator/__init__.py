"""The deterministic simulator: a whole datacenter in one process on virtual time.

The real vCenter core, the in-process engine's hosts and the real storage array run
on one `VirtualEventLoop` (vsim/virtual_time.py); a workload drawn from a seed drives
vCenter's public API while a `FaultPlan` drawn from the same seed breaks and mends
the physical layer; checkers read the whole history. One seed is one run, and it
replays exactly.

    datacenter.py   assembles vCenter, hosts and array on one seeded runtime
    fault_plan.py   faults as data, drawn from the seed, and the injector that applies them
    workload.py     what users do through vCenter's API, drawn from the seed
    history.py      the timeline every part writes to, and its digest
    checkers/       one invariant a module (DESIGN.md section 7)
    run.py          one seed end to end; many seeds on several processes
"""
