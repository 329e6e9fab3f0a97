"""The shared storage array: block LUNs with SCSI semantics and NFS v3 exports, kept
in real files under the array's data dir; its gRPC servicer. (VMFS is not here: it is
the host kernel's clustered file system on top of a LUN.)"""
