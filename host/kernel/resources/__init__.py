"""Resource management of the VMkernel: allocations (shares, reservations, limits),
their division into entitlements, and the host's one resource-pool hierarchy that the
CPU scheduler and the memory manager each read their resource from.
"""
