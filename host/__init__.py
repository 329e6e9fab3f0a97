"""The ESXi host: its VMkernel core, hostd and local accounts, and the Ray actor shell."""
