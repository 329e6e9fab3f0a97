"""vsim: a vSphere datacenter simulator.

The package root holds what every part shares: the simulated clock, vSphere faults,
TLS helpers, input validation and the generated gRPC stubs (`vsim.v1`). The parts
themselves live in `vsim.cluster`, `vsim.host` and `vsim.vcenter` (the repository's
`cluster/`, `host/` and `vcenter/`).
"""

__version__ = "0.1.0"
