"""hostd, the host's management agent: its RPCs, local accounts, esx.conf and the kernel
message translation; vCenter's client to it.
"""
