"""The VMkernel of one ESXi host: capacity and VMs, memory, CPU, resource pools, the
network, DirectPath devices.
"""
