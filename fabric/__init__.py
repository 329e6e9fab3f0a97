"""The physical network between the hosts: it exists without vCenter (cables, one switch)."""
