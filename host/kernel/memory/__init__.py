"""The VMkernel's memory: machine pages and pmaps, page sharing, reclaim, and the manager
that ties them to the clock.
"""
