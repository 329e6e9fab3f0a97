"""vSphere HA on a host: the FDM agent (master election, heartbeats, verdicts, isolation)."""
