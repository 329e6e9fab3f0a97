"""The simulated guest OS inside a VM: what it does to its memory."""
