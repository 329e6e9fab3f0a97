"""iSCSI names, as the array masks LUNs by them and vCenter, the launcher and each
host's storage stack agree on them.
"""

from __future__ import annotations


def initiator_name(host_name: str) -> str:
    """The host's iSCSI qualified name, as ESXi names its software initiator."""
    return f"iqn.1998-01.com.vmware:{host_name}"
