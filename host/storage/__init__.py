"""The host's storage: the stack of mounted datastores, the VMFS and NFS clients, files,
VMDKs, the disk scheduler and the lines to the array.
"""
