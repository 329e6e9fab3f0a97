"""vSphere HA's per-VM and per-cluster setting values, shared by the agents on the
hosts, vCenter and the CLI (each validates against these, so they cannot drift)."""

from __future__ import annotations

RESTART_PRIORITIES = ("disabled", "lowest", "low", "medium", "high", "highest")
"""vSphere's restart priorities (ClusterDasVmSettingsRestartPriority), lowest first;
"disabled" leaves a VM off after its host fails."""
DEFAULT_RESTART_PRIORITY = "medium"
ISOLATION_RESPONSES = ("none", "power-off", "shutdown")
"""What an isolated host does with its VMs (none, the default: they run on)."""
DATASTORE_KINDS = ("vmfs", "nfs")
"""How long a dead holder's locks take to go stale depends on which."""
