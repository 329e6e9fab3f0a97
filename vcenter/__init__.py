"""The vCenter service: inventory, sessions, hosts and vpxuser, VMs, tasks and events,
and its gRPC server."""
