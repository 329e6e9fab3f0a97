"""The VMkernel's network: standard vSwitches, port groups and the vNIC firewall."""
