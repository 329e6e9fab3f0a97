"""The description of a cluster, separate from the running thing (Mininet's Topo).

`vsim up`, the tests and docker-compose all build from a `ClusterSpec`; an engine
turns its `HostSpec`s into live hosts. Names are predictable: esxi-01.., vm-001..
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field

from vsim import cpu_features, validate

MAX_KERNEL_PERIOD_S = 10.0
"""The longest kernel period: the memory scheduler covers at most this much time in
one period (a host back from a long pause does not replay it)."""


@dataclass(frozen=True)
class HostSpec:
    """One ESXi host's hardware and first-boot settings."""

    name: str
    """Host name, also its Ray actor's name (e.g. esxi-01)."""
    uuid: str = ""
    """The host's hardware UUID; vCenter assigns one when it provisions the host."""
    cpu_cores: int = 32
    """Physical cores."""
    cpu_mhz: int = 2600
    """Clock of each core."""
    memory_mb: int = 512 * 1024
    """Physical memory."""
    root_password: str = ""
    """root's password at first boot (set by whoever provisions the host)."""
    kernel_period_s: float = 1.0
    """Seconds between the VMkernel's periods, where guests run and CPU and memory
    are divided again. A coarser period makes a host cheaper to simulate (the
    simulator's hosts use one), at the price of slower reaction to demand."""
    cpu_model: str = cpu_features.DEFAULT_MODEL
    """The CPU's generation (vsim/cpu_features.py): the features its VMs see."""
    vmotion_encryption: bool = True
    """Whether it can seal a vMotion stream with AES-256-GCM (ESXi 6.5 and later can;
    an older host cannot, and takes part only in unencrypted migrations)."""

    @property
    def host_uuid(self) -> uuid.UUID:
        """The hardware UUID; derived from the name when none was assigned (a host
        built outside vCenter, as in unit tests)."""
        return uuid.UUID(self.uuid) if self.uuid else uuid.uuid5(uuid.NAMESPACE_DNS, self.name)

    def validated(self) -> HostSpec:
        validate.host_name(self.name)
        if self.uuid:
            validate.uuid(self.uuid)
        validate.int_range(self.cpu_cores, 1, validate.MAX_HOST_CPU_CORES, "cpu_cores")
        validate.int_range(self.cpu_mhz, 100, 10_000, "cpu_mhz", "MHz")
        validate.int_range(self.memory_mb, 1024, validate.MAX_HOST_MEMORY_MB, "memory_mb", "MB")
        validate.number_range(
            self.kernel_period_s, 0.1, MAX_KERNEL_PERIOD_S, "kernel_period_s", "seconds"
        )
        cpu_features.check(self.cpu_model)
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HostSpec:
        return cls(**json.loads(text))


def host_name(index: int) -> str:
    return f"esxi-{index:02d}"


@dataclass(frozen=True)
class DatastoreSpec:
    """A datastore the cluster starts with, and the storage it lives on."""

    name: str
    """Datastore name (e.g. vmfs-01); also the LUN's or export's name on the array."""
    type: str
    """"vmfs" (on a LUN masked to every host) or "nfs" (on an export)."""
    size_bytes: int = 4 * 1024**3
    """VMFS: the LUN's size."""
    lock_mode: str = "ats+scsi"
    """VMFS: "ats+scsi" or "ats-only"."""
    lun: int = -1
    """VMFS: the LUN's id, once the array has it."""


@dataclass(frozen=True)
class ClusterSpec:
    """A datacenter with one cluster of hosts and its datastores."""

    datacenter: str = "dc-01"
    cluster: str = "cluster-01"
    hosts: tuple[HostSpec, ...] = field(default_factory=tuple)
    datastores: tuple[DatastoreSpec, ...] = field(default_factory=tuple)

    @classmethod
    def default(cls, hosts: int = 3) -> ClusterSpec:
        """N hosts, one ats+scsi VMFS datastore on a 4 GiB LUN and one NFS datastore."""
        validate.int_range(hosts, 0, 96, "hosts")
        return cls(
            hosts=tuple(HostSpec(host_name(i)) for i in range(1, hosts + 1)),
            datastores=(DatastoreSpec("vmfs-01", "vmfs"), DatastoreSpec("nfs-01", "nfs")),
        )
