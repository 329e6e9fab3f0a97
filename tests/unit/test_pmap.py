"""Machine memory, pmaps, page sharing and reclaim together: the isolation invariant
(DESIGN.md section 7, invariant 3) over random histories.

Every read is checked against a model of what each VM last wrote to each page (zero
if never), so a VM that saw another VM's page, an MPN handed out without zeroing, a
missed copy-on-write, or content lost in the balloon, compression cache or swap file
all fail. After every step the reference counts must equal the pmap entries naming
each MPN, no MPN may leak, and a shared MPN must be mapped only within one domain.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vsim.faults import InsufficientResourcesFault, InvalidArgument
from vsim.host.kernel.memory import page_sharing
from vsim.host.kernel.memory.page_sharing import PageSharing
from vsim.host.kernel.memory.pmap import MAPPED, MachineMemory, distinct, last_writes
from vsim.host.kernel.memory.reclaim import Reclaimer, VmReclaim, VmSwapFile

VM_PAGES = 12
DOMAINS = {"a": 0, "b": 0, "c": 7}
"""a and b share a domain (salting off between them); c has its own salt."""

vm_names = st.sampled_from(sorted(DOMAINS))
ppn_lists = st.lists(st.integers(0, VM_PAGES - 1), min_size=1, max_size=6)
contents = st.sampled_from([0, 1, 2, 3, 2**63 + 5])
"""A small alphabet, so that identical pages (and hash neighbours) are common."""

operations = st.one_of(
    st.tuples(st.just("write"), vm_names, ppn_lists, st.lists(contents, min_size=6, max_size=6)),
    st.tuples(st.just("read"), vm_names, ppn_lists),
    st.tuples(st.just("scan")),
    st.tuples(st.just("reclaim"), st.sampled_from(["balloon", "compress", "swap"]), vm_names),
    st.tuples(st.just("restart"), vm_names),
)


class Host:
    def __init__(self, swap_dir: Path, machine_pages: int) -> None:
        self.memory = MachineMemory(machine_pages)
        self.sharing = PageSharing(self.memory)
        self.reclaimer = Reclaimer(self.memory)
        self.swap_dir = swap_dir
        self.model: dict[str, dict[int, int]] = {}
        for name in DOMAINS:
            self.start(name)

    def start(self, name: str) -> None:
        pages = self.memory.add_vm(name, VM_PAGES, DOMAINS[name], sharable=True)
        swap = VmSwapFile(self.swap_dir / f"{name}.vswp", VM_PAGES)
        self.reclaimer.add(VmReclaim(pages, swap, working_set=VM_PAGES // 2))
        self.model[name] = {}

    def stop(self, name: str) -> None:
        self.reclaimer.remove(name)
        self.memory.remove_vm(name)

    def vm(self, name: str) -> VmReclaim:
        return self.reclaimer.vms[name]

    def read(self, name: str, ppns: list[int]) -> np.ndarray:
        self.reclaimer.bring_in(self.vm(name), np.array(ppns))
        return self.memory.read_mapped(self.vm(name).pages, np.array(ppns))

    def check(self) -> None:
        self.memory.check()
        owners: dict[int, set[int]] = {}
        for name, vm in self.reclaimer.vms.items():
            pages = vm.pages
            for mpn in pages.pmap[pages.backing == MAPPED]:
                owners.setdefault(int(mpn), set()).add(DOMAINS[name])
        for mpn, domains in owners.items():
            assert len(domains) == 1, f"MPN {mpn} is shared across domains {domains}"


def run(host: Host, op: tuple) -> None:
    kind = op[0]
    if kind == "write":
        _, name, ppns, values = op
        values = values[: len(ppns)]
        host.reclaimer.overwrite(host.vm(name), np.array(ppns), np.array(values, np.uint64))
        for ppn, value in zip(ppns, values, strict=True):
            host.model[name][ppn] = value
    elif kind == "read":
        _, name, ppns = op
        seen = host.read(name, ppns)
        expected = [host.model[name].get(p, 0) for p in ppns]
        assert seen.tolist() == expected, f"{name} read {seen.tolist()} at {ppns}"
    elif kind == "scan":
        host.sharing.scan()
    elif kind == "reclaim":
        _, technique, name = op
        vm = host.vm(name)
        vm.balloon_budget = VM_PAGES
        getattr(host.reclaimer, f"_{technique}")(vm, VM_PAGES)
    elif kind == "restart":
        _, name = op
        host.stop(name)
        host.start(name)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=st.lists(operations, min_size=1, max_size=40))
@pytest.mark.parametrize("spread", [page_sharing._SPREAD, np.uint64(0)], ids=["hash", "collide"])
def test_no_vm_ever_reads_what_it_did_not_write(spread: np.uint64, ops: list[tuple]):
    """Also with a hash under which every page collides, so the full comparison after
    a hash match is what keeps pages apart."""
    saved, page_sharing._SPREAD = page_sharing._SPREAD, spread
    try:
        check_history(ops)
    finally:
        page_sharing._SPREAD = saved


def check_history(ops: list[tuple]) -> None:
    with tempfile.TemporaryDirectory() as swap_dir:
        host = Host(Path(swap_dir), machine_pages=3 * VM_PAGES)
        for op in ops:
            run(host, op)
            host.check()
        # Every page of every VM, read back at the end.
        for name in DOMAINS:
            run(host, ("read", name, list(range(VM_PAGES))))
        host.check()


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(operations, min_size=1, max_size=30))
def test_memory_is_never_short_when_reservations_fit(ops: list[tuple]):
    """With less machine memory than the VMs' pages, a guest access reclaims from
    others instead of failing or reading another VM's page."""
    with tempfile.TemporaryDirectory() as swap_dir:
        host = Host(Path(swap_dir), machine_pages=VM_PAGES + 4)
        for op in ops:
            run(host, op)
            host.check()
            assert host.memory.free_pages >= 0


def test_a_freed_page_reaches_the_next_vm_zeroed(tmp_path: Path):
    memory = MachineMemory(8)
    a = memory.add_vm("a", 8, domain=1, sharable=False)
    memory.write(a, np.arange(8), np.arange(101, 109, dtype=np.uint64))
    used = set(a.pmap.tolist())
    memory.remove_vm("a")
    b = memory.add_vm("b", 8, domain=2, sharable=False)
    memory.map_zeroed(b, np.arange(8))
    assert set(b.pmap.tolist()) == used  # the very same machine pages
    assert memory.read_mapped(b, np.arange(8)).tolist() == [0] * 8
    memory.check()


def test_copy_on_write_gives_the_writer_a_private_copy():
    memory = MachineMemory(16)
    sharing = PageSharing(memory)
    a = memory.add_vm("a", 4, domain=0, sharable=True)
    b = memory.add_vm("b", 4, domain=0, sharable=True)
    memory.write(a, np.array([0, 1]), np.array([42, 42], np.uint64))
    memory.write(b, np.array([3]), np.array([42], np.uint64))
    result = sharing.scan()
    assert result.merged == 2
    assert a.pmap[0] == a.pmap[1] == b.pmap[3]
    assert memory.refcount[a.pmap[0]] == 3
    memory.write(b, np.array([3]), np.array([7], np.uint64))
    assert b.pmap[3] != a.pmap[0]
    assert memory.refcount[a.pmap[0]] == 2
    assert memory.read_mapped(a, np.array([0, 1])).tolist() == [42, 42]
    assert memory.read_mapped(b, np.array([3])).tolist() == [7]
    memory.check()


def test_hash_collisions_are_compared_before_sharing(monkeypatch: pytest.MonkeyPatch):
    """With a hash that maps every page to one key, only pages whose content and
    domain really are equal get shared."""
    monkeypatch.setattr(page_sharing, "_SPREAD", np.uint64(0))
    memory = MachineMemory(64)
    sharing = PageSharing(memory)
    a = memory.add_vm("a", 4, domain=0, sharable=True)
    c = memory.add_vm("c", 4, domain=9, sharable=True)
    memory.write(a, np.arange(4), np.array([5, 6, 5, 7], np.uint64))
    memory.write(c, np.arange(4), np.array([5, 6, 5, 7], np.uint64))
    result = sharing.scan()
    assert result.collisions > 0
    assert a.pmap[0] == a.pmap[2] and c.pmap[0] == c.pmap[2]
    assert len({*a.pmap.tolist(), *c.pmap.tolist()}) == 6
    assert memory.read_mapped(a, np.arange(4)).tolist() == [5, 6, 5, 7]
    memory.check()


def test_sharing_off_for_a_vm_means_none_of_its_pages_are_shared():
    memory = MachineMemory(64)
    sharing = PageSharing(memory)
    a = memory.add_vm("a", 8, domain=0, sharable=False)
    b = memory.add_vm("b", 8, domain=0, sharable=True)
    memory.write(a, np.arange(8), np.zeros(8, np.uint64))
    memory.write(b, np.arange(8), np.zeros(8, np.uint64))
    sharing.scan()
    assert len(set(a.pmap.tolist())) == 8
    assert len(set(b.pmap.tolist())) == 1
    assert not set(a.pmap.tolist()) & set(b.pmap.tolist())


def test_bad_page_numbers_change_nothing():
    memory = MachineMemory(16)
    a = memory.add_vm("a", 4, domain=0, sharable=True)
    with pytest.raises(InvalidArgument):
        memory.write(a, np.array([0, 4]), np.array([1, 2], np.uint64))
    assert memory.used_pages == 0
    with pytest.raises(InsufficientResourcesFault):
        memory.allocate(17)
    assert memory.free_pages == 16


def test_reclaim_keeps_the_reservation(tmp_path: Path):
    memory = MachineMemory(64)
    reclaimer = Reclaimer(memory)
    pages = memory.add_vm("a", 32, domain=0, sharable=False)
    vm = VmReclaim(pages, VmSwapFile(tmp_path / "a.vswp", 24), reservation_pages=8)
    reclaimer.add(vm)
    memory.write(pages, np.arange(32), np.arange(1, 33, dtype=np.uint64))
    vm.balloon_budget = 100
    techniques = (reclaimer._balloon, reclaimer._compress, reclaimer._swap)
    freed = reclaimer._reclaim(100, techniques)
    assert vm.granted == 8
    assert freed == 24 - len(pages.zip_mpns)  # the compression cache holds the rest
    assert [technique for technique, _ in vm.log] == ["balloon", "compress"]
    reclaimer.bring_in(vm, np.arange(32))
    assert memory.read_mapped(pages, np.arange(32)).tolist() == list(range(1, 33))


@given(st.lists(st.integers(0, 40), max_size=60))
def test_a_batchs_distinct_pages_and_last_writes_are_np_uniques(pages):
    """The kernel's own sort-and-compare gives exactly what np.unique gives: the
    sorted distinct pages, and for writes each page's last fingerprint."""
    ppns = np.array(pages, np.int64)
    fingerprints = np.arange(100, 100 + len(ppns), dtype=np.uint64)
    assert np.array_equal(distinct(ppns), np.unique(ppns))
    assert distinct(ppns).dtype == ppns.dtype
    unique, last = last_writes(ppns, fingerprints)
    assert np.array_equal(unique, np.unique(ppns))
    for page, fingerprint in zip(unique, last, strict=True):
        assert fingerprint == fingerprints[np.flatnonzero(ppns == page)[-1]]
